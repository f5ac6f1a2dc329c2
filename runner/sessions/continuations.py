"""Server requests waiting for a gRPC caller's answer, and the unary tool calls that wait with them.

A gRPC caller answers a server's request (sampling, elicitation, roots) with an RPC of its own
(AnswerInput), so the request waits here between RPCs under an input id that is unguessable (``secrets``),
bound to the caller and the session that were asked, answerable once, and good for ``ttl_s``. An answer
that does not fit its request is refused (InvalidArgument) before it uses the id up. An id of
another caller or session reads exactly like an unknown one (nothing is learned by guessing); a used,
expired or withdrawn one says which, for as long as it is remembered (``KEEP_ENDED``).

What happens to a request nobody answers is its asker's choice (``on_expiry``): a tool call is cancelled in
its sandbox, a watch's request is answered with an error. A unary CallTool cannot hold its RPC open while the
caller thinks, so its call runs on as a ``PendingCall``: each RPC (the CallTool, then each AnswerInput) takes
the call's next step (its outcome, or its next input request); an RPC that ends while the call runs (deadline
passed, caller gone) cancels it, as a unary call's end always did. The MCP door's translation for a 2026-07-28
client of a 2025 server (``runner.door.translate``) holds its calls the same way, taking each step as the batch of
requests open once the call has gone quiet (``next_requests``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from runner.errors import ClientDeclined, DeadlineExceeded, FailedPrecondition, NotFound, ResultRejected
from runner.guard.inbound import check_answer, check_server_request
from runner.sessions.models import Exchange, ServerRequest, ToolCallOutcome

INPUT_TTL_S = 300.0
"""How long a server request waits for its answer: a person may be the one answering (elicitation)."""
KEEP_ENDED = 4096
"""Answered, expired and withdrawn input ids remembered (to say which), oldest forgotten first."""


@dataclass(frozen=True)
class InputRequest:
    """A server request as its caller sees it: answer it with ``input_id``."""

    input_id: str
    method: str
    params: dict[str, Any]
    expires_at: float
    """Unix time after which it is no longer answerable."""


Answer = dict[str, Any] | ClientDeclined
"""The caller's answer: the result's wire JSON, or the JSON-RPC error the server is to get."""


class PendingInput:
    """One server request waiting for its answer (``answer`` resolves with it)."""

    def __init__(self, request: InputRequest, caller: str, session_id: str, on_expiry: Callable[[], None]) -> None:
        self.request = request
        self.caller = caller
        self.session_id = session_id
        self.answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.on_expiry = on_expiry
        self.call: WaitingCall[Any] | None = None
        """The unary call this request belongs to: AnswerInput returns its next step."""
        self.timer: asyncio.TimerHandle | None = None


class Continuations:
    """Every server request waiting for a gRPC caller's answer, by input id."""

    def __init__(self, ttl_s: float = INPUT_TTL_S, *, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._open: dict[str, PendingInput] = {}
        self._ended: OrderedDict[str, tuple[str, str, str]] = OrderedDict()
        """input id -> (caller, session id, why it can no longer be answered)."""

    def ask(
        self, request: ServerRequest, *, caller: str, session_id: str, on_expiry: Callable[[PendingInput], None]
    ) -> PendingInput:
        """Hold ``request`` for ``caller``'s answer; unanswered after ``ttl_s``, ``on_expiry`` decides its fate."""
        input_id = "in_" + secrets.token_urlsafe(24)
        shown = InputRequest(input_id, request.method, dict(request.params), self._clock() + self.ttl_s)
        pending = PendingInput(shown, caller, session_id, lambda: on_expiry(pending))
        self._open[input_id] = pending
        pending.timer = asyncio.get_running_loop().call_later(self.ttl_s, self._expire, input_id)
        return pending

    def answer(self, input_id: str, answer: Answer, *, caller: str, session_id: str) -> PendingInput:
        """Hand ``answer`` to the request ``input_id`` of this caller and session, once."""
        pending = self.check(input_id, answer, caller=caller, session_id=session_id)
        self.resolve(pending, answer)
        return pending

    def check(self, input_id: str, answer: Answer, *, caller: str, session_id: str) -> PendingInput:
        """The request ``input_id`` of this caller and session, if ``answer`` fits it; nothing is used up."""
        pending = self._open.get(input_id)
        if pending is None or (pending.caller, pending.session_id) != (caller, session_id):
            ended = self._ended.get(input_id)
            if ended is not None and ended[:2] == (caller, session_id):
                raise FailedPrecondition(f"input request {input_id} {ended[2]}")
            raise NotFound(f"no input request {input_id!r} waits for this caller in session {session_id!r}")
        if not isinstance(answer, ClientDeclined):
            _check(pending.request, answer)
        return pending

    def resolve(self, pending: PendingInput, answer: Answer) -> None:
        """Hand ``pending`` its ``answer`` (checked by ``check``, in the same turn of the event loop), once."""
        self._end(pending, "was already answered (an input request is answered once)")
        if isinstance(answer, ClientDeclined):
            pending.answer.set_exception(answer)
        else:
            pending.answer.set_result(answer)

    def withdraw(self, pending: PendingInput, why: str) -> None:
        """``pending`` can no longer be answered (``why`` completes "input request X …"); no-op once ended."""
        if self._open.get(pending.request.input_id) is pending:
            self._end(pending, why)
            pending.answer.cancel()

    def decline(self, pending: PendingInput, why: str, code: int, message: str) -> None:
        """Withdraw ``pending`` and answer its server with JSON-RPC error ``code``."""
        if self._open.get(pending.request.input_id) is pending:
            self._end(pending, why)
            pending.answer.set_exception(ClientDeclined(code, message))

    def _expire(self, input_id: str) -> None:
        pending = self._open.get(input_id)
        if pending is not None:
            pending.timer = None
            self._end(pending, f"expired: it was not answered within {self.ttl_s:g} s")
            pending.on_expiry()

    def _end(self, pending: PendingInput, why: str) -> None:
        input_id = pending.request.input_id
        del self._open[input_id]
        if pending.timer is not None:
            pending.timer.cancel()
        self._ended[input_id] = (pending.caller, pending.session_id, why)
        while len(self._ended) > KEEP_ENDED:
            self._ended.popitem(last=False)

    def __len__(self) -> int:
        return len(self._open)


def _check(request: InputRequest, answer: dict[str, Any]) -> None:
    """InvalidArgument naming what of ``answer`` does not fit ``request``, before the answer is used up: the caller
    may answer again. The session's own check of the answer (``runner.sessions.inbox``) still decides."""
    try:
        checked = check_server_request(request.method, request.params)
    except ResultRejected:
        return  # the request as sanitized no longer parses alone: the session's check, on the original, decides
    check_answer(checked, answer)


class Conversation:
    """The server requests of one call (or watch), held in ``continuations`` and handed to ``deliver``."""

    def __init__(
        self,
        continuations: Continuations,
        *,
        caller: str,
        session_id: str,
        deliver: Callable[[InputRequest], None],
        on_expiry: Callable[[PendingInput], None],
        gone: str = "can no longer be answered: its call ended first",
    ) -> None:
        """``gone`` completes "input request X …" for a request whose asker ended before it was answered."""
        self._continuations = continuations
        self._gone = gone
        self._caller = caller
        self._session_id = session_id
        self._deliver = deliver
        self._on_expiry = on_expiry
        self.open: dict[str, PendingInput] = {}
        """The requests held and not yet answered, by input id, oldest first."""
        self.call: WaitingCall[Any] | None = None

    async def on_input(self, request: ServerRequest) -> dict[str, Any]:
        """The ``InputHandler``: hold the request, show it to the caller, wait for the answer."""
        pending = self._continuations.ask(
            request, caller=self._caller, session_id=self._session_id, on_expiry=self._on_expiry
        )
        pending.call = self.call
        self.open[pending.request.input_id] = pending
        try:
            self._deliver(pending.request)
            return await pending.answer
        finally:
            self.open.pop(pending.request.input_id, None)
            self._continuations.withdraw(pending, self._gone)
            if self.call is not None:
                self.call.wake()

    def end(self) -> None:
        """Nothing this conversation holds can be answered any more."""
        for pending in list(self.open.values()):
            self._continuations.withdraw(pending, self._gone)

    def decline_all(self, code: int, message: str) -> None:
        """Withdraw everything held, answering each server with JSON-RPC error ``code``."""
        for pending in list(self.open.values()):
            self._continuations.decline(pending, self._gone, code, message)


Step = ToolCallOutcome | InputRequest
T = TypeVar("T")


def unanswered(request: InputRequest, ttl_s: float) -> DeadlineExceeded:
    """How a call cancelled for want of an answer ends."""
    return DeadlineExceeded(
        f"input request {request.input_id} ({request.method}) was not answered within {ttl_s:g} s: "
        "the call was cancelled"
    )


class WaitingCall(Generic[T]):
    """A call that waits across requests for its caller's answers (see the module's docstring); ``T`` is what it
    ends with (a unary CallTool's ``ToolCallOutcome``, a door call's result)."""

    def __init__(self, continuations: Continuations, *, caller: str, session_id: str) -> None:
        self._steps: deque[InputRequest] = deque()
        self._changed = asyncio.Event()
        self._expired: InputRequest | None = None
        self._continuations = continuations
        self.conversation = Conversation(
            continuations, caller=caller, session_id=session_id, deliver=self._step, on_expiry=self._expire
        )
        self.conversation.call = self
        self._task: asyncio.Task[T] | None = None

    @property
    def exchange(self) -> Exchange:
        return Exchange(on_input=self.conversation.on_input)

    def start(self, call: Coroutine[Any, Any, T]) -> None:
        self._task = asyncio.create_task(call)
        self._task.add_done_callback(self._ended)

    def cancel(self) -> None:
        """Cancel the call (in its sandbox too); nobody is told how it ended."""
        if self._task is not None:
            self._task.cancel()

    async def next_step(self, timeout: float | None) -> T | InputRequest:
        """The call's outcome, or its next input request, within ``timeout`` (else the call is cancelled).

        The RPC waiting here ending any other way (its caller gone) cancels the call too.
        """
        assert self._task is not None
        task = self._task
        try:
            async with asyncio.timeout(timeout):
                while True:
                    while self._steps:
                        step = self._steps.popleft()
                        if step.input_id in self.conversation.open:
                            return step
                    if task.done():
                        return self._outcome(task)
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            task.cancel()
            raise DeadlineExceeded(
                "the call neither ended nor asked for input within this RPC's deadline: it was cancelled"
            ) from None
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def next_requests(self, settle_s: float) -> T | list[PendingInput]:
        """The call's outcome, or every request it holds still waiting for its answer once no new one has come for
        ``settle_s`` (requests a server sends together are shown together). Requests just answered do not count:
        with none waiting this waits, without a settle time, for the call's outcome or its next request. The waiter
        cancelled cancels the call."""
        assert self._task is not None
        task = self._task
        try:
            while not task.done():
                self._changed.clear()
                if not self._waiting():
                    await self._changed.wait()
                    continue
                try:
                    await asyncio.wait_for(self._changed.wait(), settle_s)
                except TimeoutError:
                    waiting = self._waiting()
                    if waiting:
                        self._steps.clear()
                        return waiting
            return self._outcome(task)
        except asyncio.CancelledError:
            task.cancel()
            raise

    def wake(self) -> None:
        """Something the waiter looks at changed (a request of the call ended): it looks again."""
        self._changed.set()

    def _waiting(self) -> list[PendingInput]:
        """The call's requests not yet answered (an answered one stays in ``open`` until its asker resumes)."""
        return [pending for pending in self.conversation.open.values() if not pending.answer.done()]

    def _outcome(self, task: asyncio.Task[T]) -> T:
        if task.cancelled():
            if self._expired is not None:
                raise unanswered(self._expired, self._continuations.ttl_s)
            raise FailedPrecondition("the call was cancelled")
        return task.result()

    def _step(self, request: InputRequest) -> None:
        self._steps.append(request)
        self._changed.set()

    def _expire(self, pending: PendingInput) -> None:
        self._expired = pending.request
        if self._task is not None:
            self._task.cancel()

    def _ended(self, task: asyncio.Task[T]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved: the next RPC reports it, or nobody is left to hear it
        self.conversation.end()
        self._changed.set()


class PendingCall(WaitingCall[ToolCallOutcome]):
    """A unary gRPC CallTool waiting across RPCs for its caller's answers."""
