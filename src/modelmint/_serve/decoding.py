"""The memory the server's image and sound decodes share, and the pool they run on.

Every decode first estimates, from the input's header alone, the memory it will need (see
``decode_bytes`` in :mod:`.._data.preprocess` and :mod:`.._data.audio`). One input that needs
more than the whole budget is refused before it is decoded; the others wait in arrival order
until their memory is free, so concurrent requests cannot multiply the peak. The pool is small
and fixed: a decode is CPU-bound and holds its picture in memory, so threads beyond a few only
multiply memory.
"""

from __future__ import annotations

import collections
import ctypes
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from .._settings import MIB

# After a decode this large, free memory goes back to the system at once: glibc keeps freed
# blocks in its arenas otherwise, and a burst of big images would leave the server's RSS high.
TRIM_AFTER_BYTES = 64 * MIB


class DecodeBudget:
    """``limit`` bytes shared by the decodes in flight, handed out first come, first served."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"decode memory budget must be positive, got {limit}")
        self._limit = limit
        self._used = 0
        self._waiting: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def used(self) -> int:
        """Bytes reserved right now."""
        return self._used

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Wait until ``nbytes`` fit beside the decodes in flight (the caller has refused
        anything above ``limit``), hold them for the block, then release them."""
        nbytes = max(0, min(nbytes, self._limit))
        turn = object()
        with self._changed:
            self._waiting.append(turn)
            # In order: a big decode is not starved by a stream of small ones behind it.
            while self._waiting[0] is not turn or self._used + nbytes > self._limit:
                self._changed.wait()
            self._waiting.popleft()
            self._used += nbytes
            self._changed.notify_all()  # the next in line may fit as well
        try:
            yield
        finally:
            with self._changed:
                self._used -= nbytes
                self._changed.notify_all()
            if nbytes >= TRIM_AFTER_BYTES:
                release_free_memory()


def started_pool(threads: int, name: str) -> ThreadPoolExecutor:
    """A pool with all its ``threads`` running from the start. ThreadPoolExecutor starts its
    threads one busy moment at a time, so a server's thread count would keep creeping up to
    its bound through a long run; started at once, it is flat from the first request."""
    if threads < 1:
        raise ValueError(f"{name} threads must be at least 1, got {threads}")
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"modelmint-{name}")
    # Each task holds its thread until all are running, so each submit starts a new one.
    barrier = threading.Barrier(threads)
    for done in [pool.submit(barrier.wait) for _ in range(threads)]:
        done.result()
    return pool


def decode_pool(threads: int) -> ThreadPoolExecutor:
    """The threads that validate, decode and preprocess requests."""
    return started_pool(threads, "decode")


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        process = ctypes.CDLL(None)  # the symbols already loaded: libc's among them
    except OSError:
        return None
    trim: Callable[[int], int] | None = getattr(process, "malloc_trim", None)  # glibc only
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Return the allocator's free pages to the system (glibc; elsewhere nothing to do)."""
    if _TRIM is not None:
        _TRIM(0)
