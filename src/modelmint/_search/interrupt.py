"""Ctrl-C stops a search at once, but never in the middle of a database call.

A ``KeyboardInterrupt`` raised inside an SQLAlchemy commit leaves the session's transaction
open (Optuna rolls back only on SQLAlchemy's own errors), so SQLite stays locked: the trial's
heartbeat thread and Optuna's own "the trial failed" record then fail with "database is
locked", and Optuna gives up on the trial with an ``AssertionError`` instead of the interrupt.
So while the search runs, SIGINT looks at where the main thread is: inside the study's storage
it is asked again a moment later, anywhere else it does what it did before (Python's own
handler: ``KeyboardInterrupt``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

# The modules that run a database call: the interrupt waits until none is on the stack.
STORAGE_MODULES = ("optuna.storages", "sqlalchemy", "sqlite3", "psycopg")
RETRY_SECONDS = 0.02


def in_storage_call(frame: FrameType | None) -> bool:
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(STORAGE_MODULES):
            return True
        frame = frame.f_back
    return False


class _Handler:
    def __init__(self, previous: Any) -> None:
        self.previous = previous  # what SIGINT did before: it still decides what happens
        self.pending = False
        self.active = True
        self.lock = threading.Lock()

    def deliver(self, signum: int, frame: FrameType | None) -> Any:
        self.pending = False
        if callable(self.previous):  # Python's own handler raises KeyboardInterrupt
            return self.previous(signum, frame)
        if self.previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    def _retry(self, signum: int) -> None:
        with self.lock:
            if self.active:  # else the block has ended and delivers what is owed itself
                # A real signal, so that a sleep or a blocking read in the main thread ends too.
                signal.pthread_kill(threading.main_thread().ident or 0, signum)

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        if in_storage_call(frame):
            self.pending = True
            retry = threading.Timer(RETRY_SECONDS, self._retry, (signum,))
            retry.daemon = True
            retry.start()
            return None
        return self.deliver(signum, frame)


@contextmanager
def interrupt_outside_storage() -> Iterator[None]:
    """While active, SIGINT waits for the main thread to leave a database call, then does what
    it did before."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set a signal handler
        return
    handler = _Handler(signal.getsignal(signal.SIGINT))
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        with handler.lock:
            handler.active = False
        signal.signal(signal.SIGINT, handler.previous if handler.previous is not None
                      else signal.SIG_DFL)
    if handler.pending:  # the search ended in a database call: the interrupt is still owed
        handler.deliver(signal.SIGINT, None)
