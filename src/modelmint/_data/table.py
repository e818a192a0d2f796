"""Delimited text files (CSV, TSV) read for training without losing a row silently.

* A ``.csv`` is read as RFC 4180: comma, ``"`` quoting with doubled quotes, line breaks inside
  quoted fields. Only when that reading leaves rows of the wrong width (or one column) are the
  sniffed dialect and the other usual delimiters tried: a reading that finds the header wins,
  then the one that keeps the most rows.
* A ``.tsv`` is read as tab-separated, without quoting (IANA TSV, where a quote is only a
  character) unless its quotes look like a spreadsheet's or pandas' quoting; the other reading
  is tried when the first leaves rows of the wrong width.
* The header, or else the most common row width, sets the column count. Every other row is
  skipped and remembered by line number, so the caller can report it.
* The encoding is decided once per file: UTF-8 (with or without BOM), UTF-16/32 with a BOM,
  then GBK or cp1252; anything other than UTF-8 is stated in :attr:`Table.notes`.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError

MAX_FILE_BYTES = 1 << 30  # the whole file is decoded in memory: bound it
SHOWN_LINES = 5  # line numbers listed per reason before "and N more"
SNIFF_CHARS = 8192  # csv.Sniffer's regexes slow down sharply on long samples
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
         (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
         (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"))
_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_HIGH_BYTE_RUNS = re.compile(rb"[\x80-\xff]+")


class _TabNoQuotes(csv.Dialect):
    delimiter = "\t"
    quotechar = '"'
    quoting = csv.QUOTE_NONE
    doublequote = False
    skipinitialspace = False
    lineterminator = "\n"


@dataclass(frozen=True)
class Record:
    line: int  # the 1-based line the row starts on
    end: int  # the line it ends on (later than ``line`` when a quoted field has line breaks)
    cells: list[str]


@dataclass
class Table:
    """The rows of one file that have the table's width, and the ones skipped, by reason."""

    header: list[str] | None
    width: int
    rows: list[Record]
    total: int  # data rows: not blank, header excluded
    skipped: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    notes: list[str] = field(default_factory=list)  # how the file was read, when it matters

    def skip(self, reason: str, line: int) -> None:
        self.skipped[reason].append(line)

    @property
    def kept(self) -> int:
        return self.total - sum(len(lines) for lines in self.skipped.values())

    def skipped_summary(self) -> str:
        """``12 with fewer than 2 columns (lines 3, 7, 9, 14, 20 and 7 more); 1 with an
        empty label (line 40)``"""
        parts = []
        for reason, lines in self.skipped.items():
            shown = ", ".join(str(n) for n in lines[:SHOWN_LINES])
            more = f" and {len(lines) - SHOWN_LINES} more" if len(lines) > SHOWN_LINES else ""
            parts.append(f"{len(lines)} {reason} (line{'s' if len(lines) > 1 else ''} "
                         f"{shown}{more})")
        return "; ".join(parts)


def decode_text_file(path: Path) -> tuple[str, str]:
    """(text, encoding name) of a whole file; a file that is no known text encoding is a
    :class:`DataError` naming the first offending byte."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {size / 2**20:.0f} MiB; text data is limited to "
                        f"{MAX_FILE_BYTES >> 20} MiB")
    blob = path.read_bytes()
    for bom, codec, name in _BOMS:
        if blob.startswith(bom):
            try:
                return blob.decode(codec), name
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: starts with a {name} byte-order mark but is not valid "
                                f"{name} ({exc.reason} at byte {exc.start})") from None
    if b"\x00" in blob:
        raise DataError(f"{path}: contains NUL bytes, so it is not a text file (UTF-16 text needs "
                        "a byte-order mark)")
    try:
        return blob.decode("utf-8"), "UTF-8"
    except UnicodeDecodeError as exc:
        utf8_error = exc
    gbk, cp1252 = _try_decode(blob, "gbk"), _try_decode(blob, "cp1252")
    if gbk is not None and (cp1252 is None or _mostly_paired_high_bytes(blob)):
        return gbk, "GBK"
    if cp1252 is not None:
        return cp1252, "cp1252"
    raise DataError(f"{path}: not text in UTF-8, UTF-16 (with a byte-order mark), GBK or "
                    f"cp1252 (byte 0x{blob[utf8_error.start]:02x} at offset {utf8_error.start} "
                    "is not UTF-8); save it as UTF-8")


def _try_decode(blob: bytes, codec: str) -> str | None:
    try:
        return blob.decode(codec)
    except UnicodeDecodeError:
        return None


def _mostly_paired_high_bytes(blob: bytes) -> bool:
    """GBK writes a Chinese character as two bytes above 0x80, usually in runs; cp1252 text has
    lone accented letters between ASCII ones. Both decodings often succeed on the same bytes."""
    runs = [len(run) for run in _HIGH_BYTE_RUNS.findall(blob)]
    return sum(n for n in runs if n >= 2) > sum(runs) / 2


def read_table(path: Path, is_header: Callable[[list[str]], bool]) -> Table:
    """The rows of a CSV or TSV file (see the module's docstring for how it is read)."""
    text, encoding = decode_text_file(path)
    previous_limit = csv.field_size_limit()
    # The default limit (128 KiB) refuses a long review; no field can outgrow the file.
    csv.field_size_limit(max(previous_limit, len(text) + 1))
    try:
        table = _best_reading(path, text, is_header)
    finally:
        csv.field_size_limit(previous_limit)
    if encoding != "UTF-8":
        table.notes.insert(0, f"read as {encoding} text (not UTF-8): check that the texts read "
                              "correctly, or save the file as UTF-8")
    spans = [r for r in table.rows if r.end > r.line]
    if spans:
        # A quoted text with line breaks, or a stray quote that swallowed the rows after it:
        # either way the person should be able to find these rows.
        shown = ", ".join(f"{r.line}-{r.end}" for r in spans[:SHOWN_LINES])
        more = f" and {len(spans) - SHOWN_LINES} more" if len(spans) > SHOWN_LINES else ""
        table.notes.append(f"{len(spans)} row(s) span several lines (a quoted text with line "
                           f"breaks): lines {shown}{more}")
    return table


Reading = tuple[str, Any]  # (how it is described, the csv dialect)


def _best_reading(path: Path, text: str, is_header: Callable[[list[str]], bool]) -> Table:
    errors: list[str] = []
    if path.suffix.lower() == ".tsv":
        plain = _parse(text, _TabNoQuotes)
        readings: list[Reading] = [("tab-separated, without quoting", _TabNoQuotes),
                                   ("tab-separated, with quoting", csv.excel_tab)]
        if _looks_quoted(plain):
            readings.reverse()
            first = _shaped(text, readings[0][1], is_header, errors)
        else:
            first = _shape(plain, is_header)
    else:
        readings = [("comma-separated (RFC 4180)", csv.excel)]
        first = _shaped(text, csv.excel, is_header, errors)
        if first is None or first.width < 2 or first.skipped:
            readings += _fallbacks(text)
    if first is not None and first.width >= 2 and not first.skipped:
        return first
    tried = [(readings[0][0], first)]
    tried += [(name, _shaped(text, dialect, is_header, errors)) for name, dialect in readings[1:]]
    usable = [(name, table) for name, table in tried if table is not None and table.width >= 2]
    if not usable:
        what = "; ".join(name for name, _ in tried)
        raise DataError(f"{path}: found 1 column reading it as {what}; expected a label and a "
                        "text column separated by a comma (.csv) or a tab (.tsv)"
                        + (f" ({errors[0]})" if errors else ""))
    # A reading that finds the header beats one that does not; then the most rows kept net of
    # those skipped wins, and a tie goes to the earlier reading.
    name, best = max(usable, key=lambda t: (t[1].header is not None,
                                            t[1].kept - _skipped_count(t[1]), -usable.index(t)))
    if best is not first:
        why = ("gave 1 column" if first is None or first.width < 2 else
               f"left {_skipped_count(first)} of {first.total} rows with the wrong number of "
               "columns")
        best.notes.append(f"read as {name}: reading it as {tried[0][0]} {why}")
    return best


def _skipped_count(table: Table) -> int:
    return sum(len(lines) for lines in table.skipped.values())


def _fallbacks(text: str) -> list[Reading]:
    """The sniffed dialect first, then RFC 4180 quoting with each other usual delimiter:
    csv.Sniffer gives up on many small or quote-heavy files."""
    sample = text[:SNIFF_CHARS]
    if len(text) > SNIFF_CHARS and "\n" in sample:
        sample = sample[:sample.rindex("\n")]
    try:
        found: Any = csv.Sniffer().sniff(sample, delimiters="".join(_DELIMITERS))
    except csv.Error:
        found = None
    delimiters = [found.delimiter] if found is not None else []
    delimiters += [d for d in _DELIMITERS if d not in delimiters and d != ","]
    readings: list[Reading] = [
        (f"{_DELIMITERS[d]}-separated (RFC 4180 quoting)",
         type("Rfc4180", (csv.excel,), {"delimiter": d})) for d in delimiters if d != ","]
    if found is not None and (not found.doublequote or found.escapechar):
        readings.insert(1 if found.delimiter != "," else 0,
                        (f"{_DELIMITERS[found.delimiter]}-separated (sniffed quoting)", found))
    return readings


def _parse(text: str, dialect: Any) -> list[Record]:
    """Non-blank rows with the lines each spans (``newline=""``: a line break inside a quoted
    field stays in the field, and CRLF ends a line like LF)."""
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    records, start = [], 1
    for cells in reader:
        if any(cell.strip() for cell in cells):
            records.append(Record(start, reader.line_num, cells))
        start = reader.line_num + 1
    return records


def _shaped(text: str, dialect: Any, is_header: Callable[[list[str]], bool],
            errors: list[str]) -> Table | None:
    try:
        records = _parse(text, dialect)
    except csv.Error as exc:
        errors.append(str(exc))
        return None
    return _shape(records, is_header)


def _shape(records: list[Record], is_header: Callable[[list[str]], bool]) -> Table:
    header = _trimmed(records[0].cells) if records and is_header(records[0].cells) else None
    body = records[1:] if header is not None else records
    width = len(header) if header is not None else _common_width(r.cells for r in body)
    table = Table(header, width, [], len(body))
    for record in body:
        cells = record.cells
        if len(cells) > width and not any(c.strip() for c in cells[width:]):
            cells = cells[:width]  # a trailing delimiter
        if len(cells) == width:
            table.rows.append(Record(record.line, record.end, cells))
        elif len(cells) < width:
            table.skip(f"with fewer than {width} columns", record.line)
        else:
            table.skip(f"with more than {width} columns (an unquoted delimiter or quote in the "
                       "text?)", record.line)
    return table


def _trimmed(cells: list[str]) -> list[str]:
    while len(cells) > 2 and not cells[-1].strip():
        cells = cells[:-1]
    return cells


def _common_width(rows: Iterable[list[str]]) -> int:
    widths = Counter(len(_trimmed(cells)) for cells in rows)
    if not widths:
        return 0
    return max(widths, key=lambda w: (widths[w], w))  # a tie goes to the wider reading


def _looks_quoted(records: list[Record]) -> bool:
    """Whether every cell that opens with a quote also closes with one (as a spreadsheet or
    pandas quotes a cell), in a reading without quoting."""
    opened = [c for r in records for c in r.cells if c.startswith('"')]
    return bool(opened) and all(len(c) >= 2 and c.endswith('"') for c in opened)
