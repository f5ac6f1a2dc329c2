"""What the door forwards to a stateful client (runner.door.talkback), on a fake SDK session: the one capability
decision (``lacking``), the one request builder, and notifications queued so a slow client never holds the
sandbox's reader."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import mcp_types as types
import pytest
from mcp.server.session import ServerSession

from runner.door import talkback
from runner.errors import JSONRPC_INTERNAL_ERROR, JSONRPC_METHOD_NOT_FOUND, ClientDeclined
from runner.sessions.models import ServerNotification, ServerRequest

FORMS_ONLY = types.ClientCapabilities(elicitation=types.ElicitationCapability(form=types.FormElicitationCapability()))
PLAIN_SAMPLING = types.ClientCapabilities(sampling=types.SamplingCapability())


@dataclass(eq=False)
class FakeSession:
    """The part of the SDK's ``ServerSession`` the door uses; sends wait on ``gate`` when it is set."""

    client_capabilities: types.ClientCapabilities | None = None
    sent: list[Any] = field(default_factory=list)
    gate: asyncio.Event | None = None

    def check_client_capability(self, capability: types.ClientCapabilities) -> bool:
        return True  # as coarse as the SDK's own check: the door's finer one must decide

    async def send_request(self, request: Any, result_type: Any, **_: Any) -> Any:
        self.sent.append(request)
        return types.ElicitResult(action="decline")

    async def send_log_message(self, level: str, data: Any, logger: str | None, **_: Any) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.sent.append(data)

    async def send_notification(self, notification: Any, **_: Any) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.sent.append(notification.method)


def _session(fake: FakeSession) -> ServerSession:
    return cast(ServerSession, fake)


@pytest.mark.parametrize(
    ("declared", "asked", "missing"),
    [
        (FORMS_ONLY, ServerRequest("elicitation/create", {"mode": "url", "message": "sign in",
                                                          "url": "https://example.com/x", "elicitationId": "e1"}),
         "elicitation.url"),
        (PLAIN_SAMPLING, ServerRequest("sampling/createMessage", {
            "messages": [], "maxTokens": 5, "tools": [{"name": "t", "inputSchema": {"type": "object"}}]}),
         "sampling.tools"),
        (PLAIN_SAMPLING, ServerRequest("sampling/createMessage", {
            "messages": [], "maxTokens": 5, "includeContext": "thisServer"}), "sampling.context"),
    ],
)  # fmt: skip
async def test_a_stateful_client_is_not_sent_what_it_did_not_declare(
    declared: types.ClientCapabilities, asked: ServerRequest, missing: str
) -> None:
    fake = FakeSession(client_capabilities=declared)
    with pytest.raises(ClientDeclined) as declined:
        await talkback.asker(_session(fake), None)(asked)
    assert declined.value.code == JSONRPC_METHOD_NOT_FOUND and f"({missing})" in declined.value.message
    assert fake.sent == []


async def test_a_request_that_no_longer_fits_its_type_is_refused_to_the_server_not_raised() -> None:
    fake = FakeSession(client_capabilities=PLAIN_SAMPLING)
    with pytest.raises(ClientDeclined) as declined:
        await talkback.asker(_session(fake), None)(ServerRequest("sampling/createMessage", {"maxTokens": "many"}))
    assert declined.value.code == JSONRPC_INTERNAL_ERROR and "no longer fits" in declined.value.message
    assert fake.sent == []


async def test_a_declared_request_is_sent() -> None:
    fake = FakeSession(client_capabilities=FORMS_ONLY)
    elicit = ServerRequest("elicitation/create", {"message": "ok?", "requestedSchema": {"type": "object"}})
    assert await talkback.asker(_session(fake), None)(elicit) == {"action": "decline"}
    assert [request.method for request in fake.sent] == ["elicitation/create"]


async def test_a_slow_client_never_holds_the_notifier_and_its_queue_gives_up_old_logs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(talkback, "SEND_TIMEOUT_S", 10.0**6)  # the client is stuck, not merely slow
    monkeypatch.setattr(talkback, "OUTBOX_SIZE", 4)
    gate = asyncio.Event()
    fake = FakeSession(gate=gate)
    notify = talkback.notifier(_session(fake), None)
    updated = ServerNotification("notifications/resources/updated", {"uri": "file:///a"})
    async with asyncio.timeout(30):  # a notifier waiting on the client would never get through these
        await notify(ServerNotification("notifications/message", {"level": "info", "data": "first"}))
        await asyncio.sleep(0)  # the queue's sender takes the first and waits on the client
        await notify(updated)
        for n in range(100):
            await notify(ServerNotification("notifications/message", {"level": "info", "data": n}))
    box = talkback.outbox_of(_session(fake))
    assert box.dropped == 100 - 3  # the oldest logs went; the resource update stayed
    gate.set()
    async with asyncio.timeout(30):
        while len(fake.sent) < 5:
            await asyncio.sleep(0.01)
    assert fake.sent == ["first", "notifications/resources/updated", 97, 98, 99]


def test_the_forwarded_methods_are_listed_once() -> None:
    """The guard's lists are the one source: the channel's frame check and the door's forwarding use them."""
    from runner import channel
    from runner.guard import inbound

    for module in (vars(channel), vars(talkback)):  # imported there, never copied
        assert module["SERVER_REQUESTS"] is inbound.SERVER_REQUESTS and module["NOTIFICATIONS"] is inbound.NOTIFICATIONS
    assert set(talkback._RESULTS) == set(inbound.SERVER_REQUESTS)
