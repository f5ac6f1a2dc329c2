"""What a POST to the door carries: read once, whole and under the cap, parsed, then handed to the SDK again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from runner.door.refusals import refusal
from runner.errors import Status


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
