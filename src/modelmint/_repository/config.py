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

The models below are the schema: pydantic validates the file against them and every error
becomes a :class:`RepositoryError` naming the file, the field and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from ..errors import RepositoryError

CONFIG_FILE = "config.json"

_SCHEMA = ConfigDict(frozen=True, extra="forbid")
PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
_POLICY_FORMS = '{"latest": N}, {"all": {}} or {"specific": [versions]}'


class VersionPolicy(BaseModel):
    """Which versions on disk are served: exactly one of ``latest``, ``all``, ``specific``
    (Triton's object forms ``{"num_versions": N}`` and ``{"versions": [...]}`` work too)."""

    model_config = _SCHEMA

    latest: PositiveInt | None = None
    all_versions: Any = Field(default=None, alias="all")
    specific: tuple[PositiveInt, ...] | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _unwrap_object_forms(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if isinstance(data.get("latest"), dict):
                data["latest"] = data["latest"].get("num_versions", 1)
            if isinstance(data.get("specific"), dict):
                data["specific"] = data["specific"].get("versions", [])
        return data

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> VersionPolicy:
        given = self.model_fields_set
        if (len(given) != 1 or (given == {"latest"} and self.latest is None)
                or (given == {"specific"} and self.specific is None)):
            raise ValueError(f"expected one of {_POLICY_FORMS}")
        return self

    @property
    def kind(self) -> str:
        given = self.model_fields_set
        if "specific" in given:
            return "specific"
        return "all" if "all_versions" in given else "latest"

    def select(self, available: list[int]) -> list[int]:
        """The versions (ascending) this policy serves out of those on disk."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in (self.specific or ())]
        return ordered[-(self.latest or 1):]

    def describe(self) -> str:
        if self.kind == "specific":
            return f"specific {list(self.specific or ())}"
        return "all" if self.kind == "all" else f"latest {self.latest}"


class BatchingConfig(BaseModel):
    model_config = _SCHEMA

    max_batch_size: PositiveInt = 8  # images per model execution
    max_queue_delay_us: NonNegativeInt = 0  # how long a request may wait for others
    preferred_batch_sizes: tuple[PositiveInt, ...] = ()
    max_queue_size: PositiveInt = 64  # requests waiting; beyond: 503 + Retry-After / UNAVAILABLE
    default_timeout_us: NonNegativeInt = 0  # 0 = no server-side default timeout

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _ascending(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted(sizes))

    @model_validator(mode="after")
    def _preferred_fit(self) -> BatchingConfig:
        if self.preferred_batch_sizes and self.preferred_batch_sizes[-1] > self.max_batch_size:
            raise ValueError("expected every preferred_batch_sizes entry <= max_batch_size "
                             f"{self.max_batch_size}")
        return self


class ModelConfig(BaseModel):
    model_config = _SCHEMA

    version_policy: VersionPolicy = Field(default_factory=lambda: VersionPolicy(latest=1))
    dynamic_batching: BatchingConfig | None = None
    # Worker processes per served version (the server's process isolation): requests spread
    # across them, and while one restarts after a crash the others answer. Read when a
    # version loads.
    instances: PositiveInt = 1

    @classmethod
    def load(cls, model_dir: Path) -> ModelConfig:
        path = model_dir / CONFIG_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RepositoryError(f"{path}: not valid JSON ({exc})") from exc
        except UnicodeDecodeError as exc:
            raise RepositoryError(f"{path}: not UTF-8 text ({exc.reason})") from exc
        except OSError as exc:  # unreadable, or a folder of that name
            raise RepositoryError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        return cls.from_json(data, str(path))

    @classmethod
    def from_json(cls, data: Any, where: str = CONFIG_FILE) -> ModelConfig:
        if not isinstance(data, dict):
            raise RepositoryError(f"{where}: expected a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(_describe(error) for error in exc.errors())
            raise RepositoryError(f"{where}: {problems}") from None


# The fields each object of the file may hold, by its path ("" is the file itself).
_FIELDS_AT: dict[str, list[str]] = {
    "": list(ModelConfig.model_fields),
    "version_policy": ["latest", "all", "specific"],
    "dynamic_batching": list(BatchingConfig.model_fields),
}

_EXPECTED_BY_TYPE = {
    "int_type": "an integer", "list_type": "a list", "tuple_type": "a list",
    "model_type": "an object", "model_attributes_type": "an object", "dict_type": "an object",
    "too_short": "a non-empty list",
}


def _describe(error: ErrorDetails) -> str:
    """One pydantic error as the person who wrote config.json needs it."""
    path = _path(error["loc"])
    parent, _, last = path.rpartition(".")
    ctx = error.get("ctx", {})
    if error["type"] == "extra_forbidden":
        known = _FIELDS_AT.get(parent, [])
        return f"unknown field '{path}'; expected one of {', '.join(known)}"
    if error["type"] == "value_error":
        return f"field '{path or last}' is {error['input']!r}; {ctx['error']}"
    if error["type"] == "greater_than_equal":
        expected = f"an integer >= {ctx['ge']}"
    elif path == "version_policy":
        expected = f"one of {_POLICY_FORMS}"
    else:
        expected = _EXPECTED_BY_TYPE.get(error["type"], error["msg"].lower())
    return f"field '{path}' is {error['input']!r}; expected {expected}"


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{'all' if part == 'all_versions' else part}" if text else str(part)
    return text
