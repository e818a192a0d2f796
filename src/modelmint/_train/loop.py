"""Two-stage transfer learning on cached activations, with a deadline and checkpoints.

Stage ``head``: the tail is frozen, so the pooled features are computed once and only the new
linear head trains (milliseconds an epoch; strong on a few hundred images). Stage ``finetune``:
the tail blocks train too (BatchNorm statistics stay frozen: batches of 32 from a few hundred
images would only add noise), at a lower learning rate, while the budget allows. Early stopping
watches the validation loss; the best weights of either stage are what gets published.

After every epoch the whole state goes to ``checkpoint.pt`` (written to a temp file, then
renamed), so Ctrl-C or a crash loses at most the epoch in flight.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .._profile.trace import StepTracer
from . import tensorfile
from .backbone import Classifier
from .cache import ActivationCache
from .tensorfile import flatten_state, unflatten_state

CHECKPOINT = "checkpoint.pt"
# Head epochs take milliseconds and a checkpoint ~0.1 s: checkpoint those at most this often.
HEAD_CHECKPOINT_SECONDS = 5.0


@dataclass
class Hyper:
    batch_size: int = 32
    head_lr: float = 1e-3
    head_max_epochs: int = 60
    head_patience: int = 8
    finetune_lr: float = 3e-5
    finetune_max_epochs: int = 30
    finetune_patience: int = 3
    weight_decay: float = 1e-4
    min_improvement: float = 1e-4


@dataclass
class LoopState:
    stage: str = "head"  # head | finetune | done
    head_epochs: int = 0
    finetune_epochs: int = 0
    best_val_loss: float = float("inf")
    best_from: str = ""
    patience_left: int = -1
    stop_reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return self.head_epochs + self.finetune_epochs


class Reporter(Protocol):
    def stage(self, name: str, total_epochs: int) -> None: ...
    def epoch(self, record: dict[str, Any], seconds_left: float | None) -> None: ...


class _Deadline(Exception):
    """Raised inside an epoch when the next batch would overrun the budget."""


class Trainer:
    def __init__(self, model: Classifier, cache: ActivationCache, hyper: Hyper, run_dir: Path,
                 seed: int, finetune_epochs: int | None, deadline: float | None,
                 reporter: Reporter) -> None:
        self.model, self.cache, self.hyper, self.run_dir = model, cache, hyper, run_dir
        self.seed, self.fixed_epochs, self.deadline = seed, finetune_epochs, deadline
        self.reporter = reporter
        self.state = LoopState()
        self.best: dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer: torch.optim.Optimizer | None = None
        self._epoch_seconds: float | None = None
        self._last_save = time.monotonic()
        self.tracer = StepTracer()  # always-on step trace; with --profile run.py sets a run_dir

    # -- checkpoints -----------------------------------------------------------------------
    def save(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"best.{k}": v for k, v in self.best.items()})
        tensors["rng.generator"] = self.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        optimizer: Any = None
        if self.optimizer is not None:
            opt_tensors, optimizer = flatten_state("optimizer", self.optimizer.state_dict())
            tensors.update(opt_tensors)
        tensorfile.save(self.run_dir / CHECKPOINT, tensors,
                        {"state": asdict(self.state), "optimizer": optimizer})
        self._last_save = time.monotonic()

    def restore(self) -> None:
        tensors, meta = tensorfile.load(self.run_dir / CHECKPOINT)
        self.state = LoopState(**meta["state"])
        self.model.load_state_dict(_prefixed(tensors, "model."))
        self.best = _prefixed(tensors, "best.")
        self.generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        if self.state.stage != "done":
            self.optimizer = self._make_optimizer(self.state.stage)
            if meta["optimizer"] is not None:
                self.optimizer.load_state_dict(unflatten_state(meta["optimizer"], tensors))

    # -- stages ----------------------------------------------------------------------------
    def _make_optimizer(self, stage: str) -> torch.optim.Optimizer:
        h = self.hyper
        if stage == "head":
            params, lr = list(self.model.head.parameters()), h.head_lr
        else:
            params, lr = [*self.model.tail.parameters(), *self.model.head.parameters()], \
                h.finetune_lr
        return torch.optim.AdamW(params, lr=lr, weight_decay=h.weight_decay)

    def run(self) -> LoopState:
        """Train until both stages stop; resumable from the last checkpoint."""
        if self.state.stage == "head":
            self._run_stage("head")
            if self.state.stage == "head":  # not interrupted by the deadline
                self._enter("finetune")
        if self.state.stage == "finetune":
            self._run_stage("finetune")
        self.state.stage = "done"
        self.model.load_state_dict(self.best)
        self.save()
        return self.state

    def _enter(self, stage: str) -> None:
        self.model.load_state_dict(self.best)  # fine-tune from the best head, not the last
        self.state.stage = stage
        self.state.patience_left = -1
        self.optimizer = None
        self.save()

    def _run_stage(self, stage: str) -> None:
        h = self.hyper
        head = stage == "head"
        max_epochs = h.head_max_epochs if head else (
            self.fixed_epochs if self.fixed_epochs is not None else h.finetune_max_epochs)
        patience = h.head_patience if head else h.finetune_patience
        early_stop = head or self.fixed_epochs is None
        if self.optimizer is None:
            self.optimizer = self._make_optimizer(stage)
        if self.state.patience_left < 0:
            self.state.patience_left = patience
        self.reporter.stage(stage, max_epochs)
        features = self._pooled() if head else None
        while True:
            done = self.state.head_epochs if head else self.state.finetune_epochs
            if done >= max_epochs:
                self.state.stop_reason = f"{stage}: {max_epochs} epochs"
                break
            if early_stop and self.state.patience_left == 0:
                self.state.stop_reason = f"{stage}: early stop (val loss flat {patience} epochs)"
                break
            # Head epochs take milliseconds on pooled features: they always run to their own
            # early stop, so even a budget spent on the cache yields a trained head.
            if not head and not self._epoch_fits():
                self.state.stop_reason = "budget reached"
                break
            started = time.monotonic()
            try:
                train_loss = self._epoch(stage, features)
            except _Deadline:
                self.state.stop_reason = "budget reached"
                break
            self._epoch_seconds = time.monotonic() - started
            self._after_epoch(stage, train_loss, features)

    def _epoch_fits(self) -> bool:
        if self.deadline is None or self.fixed_epochs is not None:
            return True
        estimate = self._epoch_seconds or 0.0
        return time.monotonic() + estimate < self.deadline

    def _pooled(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        with torch.inference_mode():
            chunks = [self.model.pooled(self.cache.train_x[i:i + 256])
                      for i in range(0, len(self.cache.train_x), 256)]
            val = [self.model.pooled(self.cache.val_x[i:i + 256])
                   for i in range(0, len(self.cache.val_x), 256)]
        return torch.cat(chunks), torch.cat(val)

    def _set_train_mode(self, stage: str) -> None:
        self.model.eval()  # BatchNorm statistics stay frozen in both stages
        self.model.head.train()
        if stage == "finetune":
            for module in self.model.tail.modules():
                if not isinstance(module, nn.BatchNorm2d):
                    module.train()

    def _epoch(self, stage: str, features: tuple[torch.Tensor, torch.Tensor] | None) -> float:
        assert self.optimizer is not None
        x = features[0] if features is not None else self.cache.train_x
        y = self.cache.train_y
        order = torch.randperm(len(y), generator=self.generator)
        self._set_train_mode(stage)
        total, seen = 0.0, 0
        bs = self.hyper.batch_size
        tracer = self.tracer  # gathering a batch from the cache is this loop's data wait
        batches = ((order[i:i + bs], x[order[i:i + bs]]) for i in range(0, len(order), bs))
        for idx, xb in tracer.loader(batches):
            if stage == "finetune" and self.fixed_epochs is None and self.deadline is not None \
                    and time.monotonic() > self.deadline:
                raise _Deadline
            with tracer.phase("compute"):
                logits = self.model.head(xb) if features is not None else \
                    self.model.from_activations(xb)
                loss = nn.functional.cross_entropy(logits, y[idx])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
            with tracer.phase("tail"):
                self.optimizer.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            tracer.end_step(samples=len(idx))
        return total / max(seen, 1)

    def validate(self, features: torch.Tensor | None = None) -> tuple[float, float, torch.Tensor]:
        self.model.eval()
        with torch.inference_mode():
            if features is not None:
                logits = self.model.head(features)
            else:
                logits = torch.cat([self.model.from_activations(self.cache.val_x[i:i + 128])
                                    for i in range(0, len(self.cache.val_x), 128)])
        y = self.cache.val_y
        loss = float(nn.functional.cross_entropy(logits, y))
        acc = float((logits.argmax(1) == y).float().mean())
        return loss, acc, logits

    def _after_epoch(self, stage: str, train_loss: float,
                     features: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        val_loss, val_acc, _ = self.validate(features[1] if features is not None else None)
        if stage == "head":
            self.state.head_epochs += 1
        else:
            self.state.finetune_epochs += 1
        epoch = self.state.head_epochs if stage == "head" else self.state.finetune_epochs
        improved = val_loss < self.state.best_val_loss - self.hyper.min_improvement
        if improved:
            self.state.best_val_loss = val_loss
            self.state.best_from = f"{stage} epoch {epoch}"
            # Only what this stage trains can have changed: copying the whole model every
            # improving head epoch (milliseconds of training) used to dominate the head stage.
            trained = self.model.head if stage == "head" else self.model
            prefix = "head." if stage == "head" else ""
            self.best.update({prefix + k: v.detach().clone()
                              for k, v in trained.state_dict().items()
                              if not (prefix + k).startswith("prefix.")})
            self.state.patience_left = (self.hyper.head_patience if stage == "head"
                                        else self.hyper.finetune_patience)
        else:
            self.state.patience_left -= 1
        record = {"stage": stage, "epoch": epoch, "train_loss": round(train_loss, 5),
                  "val_loss": round(val_loss, 5), "val_accuracy": round(val_acc, 5),
                  "seconds": round(self._epoch_seconds or 0.0, 3), "best": bool(improved)}
        self.state.history.append(record)
        if stage == "finetune" or time.monotonic() - self._last_save > HEAD_CHECKPOINT_SECONDS:
            self.save()
        left = None if self.deadline is None else self.deadline - time.monotonic()
        self.reporter.epoch(record, left)


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
