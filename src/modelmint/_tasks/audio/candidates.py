"""Sound candidates on log-mel spectrograms (:mod:`modelmint._data.audio` computes them once per
item; every candidate and trial shares them):

* ``logmel-stats+lr`` (baseline): per-band mean and standard deviation over time, standardised,
  then scikit-learn's logistic regression. The statistics are computed inside the exported graph,
  so the server sends the same log-mel input to every sound model.
* ``logmel-cnn`` (searched): a small CNN trained from scratch on the spectrograms with
  SpecAugment (time/frequency masks), random time shifts and small mel-band shifts (a cheap
  stand-in for pitch differences between speakers). An ImageNet backbone on 3-channel log-mel
  images was the alternative; at 64x101 inputs a 4-block CNN trains an epoch of 2,400 clips in a
  few seconds on 2 cores, which leaves room for many epochs within a 300 s budget.

:mod:`.segments` adds ``logmel-segments+lr`` (baseline) and
``logmel-segments+mlp`` (searched): MFCCs of the active frames averaged over 5 segments, which
carry over to new speakers far better than whole-clip statistics or this CNN.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from ..._data.audio import AudioSpec, feature_matrix
from ..._data.dataset import TaskData
from ..contract import Trial
from ..export import export_checked, linear_from_sklearn

TASK = "audio-classification"
SPEC = AudioSpec()
# Seconds per clip (measured on an idle 2-core machine): log-mel extraction, one CNN epoch.
FEATURE_SECONDS_PER_CLIP = 0.002
CNN_SECONDS_PER_CLIP_EPOCH = {16: 0.0015, 32: 0.004}
# Floor of the standardisation scales (log-mel units). Bands the training audio never reaches
# (above 4 kHz in 8 kHz recordings) sit at the log floor with ~0 spread; dividing by that
# spread turned a 16 kHz client's faint resampler residue there into huge inputs.
MIN_SCALE = 0.1


def _arrays(data: TaskData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x_train = feature_matrix(data, data.train, SPEC)
    x_val = feature_matrix(data, data.val, SPEC)
    y_train = np.array([y for _, y in data.train], np.int64)
    y_val = np.array([y for _, y in data.val], np.int64)
    return x_train, y_train, x_val, y_val


def _features_cached(data: TaskData) -> bool:
    return any(key.startswith("audio-features:") for key in data.extra)


@dataclass
class AudioFitted:
    architecture: str
    preprocessing: dict[str, Any]
    params: dict[str, Any]
    model: nn.Module
    probabilities: np.ndarray
    warmup: list[bytes]
    sample: np.ndarray  # a few val log-mels, to check the ONNX graph against torch
    stop_reason: str = ""

    def val_predictions(self) -> np.ndarray:
        return self.probabilities

    def export(self, directory: Path) -> None:
        export_checked(self.model, directory, self.sample, self.architecture)

    def warmup_payloads(self) -> list[bytes]:
        return self.warmup


def _fitted(data: TaskData, architecture: str, params: dict[str, Any], model: nn.Module,
            x_val: np.ndarray, stop_reason: str = "") -> AudioFitted:
    model = model.eval()
    with torch.inference_mode():
        probs = torch.softmax(model(torch.from_numpy(x_val)), 1).numpy()
    warmup = [data.path(item).read_bytes() for item, _ in data.val[:3]]
    return AudioFitted(architecture, SPEC.to_json(), params, model, probs, warmup,
                       np.ascontiguousarray(x_val[:4]), stop_reason)


# --- log-mel statistics + logistic regression ----------------------------------------------

class LogmelStats(nn.Module):
    """[N, 1, mels, frames] → per-band mean and std over time → standardised → linear."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, mean: np.ndarray, scale: np.ndarray, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
        self.register_buffer("scale", torch.from_numpy(scale.astype(np.float32)))
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = x.flatten(1, 2)
        mu = bands.mean(-1)
        sd = ((bands - mu.unsqueeze(-1)) ** 2).mean(-1).sqrt()
        stats = torch.cat([mu, sd], 1)
        out: torch.Tensor = self.linear((stats - self.mean) / self.scale)
        return out


def logmel_stats(x: np.ndarray) -> np.ndarray:
    bands = x.reshape(len(x), x.shape[2], x.shape[3]).astype(np.float64)
    return np.concatenate([bands.mean(-1), bands.std(-1)], 1)


class LogmelStatsCandidate:
    name = "logmel-stats+lr"
    task = TASK
    kind = "baseline"

    def estimate_seconds(self, data: TaskData) -> float:
        n = len(data.train) + len(data.val)
        return (0.0 if _features_cached(data) else FEATURE_SECONDS_PER_CLIP * n) + 3.0

    def fit(self, data: TaskData, trial: Trial | None, deadline: float,
            workdir: Path) -> AudioFitted:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
        from threadpoolctl import threadpool_limits

        x_train, y_train, x_val, _ = _arrays(data)
        params = {"C": 1.0}
        # One BLAS thread: at these sizes more threads only thrash on a shared 2-core machine.
        with threadpool_limits(1):
            scaler = StandardScaler().fit(logmel_stats(x_train))
            lr = LogisticRegression(C=params["C"], max_iter=2000).fit(
                scaler.transform(logmel_stats(x_train)), y_train)
        linear = linear_from_sklearn(lr.coef_, lr.intercept_, len(data.labels))
        model = LogmelStats(scaler.mean_, np.maximum(scaler.scale_, MIN_SCALE), linear)
        return _fitted(data, self.name, params, model, x_val)


# --- a small CNN on the spectrogram --------------------------------------------------------

class SpectrogramCNN(nn.Module):
    """A strided 5x5 stem and three 3x3 conv blocks (BatchNorm, ReLU, max-pool), global average
    pooling, dropout, linear. Inputs are standardised per mel band with training statistics
    kept as buffers, so the exported graph takes the raw log-mel."""

    band_mean: torch.Tensor
    band_std: torch.Tensor

    def __init__(self, classes: int, band_mean: np.ndarray, band_std: np.ndarray,
                 width: int = 32, dropout: float = 0.3, cmn: bool = True) -> None:
        super().__init__()
        self.cmn = cmn
        self.register_buffer("band_mean", torch.from_numpy(band_mean.astype(np.float32)))
        self.register_buffer("band_std", torch.from_numpy(band_std.astype(np.float32)))
        channels = [1, width, 2 * width, 4 * width, 4 * width]
        # A strided 5x5 stem: full 64x101 resolution costs 4x the compute for no accuracy here.
        layers: list[nn.Module] = [
            nn.Conv2d(1, width, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        for i in range(1, 4):
            layers += [nn.Conv2d(channels[i], channels[i + 1], 3, padding=1, bias=False),
                       nn.BatchNorm2d(channels[i + 1]), nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels[-1], classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Cepstral-mean-style normalisation: each clip's own per-band mean over time is
        # removed, which takes out much of the speaker's and microphone's spectral colour.
        centre = x.mean(-1, keepdim=True) if self.cmn else self.band_mean
        out: torch.Tensor = self.head(self.features((x - centre) / self.band_std))
        return out


def spec_augment(x: torch.Tensor, generator: torch.Generator, strength: float,
                 fill: torch.Tensor) -> torch.Tensor:
    """SpecAugment-style masks (one frequency and one time band per clip, filled with ``fill``,
    the band means), a random time shift and a ±3 mel-band shift."""
    n, _, mels, frames = x.shape
    shift = int(torch.randint(-10, 11, (1,), generator=generator))
    band = int(torch.randint(-3, 4, (1,), generator=generator))
    x = torch.roll(x, shifts=(band, shift), dims=(2, 3))
    f_width = (torch.rand(n, generator=generator) * strength * mels * 0.15).long()
    f_start = (torch.rand(n, generator=generator) * (mels - f_width)).long()
    t_width = (torch.rand(n, generator=generator) * strength * frames * 0.15).long()
    t_start = (torch.rand(n, generator=generator) * (frames - t_width)).long()
    f = torch.arange(mels)[None, :]
    t = torch.arange(frames)[None, :]
    f_mask = (f >= f_start[:, None]) & (f < (f_start + f_width)[:, None])
    t_mask = (t >= t_start[:, None]) & (t < (t_start + t_width)[:, None])
    mask = f_mask[:, None, :, None] | t_mask[:, None, None, :]
    return torch.where(mask, fill, x)


def one_cycle(peak: float, progress: float) -> float:
    """One-cycle learning rate (linear warm-up over 30 %, cosine decay) at ``progress`` in
    [0, 1]. The trainer feeds it the larger of step and *time* progress, so a trial cut short
    by its deadline has still annealed (a fixed-step OneCycleLR stops at a high rate)."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < 0.3:
        return peak * (0.04 + 0.96 * progress / 0.3)
    return peak * (0.5 + 0.5 * math.cos(math.pi * (progress - 0.3) / 0.7)) + 1e-6


class SpectrogramCNNCandidate:
    name = "logmel-cnn"
    task = TASK
    kind = "finetune"

    def estimate_seconds(self, data: TaskData) -> float:
        n = len(data.train) + len(data.val)
        features = 0.0 if _features_cached(data) else FEATURE_SECONDS_PER_CLIP * n
        # The least worth running: 8 epochs of the narrow net.
        return features + 8 * CNN_SECONDS_PER_CLIP_EPOCH[16] * len(data.train) + 2.0

    def suggest(self, trial: Trial | None) -> dict[str, Any]:
        if trial is None:
            return {"lr": 3e-3, "epochs": 20, "width": 16, "batch_size": 64,
                    "augment": 1.0, "weight_decay": 1e-3, "cmn": True}
        return {
            "lr": trial.suggest_float("cnn.lr", 1e-3, 1e-2, log=True),
            "epochs": trial.suggest_int("cnn.epochs", 12, 40),
            "width": trial.suggest_categorical("cnn.width", [16, 32]),
            "batch_size": trial.suggest_categorical("cnn.batch_size", [32, 64]),
            "augment": trial.suggest_float("cnn.augment", 0.0, 1.5),
            "weight_decay": trial.suggest_float("cnn.weight_decay", 1e-4, 1e-2, log=True),
            "cmn": trial.suggest_categorical("cnn.cmn", [True, False]),
        }

    def fit(self, data: TaskData, trial: Trial | None, deadline: float,
            workdir: Path) -> AudioFitted:
        params = self.suggest(trial)
        x_train, y_train, x_val, y_val = _arrays(data)
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        band_mean = x_train.mean(axis=(0, 3), keepdims=True)[0]
        band_std = np.maximum(x_train.std(axis=(0, 3), keepdims=True)[0], MIN_SCALE)
        model = SpectrogramCNN(len(data.labels), band_mean, band_std, params["width"],
                               cmn=params["cmn"])
        xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
        xv = torch.from_numpy(x_val)
        fill = torch.from_numpy(band_mean.astype(np.float32))
        batch, epochs = params["batch_size"], params["epochs"]
        optimizer = torch.optim.AdamW(model.parameters(), one_cycle(params["lr"], 0.0),
                                      weight_decay=params["weight_decay"])
        steps, step = epochs * math.ceil(len(xt) / batch), 0
        began = time.monotonic()
        best_acc, best_state, epoch_s = -1.0, None, 0.0
        stop_reason, run = "all epochs", 0
        for epoch in range(epochs):
            if time.monotonic() + epoch_s > deadline:
                stop_reason = f"deadline after {epoch} of {epochs} epochs"
                break
            start = time.monotonic()
            model.train()
            order = torch.randperm(len(xt), generator=generator)
            for i in range(0, len(xt), batch):
                index = order[i:i + batch]
                inputs = spec_augment(xt[index], generator, params["augment"], fill)
                loss = nn.functional.cross_entropy(model(inputs), yt[index],
                                                   label_smoothing=0.1)
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                step += 1
                progress = max(step / steps, (time.monotonic() - began) /
                               max(deadline - began, 1e-3))
                for group in optimizer.param_groups:
                    group["lr"] = one_cycle(params["lr"], progress)
            model.eval()
            with torch.inference_mode():
                acc = float((model(xv).argmax(1).numpy() == y_val).mean())
            run = epoch + 1
            if acc >= best_acc:
                best_acc = acc
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            epoch_s = time.monotonic() - start
            if trial is not None:
                trial.report(acc, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(
                        f"pruned after epoch {epoch} (val accuracy {acc:.3f} below the median)")
        if best_state is not None:
            model.load_state_dict(best_state)
        return _fitted(data, self.name, {**params, "epochs_run": run}, model, x_val,
                       stop_reason)


def audio_candidates() -> list[Any]:
    return [LogmelStatsCandidate(), SpectrogramCNNCandidate()]
