"""DockerSandbox's read side: demultiplexing Docker's attach stream, and the bounded stderr tail."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable

import pytest

from runner.sandbox.attach import DockerSandbox

TIMEOUT = 2.0
KIB64 = 64 * 1024


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def out(payload: bytes) -> bytes:
    return frame(1, payload)


def err(payload: bytes) -> bytes:
    return frame(2, payload)


class Closable:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


Make = Callable[..., tuple[DockerSandbox, asyncio.StreamReader]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    sockets: list[socket.socket] = []

    def build(stderr_tail_bytes: int = 1024) -> tuple[DockerSandbox, asyncio.StreamReader]:
        ours, theirs = socket.socketpair()
        sockets.extend((ours, theirs))
        reader = asyncio.StreamReader()
        sandbox = DockerSandbox(
            None,  # type: ignore[arg-type]  # only the read paths are used
            "container-id",
            ours,
            reader,
            Closable(),  # type: ignore[arg-type]
            Closable(),
            stderr_tail_bytes,
            "sha256:image",
        )
        return sandbox, reader

    yield build
    for sock in sockets:
        sock.close()


async def read(sandbox: DockerSandbox) -> bytes:
    return await asyncio.wait_for(sandbox.read_stdout(), TIMEOUT)


async def read_all(sandbox: DockerSandbox) -> list[bytes]:
    chunks = []
    while chunk := await read(sandbox):
        chunks.append(chunk)
        assert len(chunks) < 1000
    return chunks


async def test_stdout_frames_in_order_across_stderr(make: Make) -> None:
    sandbox, reader = make()
    reader.feed_data(out(b"hello ") + err(b"err one\n") + out(b"world") + err(b"err two") + err(b"") + out(b"!"))
    reader.feed_eof()
    assert await read_all(sandbox) == [b"hello world!"]  # what had arrived, joined
    assert sandbox.stderr_tail() == "err one\nerr two"


async def test_stdout_never_carries_other_streams(make: Make) -> None:
    sandbox, reader = make()
    reader.feed_data(frame(0, b"STDIN?") + out(b"a") + frame(3, b"SYSTEM?") + out(b"") + out(b"b"))
    reader.feed_eof()
    assert b"".join(await read_all(sandbox)) == b"ab"


async def test_frame_larger_than_64k_comes_in_several_chunks(make: Make) -> None:
    sandbox, reader = make()
    payload = bytes(range(256)) * 600  # 153600 bytes
    reader.feed_data(out(payload) + err(b"after") + out(b"tail"))
    reader.feed_eof()
    chunks = await read_all(sandbox)
    assert len(chunks) >= 3 and all(0 < len(c) <= KIB64 for c in chunks)
    assert b"".join(chunks) == payload + b"tail"
    assert sandbox.stderr_tail() == "after"


async def test_tiny_frames_are_handed_on_joined(make: Make) -> None:
    # A 4 MiB line written 16 bytes at a time is 262 144 frames: handed on one by one, each cost the host an
    # await and a pass of the channel's loop. Joined, the hand-overs are as many as for 64 KiB writes.
    sandbox, reader = make()
    line = b"x" * (4 * 1024 * 1024 - 1) + b"\n"
    raw = b"".join(out(line[start : start + 16]) for start in range(0, len(line), 16))
    between = 24 * 4000  # a frame boundary (each frame is an 8-byte header and 16 bytes); reads cut frames anywhere
    reader.feed_data(raw[:between] + err(b"noise") + raw[between:])
    reader.feed_eof()
    chunks = []
    while chunk := await read(sandbox):
        chunks.append(chunk)
    assert b"".join(chunks) == line
    assert len(chunks) <= len(raw) // KIB64 + 2
    assert sandbox.stderr_tail() == "noise"


async def test_frames_split_across_arrivals(make: Make) -> None:
    sandbox, reader = make()
    data = err(b"noise") + out(b"split frame") + out(b"!")
    loop = asyncio.get_running_loop()
    starts = range(0, len(data), 5)
    for i, start in enumerate(starts):
        loop.call_later(0.002 * (i + 1), reader.feed_data, data[start : start + 5])
    loop.call_later(0.002 * (len(starts) + 2), reader.feed_eof)
    assert b"".join(await read_all(sandbox)) == b"split frame!"
    assert sandbox.stderr_tail() == "noise"


async def test_stderr_kept_as_bounded_tail(make: Make) -> None:
    sandbox, reader = make(stderr_tail_bytes=16)
    for i in range(20):
        reader.feed_data(err(f"line {i:02d}\n".encode()))
    reader.feed_data(out(b"x"))
    assert await read(sandbox) == b"x"
    assert sandbox.stderr_tail() == "line 18\nline 19"


async def test_huge_stderr_frame_keeps_only_tail(make: Make) -> None:
    sandbox, reader = make(stderr_tail_bytes=100)
    reader.feed_data(err(b"A" * (3 * KIB64) + b" " + b"B" * 50) + out(b"y"))
    assert await read(sandbox) == b"y"
    assert sandbox.stderr_tail() == "B" * 50  # the tail starts after the word its cut runs through


async def test_stderr_tail_strips_escapes_and_controls(make: Make) -> None:
    sandbox, reader = make()
    reader.feed_data(err(b"\x1b[31mred\x1b[0m\x07 bell\x00 nul\r\n\xc2\x9b2J csi\xe2\x80\xae ok\tx\xff\n\n"))
    reader.feed_eof()
    assert await read(sandbox) == b""
    tail = sandbox.stderr_tail()
    assert tail.endswith(" bell nul\n csi ok\tx\ufffd") and "red" in tail  # ends stripped of the blank lines
    assert not any(ch in tail for ch in "\x1b\x07\x00\r\x9b\u202e")


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01\x00\x00", out(b"")[:7], err(b"partial stderr")[:12]],
    ids=["nothing", "mid-header", "header-minus-one", "mid-stderr-frame"],
)
async def test_eof_mid_header_returns_empty(make: Make, data: bytes) -> None:
    sandbox, reader = make()
    reader.feed_data(data)
    reader.feed_eof()
    assert await read(sandbox) == b""
    assert await read(sandbox) == b""


async def test_eof_mid_stdout_frame_returns_what_came_then_empty(make: Make) -> None:
    sandbox, reader = make()
    reader.feed_data(out(b"0123456789")[:12])
    reader.feed_eof()
    assert await read(sandbox) == b"0123"
    assert await read(sandbox) == b""
    assert await read(sandbox) == b""


@pytest.mark.parametrize(
    "explanation", ["Unknown runtime specified runsc", "unknown or invalid runtime name: runsc"]
)
def test_a_missing_runtime_is_a_precondition_that_says_how_to_get_gvisor(explanation: str) -> None:
    import docker.errors

    from runner.errors import FailedPrecondition, Unavailable
    from runner.sandbox.docker import map_docker_errors

    with pytest.raises(FailedPrecondition, match="runsc and run `make docker`"), map_docker_errors("starting"):
        raise docker.errors.APIError("400 Client Error", explanation=explanation)
    # An OCI runtime failure is something else.
    with pytest.raises(Unavailable), map_docker_errors("starting the sandbox"):
        raise docker.errors.APIError("500", explanation="OCI runtime create failed: container_linux.go")
