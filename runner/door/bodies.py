"""What a POST to the door carries: read once, whole and under the cap, parsed, then handed to the SDK again.

As everywhere the runner parses JSON it did not write (``runner.framing``): a big body is weighed first, its count of
values at C speed, and parsed in a thread, so one caller's body does not hold up the event loop every caller shares.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from runner.door.refusals import refusal
from runner.errors import MessageTooLarge, Status
from runner.framing import MAX_FRAME_VALUES, count_values

INLINE_PARSE_BYTES = 64 * 1024
"""Bodies up to this size are parsed on the event loop (as fast as a thread's hand-off); larger ones in a thread."""


@dataclass
class Body:
    raw: bytes
    message: Any
    parsed: bool = True
    """False: the body is not JSON (``message`` is None)."""

    @property
    def request_id(self) -> Any:
        return self.message.get("id") if isinstance(self.message, dict) else None

    @property
    def method(self) -> Any:
        return self.message.get("method") if isinstance(self.message, dict) else None


NO_BODY = Body(b"", None)


async def read_body(cap: int, scope: Scope, receive: Receive, send: Send) -> Body | None:
    """The whole body, at most ``cap`` bytes (else 413 is answered and None returned), and its JSON if it parses."""
    declared = Request(scope).headers.get("content-length", "")
    chunks: list[bytes] = []
    size = int(declared) if declared.isdigit() else 0
    while size <= cap:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size = sum(map(len, chunks))
        if not message.get("more_body", False):
            break
    if size > cap:
        too_large = refusal(413, f"the request body is larger than {cap} bytes", grpc=Status.RESOURCE_EXHAUSTED)
        await too_large(scope, receive, send)
        return None
    raw = b"".join(chunks)
    if len(raw) <= INLINE_PARSE_BYTES:
        return _parsed(raw)
    try:
        count_values(raw)
    except MessageTooLarge:
        too_many = refusal(413, f"the request body holds more than {MAX_FRAME_VALUES} JSON values",
                           grpc=Status.RESOURCE_EXHAUSTED)  # fmt: skip
        await too_many(scope, receive, send)
        return None
    return await asyncio.to_thread(_parsed, raw)


def _parsed(raw: bytes) -> Body:
    try:
        return Body(raw, json.loads(raw))
    except (ValueError, RecursionError):
        return Body(raw, None, parsed=False)


def replaying(raw: bytes, receive: Receive) -> Receive:
    """``receive`` with the body already read handed out again first."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay
