"""The listening socket `slm-server serve` binds itself (server/cli: `_DrainingServer._listener`)."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import uvicorn

from server.cli import _DrainingServer
from server.config import Settings


def test_its_connections_send_without_delay():
    """TCP_NODELAY on every accepted connection, as asyncio sets it on sockets it knows are TCP: without it a
    response written in pieces waits for the client's delayed ACK on a kept-alive connection."""
    settings = Settings()
    app = SimpleNamespace(state=SimpleNamespace(settings=settings))
    server = _DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=0), app)
    listener = server._listener()

    async def nodelay_of_an_accepted_connection() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        tcp = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        try:
            _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            value = await asyncio.wait_for(accepted, 10)
            writer.close()
            return value
        finally:
            tcp.close()

    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= settings.socket_send_buffer_bytes
    assert asyncio.run(nodelay_of_an_accepted_connection()) != 0
