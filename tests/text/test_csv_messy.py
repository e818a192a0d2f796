"""The TSV/CSV loader on the files people really have: RFC 4180 quoting that fools
``csv.Sniffer``, line breaks and stray delimiters inside quotes, a BOM, CRLF, GBK, cp1252 and
UTF-16 text, a 1 MB review, and files with a few (or mostly) broken rows. Each test states the
exact rows loaded, keyed by the line each row starts on."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from modelmint._data.dataset import TaskData
from modelmint._data.text import load_text_data
from modelmint.errors import DataError

REVIEWS = [("pos", 'A "great" film, with a twist'), ("neg", "Slow, dull, too long"),
           ("pos", "I loved it"), ("neg", "Not worth it, sadly"),
           ("pos", "Funny, warm, and smart"), ("neg", 'The "twist" was obvious, sadly'),
           ("neg", "Two hours I will never get back"), ("pos", "Moving and funny"),
           ("neg", 'They called it "art" and, honestly, no')]


def loaded(data: TaskData) -> dict[int, tuple[str, str]]:
    """Line the row starts on -> (label, text), over both sides of the split."""
    return {int(item): (data.labels[y], data.texts[item]) for item, y in data.train + data.val}


def write_csv(path: Path, rows: list[tuple[str, str]], **writer: object) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, **writer)  # type: ignore[arg-type]
        out.writerow(["label", "review"])
        out.writerows(rows)
    return path


def test_rfc4180_file_with_doubled_quotes_that_fools_the_sniffer(tmp_path: Path) -> None:
    # R's write.csv and QUOTE_ALL writers: every field quoted, quotes in texts doubled.
    rows = [(label, f"{text} ({i})") for i in range(3) for label, text in REVIEWS]
    file = write_csv(tmp_path / "reviews.csv", rows, quoting=csv.QUOTE_ALL)
    sniffed = csv.Sniffer().sniff(file.read_text(), delimiters=",;\t|")
    assert sniffed.doublequote is False  # the trap: reading it as sniffed splits these rows
    data = load_text_data(file)
    assert loaded(data) == {line: row for line, row in enumerate(rows, start=2)}
    assert data.extra["columns"] == {"label": "label", "text": "review"}
    assert data.warnings == []


def test_line_breaks_and_stray_delimiters_inside_quotes_with_bom_and_crlf(
        tmp_path: Path) -> None:
    body = ('label,review\r\n'
            'pos,"Loved it.\r\nWould watch again; twice | maybe\tthrice"\r\n'
            'neg,"Bad, bad, bad"\r\n'
            '\r\n'
            'pos,"She said ""go"", so I went"\r\n'
            'neg,Plain and dull\r\n'
            'pos,"Two\nline breaks\nhere"\r\n'
            'neg,"Ends with a comma,"\r\n')
    file = tmp_path / "bom.csv"
    file.write_bytes(b"\xef\xbb\xbf" + body.encode())
    data = load_text_data(file)
    assert loaded(data) == {
        2: ("pos", "Loved it.\r\nWould watch again; twice | maybe\tthrice"),
        4: ("neg", "Bad, bad, bad"),
        6: ("pos", 'She said "go", so I went'),
        7: ("neg", "Plain and dull"),
        8: ("pos", "Two\nline breaks\nhere"),
        11: ("neg", "Ends with a comma,")}
    assert data.extra["columns"] == {"label": "label", "text": "review"}  # BOM not in "label"
    assert data.warnings == ["2 row(s) span several lines (a quoted text with line breaks): "
                             "lines 2-3, 8-10"]


CHINESE = [("好评", "这部电影非常好看，演员的表演很出色"), ("差评", "剧情拖沓，浪费了两个小时"),
           ("好评", "画面精美，故事感人"), ("差评", "看了一半就走了，太无聊")]
FRENCH = [("positif", "Très bon film, j’ai adorée la fin"), ("négatif", "Trop long, ennuyeux"),
          ("positif", "Drôle et touchant"), ("négatif", "Déçue par les acteurs")]


@pytest.mark.parametrize("encoding,rows,stated", [
    ("gbk", CHINESE, "GBK"), ("utf-16", CHINESE, "UTF-16"), ("cp1252", FRENCH, "cp1252"),
    ("utf-8-sig", FRENCH, None), ("utf-8", CHINESE, None)])
def test_encodings_are_detected_once_per_file_and_stated(
        tmp_path: Path, encoding: str, rows: list[tuple[str, str]], stated: str | None) -> None:
    text = "label\treview\n" + "".join(f"{label}\t{review}\n" for label, review in rows)
    file = tmp_path / f"{encoding}.tsv"
    file.write_bytes(text.encode(encoding))
    if encoding == "cp1252":  # these bytes also decode as GBK: the choice is not by luck
        assert file.read_bytes().decode("gbk") != text
    data = load_text_data(file)
    assert loaded(data) == {line: row for line, row in enumerate(rows, start=2)}
    notes = [w for w in data.warnings if w.startswith("read as")]
    assert notes == ([f"read as {stated} text (not UTF-8): check that the texts read correctly,"
                      " or save the file as UTF-8"] if stated else [])


def test_bytes_that_are_no_text_encoding_are_refused(tmp_path: Path) -> None:
    (tmp_path / "nul.csv").write_bytes(b"label,review\npos,ok\x00\x00\n")
    with pytest.raises(DataError, match="contains NUL bytes"):
        load_text_data(tmp_path / "nul.csv")
    (tmp_path / "bad.csv").write_bytes(b"label,review\npos,\x81\x81\x81\nneg,\x81\n")
    with pytest.raises(DataError, match=r"not text in UTF-8, UTF-16.*offset 17"):
        load_text_data(tmp_path / "bad.csv")


def test_a_one_megabyte_review_loads(tmp_path: Path) -> None:
    long_review = "an endless review, " * 55_000  # ~1 MB, commas included: quoted
    rows = [("pos", long_review.strip()), ("pos", "short"), ("neg", "bad"), ("neg", "worse")]
    file = write_csv(tmp_path / "long.csv", rows)
    limit = csv.field_size_limit()
    data = load_text_data(file)
    assert loaded(data) == {line: row for line, row in enumerate(rows, start=2)}
    assert len(data.texts["2"]) > 1_000_000
    assert csv.field_size_limit() == limit  # the process-wide limit is put back


def test_a_few_broken_rows_are_reported_by_line_and_the_rest_kept(tmp_path: Path) -> None:
    lines = ["label,review"] + [f"{'pos' if i % 2 else 'neg'},review number {i}"
                                for i in range(20)]
    lines[4] = "pos,great, really great"  # an unquoted comma: 3 columns
    lines[8] = "neg"  # the text is missing
    lines[11] = ",a text without a label"
    lines.insert(15, "")  # a blank line is not a row
    file = tmp_path / "broken.csv"
    file.write_text("\n".join(lines) + "\n")
    data = load_text_data(file)
    expected = {n + 1: tuple(line.split(",")) for n, line in enumerate(lines)
                if n and line and n not in (4, 8, 11)}
    assert loaded(data) == expected and len(expected) == 17
    assert data.warnings == [
        "3 of 20 rows skipped: 1 with more than 2 columns (an unquoted delimiter or quote in "
        "the text?) (line 5); 1 with fewer than 2 columns (line 9); 1 with an empty label "
        "(line 12)"]
    assert data.extra["skipped"] == [
        "line 5 with more than 2 columns (an unquoted delimiter or quote in the text?)",
        "line 9 with fewer than 2 columns", "line 12 with an empty label"]


def test_a_mostly_broken_file_stops_with_a_clear_error(tmp_path: Path) -> None:
    # Commas in the texts and no quoting: most rows split into extra columns.
    rows = ["label,review", "pos,good", "neg,bad"] + [
        f"{'pos' if i % 2 else 'neg'},well, it was, in a way, film {i}" for i in range(8)]
    file = tmp_path / "unquoted.csv"
    file.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as caught:
        load_text_data(file)
    assert caught.value.message == (
        f"{file}: only 2 of 10 rows could be used (label column 'label', text column 'review', "
        "2 columns); skipped: 8 with more than 2 columns (an unquoted delimiter or quote in the "
        "text?) (lines 4, 5, 6, 7, 8 and 3 more)")


def test_tsv_quoted_by_a_spreadsheet_and_tsv_with_a_stray_quote(tmp_path: Path) -> None:
    quoted = [("pos", 'He said "wow"\nand left happy'), ("neg", "Tabs\tinside, quoted"),
              ("pos", "Fine"), ("neg", 'A "so-so" film')]
    file = tmp_path / "pandas.tsv"
    with file.open("w", newline="") as f:
        csv.writer(f, dialect="excel-tab").writerows([("label", "review"), *quoted])
    assert loaded(load_text_data(file)) == {2: quoted[0], 4: quoted[1], 5: quoted[2],
                                            6: quoted[3]}
    # IANA TSV: a quote is a character; an unclosed one must not swallow the rows after it.
    plain = [("pos", '"Wow, what a film'), ("neg", "Meh"), ("pos", 'The "best"'),
             ("neg", "Bad"), ("neg", 'Worst " ever')]
    (tmp_path / "plain.tsv").write_text(
        "label\treview\n" + "".join(f"{a}\t{b}\n" for a, b in plain))
    data = load_text_data(tmp_path / "plain.tsv")
    assert loaded(data) == {line: row for line, row in enumerate(plain, start=2)}
    assert data.warnings == []


def test_semicolon_csv_falls_back_to_the_sniffed_dialect(tmp_path: Path) -> None:
    rows = [("pos", 'Très "bon", vraiment'), ("neg", "Nul"), ("pos", "Super; génial"),
            ("neg", "Ennuyeux")]
    write_csv(tmp_path / "excel_fr.csv", rows, delimiter=";")
    data = load_text_data(tmp_path / "excel_fr.csv")
    assert loaded(data) == {line: row for line, row in enumerate(rows, start=2)}
    assert data.warnings == ["read as semicolon-separated (RFC 4180 quoting): reading it as "
                             "comma-separated (RFC 4180) gave 1 column"]


def test_a_file_with_one_label_names_it(tmp_path: Path) -> None:
    write_csv(tmp_path / "one.csv", [("spam", f"offer {i}") for i in range(5)])
    with pytest.raises(DataError, match=r"5 usable row\(s\) with only the label 'spam' in "
                                        r"column 'label'; a classifier needs at least 2 labels"):
        load_text_data(tmp_path / "one.csv")
