"""The door's requests in flight, so the service's stop ends them in order and cleanly.

A stop ends the long-lived GET streams at once (they never finish on their own: uvicorn would wait out the whole
grace for them), gives requests in flight the grace to finish, then cancels what is left. A request cancelled
this way still ends its HTTP answer properly: a response already started gets its last chunk, one not started a
503 with a JSON-RPC error, instead of a connection cut mid-stream and a traceback in the log.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from starlette.types import Message, Send

STOPPING = json.dumps({
    "jsonrpc": "2.0", "id": None, "error": {"code": -32007, "message": "the service is stopping; try again later",
                                            "data": {"status": "UNAVAILABLE"}},
}).encode()  # fmt: skip
SETTLE_S = 1.0
"""How long cancelled requests get to write their last chunk."""


@dataclass(eq=False)
class _InFlight:
    stream: bool
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    started: bool = False
    finished: bool = False

    def watching(self, send: Send) -> Send:
        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                self.finished = True
            await send(message)

        return watched

    async def finish(self, send: Send) -> None:
        if not self.started:
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(STOPPING)).encode())]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": STOPPING, "more_body": False})
        elif not self.finished:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class Draining:
    def __init__(self) -> None:
        self._in_flight: set[_InFlight] = set()

    async def serve(self, stream: bool, call: Callable[[Send], Awaitable[None]], send: Send) -> None:
        """Runs ``call`` with a send it watches; a stop's cancel ends the answer properly."""
        entry = _InFlight(stream)
        self._in_flight.add(entry)
        try:
            with entry.scope:
                await call(entry.watching(send))
        finally:
            self._in_flight.discard(entry)
        if entry.scope.cancelled_caught:
            await entry.finish(send)

    async def stop(self, grace: float) -> None:
        """GET streams end now; other requests get ``grace`` seconds, then they are cancelled too."""
        for entry in list(self._in_flight):
            if entry.stream:
                entry.scope.cancel()
        deadline = time.monotonic() + grace
        while any(not e.stream for e in self._in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for entry in list(self._in_flight):
            entry.scope.cancel()
        deadline = time.monotonic() + SETTLE_S
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def __len__(self) -> int:
        return len(self._in_flight)
