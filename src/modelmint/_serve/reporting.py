"""What the lifecycle tells the operator without being asked twice: log messages that repeat
on every poll are logged once, and the repository index's entries come in a stable order."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .._repository import version_number

IGNORED = "IGNORED"  # in the index only: an entry of a model folder that is not a version


class LogOnce:
    """Logs each message under a key once, for as long as the key keeps reporting it; a message
    that stops and later comes back is logged again."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self.logger, self.level = logger, level
        self._seen: dict[str, frozenset[str]] = {}

    def __call__(self, key: str, messages: Iterable[str],
                 exc_info: BaseException | None = None) -> None:
        now = frozenset(messages)
        for message in sorted(now - self._seen.get(key, frozenset())):
            self.logger.log(self.level, message, exc_info=exc_info)
        self._seen[key] = now  # one assignment: the poll thread and index() may both report


def index_entry(model: str, version: str, state: str, reason: str) -> dict[str, str]:
    return {"name": model, "version": version, "state": state, "reason": reason}


def index_order(entry: dict[str, str]) -> tuple[str, int, int, str]:
    """By model: its own problems first (no version), then versions by number, then the
    entries of its folder that are not versions, by name."""
    number = version_number(entry["version"])
    group = 0 if not entry["version"] else 1 if number is not None else 2
    return entry["name"], group, number or 0, entry["version"]
