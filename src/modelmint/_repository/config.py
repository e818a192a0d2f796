"""``REPO/<model>/config.json``: how a model is served (all fields optional)::

    {
      "version_policy": {"latest": 1} | {"all": {}} | {"specific": [1, 3]},
      "dynamic_batching": {"max_batch_size": 8, "max_queue_delay_us": 0,
                           "preferred_batch_sizes": [4, 8], "max_queue_size": 64,
                           "default_timeout_us": 0},
      "instances": 1
    }

No ``dynamic_batching`` key means requests run one by one as they come (on this 2-core CPU a
batch of 8 is only ~1.2x more efficient per image than batch 1, so batching is opt-in: it is
for GPUs and bursts and must never add latency at low load).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RepositoryError

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    latest: int = 1
    specific: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions (ascending) this policy serves out of those on disk."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.specific]
        return ordered[-self.latest:]

    def describe(self) -> str:
        if self.kind == "specific":
            return f"specific {list(self.specific)}"
        return "all" if self.kind == "all" else f"latest {self.latest}"


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 8  # images per model execution
    max_queue_delay_us: int = 0  # how long a request may wait for others to batch with
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 64  # requests waiting; beyond it: 503 + Retry-After / UNAVAILABLE
    default_timeout_us: int = 0  # 0 = no server-side default timeout


@dataclass(frozen=True)
class ModelConfig:
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    dynamic_batching: BatchingConfig | None = None
    instances: int = 1

    @classmethod
    def load(cls, model_dir: Path) -> ModelConfig:
        path = model_dir / CONFIG_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RepositoryError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_json(data, str(path))

    @classmethod
    def from_json(cls, data: Any, where: str = CONFIG_FILE) -> ModelConfig:
        if not isinstance(data, dict):
            raise RepositoryError(f"{where}: expected a JSON object")
        unknown = set(data) - {"version_policy", "dynamic_batching", "instances"}
        if unknown:
            raise RepositoryError(f"{where}: unknown field(s) {sorted(unknown)}; expected "
                                  "version_policy, dynamic_batching, instances")
        batching = data.get("dynamic_batching")
        return cls(
            version_policy=_policy(data.get("version_policy", {"latest": 1}), where),
            dynamic_batching=None if batching is None else _batching(batching, where),
            instances=_positive(data.get("instances", 1), f"{where}: field 'instances'"),
        )


def _positive(value: Any, what: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise RepositoryError(f"{what} is {value!r}; expected an integer >= {minimum}")
    return value


def _policy(data: Any, where: str) -> VersionPolicy:
    what = f"{where}: field 'version_policy'"
    if not isinstance(data, dict) or len(data) != 1:
        raise RepositoryError(f"{what} is {data!r}; expected one of {{\"latest\": N}}, "
                              "{\"all\": {}}, {\"specific\": [versions]}")
    (kind, value), = data.items()
    if kind == "latest":
        n = value.get("num_versions", 1) if isinstance(value, dict) else value
        return VersionPolicy("latest", latest=_positive(n, f"{what}.latest"))
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        versions = value.get("versions", []) if isinstance(value, dict) else value
        if not isinstance(versions, list) or not versions:
            raise RepositoryError(f"{what}.specific is {versions!r}; expected a non-empty list")
        return VersionPolicy("specific", specific=tuple(
            _positive(v, f"{what}.specific[{i}]") for i, v in enumerate(versions)))
    raise RepositoryError(f"{what}: unknown policy {kind!r}; expected latest, all or specific")


def _batching(data: Any, where: str) -> BatchingConfig:
    what = f"{where}: field 'dynamic_batching'"
    if not isinstance(data, dict):
        raise RepositoryError(f"{what} is {data!r}; expected an object")
    known = BatchingConfig.__dataclass_fields__
    unknown = set(data) - set(known)
    if unknown:
        raise RepositoryError(f"{what}: unknown field(s) {sorted(unknown)}; expected "
                              f"{sorted(known)}")
    defaults = BatchingConfig()
    max_batch = _positive(data.get("max_batch_size", defaults.max_batch_size),
                          f"{what}.max_batch_size")
    preferred = data.get("preferred_batch_sizes", [])
    if not isinstance(preferred, list):
        raise RepositoryError(f"{what}.preferred_batch_sizes is {preferred!r}; expected a list")
    sizes = tuple(sorted(_positive(p, f"{what}.preferred_batch_sizes[{i}]")
                         for i, p in enumerate(preferred)))
    if sizes and sizes[-1] > max_batch:
        raise RepositoryError(f"{what}.preferred_batch_sizes {list(sizes)} exceed "
                              f"max_batch_size {max_batch}")
    return BatchingConfig(
        max_batch_size=max_batch,
        max_queue_delay_us=_positive(data.get("max_queue_delay_us", 0),
                                     f"{what}.max_queue_delay_us", 0),
        preferred_batch_sizes=sizes,
        max_queue_size=_positive(data.get("max_queue_size", defaults.max_queue_size),
                                 f"{what}.max_queue_size"),
        default_timeout_us=_positive(data.get("default_timeout_us", 0),
                                     f"{what}.default_timeout_us", 0),
    )
