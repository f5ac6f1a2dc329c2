"""The attach stream against a loopback websocket server speaking v4.channel.k8s.io like the API server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import kubernetes.client as kube
import pytest
import websockets.asyncio.server
import websockets.exceptions
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from runner.errors import FailedPrecondition
from runner.sandbox.kube_attach import KubeSandbox, open_attach
from runner.sandbox.kube_client import KubeApi


class FakeApiServer:
    """Accepts one attach; sends what a test queues, records what the client sent on stdin."""

    def __init__(self) -> None:
        self.outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.stdin = bytearray()
        self.requests: list[Request] = []
        self.refuse: int | None = None

    def check(self, connection: ServerConnection, request: Request) -> Response | None:
        self.requests.append(request)
        if self.refuse is not None:
            body = b'{"kind":"Status","message":"pods \\"p\\" is forbidden: User \\"x\\" cannot create resource ' \
                   b'\\"pods/attach\\" in API group \\"\\" in the namespace \\"ns\\""}'
            return Response(self.refuse, "Forbidden", Headers(), body)
        return None

    async def handle(self, connection: ServerConnection) -> None:
        for channel in (1, 2, 3):  # what the API server sends first: one empty message per channel
            await connection.send(bytes((channel,)))

        async def take_stdin() -> None:
            async for message in connection:
                assert isinstance(message, bytes) and message[0] == 0
                self.stdin += message[1:]

        taker = asyncio.create_task(take_stdin())
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            while (message := await self.outgoing.get()) is not None:
                await connection.send(message)
            await connection.send(b'\x03{"metadata":{},"status":"Success"}')
        taker.cancel()


@pytest.fixture
async def server() -> AsyncIterator[tuple[FakeApiServer, KubeApi]]:
    fake = FakeApiServer()
    async with websockets.asyncio.server.serve(fake.handle, "127.0.0.1", 0, subprotocols=["v4.channel.k8s.io"],
                                               process_request=fake.check) as listening:
        port = listening.sockets[0].getsockname()[1]
        config = kube.Configuration(host=f"http://127.0.0.1:{port}", api_key={"authorization": "tok"},
                                    api_key_prefix={"authorization": "Bearer"})
        yield fake, KubeApi(namespace="ns", host=config.host, timeout=5.0, configuration=config, core=None,
                            networking=None, node=None, custom=None, apis=None)
        await fake.outgoing.put(None)  # ends a stream the test left open, so the server can close


class Backend:
    """What the handle asks of its backend, as a stub."""

    def later(self, cleanup: Any) -> asyncio.Future[None]:
        return asyncio.ensure_future(cleanup)


async def handle(api: KubeApi, tail_bytes: int = 64) -> KubeSandbox:
    socket = await open_attach(api, "p", "sandbox")

    async def teardown() -> None:
        return None

    return KubeSandbox(Backend(), "p", socket, tail_bytes, "sha256:ab", teardown)  # type: ignore[arg-type]


async def test_stdout_stdin_and_the_end_of_the_stream(server: tuple[FakeApiServer, KubeApi]) -> None:
    fake, api = server
    sandbox = await handle(api)
    request = fake.requests[0]
    assert request.path == "/api/v1/namespaces/ns/pods/p/attach?container=sandbox&stdin=true&stdout=true&stderr" \
                           "=true&tty=false"
    assert request.headers["authorization"] == "Bearer tok"
    await sandbox.write_stdin(b"\n")
    await sandbox.write_stdin(b'{"id":1}\n')
    big = b"x" * (600 * 1024)
    await fake.outgoing.put(b"\x01" + b'{"type":"ready"}\n')
    await fake.outgoing.put(b"\x01" + big)
    assert await sandbox.read_stdout() == b'{"type":"ready"}\n'
    assert await sandbox.read_stdout() == big
    await sandbox.write_stdin(big)  # in pieces the API server takes
    async with asyncio.timeout(10):
        while len(fake.stdin) < 10 + len(big):
            await asyncio.sleep(0.01)
    assert fake.stdin == b'\n{"id":1}\n' + big
    await fake.outgoing.put(None)
    assert await sandbox.read_stdout() == b""


async def test_stderr_is_kept_as_a_bounded_tail_between_words(server: tuple[FakeApiServer, KubeApi]) -> None:
    fake, api = server
    sandbox = await handle(api, tail_bytes=16)
    await fake.outgoing.put(b"\x02first words here, then SECRETPART")
    await fake.outgoing.put(b"\x02REST and\x1b[31m the end\n")
    await fake.outgoing.put(b"\x01done")
    assert await sandbox.read_stdout() == b"done"
    tail = sandbox.stderr_tail()
    assert "REST" not in tail and "SECRET" not in tail and tail.endswith("the end") and len(tail) <= 16


async def test_destroyed_handles_refuse_input(server: tuple[FakeApiServer, KubeApi]) -> None:
    _, api = server
    sandbox = await handle(api)
    await sandbox.destroy()
    await sandbox.destroy()  # idempotent
    with pytest.raises(ConnectionError):
        await sandbox.write_stdin(b"x")
    assert await sandbox.read_stdout() == b""


async def test_a_refused_attach_names_the_missing_permission(server: tuple[FakeApiServer, KubeApi]) -> None:
    fake, api = server
    fake.refuse = 403
    with pytest.raises(FailedPrecondition, match="verb 'create' on 'pods/attach'"):
        await open_attach(api, "p", "sandbox")
