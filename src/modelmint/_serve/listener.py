"""Closing a listening socket without resetting connections the kernel already accepted.

The kernel completes TCP handshakes on its own and queues the connections until the server
calls ``accept()``. Closing the listening socket resets every connection still in that queue:
their clients connected, sent a request, and get "connection reset by peer", although they were
never refused. On shutdown the server therefore first refuses *new* connections (a socket
filter drops incoming SYNs, so a client retries its SYN and then meets the closed port: a plain
"connection refused" that a client or balancer retries elsewhere), lets the event loop accept
what is queued, and only then closes the socket.

Linux only (a classic BPF filter and ``TCP_INFO``'s accept-queue length); elsewhere the socket
is closed as before.
"""

from __future__ import annotations

import asyncio
import ctypes
import socket
import struct
import sys
import time

__all__ = ["accept_queue_length", "empty_accept_queue", "refuse_new_connections"]

_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
# struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}, applied to TCP segments from their TCP
# header on: drop a segment whose SYN flag is set (a new connection), keep every other one (the
# final ACKs of handshakes already under way, and data of connections already made).
_DROP_SYN = (
    (0x30, 0, 0, 13),          # ldb [13]          the flags byte
    (0x45, 0, 1, 0x02),        # jset #SYN         true: next; false: skip one
    (0x06, 0, 0, 0),           # ret #0            drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1           keep all of it
)
# struct tcp_info: a listening socket reports its accept-queue length in tcpi_unacked.
_TCPI_UNACKED_OFFSET = 24
# A handshake already under way completes within a round trip; once the queue is empty, it is
# watched this long for such latecomers before the socket is closed.
_SETTLE_S = 0.05


def refuse_new_connections(sock: socket.socket) -> bool:
    """Drop new connection attempts to listening ``sock`` from now on; False where the
    platform cannot (nothing changed)."""
    if sys.platform != "linux":
        return False
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in _DROP_SYN))
    fprog = struct.pack("HP", len(_DROP_SYN), ctypes.addressof(program))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True


def accept_queue_length(sock: socket.socket) -> int:
    """Connections the kernel completed on listening ``sock`` that nobody accepted yet."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, _TCPI_UNACKED_OFFSET)[0])


async def empty_accept_queue(sock: socket.socket, timeout_s: float = 1.0) -> None:
    """Refuse new connections on ``sock`` and wait (at most ``timeout_s``) until the event
    loop, still serving it, has accepted every connection already queued."""
    if not refuse_new_connections(sock):
        return
    deadline = time.monotonic() + timeout_s
    empty_since: float | None = None
    while (now := time.monotonic()) < deadline:
        if accept_queue_length(sock) > 0:
            empty_since = None
        elif empty_since is None:
            empty_since = now
        elif now - empty_since >= _SETTLE_S:
            return
        await asyncio.sleep(0.005)
