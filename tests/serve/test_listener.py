"""Shutting a listener down: connections the kernel accepted are served, new ones refused."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from modelmint._serve.listener import (
    accept_queue_length,
    empty_accept_queue,
    refuse_new_connections,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux socket filter")


def _listener() -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, sock.getsockname()[1]


def test_queued_connections_stay_and_new_ones_are_not_made() -> None:
    sock, port = _listener()
    with sock, socket.create_connection(("127.0.0.1", port)) as queued:
        queued.sendall(b"request")
        assert refuse_new_connections(sock)
        with pytest.raises(TimeoutError):  # the SYN is dropped: no connection is made
            socket.create_connection(("127.0.0.1", port), timeout=0.3)
        assert accept_queue_length(sock) == 1
        accepted, _ = sock.accept()
        with accepted:
            assert accepted.recv(16) == b"request"
        assert accept_queue_length(sock) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=0.3)


def test_the_loop_accepts_every_queued_connection_before_it_returns() -> None:
    async def scenario() -> list[bytes]:
        sock, port = _listener()
        received: list[bytes] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.append(await reader.read(16))
            writer.close()

        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        for i, client in enumerate(clients):
            client.sendall(b"request %d" % i)
        # The clients connected before the server started accepting: all five are queued.
        assert accept_queue_length(sock) == 5
        server = await asyncio.start_server(handle, sock=sock)
        await empty_accept_queue(sock)
        assert accept_queue_length(sock) == 0
        server.close()
        await server.wait_closed()
        for client in clients:
            client.close()
        return received

    assert sorted(asyncio.run(scenario())) == [b"request %d" % i for i in range(5)]
