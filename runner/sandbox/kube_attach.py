"""One running pod seen from the host: its stdio over the ``attach`` subresource's websocket.

The API server relays the container's stdin, stdout and stderr over one websocket speaking
``v4.channel.k8s.io`` (every message starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 a JSON status).
Kubernetes 1.20 offers nothing newer; v4 cannot half-close stdin, which the runner never does. The socket is
asyncio's (the ``websockets`` package), so a session costs no thread. ``KubeSandbox.read_stdout`` returns the
stdout messages as they come (the API server writes at most 32 KiB in one; the channel layer caps lines), and
keeps a bounded stderr tail. The pod's life (wait, stats, teardown) is the backend's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import websockets.asyncio.client
import websockets.exceptions
from websockets.typing import Subprotocol

from runner.sandbox import egress
from runner.sandbox.base import SandboxExit, SandboxStats
from runner.sandbox.kube_client import KubeApi, attach_url, auth_headers, map_kube_errors, tls_context
from runner.sandbox.tail import StderrTail
from runner.text import printable

if TYPE_CHECKING:
    from runner.sandbox.kubernetes import KubernetesBackend

log = logging.getLogger(__name__)
_SOCKET_LOG = logging.getLogger(f"{__name__}.socket")
_SOCKET_LOG.setLevel(logging.INFO)
"""The websocket's own logger, never at DEBUG: websockets would log the request's headers there (the API
server's bearer token) and every frame (a session's traffic, both ways)."""

PROTOCOL = Subprotocol("v4.channel.k8s.io")
STDIN, STDOUT, STDERR, STATUS = 0, 1, 2, 3
MAX_MESSAGE_BYTES = 1024**2
"""The largest websocket message taken from the API server (it relays at most 32 KiB at a time); a larger one
ends the stream instead of being buffered."""
MAX_QUEUE = 8
"""Messages received but not yet read: with ``MAX_MESSAGE_BYTES``, what one session can make the host hold."""
MAX_STATUS_BYTES = 4096
"""The largest channel-3 status parsed (a short JSON ``Status``): a bigger one is noted, not parsed."""
MAX_STATUS_NESTING = 32
"""Brackets a parsed status may hold: deeper JSON would exhaust the parser's recursion (a ``RecursionError``
that also upsets CPython 3.11's own parser state)."""
WRITE_PIECE = 256 * 1024
"""Stdin goes out in messages of at most this size, so no single message holds the link for long."""
CLOSE_TIMEOUT_S = 1.0


async def open_attach(api: KubeApi, pod: str, container: str) -> websockets.asyncio.client.ClientConnection:
    """The attach websocket of ``pod``'s ``container`` (running, with ``stdin: true``)."""
    with map_kube_errors(f"attaching to pod {pod}", api):
        context = tls_context(api)
        return await websockets.asyncio.client.connect(
            attach_url(api, pod, container),
            ssl=context,
            server_hostname=api.configuration.tls_server_name if context is not None else None,
            additional_headers=auth_headers(api),
            subprotocols=[PROTOCOL],
            compression=None,
            proxy=None,  # straight to the API server, whatever the environment's proxy settings say
            open_timeout=api.timeout,
            ping_interval=None,  # the API server to kubelet hop would not see them; the kubelet's idle timeout rules
            max_size=MAX_MESSAGE_BYTES,
            max_queue=MAX_QUEUE,
            close_timeout=CLOSE_TIMEOUT_S,
            logger=_SOCKET_LOG,
        )


async def close_attach(socket: websockets.asyncio.client.ClientConnection) -> None:
    """Close ``socket`` within ``CLOSE_TIMEOUT_S`` whatever the peer does. ``close()`` alone waits to flush its
    close frame behind unsent stdin, forever when the sandbox never reads: then the socket is cut."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await socket.close()
    except TimeoutError:
        socket.transport.abort()


class KubeSandbox:
    """One running pod; implements ``SandboxHandle``."""

    def __init__(
        self,
        backend: KubernetesBackend,
        pod: str,
        socket: websockets.asyncio.client.ClientConnection,
        stderr_tail_bytes: int,
        image_id: str,
        teardown: Callable[[], Coroutine[Any, Any, None]],
        egress_proxy: egress.EgressProxy | None = None,
    ) -> None:
        self._backend = backend
        self._pod = pod
        self._socket = socket
        self._stderr = StderrTail(stderr_tail_bytes)
        self._image_id = image_id
        self._teardown = teardown
        self._egress = egress_proxy
        self._destroyed = False
        self._writing: asyncio.Future[None] | None = None

    @property
    def id(self) -> str:
        return self._pod

    @property
    def image_id(self) -> str:
        """The image the container runs, as the node's runtime names it (a ``sha256:`` digest where it can)."""
        return self._image_id

    async def read_stdout(self) -> bytes:
        while True:
            try:
                message = await self._socket.recv(decode=False)
            except (websockets.exceptions.WebSocketException, OSError):
                return b""  # closed, a protocol error, a message over the cap: the stream is over either way
            if not message:
                continue
            channel, payload = message[0], message[1:]
            if channel == STDOUT and payload:
                return payload
            if channel == STDERR:
                self._stderr.keep(payload)
            elif channel == STATUS and payload:
                self._note_status(payload)

    def _note_status(self, payload: bytes) -> None:
        if len(payload) > MAX_STATUS_BYTES or payload.count(b"[") + payload.count(b"{") > MAX_STATUS_NESTING:
            log.info("attach stream of pod %s sent a status of %d bytes, not read", self._pod, len(payload))
            return
        status: object = None
        with contextlib.suppress(ValueError):
            status = json.loads(payload)
        if not isinstance(status, dict):
            return
        if status.get("status") != "Success":
            log.info("attach stream of pod %s ended: %s", self._pod, printable(str(status.get("message")), 200))

    async def write_stdin(self, data: bytes) -> None:
        """Send ``data`` whole, like Docker's buffered write: a caller that gives up midway (a deadline) does
        not cut it, else the agent would read half a line glued to the next. One write is in flight at a time,
        so a sandbox that never reads its stdin makes its writers wait, never the host buffer without bound."""
        while self._writing is not None and not self._writing.done():
            await asyncio.wait([self._writing])  # an earlier writer's, whom a cancel left behind
        if self._destroyed:
            raise ConnectionError("sandbox destroyed")
        if self._writing is not None and not self._writing.cancelled() and self._writing.exception() is not None:
            raise ConnectionError("the attach stream closed")
        self._writing = asyncio.ensure_future(self._send_pieces(data))
        await asyncio.shield(self._writing)

    async def _send_pieces(self, data: bytes) -> None:
        try:
            for start in range(0, len(data), WRITE_PIECE):
                await self._socket.send(bytes((STDIN,)) + data[start : start + WRITE_PIECE])
        except (websockets.exceptions.WebSocketException, OSError) as exc:
            raise ConnectionError(f"the attach stream closed ({exc})") from exc

    def stderr_tail(self) -> str:
        return self._stderr.text()

    async def wait_exit(self, timeout: float) -> SandboxExit:
        return await self._backend.wait_exit(self._pod, timeout, removed_by_us=self._destroyed)

    async def stats(self) -> SandboxStats:
        return await self._backend.stats(self._pod)

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        # Closing our end first: the API server stops relaying output nobody reads.
        self._backend.later(close_attach(self._socket))
        if self._egress is None:
            teardown = self._teardown()
        else:
            teardown = self._backend.stop_egress(self._egress, alongside=self._teardown())
        # A caller cancelled midway (a deadline, then the RPC's own) must not leave half a teardown behind.
        await asyncio.shield(self._backend.later(teardown))
