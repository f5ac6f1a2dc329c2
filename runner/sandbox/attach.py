"""One running container seen from the host: its stdio over Docker's attach stream, its bounded stderr tail.

Docker multiplexes stdout and stderr on the attach socket with 8-byte frame headers, which
``DockerSandbox.read_stdout`` takes apart (from large reads, however small the frames), keeping only a
bounded tail of stderr that always starts between words (``runner.sandbox.tail``). Its life (wait, stats,
teardown) is the backend's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import TYPE_CHECKING, Any

from runner.sandbox import egress
from runner.sandbox.base import SandboxExit, SandboxStats
from runner.sandbox.tail import StderrTail

if TYPE_CHECKING:
    from runner.sandbox.docker import DockerBackend

_HEADER = struct.Struct(">BxxxL")
_STDOUT, _STDERR = 1, 2
READ_CHUNK = 64 * 1024


class DockerSandbox:
    """One running container; implements ``SandboxHandle``."""

    def __init__(
        self,
        backend: DockerBackend,
        container_id: str,
        stream: socket.socket,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        keepalive: Any,
        stderr_tail_bytes: int,
        image_id: str,
        egress_proxy: egress.EgressProxy | None = None,
    ) -> None:
        self._backend = backend
        self._image_id = image_id
        self._egress = egress_proxy
        self._id = container_id
        self._stream = stream
        self._reader = reader
        self._writer = writer
        self._keepalive = keepalive  # docker-py's socket wrapper; collecting it would close the socket
        self._stderr = StderrTail(stderr_tail_bytes)
        self._raw = bytearray()  # read from the attach stream, not yet taken apart: at most one read
        self._left = 0  # bytes of the current frame still to come, in stream ``_left_stream``
        self._left_stream = 0
        self._destroyed = False

    @property
    def id(self) -> str:
        return self._id

    @property
    def image_id(self) -> str:
        """A sandbox's image digest; for the egress proxy, which nobody replays, the image's tag."""
        return self._image_id

    async def read_stdout(self) -> bytes:
        """What the sandbox wrote to stdout since the last call, at most about one read (b"" at its end).

        Docker frames every write the container makes: a sandbox writing a few bytes at a time makes
        frames of a few bytes. So frames are taken apart from large reads in one pass, and their stdout
        joined, rather than one await and one hand-over per frame: the host's cost per byte stays the same
        whatever the sizes the sandbox writes in.
        """
        try:
            while True:
                out = self._demultiplex()
                if out:
                    return out
                chunk = await self._reader.read(READ_CHUNK)
                if not chunk:
                    return b""
                self._raw += chunk
        except (ConnectionError, OSError):
            return b""

    def _demultiplex(self) -> bytes:
        raw, pos, out = self._raw, 0, bytearray()
        while True:
            if self._left:
                take = min(self._left, len(raw) - pos)
                if not take:
                    break
                if self._left_stream == _STDOUT:
                    out += raw[pos : pos + take]
                elif self._left_stream == _STDERR:
                    self._stderr.keep(raw[pos : pos + take])
                pos += take
                self._left -= take
            elif len(raw) - pos >= _HEADER.size:
                self._left_stream, self._left = _HEADER.unpack_from(raw, pos)
                pos += _HEADER.size
            else:
                break
        del raw[:pos]
        return bytes(out)

    async def write_stdin(self, data: bytes) -> None:
        if self._destroyed:
            raise ConnectionError("sandbox destroyed")
        self._writer.write(data)
        await self._writer.drain()

    def stderr_tail(self) -> str:
        return self._stderr.text()

    async def wait_exit(self, timeout: float) -> SandboxExit:
        return await self._backend.wait_exit(self._id, timeout)

    async def stats(self) -> SandboxStats:
        return await self._backend.stats(self._id)

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        self._close_stream()
        if self._egress is None:
            teardown = self._backend.remove(self._id)
        else:
            teardown = self._backend.stop_egress(self._egress, alongside=self._backend.remove(self._id))
        # A caller cancelled midway (a deadline, then the RPC's own) must not leave half a teardown behind.
        await asyncio.shield(self._backend.later(teardown))

    def _close_stream(self) -> None:
        # docker-py's wrapper still holds the socket, so close() alone leaves the fd open; dockerd then
        # stays blocked writing output nobody reads, and removing the container hangs. shutdown() acts
        # on the fd itself.
        with contextlib.suppress(OSError):
            self._stream.shutdown(socket.SHUT_RDWR)
        self._writer.close()
        with contextlib.suppress(Exception):
            self._keepalive.close()
