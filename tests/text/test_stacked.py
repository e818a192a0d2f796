"""The stacked text model (TF-IDF + sentence embedding in one linear model): its one-row input
(``tfidf+wordpiece``), its ONNX graph against its parts, and the encoding that stops early when
it cannot finish in time. A stand-in encoder keeps these to a second or two (the real MiniLM
path is measured by ``benchmarks/search_quality.py --sets spam --budgets 120``)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from modelmint._data.text import TextEncoder, TextSpec, TfidfBlock
from modelmint._tasks.text.candidates import (
    SentenceEncoder,
    StackedClassifier,
    TextFitted,
    embed,
)

VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "win", "##ner", "a", "prize", "call", "now", "see",
         "you", "at", "home", "!", ",")
TEXTS = ["WINNER! Call now, a prize", "see you at home", "call me at home", "win a prize now",
         "Ünïcödé ok", ""]
MAX_LENGTH = 12


class TinyTransformer(nn.Module):
    """Stands in for BERT: token embeddings mixed by one layer, same call signature."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embeddings = nn.Embedding(len(VOCAB), 6)
        self.mix = nn.Linear(6, 6)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=torch.tanh(self.mix(self.embeddings(input_ids))))


def _spec() -> tuple[TextSpec, object]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(analyzer="word", sublinear_tf=True).fit(TEXTS)
    vocabulary = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.__getitem__)
    block = TfidfBlock("word", (1, 1), tuple(vocabulary), tuple(vectorizer.idf_.tolist()))
    spec = TextSpec(encoder="tfidf+wordpiece", blocks=(block,), wordpiece_vocab=VOCAB,
                    max_length=MAX_LENGTH)
    return TextSpec.from_json(spec.to_json()), vectorizer


def test_stacked_row_is_the_tfidf_features_then_the_wordpiece_block() -> None:
    spec, vectorizer = _spec()
    width = spec.tfidf_width
    assert spec.shape == [width + 2 * MAX_LENGTH]
    rows = TextEncoder(spec).encode_batch(TEXTS)
    tfidf = vectorizer.transform(TEXTS).toarray()  # type: ignore[attr-defined]
    np.testing.assert_allclose(rows[:, :width], tfidf, atol=1e-6)
    pieces = TextEncoder(TextSpec(encoder="wordpiece", wordpiece_vocab=VOCAB,
                                  max_length=MAX_LENGTH))
    np.testing.assert_array_equal(rows[:, width:].reshape(-1, 2, MAX_LENGTH),
                                  pieces.encode_batch(TEXTS))


def test_stacked_graph_served_from_a_string_matches_its_parts(tmp_path: Path) -> None:
    """What the server computes (spec encoder → ONNX) equals the linear model applied to the
    TF-IDF matrix and the embeddings computed apart, as in training."""
    spec, vectorizer = _spec()
    encoder = SentenceEncoder(TinyTransformer()).eval()
    head = nn.Linear(spec.tfidf_width + 6, 2)
    model = StackedClassifier(spec.tfidf_width, MAX_LENGTH, encoder, head).eval()
    tokens = TextEncoder(TextSpec(encoder="wordpiece", wordpiece_vocab=VOCAB,
                                  max_length=MAX_LENGTH)).encode_batch(TEXTS)
    embeddings = embed(encoder, tokens, time.monotonic() + 60)  # length-trimmed batches
    tfidf = vectorizer.transform(TEXTS).toarray()  # type: ignore[attr-defined]
    features = np.hstack([tfidf, embeddings])
    with torch.no_grad():
        reference = head(torch.from_numpy(features.astype(np.float32))).numpy()
    fitted = TextFitted("stacked", spec.to_json(), {}, model, np.zeros((len(TEXTS), 2)),
                        TEXTS, reference)
    fitted.export(tmp_path)  # raises when ONNX or the served features differ
    assert (tmp_path / "model.onnx").is_file()


class SlowEncoder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.02)
        return torch.zeros(len(x), 384)


def test_encoding_that_cannot_finish_stops_early_and_says_why() -> None:
    rows = np.zeros((40 * 8, 2, 16), np.float32)
    rows[:, 1, :4] = 1.0
    # 40 batches of 20 ms (~0.8 s) against 0.3 s: the projection stops it, not the deadline.
    with pytest.raises(optuna.TrialPruned, match=r"encoding does not fit: .* texts/s would need"):
        embed(SlowEncoder(), rows, time.monotonic() + 0.3, batch=8)
