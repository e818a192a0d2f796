"""Text: the text preprocessing spec (one implementation for training, the server and any SDK)
and the loader of TSV/CSV files with a label and a text column.

Two kinds of :class:`TextSpec`, both pure Python + NumPy at serving time:

* ``tfidf`` — one or more TF-IDF blocks (word or ``char_wb`` n-grams), each with its vocabulary
  and idf stored in the spec; the features of the blocks are concatenated, each block
  L2-normalised. It reproduces scikit-learn's ``TfidfVectorizer`` analyzers (token pattern
  ``(?u)\\b\\w\\w+\\b``, ``char_wb`` padding with one space, ``sublinear_tf``); training fits
  scikit-learn and a test holds this implementation to its ``transform`` within 1e-6.
* ``wordpiece`` — BERT's uncased basic tokenizer + greedy longest-match WordPiece (the
  algorithm of Hugging Face's pure-Python ``BertTokenizer``, re-implemented here so the server
  needs neither transformers nor tokenizers); the input row is ``[2, max_length]`` FP32 holding
  token ids and the attention mask (the ONNX graph casts them to int64).
* ``tfidf+wordpiece`` — both, for a linear model stacked over TF-IDF features and sentence
  embeddings: the row is the TF-IDF features followed by the flattened ``[2, max_length]``
  wordpiece block (one FP32 input; the graph slices it).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, InvalidInput
from .dataset import TaskData
from .layout import split_items

TASK = "text-classification"
WORD_PATTERN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern
_WHITESPACES = re.compile(r"\s\s+")  # scikit-learn's char_wb whitespace normaliser
LABEL_NAMES = ("label", "labels", "class", "category", "target", "y", "sentiment")
TEXT_NAMES = ("text", "sms", "message", "sentence", "content", "review", "body", "document")


@dataclass(frozen=True)
class TfidfBlock:
    analyzer: str  # "word" or "char_wb"
    ngram_range: tuple[int, int]
    vocabulary: tuple[str, ...]  # column order
    idf: tuple[float, ...]
    lowercase: bool = True
    sublinear_tf: bool = True

    def index(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.vocabulary)}

    def ngrams(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        low, high = self.ngram_range
        if self.analyzer == "word":
            tokens = WORD_PATTERN.findall(text)
            grams = list(tokens) if low == 1 else []
            for n in range(max(low, 2), high + 1):
                grams += [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
            return grams
        grams = []  # char_wb, exactly as sklearn's _char_wb_ngrams
        for word in _WHITESPACES.sub(" ", text).split():
            word = f" {word} "
            for n in range(low, high + 1):
                offset = 0
                grams.append(word[offset:offset + n])
                while offset + n < len(word):
                    offset += 1
                    grams.append(word[offset:offset + n])
                if offset == 0:  # a short word is counted once
                    break
        return grams


@dataclass(frozen=True)
class TextSpec:
    """How a UTF-8 string becomes the model's FP32 input row."""

    encoder: str = "tfidf"  # "tfidf", "wordpiece" or "tfidf+wordpiece"
    blocks: tuple[TfidfBlock, ...] = ()
    wordpiece_vocab: tuple[str, ...] = ()
    max_length: int = 128  # wordpiece: tokens per text, with [CLS] and [SEP]
    max_chars: int = 100_000  # longer texts are refused (bounds CPU per request)
    kind: str = field(default="text")

    @property
    def shape(self) -> list[int]:
        if self.encoder == "wordpiece":
            return [2, self.max_length]
        return [self.tfidf_width + (2 * self.max_length if self.encoder == "tfidf+wordpiece"
                                    else 0)]

    @property
    def tfidf_width(self) -> int:
        return sum(len(b.vocabulary) for b in self.blocks)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "text", "encoder": self.encoder, "max_length": self.max_length,
                "max_chars": self.max_chars,
                "blocks": [{"analyzer": b.analyzer, "ngram_range": list(b.ngram_range),
                            "lowercase": b.lowercase, "sublinear_tf": b.sublinear_tf,
                            "vocabulary": list(b.vocabulary), "idf": list(b.idf)}
                           for b in self.blocks],
                "wordpiece_vocab": list(self.wordpiece_vocab)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TextSpec:
        if data.get("kind") != "text":
            raise ValueError(f"preprocessing kind is {data.get('kind')!r}, expected 'text'")
        blocks = tuple(TfidfBlock(str(b["analyzer"]), (int(b["ngram_range"][0]),
                                                       int(b["ngram_range"][1])),
                                  tuple(b["vocabulary"]), tuple(float(x) for x in b["idf"]),
                                  bool(b.get("lowercase", True)), bool(b.get("sublinear_tf", True)))
                       for b in data.get("blocks", []))
        return cls(encoder=str(data.get("encoder", "tfidf")), blocks=blocks,
                   wordpiece_vocab=tuple(data.get("wordpiece_vocab", [])),
                   max_length=int(data.get("max_length", 128)),
                   max_chars=int(data.get("max_chars", 100_000)))


class TextEncoder:
    """A :class:`TextSpec` with its lookup tables built once (per loaded model)."""

    def __init__(self, spec: TextSpec) -> None:
        self.spec = spec
        self.indexes = [b.index() for b in spec.blocks]
        self.idfs = [np.asarray(b.idf, np.float64) for b in spec.blocks]
        self.wordpiece = {t: i for i, t in enumerate(spec.wordpiece_vocab)}

    def encode(self, text: str) -> np.ndarray:
        if self.spec.encoder == "wordpiece":
            return self._wordpiece(text)
        tfidf = self._tfidf(text)
        if self.spec.encoder == "tfidf+wordpiece":
            return np.concatenate([tfidf, self._wordpiece(text).ravel()])
        return tfidf

    def _tfidf(self, text: str) -> np.ndarray:
        parts = []
        for block, index, idf in zip(self.spec.blocks, self.indexes, self.idfs, strict=True):
            row = np.zeros(len(index), np.float64)
            for gram, count in Counter(block.ngrams(text)).items():
                column = index.get(gram)
                if column is not None:
                    row[column] = 1.0 + math.log(count) if block.sublinear_tf else count
            row *= idf
            norm = float(np.sqrt(row @ row))
            parts.append(row / norm if norm > 0 else row)
        return np.concatenate(parts).astype(np.float32)

    def encode_batch(self, texts: list[str], name: str = "text") -> np.ndarray:
        out = np.empty([len(texts), *self.spec.shape], np.float32)
        for i, text in enumerate(texts):
            if len(text) > self.spec.max_chars:
                raise InvalidInput(f"{name}[{i}]: {len(text)} characters exceeds the limit of "
                                   f"{self.spec.max_chars}")
            out[i] = self.encode(text)
        return out

    # --- wordpiece (BERT uncased) -----------------------------------------------------------

    def _basic_tokens(self, text: str) -> list[str]:
        text = "".join(" " if _is_space(c) else c for c in text
                       if not (ord(c) in (0, 0xFFFD) or _is_control(c)))
        # Chinese characters are split one per token, as in BERT.
        text = "".join(f" {c} " if _is_cjk(ord(c)) else c for c in text)
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")  # strip accents
        tokens: list[str] = []
        for word in text.split():
            current = ""
            for c in word:
                if _is_punctuation(c):
                    if current:
                        tokens.append(current)
                    tokens.append(c)
                    current = ""
                else:
                    current += c
            if current:
                tokens.append(current)
        return tokens

    def _wordpiece(self, text: str) -> np.ndarray:
        vocab, unk = self.wordpiece, self.wordpiece["[UNK]"]
        ids = [self.wordpiece["[CLS]"]]
        limit = self.spec.max_length - 1
        for word in self._basic_tokens(text):
            if len(ids) >= limit:
                break
            if len(word) > 100:
                ids.append(unk)
                continue
            pieces, start = [], 0
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    if piece in vocab:
                        break
                    end -= 1
                if end == start:
                    pieces = [unk]
                    break
                pieces.append(vocab[piece])
                start = end
            ids.extend(pieces)
        ids = [*ids[:limit], self.wordpiece["[SEP]"]]
        out = np.zeros((2, self.spec.max_length), np.float32)
        out[0, :len(ids)] = ids
        out[1, :len(ids)] = 1.0
        return out


def _is_space(c: str) -> bool:
    return c in " \t\n\r" or unicodedata.category(c) == "Zs"


def _is_control(c: str) -> bool:
    return c not in "\t\n\r" and unicodedata.category(c).startswith("C")


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in (
        (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


def _is_punctuation(c: str) -> bool:
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def decode_texts(blobs: list[Any], name: str = "text") -> list[str]:
    """BYTES elements → strings; a non-UTF-8 element is a 400 naming its index."""
    texts = []
    for i, blob in enumerate(blobs):
        if isinstance(blob, str):
            texts.append(blob)
            continue
        if not isinstance(blob, bytes):
            raise InvalidInput(f"{name}[{i}]: expected a UTF-8 string, got "
                               f"{type(blob).__name__}")
        try:
            texts.append(blob.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{name}[{i}]: not valid UTF-8 text ({exc})") from None
    return texts


# --- the data loader --------------------------------------------------------------------------
# The offline SDK vendors this module up to the loader's first function: the loader is not
# shipped, so the reader it uses is imported below that function, not at the top.

def _read_rows(file: Path, label_column: str | None, text_column: str | None) -> Table:
    def is_header(cells: list[str]) -> bool:
        names = {c.strip().lower() for c in cells}
        return bool(names & set(LABEL_NAMES + TEXT_NAMES)) or any(
            name is not None and name in cells for name in (label_column, text_column))

    return read_table(file, is_header)


from .table import Table, read_table  # noqa: E402  (below the SDK's cut: see above)


def _column(name: str | None, header: list[str] | None, width: int, what: str,
            where: Path) -> int | None:
    if name is None:
        return None
    if header is not None and name in header:
        return header.index(name)
    if name.isascii() and name.isdigit() and int(name) < width:
        return int(name)
    raise DataError(f"{where}: --{what}-column {name!r} is not a column; the header is "
                    f"{header or 'absent'} (a 0-based column number also works)")


def _guess_columns(rows: list[list[str]], header: list[str] | None, width: int
                   ) -> tuple[int, int]:
    """Label: the column with the fewest distinct values; text: the longest on average."""
    if header:
        lowered = [h.strip().lower() for h in header]
        label = next((lowered.index(n) for n in LABEL_NAMES if n in lowered), None)
        text = next((lowered.index(n) for n in TEXT_NAMES if n in lowered), None)
        if label is not None and text is not None and label != text:
            return label, text
    distinct = [len({r[c] for r in rows}) for c in range(width)]
    length = [sum(len(r[c]) for r in rows) / max(1, len(rows)) for c in range(width)]
    label = min(range(width), key=lambda c: (distinct[c], c))
    text = max((c for c in range(width) if c != label), key=lambda c: length[c])
    return label, text


def load_text_data(path: str | Path, *, seed: int = 0, group_by: str | None = None,
                   label_column: str | None = None, text_column: str | None = None,
                   **_: Any) -> TaskData:
    """A TSV/CSV with a label and a text column → :class:`TaskData`. Item ids are the line
    numbers the rows start on. Every skipped row is reported by line number, and a file that
    loses half of its rows is refused; exact duplicate texts are removed before splitting (and
    reported), so a text can never be on both sides of the split."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise DataError(f"{file}: no such file; text data is a .tsv or .csv file")
    table = _read_rows(file, label_column, text_column)
    header, width = table.header, table.width
    if table.total < 2:
        raise DataError(f"{file}: {table.total} data row(s); expected a header (optional) and "
                        "labelled rows")
    label_at = _column(label_column, header, width, "label", file)
    text_at = _column(text_column, header, width, "text", file)
    guessed_label, guessed_text = _guess_columns([r.cells for r in table.rows], header, width)
    label_at = guessed_label if label_at is None else label_at
    text_at = guessed_text if text_at is None else text_at
    columns = {"label": header[label_at] if header else label_at,
               "text": header[text_at] if header else text_at}
    texts: dict[str, str] = {}
    labels_of: dict[str, str] = {}
    first_line: dict[str, str] = {}
    duplicates = conflicts = 0
    for row in table.rows:
        text, label = row.cells[text_at].strip(), row.cells[label_at].strip()
        if not label or not text:
            table.skip(f"with an empty {'label' if not label else 'text'}", row.line)
            continue
        if text in first_line:
            duplicates += 1
            conflicts += labels_of[first_line[text]] != label
            continue
        first_line[text] = str(row.line)
        texts[str(row.line)] = text
        labels_of[str(row.line)] = label
    if table.kept * 2 < table.total:
        raise DataError(f"{file}: only {table.kept} of {table.total} rows could be used "
                        f"(label column {columns['label']!r}, text column {columns['text']!r}, "
                        f"{width} columns); skipped: {table.skipped_summary()}")
    warnings = [*table.notes]
    if table.skipped:
        warnings.append(f"{table.total - table.kept} of {table.total} rows skipped: "
                        f"{table.skipped_summary()}")
    if duplicates:
        warnings.append(f"{duplicates} exact duplicate text(s) removed before splitting"
                        + (f" ({conflicts} with a different label: the first row's label kept)"
                           if conflicts else ""))
    classes = sorted(set(labels_of.values()))
    counts = Counter(labels_of.values())
    if len(classes) < 2:
        found = f"only the label {classes[0]!r}" if classes else "no label"
        raise DataError(f"{file}: {len(labels_of)} usable row(s) with {found} in column "
                        f"{columns['label']!r}; a classifier needs at least 2 labels (use "
                        "--label-column to name the label column)")
    small = sorted(c for c, n in counts.items() if n < 2)
    if small:
        raise DataError(f"{file}: labels {small} have fewer than 2 rows; each label needs 2+")
    index = {c: i for i, c in enumerate(classes)}
    items = [(row_id, index[label]) for row_id, label in labels_of.items()]
    train, val, groups, note = split_items(items, seed=seed, group_by=group_by,
                                           group_key=lambda item: texts[item], labels=classes)
    return TaskData(task=TASK, root=file, labels=classes, train=train, val=val, split_note=note,
                    groups=groups, texts=texts, warnings=warnings,
                    extra={"duplicates_removed": duplicates, "duplicate_label_conflicts": conflicts,
                           "columns": columns, "class_counts": dict(counts),
                           "rows": {"total": table.total, "kept": table.kept},
                           "skipped": sorted((f"line {n} {reason}" for reason, lines
                                              in table.skipped.items() for n in lines),
                                             key=lambda s: int(s.split()[1]))})
