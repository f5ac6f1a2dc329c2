"""A 2026-07-28 client on a lease whose server speaks only 2025-11-25: the server's requests as input-required rounds.

Such a server (every npm server: the sandbox's agent fell back to ``initialize``) asks its client mid-call for
sampling, elicitation or roots, where a 2026 client expects an ``InputRequiredResult`` and a retry. The door holds
the call running in its sandbox between the client's requests (a ``WaitingCall`` of
``runner.sessions.continuations``, as a unary gRPC CallTool is held) and answers the HTTP request with every server
request the call holds once it has been quiet for ``SETTLE_S`` (requests sent together are asked together), each
under a key the door mints, and a sealed ``requestState`` naming the held call (``runner.door.seal``: bound to
caller, lease, request; single use; TTL).

The retry's ``inputResponses`` are checked against their requests before the state is used up (the host's
``check_answer``: an answer that does not fit is -32602 naming what, and the same state may be sent again), then
handed to the server, and the retry waits for the call's next step: its result, or its next requests. A request
left unanswered is asked again, under its key, with a new state. A request for a capability the client did not
declare in its ``_meta`` is answered -32601 to the server at once; one that cannot be shown to the client (its
sanitized params no longer fit the MCP type) cancels the call, and the client is told why. A retry that never
comes: ``ttl_s`` after the round, the call is cancelled in its sandbox; a client that leaves mid-round cancels it
at once.

The server's notifications and progress during the call go to the client's request waiting on it, if any (between
rounds nobody hears them).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import mcp_types as types
from mcp.server.session import ServerSession

from runner.door.leases import Binding
from runner.door.seal import AGAIN, Opened, StateRefused
from runner.door.talkback import input_request, lacking, notifier
from runner.errors import (
    JSONRPC_METHOD_NOT_FOUND,
    ClientDeclined,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResultRejected,
)
from runner.sessions.continuations import Continuations, PendingInput, WaitingCall
from runner.sessions.models import Exchange, ProgressCallback, ProgressEvent, ServerNotification, ServerRequest

log = logging.getLogger(__name__)

T = TypeVar("T")
SETTLE_S = 0.05
"""A round is answered once the call has asked nothing new for this long (a server's requests sent together go in
one round)."""
KEY_PREFIX = "mcp-runner/request-"
"""The door's keys for a server's requests in ``inputRequests`` (distinct from the approval's key)."""

Start = Callable[[Exchange, ProgressCallback], Coroutine[Any, Any, T]]
"""Starts the call in the sandbox with the door's exchange and progress callback."""


@dataclass(frozen=True)
class Paused:
    """The call holds requests for the client: answer with ``result``, its state sealed naming ``held_call``."""

    result: types.InputRequiredResult
    held_call: str


@dataclass(frozen=True)
class _Round:
    """The client's request now waiting on a held call: where its notifications and progress go."""

    session: ServerSession
    request_id: types.RequestId | None
    capabilities: types.ClientCapabilities | None


class HeldCall(Generic[T]):
    """One call running in its sandbox across its client's requests."""

    def __init__(self, call_id: str, binding: Binding, pending: WaitingCall[T]) -> None:
        self.call_id = call_id
        self.binding = binding
        self.pending = pending
        self.capabilities: types.ClientCapabilities | None = None
        """What the client declared in its latest request's ``_meta``."""
        self.round: _Round | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.keys: dict[str, str] = {}
        """Input id -> the key its request was shown under."""
        self.answers: list[tuple[PendingInput, dict[str, Any]]] = []
        """Answers checked with the retry's state, handed over when the retry runs."""

    def key_of(self, pending: PendingInput) -> str:
        return self.keys.setdefault(pending.request.input_id, f"{KEY_PREFIX}{len(self.keys) + 1}")

    def shown(self) -> list[tuple[str, PendingInput]]:
        """The requests held unanswered that the client was shown, with their keys."""
        return [
            (self.keys[input_id], pending)
            for input_id, pending in self.pending.conversation.open.items()
            if input_id in self.keys
        ]

    async def on_input(self, request: ServerRequest) -> dict[str, Any]:
        missing = lacking(self.capabilities, request)
        if missing is not None:
            raise ClientDeclined(JSONRPC_METHOD_NOT_FOUND, missing)
        return await self.pending.conversation.on_input(request)

    async def on_notification(self, note: ServerNotification) -> None:
        current = self.round
        if current is not None:
            await notifier(current.session, current.request_id)(note)

    async def on_progress(self, event: ProgressEvent) -> None:
        current = self.round
        if current is not None:
            await current.session.report_progress(event.progress, event.total, event.message)


class Translator:
    """The calls the door holds for their clients' answers, by an unguessable id (named in the sealed state)."""

    def __init__(self, ttl_s: float, settle_s: float = SETTLE_S) -> None:
        self.ttl_s = ttl_s
        self._settle_s = settle_s
        self._continuations = Continuations(ttl_s)
        self._held: dict[str, HeldCall[Any]] = {}

    def checker(self, binding: Binding, params: Mapping[str, Any]) -> Callable[[Opened], None]:
        """Checks a retry's ``inputResponses`` against what its held call asked, before its state is used up."""
        responses = params.get("inputResponses")

        def check(opened: Opened) -> None:
            if not opened.held_call:
                return
            held = self._find(binding, opened.held_call)
            given = responses if isinstance(responses, Mapping) else {}
            checked: list[tuple[PendingInput, dict[str, Any]]] = []
            for key, pending in held.shown():
                answer = given.get(key)
                if answer is None:
                    continue
                if not isinstance(answer, dict):
                    raise InvalidArgument(f"inputResponses[{key!r}] must be an object (the {pending.request.method} "
                                          "result); answer again with the same requestState")  # fmt: skip
                try:
                    self._continuations.check(
                        pending.request.input_id, answer, caller=binding.caller, session_id=binding.session_id
                    )
                except InvalidArgument as exc:
                    raise InvalidArgument(f"inputResponses[{key!r}]: {exc.message}; answer again with the same "
                                          "requestState") from None  # fmt: skip
                except (NotFound, FailedPrecondition):
                    continue  # ended in between (its call's end): nothing to hand over
                checked.append((pending, answer))
            held.answers = checked

        return check

    async def run(
        self, session: ServerSession, request_id: types.RequestId | None, binding: Binding, opened: Opened | None,
        start: Start[T],
    ) -> T | Paused:  # fmt: skip
        """The call's next step: a new call started by ``start``, or the held call ``opened`` names, its checked
        answers handed to its server."""
        if opened is not None and opened.held_call:
            held: HeldCall[T] = self._find(binding, opened.held_call)
            self._hand_over(held)
        else:
            held = self._hold(binding, start)
        return await self._next(held, _Round(session, request_id, session.client_capabilities))

    def _hold(self, binding: Binding, start: Start[T]) -> HeldCall[T]:
        call_id = "held_" + secrets.token_urlsafe(18)
        pending: WaitingCall[T] = WaitingCall(self._continuations, caller=binding.caller, session_id=binding.session_id)
        held = HeldCall(call_id, binding, pending)
        pending.start(start(Exchange(on_input=held.on_input, on_notification=held.on_notification), held.on_progress))
        self._held[call_id] = held
        binding.held.add(call_id)
        return held

    def _find(self, binding: Binding, call_id: str) -> HeldCall[Any]:
        held = self._held.get(call_id)
        if held is None or (held.binding.caller, held.binding.session_id) != (binding.caller, binding.session_id):
            raise StateRefused(
                "ended",
                "the call this requestState continues has ended (cancelled when its client left or did not retry "
                f"within {self.ttl_s:g} s, or its sandbox ended); {AGAIN}",
            )
        return held

    def _hand_over(self, held: HeldCall[T]) -> None:
        answers, held.answers = held.answers, []
        for pending, answer in answers:
            if pending.request.input_id in held.pending.conversation.open:
                self._continuations.resolve(pending, answer)

    async def _next(self, held: HeldCall[T], current: _Round) -> T | Paused:
        if held.expiry is not None:
            held.expiry.cancel()
            held.expiry = None
        held.capabilities = current.capabilities
        held.round = current
        try:
            step = await held.pending.next_requests(self._settle_s)
            asked = self._asked(held, step) if isinstance(step, list) else {}
        except BaseException:
            self._drop(held)
            raise
        finally:
            held.round = None
        if not isinstance(step, list):
            self._drop(held)
            return step
        held.expiry = asyncio.get_running_loop().call_later(self.ttl_s, self._expire, held)
        return Paused(types.InputRequiredResult(input_requests=asked), held.call_id)

    @staticmethod
    def _asked(held: HeldCall[Any], step: list[PendingInput]) -> dict[str, types.InputRequest]:
        """The round's input requests by key; a request that cannot be shown cancels the call (ResultRejected)."""
        asked: dict[str, types.InputRequest] = {}
        for pending in step:
            try:
                asked[held.key_of(pending)] = input_request(_shown(pending))
            except Exception as exc:
                held.pending.cancel()
                if not isinstance(exc, ResultRejected):
                    log.exception("a held call's %s request could not be built", pending.request.method)
                why = exc.message if isinstance(exc, ResultRejected) else "it could not be built"
                raise ResultRejected(
                    f"the server's {pending.request.method} request cannot be put to this client ({why}): the call "
                    "was cancelled"
                ) from None
        return asked

    def abandon(self, call_id: str) -> None:
        """Cancel a held call whose round could not be handed to its client (no requestState could be minted)."""
        held = self._held.get(call_id)
        if held is not None:
            held.pending.cancel()
            self._drop(held)

    def _expire(self, held: HeldCall[Any]) -> None:
        log.info("cancelling a call of %r held %g s for answers that never came", held.binding.caller, self.ttl_s)
        held.expiry = None
        held.pending.cancel()
        self._drop(held)

    def _drop(self, held: HeldCall[Any]) -> None:
        if held.expiry is not None:
            held.expiry.cancel()
        self._held.pop(held.call_id, None)
        held.binding.held.discard(held.call_id)


def _shown(pending: PendingInput) -> ServerRequest:
    return ServerRequest(pending.request.method, pending.request.params)
