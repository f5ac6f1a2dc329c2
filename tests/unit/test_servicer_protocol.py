"""The protocol RPCs end to end: a real grpc.aio server on 127.0.0.1:0 over a fake SessionManager (door-contract §2),
driven by the client: templates, completion, logging, subscriptions, ping, WatchSession, and server requests
answered through AnswerInput in CallTool (pending across RPCs) and CallToolStream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import grpc
import mcp_types
import pytest

from runner import errors
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api._proto.mcp_runner.v1 import runner_pb2_grpc
from runner.api.auth import Authenticator, hash_token, new_token
from runner.api.servicer import RunnerServicer
from runner.client import AsyncRunnerClient, InputError, InputRequest, Progress, RunnerClient, ToolResult
from runner.config import AuthConfig
from runner.guard.findings import Finding
from runner.sessions.continuations import Continuations
from runner.sessions.models import (
    Exchange,
    InputHandler,
    NotificationHandler,
    OpenedSession,
    Sanitized,
    ServerInfo,
    ServerNotification,
    ServerRequest,
    SessionInfo,
    SessionState,
    ToolCallOutcome,
    Usage,
)

ALICE, BOB = new_token(), new_token()
ELICIT = ServerRequest(
    "elicitation/create",
    {
        "mode": "form",
        "message": "Your name?",
        "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    },
)
ROOTS = ServerRequest("roots/list", {})


def _text(text: str) -> ToolCallOutcome:
    return ToolCallOutcome(result=mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text=text)]))


class FakeManager:
    """Duck-typed SessionManager: one READY session per caller ("s-alice", "s-bob"), answers from memory."""

    def __init__(self) -> None:
        self.states = {"s-alice": SessionState.READY, "s-bob": SessionState.READY}
        self.asked: list[tuple[str, Any]] = []
        self.listeners: dict[str, tuple[NotificationHandler | None, InputHandler | None]] = {}
        self.covers: dict[str, list[tuple[NotificationHandler | None, InputHandler | None] | None]] = {}
        self.cancelled: list[str] = []
        self.exchanges: list[Exchange | None] = []

    def _own(self, session_id: str, caller: str) -> None:
        if session_id != f"s-{caller}":
            raise errors.SessionNotFound(f"no session {session_id}")

    async def open(self, profile: str, *, caller: str, **options: Any) -> OpenedSession:
        info = self.get(f"s-{caller}", caller=caller)
        return OpenedSession(info=info, server=ServerInfo("fake", "1", "2025-11-25"), tools=())

    async def close(self, session_id: str, *, caller: str) -> SessionInfo:
        return self.get(session_id, caller=caller)

    def get(self, session_id: str, *, caller: str) -> SessionInfo:
        self._own(session_id, caller)
        return SessionInfo(session_id, "everything", caller, self.states[session_id], time.time(), 0.0, Usage())

    async def list_resource_templates(
        self, session_id: str, *, caller: str, timeout: float | None = None
    ) -> Sanitized[list[mcp_types.ResourceTemplate]]:
        self._own(session_id, caller)
        template = mcp_types.ResourceTemplate(uri_template="test://static/resource/{id}", name="static", title="S")
        return Sanitized([template], (Finding(kind="secret", count=1, action="redacted", where="[0].name"),))

    async def complete(
        self, session_id: str, params: mcp_types.CompleteRequestParams, *, caller: str, timeout: float | None = None
    ) -> mcp_types.CompleteResult:
        self._own(session_id, caller)
        self.asked.append(("complete", params))
        values = [v for v in ("python", "pytorch", "rust") if v.startswith(params.argument.value)]
        completion = mcp_types.Completion(values=values, total=len(values), has_more=False)
        return mcp_types.CompleteResult(completion=completion)

    async def set_logging_level(self, session_id: str, level: str, *, caller: str) -> None:
        self._own(session_id, caller)
        self.asked.append(("level", level))

    async def subscribe(self, session_id: str, uri: str, *, caller: str) -> None:
        self._own(session_id, caller)
        self.asked.append(("subscribe", uri))

    async def unsubscribe(self, session_id: str, uri: str, *, caller: str) -> None:
        self._own(session_id, caller)
        self.asked.append(("unsubscribe", uri))

    async def ping(self, session_id: str, *, caller: str) -> None:
        self._own(session_id, caller)
        self.asked.append(("ping", session_id))

    def listen(
        self,
        session_id: str,
        *,
        caller: str,
        on_notification: NotificationHandler | None = None,
        on_input: InputHandler | None = None,
    ) -> None:
        self._own(session_id, caller)
        if on_notification is None and on_input is None:
            self.listeners.pop(session_id, None)
        else:
            self.listeners[session_id] = (on_notification, on_input)

    def cover(
        self,
        session_id: str,
        *,
        caller: str,
        on_notification: NotificationHandler | None = None,
        on_input: InputHandler | None = None,
    ) -> Callable[[], None]:
        """As the manager's: a stack over the session's own listener, the newest in effect."""
        self._own(session_id, caller)
        stack = self.covers.setdefault(session_id, [self.listeners.get(session_id)])
        mine = (on_notification, on_input)
        stack.append(mine)
        self.listeners[session_id] = mine

        def uncover() -> None:
            stack[:] = [c for c in stack if c is not mine]
            top = stack[-1]
            if top is None:
                self.listeners.pop(session_id, None)
            else:
                self.listeners[session_id] = top

        return uncover

    async def call_tool(
        self,
        session_id: str,
        tool: str,
        arguments: dict[str, Any],
        *,
        caller: str,
        approval_id: str = "",
        timeout: float | None = None,
        on_progress: Any = None,
        on_approval: Any = None,
        exchange: Exchange | None = None,
    ) -> ToolCallOutcome:
        self._own(session_id, caller)
        self.exchanges.append(exchange)
        if exchange is None or exchange.on_input is None:
            return _text("nobody to ask")
        try:
            if tool == "slow":
                await asyncio.sleep(30)
            answers = []
            for request in (ELICIT, ROOTS)[: 2 if tool == "ask_twice" else 1]:
                try:
                    answers.append(await exchange.on_input(request))
                except errors.ClientDeclined as exc:
                    answers.append({"declined": exc.code, "message": exc.message})
            return _text(f"answers {answers}")
        except asyncio.CancelledError:
            self.cancelled.append(tool)
            raise


def _tokens(token_hash: str) -> str | None:
    return {hash_token(ALICE): "alice", hash_token(BOB): "bob"}.get(token_hash)


@asynccontextmanager
async def _serving(fake: FakeManager, ttl_s: float = 60.0) -> AsyncIterator[str]:
    """A real server whose servicer keeps input requests for ``ttl_s``; callers alice and bob by token."""
    server = grpc.aio.server()
    servicer = RunnerServicer(
        fake, Authenticator(AuthConfig(tokens=True), _tokens), continuations=Continuations(ttl_s)  # type: ignore[arg-type]
    )
    runner_pb2_grpc.add_RunnerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@pytest.fixture
def fake() -> FakeManager:
    return FakeManager()


@pytest.fixture
async def alice(fake: FakeManager) -> AsyncIterator[AsyncRunnerClient]:
    async with _serving(fake) as address, AsyncRunnerClient(address, token=ALICE) as client:
        yield client


async def _until(condition: Any) -> None:
    """Wait for ``condition()`` (events of the server's own pace), failing after a generous bound."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.02)


def _code(info: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> tuple[grpc.StatusCode, str]:
    return info.value.code(), info.value.details() or ""


# ------------------------------------------------------------ unary protocol RPCs


async def test_templates_complete_logging_subscriptions_ping(alice: AsyncRunnerClient, fake: FakeManager) -> None:
    templates = await alice.list_resource_templates("s-alice")
    assert [(t.uri_template, t.name, t.title) for t in templates] == [("test://static/resource/{id}", "static", "S")]
    completed = await alice.complete("s-alice", prompt="langs", argument="language", value="py", context={"a": "b"})
    assert list(completed.values) == ["python", "pytorch"] and completed.total == 2 and not completed.has_more
    by_template = await alice.complete("s-alice", resource_template="test://static/resource/{id}", argument="id")
    assert len(by_template.values) == 3
    await alice.set_logging_level("s-alice", "warning")
    await alice.subscribe("s-alice", "test://static/resource/1")
    await alice.unsubscribe("s-alice", "test://static/resource/1")
    await alice.ping("s-alice")
    params = fake.asked[0][1]
    assert isinstance(params.ref, mcp_types.PromptReference) and params.ref.name == "langs"
    assert (params.argument.name, params.argument.value, params.context.arguments) == ("language", "py", {"a": "b"})
    assert isinstance(fake.asked[1][1].ref, mcp_types.ResourceTemplateReference)
    assert fake.asked[2:] == [
        ("level", "warning"), ("subscribe", "test://static/resource/1"), ("unsubscribe", "test://static/resource/1"),
        ("ping", "s-alice"),
    ]  # fmt: skip


async def test_bad_requests_are_invalid_argument(alice: AsyncRunnerClient, fake: FakeManager) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await alice.set_logging_level("s-alice", "loud")
    assert _code(info)[0] == grpc.StatusCode.INVALID_ARGUMENT and "debug, info" in _code(info)[1]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        request = pb.CompleteRequest(session_id="s-alice", argument_name="x")
        await alice._stub.Complete(request, metadata=alice._metadata)
    assert _code(info)[0] == grpc.StatusCode.INVALID_ARGUMENT and "prompt" in _code(info)[1]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await alice.subscribe("s-alice", "")
    assert _code(info) == (grpc.StatusCode.INVALID_ARGUMENT, "uri is required")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await alice.ping("s-bob")
    assert _code(info)[0] == grpc.StatusCode.NOT_FOUND
    assert fake.asked == []


async def test_new_rpcs_need_credentials(fake: FakeManager) -> None:
    async with _serving(fake) as address, AsyncRunnerClient(address) as anonymous:
        calls = [
            anonymous.list_resource_templates("s-alice"), anonymous.ping("s-alice"),
            anonymous.complete("s-alice", prompt="p", argument="a"), anonymous.set_logging_level("s-alice", "info"),
            anonymous.subscribe("s-alice", "x://y"), anonymous.unsubscribe("s-alice", "x://y"),
            anonymous.answer_input("s-alice", "in_x", {}),
        ]  # fmt: skip
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [e async for e in anonymous.watch_session("s-alice")]
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert fake.asked == [] and fake.listeners == {}


# ------------------------------------------------------------ CallTool with input


async def test_unary_call_stays_pending_until_answered(alice: AsyncRunnerClient, fake: FakeManager) -> None:
    first = await alice.call_tool("s-alice", "ask_twice", {}, answers_input=True)
    assert first.content == [] and first.input_request is not None
    asked = first.input_request
    assert asked.method == "elicitation/create" and asked.params["message"] == "Your name?"
    assert asked.input_id.startswith("in_") and len(asked.input_id) > 30 and asked.expires_at > time.time()
    second = await alice.answer_input("s-alice", asked.input_id, {"action": "accept", "content": {"name": "Ada"}})
    assert second is not None and second.input_request is not None and second.input_request.method == "roots/list"
    done = await alice.answer_input("s-alice", second.input_request.input_id, {"roots": []})
    assert done is not None and done.input_request is None
    assert done.text == "answers [{'action': 'accept', 'content': {'name': 'Ada'}}, {'roots': []}]"


async def test_without_answers_input_the_manager_gets_no_handler(alice: AsyncRunnerClient, fake: FakeManager) -> None:
    result = await alice.call_tool("s-alice", "ask", {})
    assert result.text == "nobody to ask" and fake.exchanges == [None]
    streamed = [item async for item in alice.call_tool_stream("s-alice", "ask", {})]
    assert isinstance(streamed[-1], ToolResult) and streamed[-1].text == "nobody to ask"
    assert fake.exchanges == [None, None]


async def test_a_declining_answer_reaches_the_server_as_its_error(alice: AsyncRunnerClient) -> None:
    first = await alice.call_tool("s-alice", "ask", {}, answers_input=True)
    assert first.input_request is not None
    done = await alice.answer_input("s-alice", first.input_request.input_id, InputError(-1, "no, thanks"))
    assert done is not None and done.text == "answers [{'declined': -1, 'message': 'no, thanks'}]"


async def test_an_answer_that_breaks_the_schema_is_refused_and_not_used_up(alice: AsyncRunnerClient) -> None:
    first = await alice.call_tool("s-alice", "ask", {}, answers_input=True)
    assert first.input_request is not None
    input_id = first.input_request.input_id
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await alice.answer_input("s-alice", input_id, {"action": "accept", "content": {"name": 7}})
    code, details = _code(info)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "requestedSchema" in details and "name" in details
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await alice._stub.AnswerInput(
            pb.AnswerInputRequest(session_id="s-alice", input_id=input_id, result_json="[1]"), metadata=alice._metadata
        )
    assert _code(info) == (grpc.StatusCode.INVALID_ARGUMENT, "result_json must be a JSON object, got list")
    done = await alice.answer_input("s-alice", input_id, {"action": "decline"})
    assert done is not None and done.text == "answers [{'action': 'decline'}]"


async def test_input_ids_are_bound_to_caller_and_session_and_used_once(fake: FakeManager) -> None:
    async with _serving(fake) as address, AsyncRunnerClient(address, token=ALICE) as alice, AsyncRunnerClient(
        address, token=BOB
    ) as bob:
        first = await alice.call_tool("s-alice", "ask", {}, answers_input=True)
        assert first.input_request is not None
        input_id = first.input_request.input_id
        for client, session in ((bob, "s-bob"), (alice, "s-bob"), (alice, "s-alice")):
            wrong = input_id if client is not alice or session != "s-alice" else "in_" + "x" * 32
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.answer_input(session, wrong, {"action": "decline"})
            code, details = _code(info)
            assert code == grpc.StatusCode.NOT_FOUND and "no input request" in details
        assert await alice.answer_input("s-alice", input_id, {"action": "decline"}) is not None
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await alice.answer_input("s-alice", input_id, {"action": "decline"})
        assert _code(info) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"input request {input_id} was already answered (an input request is answered once)",
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:  # another caller learns nothing, even of a used one
            await bob.answer_input("s-alice", input_id, {"action": "decline"})
        assert _code(info)[0] == grpc.StatusCode.NOT_FOUND


async def test_an_unanswered_call_is_cancelled_at_the_ttl(fake: FakeManager) -> None:
    async with _serving(fake, ttl_s=0.2) as address, AsyncRunnerClient(address, token=ALICE) as alice:
        first = await alice.call_tool("s-alice", "ask", {}, answers_input=True)
        assert first.input_request is not None
        await _until(lambda: "ask" in fake.cancelled)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await alice.answer_input("s-alice", first.input_request.input_id, {"action": "decline"})
        code, details = _code(info)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "expired: it was not answered within 0.2 s" in details


async def test_the_rpc_deadline_cancels_a_running_call(alice: AsyncRunnerClient, fake: FakeManager) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await alice.call_tool("s-alice", "slow", {}, answers_input=True, timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _until(lambda: "slow" in fake.cancelled)


async def test_call_tool_answering_loops_over_every_request(alice: AsyncRunnerClient) -> None:
    seen: list[str] = []

    async def on_input(request: InputRequest) -> dict[str, Any]:
        seen.append(request.method)
        return {"roots": [{"uri": "file:///w"}]} if request.method == "roots/list" else {"action": "cancel"}

    result = await alice.call_tool_answering("s-alice", "ask_twice", {}, on_input)
    assert seen == ["elicitation/create", "roots/list"]
    assert result.text == "answers [{'action': 'cancel'}, {'roots': [{'uri': 'file:///w'}]}]"


def test_the_sync_client_answers_too(fake: FakeManager) -> None:
    async def main() -> tuple[str, list[str]]:
        async with _serving(fake) as address:
            def run() -> tuple[str, list[str]]:
                with RunnerClient(address, token=ALICE) as client:
                    result = client.call_tool_answering("s-alice", "ask", {}, lambda r: {"action": "decline"})
                    return result.text, [t.name for t in client.list_resource_templates("s-alice")]

            return await asyncio.to_thread(run)

    assert asyncio.run(main()) == ("answers [{'action': 'decline'}]", ["static"])


# ------------------------------------------------------------ CallToolStream with input


async def test_stream_shows_the_request_and_goes_on_after_the_answer(alice: AsyncRunnerClient) -> None:
    items: list[Any] = []
    async for item in alice.call_tool_stream("s-alice", "ask_twice", {}, answers_input=True):
        items.append(item)
        if isinstance(item, InputRequest):
            answer = {"roots": []} if item.method == "roots/list" else {"action": "accept", "content": {"name": "x"}}
            assert await alice.answer_input("s-alice", item.input_id, answer) is None
    assert [type(i) for i in items] == [InputRequest, InputRequest, ToolResult]
    assert not any(isinstance(i, Progress) for i in items)
    assert items[-1].text == "answers [{'action': 'accept', 'content': {'name': 'x'}}, {'roots': []}]"


async def test_stream_unanswered_past_the_ttl_is_deadline_exceeded(fake: FakeManager) -> None:
    async with _serving(fake, ttl_s=0.2) as address, AsyncRunnerClient(address, token=ALICE) as alice:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [item async for item in alice.call_tool_stream("s-alice", "ask", {}, answers_input=True)]
    code, details = _code(info)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "was not answered within 0.2 s" in details
    assert fake.cancelled == ["ask"]


# ------------------------------------------------------------ WatchSession


async def _next(events: AsyncIterator[Any]) -> Any:
    return await asyncio.wait_for(events.__anext__(), 10)


async def test_watch_delivers_notifications_and_requests(alice: AsyncRunnerClient, fake: FakeManager) -> None:
    events = alice.watch_session("s-alice")
    task = asyncio.ensure_future(_next(events))
    await _until(lambda: "s-alice" in fake.listeners)
    on_notification, on_input = fake.listeners["s-alice"]
    assert on_notification is not None and on_input is not None
    log_params = {"level": "info", "logger": "l", "data": {"n": 1}}
    await on_notification(ServerNotification("notifications/message", log_params))
    await on_notification(ServerNotification("notifications/resources/updated", {"uri": "test://r/1"}))
    await on_notification(ServerNotification("notifications/tools/list_changed", {}))
    await on_notification(ServerNotification("notifications/tools/list_changed", {}))  # one is waiting: not twice
    await on_notification(ServerNotification("notifications/prompts/list_changed", {}))
    log = await task
    assert (log.log.level, log.log.logger, log.log.data_json) == ("info", "l", '{"n":1}')
    assert (await _next(events)).resource_updated == "test://r/1"
    assert (await _next(events)).list_changed == "tools"
    assert (await _next(events)).list_changed == "prompts"
    answer = asyncio.ensure_future(on_input(ROOTS))
    asked = await _next(events)
    assert isinstance(asked, InputRequest) and asked.method == "roots/list"
    assert await alice.answer_input("s-alice", asked.input_id, {"roots": []}) is None
    assert await answer == {"roots": []}
    fake.states["s-alice"] = SessionState.CLOSED
    with pytest.raises(StopAsyncIteration):
        await _next(events)
    assert "s-alice" not in fake.listeners


async def test_a_newer_watch_replaces_the_older(alice: AsyncRunnerClient, fake: FakeManager) -> None:
    older = alice.watch_session("s-alice")
    first = asyncio.ensure_future(_next(older))
    await _until(lambda: "s-alice" in fake.listeners)
    old_handlers = fake.listeners["s-alice"]
    pending = asyncio.ensure_future(old_handlers[1](ROOTS))  # type: ignore[misc]
    assert isinstance(await first, InputRequest)
    newer = alice.watch_session("s-alice")
    second = asyncio.ensure_future(_next(newer))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _next(older)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "replaced" in (info.value.details() or "")
    with pytest.raises(errors.ClientDeclined) as declined:  # the older watch's request: its server hears why
        await pending
    assert declined.value.code == -32601
    assert fake.listeners["s-alice"] is not old_handlers  # the newer watch still listens
    await fake.listeners["s-alice"][0](ServerNotification("notifications/resources/list_changed", {}))  # type: ignore[misc]
    assert (await second).list_changed == "resources"
    await newer.aclose()


async def test_an_ended_watch_leaves_the_doors_listener_in_place(alice: AsyncRunnerClient, fake: FakeManager) -> None:
    """A gRPC watch of a door's session covers the listener the door set at initialize, and puts it back as it
    ends (it once removed it: the door's later server requests got -32601)."""

    async def door_notes(notification: ServerNotification) -> None:
        pass

    fake.listen("s-alice", caller="alice", on_notification=door_notes)
    door = fake.listeners["s-alice"]
    older = alice.watch_session("s-alice")
    first = asyncio.ensure_future(_next(older))
    await _until(lambda: fake.listeners["s-alice"] is not door)
    newer = alice.watch_session("s-alice")  # replaces the older watch, which ends under it
    second = asyncio.ensure_future(_next(newer))
    with pytest.raises(grpc.aio.AioRpcError):
        await first
    assert fake.listeners["s-alice"] is not door
    second.cancel()
    with suppress(asyncio.CancelledError):
        await second
    await newer.aclose()
    await _until(lambda: fake.listeners.get("s-alice") is door)


async def test_a_large_answer_is_taken(alice: AsyncRunnerClient) -> None:
    """Past the inline size an answer is parsed off the event loop: it is taken all the same."""
    first = await alice.call_tool("s-alice", "ask", {}, answers_input=True)
    assert first.input_request is not None
    name = "Ада " * 50_000
    answer = {"action": "accept", "content": {"name": name}}
    done = await alice.answer_input("s-alice", first.input_request.input_id, answer)
    assert done is not None and name in done.text


async def test_a_left_streams_request_says_so(alice: AsyncRunnerClient, fake: FakeManager) -> None:
    stream = alice.call_tool_stream("s-alice", "ask", {}, answers_input=True)
    asked = await _next(stream)
    assert isinstance(asked, InputRequest)
    await stream.aclose()  # the caller leaves: the call is cancelled
    await _until(lambda: "ask" in fake.cancelled)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await alice.answer_input("s-alice", asked.input_id, {"action": "decline"})
    assert _code(info) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"input request {asked.input_id} can no longer be answered: the stream it was sent on ended",
    )
