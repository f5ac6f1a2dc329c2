"""What a hostile sandbox (or a broken link) can do through the Kubernetes backend, against loopback fakes.

The attach stream is served by a loopback websocket server speaking v4.channel.k8s.io; pod states are
``V1Pod`` objects; the client's errors are ``ApiException`` objects as the client raises them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import traceback
from collections.abc import AsyncIterator
from typing import Any

import kubernetes.client as kube
import pytest
import websockets.asyncio.server
import websockets.exceptions
from kubernetes.client.exceptions import ApiException
from websockets.asyncio.server import ServerConnection

from runner.config import KubernetesConfig
from runner.errors import FailedPrecondition, ResourceExhausted, RunnerError, Unavailable
from runner.sandbox import kube_attach, kube_status
from runner.sandbox.base import SandboxSpec
from runner.sandbox.kube_attach import KubeSandbox
from runner.sandbox.kube_client import KubeApi
from runner.sandbox.kubernetes import KubernetesBackend
from tests.unit.test_kube_attach import handle

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


class HostileApiServer:
    """Sends what a test queues; reads stdin only while ``reading`` is set (a sandbox that never reads)."""

    def __init__(self) -> None:
        self.outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.stdin = bytearray()
        self.reading = asyncio.Event()
        self.reading.set()
        self.connection: ServerConnection | None = None

    async def handle(self, connection: ServerConnection) -> None:
        self.connection = connection

        async def take_stdin() -> None:
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                while True:
                    await self.reading.wait()
                    message = await connection.recv(decode=False)
                    assert message[0] == 0
                    self.stdin += message[1:]

        taker = asyncio.create_task(take_stdin())
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            while (message := await self.outgoing.get()) is not None:
                await connection.send(message)
        await connection.close()
        taker.cancel()

    def pause(self) -> None:
        """Stop reading at the socket too, so the client's writes back up as they would behind a full pipe."""
        self.reading.clear()
        assert self.connection is not None
        self.connection.transport.pause_reading()

    def resume(self) -> None:
        assert self.connection is not None
        self.connection.transport.resume_reading()
        self.reading.set()


@pytest.fixture
async def server() -> AsyncIterator[tuple[HostileApiServer, KubeApi]]:
    fake = HostileApiServer()
    async with websockets.asyncio.server.serve(fake.handle, "127.0.0.1", 0, subprotocols=["v4.channel.k8s.io"],
                                               max_size=None) as listening:
        port = listening.sockets[0].getsockname()[1]
        config = kube.Configuration(host=f"http://127.0.0.1:{port}")
        yield fake, KubeApi(namespace="ns", host=config.host, timeout=5.0, configuration=config, core=None,
                            networking=None, node=None, custom=None, apis=None)
        await fake.outgoing.put(None)


async def read_all(sandbox: KubeSandbox) -> bytes:
    out = bytearray()
    async with asyncio.timeout(30):
        while chunk := await sandbox.read_stdout():
            out += chunk
    return bytes(out)


# -- the attach stream -------------------------------------------------------------------------------


async def test_the_host_buffers_a_bounded_amount_of_unread_output(server: tuple[HostileApiServer, KubeApi]) -> None:
    _, api = server
    sandbox = await handle(api)
    socket: Any = sandbox._socket
    assert socket.protocol.max_message_size <= 1024**2
    queue = socket.max_queue_high
    assert queue is not None and queue * socket.protocol.max_message_size <= 16 * 1024**2


async def test_a_message_over_the_cap_ends_the_stream_quietly(server: tuple[HostileApiServer, KubeApi]) -> None:
    fake, api = server
    sandbox = await handle(api)
    await fake.outgoing.put(b"\x01" + b"x" * (kube_attach.MAX_MESSAGE_BYTES + 1))
    assert await read_all(sandbox) == b""
    with pytest.raises(ConnectionError):
        await sandbox.write_stdin(b"{}\n")


async def test_garbage_channels_and_frames_are_ignored(server: tuple[HostileApiServer, KubeApi]) -> None:
    fake, api = server
    sandbox = await handle(api)
    for message in (b"", b"\x07nonsense", b"\xff\x00\x01", b"\x00stdin echoed back", b"\x01", b"\x03", b"\x03[1,2]",
                    b"\x03\"text\"", b"\x03\xff\xfe not json", b"\x03" + b"[" * 100_000,
                    b"\x03" + b"[" * 2000 + b"]" * 2000,
                    b"\x03" + json.dumps({"status": "Failure", "message": "\x1b[31m" + "m" * 9000}).encode(),
                    b'\x03{"status": "Failure", "message": "\\u001b]0;title\\u0007 bad"}'):
        await fake.outgoing.put(message)
    await fake.outgoing.put(b"\x01end")
    await fake.outgoing.put(None)
    assert await read_all(sandbox) == b"end"


async def test_a_flood_of_tiny_writes_arrives_whole_and_stderr_stays_bounded(
    server: tuple[HostileApiServer, KubeApi],
) -> None:
    fake, api = server
    sandbox = await handle(api, tail_bytes=32)
    for i in range(3000):
        await fake.outgoing.put(b"\x01" + bytes((48 + i % 10,)))
        await fake.outgoing.put(b"\x02" + (b"word " if i % 2 else b"x"))
    await fake.outgoing.put(b"\x02" + b"S" * 200_000)  # one word longer than the tail, then its end
    await fake.outgoing.put(b"\x02ECRET tail words\n")
    await fake.outgoing.put(None)
    assert await read_all(sandbox) == bytes(48 + i % 10 for i in range(3000))
    assert sandbox.stderr_tail() == "tail words"


async def test_a_cancelled_write_still_goes_out_whole(server: tuple[HostileApiServer, KubeApi]) -> None:
    """A caller's deadline cancels its write while the sandbox does not read: the line is not cut in two."""
    fake, api = server
    sandbox = await handle(api)
    await sandbox.write_stdin(b"first\n")
    async with asyncio.timeout(10):
        while fake.stdin != b"first\n":
            await asyncio.sleep(0.01)
    fake.pause()
    big = b"".join(b"%07d," % i for i in range(16_000_000 // 8)) + b"\n"  # more than loopback's socket buffers
    writing = asyncio.create_task(sandbox.write_stdin(big))
    await asyncio.sleep(0.3)
    assert not writing.done(), "the write should be held up by the sandbox not reading"
    writing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writing
    nxt = asyncio.create_task(sandbox.write_stdin(b'{"type":"cancel"}\n'))
    await asyncio.sleep(0.05)
    fake.resume()
    async with asyncio.timeout(30):
        await nxt
        while not fake.stdin.endswith(b'{"type":"cancel"}\n'):
            await asyncio.sleep(0.01)
    assert bytes(fake.stdin) == b"first\n" + big + b'{"type":"cancel"}\n'


async def test_a_sandbox_that_never_reads_blocks_writers_until_destroy(
    server: tuple[HostileApiServer, KubeApi],
) -> None:
    fake, api = server
    sandbox = await handle(api)
    await sandbox.write_stdin(b"x\n")
    async with asyncio.timeout(10):
        while fake.stdin != b"x\n":
            await asyncio.sleep(0.01)
    fake.pause()
    writers = [asyncio.create_task(sandbox.write_stdin(b"y" * 8_000_000 + b"\n")) for _ in range(3)]
    await asyncio.sleep(0.3)
    assert not any(w.done() for w in writers)
    async with asyncio.timeout(10):
        await sandbox.destroy()  # closing the socket does not wait on the stdin nobody reads
        results = await asyncio.gather(*writers, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results), results
    assert await sandbox.read_stdout() == b""


# -- pod states ----------------------------------------------------------------------------------------


def pod(status: dict[str, Any]) -> Any:
    return kube.V1Pod.from_dict({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "sandbox"}]},
                                 "status": status})


def waiting_container(reason: str = "ContainerCreating", message: str = "") -> dict[str, Any]:
    return {"containerStatuses": [{"name": "sandbox", "image": "i", "imageID": "", "ready": False,
                                   "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}]}


def started(read: Any) -> Any:
    return kube_status.started(read, "the sandbox", "img", "load it")


@pytest.mark.parametrize(("reason", "error"), [
    ("DeadlineExceeded", Unavailable), ("Evicted", Unavailable), ("OutOfcpu", ResourceExhausted),
])
def test_a_pod_that_ended_while_its_container_waited_fails_the_start_at_once(
    reason: str, error: type[Exception],
) -> None:
    """restartPolicy Never: a Failed pod never runs its container; waiting for it would use up the whole budget."""
    with pytest.raises(error, match=f"ended before it ran \\({reason}"):
        started(pod({"phase": "Failed", "reason": reason, "message": "gone", **waiting_container()}))


def test_an_image_the_node_cannot_inspect_fails_the_start_at_once() -> None:
    with pytest.raises(FailedPrecondition, match="ImageInspectError"):
        started(pod({"phase": "Pending", **waiting_container("ImageInspectError", "bad image")}))


def test_what_the_container_wrote_as_its_termination_message_is_not_quoted() -> None:
    """A process that ran (an image's own start gate shell) may write /dev/termination-log: not sanitized."""
    ran = {"containerStatuses": [{"name": "sandbox", "image": "i", "imageID": "", "ready": False, "restartCount": 0,
                                  "state": {"terminated": {"exitCode": 1, "reason": "Error",
                                                           "message": "TOKEN=hunter2-secret"}}}]}
    with pytest.raises(Unavailable) as raised:
        started(pod({"phase": "Failed", **ran}))
    assert "hunter2" not in str(raised.value) and "exit status 1" in str(raised.value)
    runtime = {"containerStatuses": [{**ran["containerStatuses"][0], "state": {"terminated": {
        "exitCode": 128, "reason": "StartError", "message": "exec: no such file"}}}]}
    with pytest.raises(Unavailable, match="exec: no such file"):
        started(pod({"phase": "Failed", **runtime}))


# -- secrets in what the API server answers ---------------------------------------------------------------

SECRET = "hunter2-supersecret-value"
"""A decoder's error quotes a cut of the request body ("bigger context"), here of the Secret's stringData."""
ECHOING = json.dumps({"kind": "Status", "reason": "BadRequest", "message": (
    'Secret in version "v1" cannot be handled as a Secret: v1.Secret.StringData: ReadString: expects " or n, '
    f'error found in #10 byte of ...|"TOKEN":"{SECRET[:12]}|..., bigger context ...|{{"stringData":'
    f'{{"TOKEN":"{SECRET}"}}}}|...')})


class SecretRefusingCore:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.pods: list[Any] = []

    def create_namespaced_secret(self, namespace: str, body: Any, **_: Any) -> None:
        raise self.error

    def create_namespaced_pod(self, namespace: str, body: Any, **_: Any) -> None:
        self.pods.append(body)


class Policies:
    def create_namespaced_network_policy(self, namespace: str, body: Any, **_: Any) -> None:
        return None


def backend_with(core: Any) -> KubernetesBackend:
    backend = KubernetesBackend(KubernetesConfig())
    backend._client = KubeApi(namespace="ns", host="https://api.invalid", timeout=5.0, configuration=None,
                              core=core, networking=Policies(), node=None, custom=None, apis=None)
    return backend


def secret_spec() -> SandboxSpec:
    return SandboxSpec(session_id="abc123", instance="it-hostile", image="some/image:1", command=("server",),
                       env={"TOKEN": SECRET})


@pytest.mark.parametrize("status", [400, 403, 422, 500])
async def test_an_answer_that_echoes_the_secret_is_not_quoted(status: int) -> None:
    backend = backend_with(SecretRefusingCore(ApiException(status=status, reason="Bad Request")))
    backend._client.core.error.body = ECHOING  # type: ignore[union-attr]
    with pytest.raises(RunnerError) as raised:
        await backend._run("creating the sandbox",
                           lambda api: backend._create_sandbox(api, secret_spec(), None))
    backend.close()
    shown = "".join(traceback.format_exception(raised.value))
    assert SECRET[:8] not in shown and "BadRequest" in str(raised.value)
    assert backend._client.core.pods == []  # type: ignore[union-attr]


async def test_a_denied_secret_still_names_the_missing_permission() -> None:
    denied = ApiException(status=403, reason="Forbidden")
    denied.body = json.dumps({"kind": "Status", "reason": "Forbidden", "message": 'secrets is forbidden: User "x" '
                              'cannot create resource "secrets" in API group "" in the namespace "ns"'})
    backend = backend_with(SecretRefusingCore(denied))
    with pytest.raises(FailedPrecondition, match="verb 'create' on 'secrets'"):
        await backend._run("creating the sandbox", lambda api: backend._create_sandbox(api, secret_spec(), None))
    backend.close()


async def test_the_clients_own_refusal_is_a_runner_error_without_the_values() -> None:
    """The client checks types before sending (pydantic): its error quotes the input; it was raised raw."""
    backend = backend_with(kube.CoreV1Api(kube.ApiClient(kube.Configuration(host="http://127.0.0.1:9"))))
    spec = SandboxSpec(session_id="abc123", instance="it-hostile", image="some/image:1", command=("server",),
                       env={"TOKEN": SECRET, "N": 5})  # type: ignore[dict-item]
    with pytest.raises(FailedPrecondition) as raised:
        await backend._run("creating the sandbox", lambda api: backend._create_sandbox(api, spec, None))
    backend.close()
    assert SECRET[:8] not in "".join(traceback.format_exception(raised.value))


# -- usage figures ---------------------------------------------------------------------------------------


class Metrics:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    def get_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> object:
        return self.answer


@pytest.mark.parametrize("answer", [
    {"containers": [{"name": "sandbox"}]}, {"containers": [{"usage": {"memory": "lots"}}]}, {"containers": "x"},
    {"containers": [{"usage": {"memory": "Infinity"}}]}, ["not", "an", "object"],
])
async def test_a_metrics_answer_of_another_shape_is_no_usage_not_a_foreign_error(answer: object) -> None:
    backend = backend_with(None)
    backend._client = KubeApi(namespace="ns", host="https://api.invalid", timeout=5.0, configuration=None,
                              core=None, networking=None, node=None, custom=Metrics(answer), apis=None)
    backend._metrics = True
    assert (await backend.stats("p")).peak_memory_bytes == 0
    backend._client = KubeApi(namespace="ns", host="https://api.invalid", timeout=5.0, configuration=None, core=None,
                              networking=None, node=None, apis=None,
                              custom=Metrics({"containers": [{"usage": {"memory": "12Mi"}}]}))
    assert (await backend.stats("p")).peak_memory_bytes == 12 * 1024**2
    backend.close()


async def test_debug_logging_shows_neither_the_token_nor_the_traffic(
    server: tuple[HostileApiServer, KubeApi], caplog: pytest.LogCaptureFixture,
) -> None:
    fake, api = server
    api.configuration.api_key = {"authorization": "sekrit-bearer-token"}
    api.configuration.api_key_prefix = {"authorization": "Bearer"}
    caplog.set_level(logging.DEBUG)
    sandbox = await handle(api)
    await sandbox.write_stdin(b'{"arguments":{"password":"tool-input-secret"}}\n')
    await fake.outgoing.put(b'\x01{"result":"tool-output-secret"}\n')
    assert b"tool-output-secret" in await sandbox.read_stdout()
    await sandbox.destroy()
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server"))
    assert "sekrit" not in ours and "tool-input-secret" not in ours and "tool-output-secret" not in ours


# -- the first call's answers ------------------------------------------------------------------------------


class Namespaces:
    def __init__(self, error: ApiException) -> None:
        self.error = error

    def read_namespace(self, name: str, **_: Any) -> None:
        raise self.error


@pytest.mark.parametrize(("status", "message", "error", "says"), [
    (404, 'namespaces "mcp-runner" not found', FailedPrecondition, "does not exist"),
    (403, 'namespaces "mcp-runner" is forbidden: User "x" cannot get resource "namespaces" in API group ""',
     FailedPrecondition, "verb 'get' on 'namespaces'"),
])
async def test_the_first_call_s_answer_is_read_as_such_not_as_unreachable(
    monkeypatch: pytest.MonkeyPatch, status: int, message: str, error: type[Exception], says: str,
) -> None:
    refused = ApiException(status=status, reason="refused")
    refused.body = json.dumps({"kind": "Status", "message": message})
    api = KubeApi(namespace="mcp-runner", host="https://api.invalid", timeout=5.0, configuration=None,
                  core=Namespaces(refused), networking=None, node=None, custom=None, apis=None)
    monkeypatch.setattr("runner.sandbox.kubernetes.connect", lambda config, pool_size: api)
    backend = KubernetesBackend(KubernetesConfig())
    with pytest.raises(error, match=says):
        await backend.check()
    backend.close()
