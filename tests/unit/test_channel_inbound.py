"""AgentChannel: what the server sends unasked (server_request, notification frames) and the answers the host sends,
against fake agent frames. A hostile agent may send anything: each bad frame is a protocol violation or dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from runner.channel import MAX_SERVER_REQUESTS, AgentChannel, Inbound
from runner.errors import ClientDeclined, ProtocolViolation
from runner.sessions.models import Exchange
from tests.unit.test_channel import TIMEOUT, FakeLink, ended, line

CAP = 4096


class Recorder:
    """An InboundHandler that records what it got; answers requests with ``answer`` or waits on ``gate``."""

    def __init__(self) -> None:
        self.requests: list[Inbound] = []
        self.notes: list[Inbound] = []
        self.answer: dict[str, Any] | Exception = {"roots": []}
        self.gate: asyncio.Event | None = None
        self.cancelled = 0

    async def server_request(self, request: Inbound) -> dict[str, Any]:
        self.requests.append(request)
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def notification(self, note: Inbound) -> None:
        self.notes.append(note)


@pytest.fixture
async def link() -> FakeLink:
    return FakeLink()


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def channel(link: FakeLink, recorder: Recorder) -> AsyncIterator[AgentChannel]:
    ch = AgentChannel(link, max_message_bytes=CAP)
    ch.set_inbound(recorder)
    ch.start()
    yield ch
    await ch.aclose()


def server_request(request_id: Any = 7, method: str = "roots/list", **kw: Any) -> bytes:
    return line({"type": "server_request", "id": request_id, "method": method, "params": {}, **kw})


async def answers(link: FakeLink, count: int = 1) -> list[dict[str, Any]]:
    async def wait() -> list[dict[str, Any]]:
        while len(found := [f for f in link.sent if f["type"] == "answer"]) < count:
            await asyncio.sleep(0)
        return found

    return await asyncio.wait_for(wait(), TIMEOUT)


async def test_ready_names_the_protocol_the_agent_speaks(link: FakeLink, channel: AgentChannel) -> None:
    link.feed(line({"type": "ready", "initialize": {}, "protocol": "2026-07-28"}))
    await asyncio.wait_for(channel.ready(), TIMEOUT)
    assert channel.protocol == "2026-07-28"


async def test_ready_without_protocol_is_the_default_era(link: FakeLink, channel: AgentChannel) -> None:
    link.feed(line({"type": "ready", "initialize": {}}))
    await asyncio.wait_for(channel.ready(), TIMEOUT)
    assert channel.protocol == "2025-11-25"


@pytest.mark.parametrize("protocol", ["2099-01-01", 5, None])
async def test_ready_with_an_unknown_protocol_is_a_violation(
    link: FakeLink, channel: AgentChannel, protocol: Any
) -> None:
    link.feed(line({"type": "ready", "initialize": {}, "protocol": protocol}))
    assert isinstance(await ended(channel), ProtocolViolation)


async def test_capabilities_ride_on_the_request_frame(link: FakeLink, channel: AgentChannel) -> None:
    task = asyncio.create_task(channel.request_sized("tools/call", {"name": "x"}, capabilities={"sampling": {}}))
    sent = await link.sent_frame(0)
    assert sent["capabilities"] == {"sampling": {}}
    link.feed(line({"type": "result", "id": sent["id"], "result": {}}))
    await asyncio.wait_for(task, TIMEOUT)


async def test_a_server_request_is_answered_with_the_handlers_result(
    link: FakeLink, channel: AgentChannel, recorder: Recorder
) -> None:
    link.feed(server_request(7))
    (answer,) = await answers(link)
    assert answer == {"type": "answer", "id": 7, "result": {"roots": []}}
    assert recorder.requests[0].method == "roots/list" and recorder.requests[0].exchange is None


async def test_a_declined_request_is_answered_with_its_error(
    link: FakeLink, channel: AgentChannel, recorder: Recorder
) -> None:
    recorder.answer = ClientDeclined(-1, "the user said no")
    link.feed(server_request(3, "elicitation/create"))
    (answer,) = await answers(link)
    assert answer == {"type": "answer", "id": 3, "error": {"code": -1, "message": "the user said no"}}


async def test_a_failing_handler_is_an_internal_error_answer_not_a_crash(
    link: FakeLink, channel: AgentChannel, recorder: Recorder
) -> None:
    recorder.answer = RuntimeError("bug")
    link.feed(server_request(3))
    (answer,) = await answers(link)
    assert answer["error"]["code"] == -32603
    assert channel.terminal_error is None


async def test_without_an_inbound_handler_requests_get_method_not_found(link: FakeLink) -> None:
    channel = AgentChannel(link, max_message_bytes=CAP)
    channel.start()
    try:
        link.feed(server_request(9, "sampling/createMessage"), line({"type": "notification",
                  "method": "notifications/tools/list_changed", "params": {}, "related": None}))  # fmt: skip
        (answer,) = await answers(link)
        assert answer["id"] == 9 and answer["error"]["code"] == -32601
        assert "sampling/createMessage" in answer["error"]["message"]
    finally:
        await channel.aclose()


async def test_related_names_the_request_in_flight_and_its_exchange(
    link: FakeLink, channel: AgentChannel, recorder: Recorder
) -> None:
    exchange = Exchange(client_capabilities={"sampling": {}})
    task = asyncio.create_task(channel.request_sized("tools/call", {"name": "x"}, exchange=exchange, tag="aud_1"))
    request_id = (await link.sent_frame(0))["id"]
    link.feed(server_request(1, related=request_id))
    link.feed(line({"type": "notification", "method": "notifications/message", "params": {"level": "info",
              "data": "hi"}, "related": request_id}))  # fmt: skip
    await answers(link)
    assert recorder.requests[0].exchange is exchange and recorder.requests[0].tag == "aud_1"
    assert recorder.notes[0].exchange is exchange
    link.feed(line({"type": "result", "id": request_id, "result": {}}))
    await asyncio.wait_for(task, TIMEOUT)


async def test_related_to_a_request_not_in_flight_goes_to_the_session(
    link: FakeLink, channel: AgentChannel, recorder: Recorder
) -> None:
    link.feed(server_request(1, related=12345))
    await answers(link)
    assert recorder.requests[0].exchange is None and recorder.requests[0].tag == ""


async def test_the_end_of_its_request_answers_a_waiting_server_request_with_an_error(
    link: FakeLink, channel: AgentChannel, recorder: Recorder
) -> None:
    recorder.gate = asyncio.Event()
    task = asyncio.create_task(channel.request_sized("tools/call", {"name": "x"}, exchange=Exchange()))
    request_id = (await link.sent_frame(0))["id"]
    link.feed(server_request(5, "elicitation/create", related=request_id))
    while not recorder.requests:
        await asyncio.sleep(0)
    task.cancel()  # the caller gave up: the agent is told to cancel, the server's request gets its answer
    (answer,) = await answers(link)
    assert answer["id"] == 5 and answer["error"]["code"] == -32603
    assert recorder.cancelled == 1
    assert any(f["type"] == "cancel" for f in link.sent)


async def test_a_notification_reaches_the_handler(link: FakeLink, channel: AgentChannel, recorder: Recorder) -> None:
    link.feed(line({"type": "notification", "method": "notifications/resources/updated", "params": {"uri": "a://b"}}))
    link.feed(line({"type": "ready", "initialize": {}}))
    await asyncio.wait_for(channel.ready(), TIMEOUT)
    assert [(n.method, n.params) for n in recorder.notes] == [("notifications/resources/updated", {"uri": "a://b"})]


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "server_request", "id": 0, "method": "roots/list", "params": {}},
        {"type": "server_request", "id": -3, "method": "roots/list", "params": {}},
        {"type": "server_request", "id": True, "method": "roots/list", "params": {}},
        {"type": "server_request", "id": "7", "method": "roots/list", "params": {}},
        {"type": "server_request", "id": 2**60, "method": "roots/list", "params": {}},
        {"type": "server_request", "method": "roots/list", "params": {}},
        {"type": "server_request", "id": 1, "method": "tools/call", "params": {}},
        {"type": "server_request", "id": 1, "method": 5, "params": {}},
        {"type": "server_request", "id": 1, "method": "roots/list", "params": []},
        {"type": "server_request", "id": 1, "method": "roots/list", "params": {}, "related": "x"},
        {"type": "server_request", "id": 1, "method": "roots/list", "params": {}, "related": 1.5},
        {"type": "notification", "method": "notifications/cancelled", "params": {}},
        {"type": "notification", "method": "notifications/message", "params": "x"},
        {"type": "answer", "id": 1, "result": {}},
    ],
)
async def test_malformed_frames_are_protocol_violations(
    link: FakeLink, channel: AgentChannel, bad: dict[str, Any]
) -> None:
    link.feed(line(bad))
    assert isinstance(await ended(channel), ProtocolViolation)


async def test_a_request_id_reused_while_unanswered_is_a_violation(
    link: FakeLink, channel: AgentChannel, recorder: Recorder
) -> None:
    recorder.gate = asyncio.Event()
    link.feed(server_request(4), server_request(4))
    error = await ended(channel)
    assert isinstance(error, ProtocolViolation) and "again" in error.message


async def test_more_unanswered_server_requests_than_the_cap_is_a_violation(
    link: FakeLink, channel: AgentChannel, recorder: Recorder
) -> None:
    recorder.gate = asyncio.Event()
    link.feed(b"".join(server_request(i) for i in range(1, MAX_SERVER_REQUESTS + 2)))
    error = await ended(channel)
    assert isinstance(error, ProtocolViolation) and str(MAX_SERVER_REQUESTS) in error.message
    await asyncio.sleep(0.01)
    assert len(recorder.requests) <= MAX_SERVER_REQUESTS
    assert recorder.cancelled == len(recorder.requests)  # the handlers that had started were let go
    assert not [f for f in link.sent if f["type"] == "answer"]  # nothing is written to an ended channel


async def test_answered_ids_may_be_used_again(link: FakeLink, channel: AgentChannel, recorder: Recorder) -> None:
    link.feed(server_request(4))
    await answers(link, 1)
    link.feed(server_request(4))
    assert [a["id"] for a in await answers(link, 2)] == [4, 4]
    assert channel.terminal_error is None
