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

if TYPE_CHECKING:
    from runner.sandbox.kubernetes import KubernetesBackend

log = logging.getLogger(__name__)

PROTOCOL = Subprotocol("v4.channel.k8s.io")
STDIN, STDOUT, STDERR, STATUS = 0, 1, 2, 3
MAX_MESSAGE_BYTES = 16 * 1024**2
"""The largest websocket message taken from the API server; it sends at most 32 KiB at a time."""
WRITE_PIECE = 256 * 1024
"""Stdin goes out in messages of at most this size, so no single message holds the link for long."""


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
            close_timeout=1.0,
        )


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
            except (websockets.exceptions.ConnectionClosed, OSError):
                return b""
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
        with contextlib.suppress(ValueError, AttributeError):
            status = json.loads(payload)
            if status.get("status") != "Success":
                log.info("attach stream of pod %s ended: %s", self._pod, str(status.get("message"))[:200])

    async def write_stdin(self, data: bytes) -> None:
        if self._destroyed:
            raise ConnectionError("sandbox destroyed")
        try:
            for start in range(0, len(data), WRITE_PIECE):
                await self._socket.send(bytes((STDIN,)) + data[start : start + WRITE_PIECE])
        except websockets.exceptions.ConnectionClosed as exc:
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
        self._backend.later(self._socket.close())
        if self._egress is None:
            teardown = self._teardown()
        else:
            teardown = self._backend.stop_egress(self._egress, alongside=self._teardown())
        # A caller cancelled midway (a deadline, then the RPC's own) must not leave half a teardown behind.
        await asyncio.shield(self._backend.later(teardown))
