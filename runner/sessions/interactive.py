"""A request that talks back (``Exchange``): what its params carry in the 2026-07-28 era, and its input-required
answer.

In the stateless era a request carries the client's capabilities in its ``_meta`` (the agent puts them there from
the frame's ``capabilities``), and a retry carries the client's ``inputResponses`` and the server's own
``requestState``. The responses are the caller's input, checked against MCP's models before they are sent; the
state is the server's text coming back, so its intent record keeps a digest of it, never the text. An
input-required answer is the server's too: parsed, its requests sanitized (a person reads them), its state kept
as it was (the server must get it back verbatim) but recorded only as a digest.
"""

from __future__ import annotations

from typing import Any

import mcp_types

from runner.channel import Reply
from runner.errors import InvalidArgument
from runner.guard.inbound import check_input_responses, is_input_required, parse_input_required, sanitize_input_required
from runner.guard.validate import parse_input
from runner.sessions import outflow
from runner.sessions.journal import as_json
from runner.sessions.models import STATELESS_PROTOCOL, Exchange, Sanitized
from runner.sessions.session import LiveSession

JSONObject = dict[str, Any]
MAX_REQUEST_STATE_CHARS = 1024**2
"""A server's request state coming back from a client: the door removed its seal, yet it is still refused past
this (the server wrote it, within one message, but a caller could send anything)."""


def prepare(
    session: LiveSession, params: JSONObject, recorded: JSONObject | None, exchange: Exchange
) -> tuple[JSONObject, JSONObject | None, JSONObject | None]:
    """The params to send, what their intent record keeps (None: the params), and the capabilities for ``_meta``."""
    if session.protocol != STATELESS_PROTOCOL:
        if exchange.input_responses is not None or exchange.request_state is not None:
            raise InvalidArgument(
                f"session {session.id} speaks {session.protocol} with its server: input responses and a request "
                f"state belong to {STATELESS_PROTOCOL} sessions"
            )
        return params, recorded, None
    sent = dict(params)
    kept = dict(recorded if recorded is not None else params)
    if exchange.input_responses is not None:
        sent["inputResponses"] = kept["inputResponses"] = check_input_responses(exchange.input_responses)
    if exchange.request_state is not None:
        state = exchange.request_state
        if not isinstance(state, str) or len(state) > MAX_REQUEST_STATE_CHARS:
            raise InvalidArgument(f"a request state must be text of at most {MAX_REQUEST_STATE_CHARS} characters")
        sent["requestState"] = state
        kept["requestState"] = outflow.cursor_record(session, state)
    capabilities = None
    if exchange.client_capabilities is not None:
        checked = parse_input(mcp_types.ClientCapabilities, exchange.client_capabilities, "the client's capabilities")
        capabilities = checked.model_dump(mode="json", by_alias=True, exclude_none=True)
    return sent, kept if kept != sent else recorded, capabilities


def input_required(session: LiveSession, reply: Reply) -> bool:
    """Whether ``reply`` is an input-required answer: only a 2026-07-28 session's server may give one (in the
    older era ``resultType`` is a field like any other of the result)."""
    return session.protocol == STATELESS_PROTOCOL and is_input_required(reply.result)


async def needed_input(session: LiveSession, reply: Reply, what: str) -> Sanitized[mcp_types.InputRequiredResult]:
    """The input-required answer parsed and sanitized (ResultRejected or ResultBlocked as any result)."""
    small = outflow.small(reply)
    result = await outflow.run_guard_work(small, parse_input_required, reply.result, f"input request for {what}")
    return await outflow.sanitize(session, sanitize_input_required, result, f"the input request for {what}",
                                  inline=small)  # fmt: skip


def recorded(session: LiveSession, result: mcp_types.InputRequiredResult) -> JSONObject:
    """An input-required answer as its request's record keeps it: the request state as a digest."""
    kept: JSONObject = as_json(result.model_copy(update={"request_state": None}))
    if result.request_state is not None:
        kept["requestState"] = outflow.cursor_record(session, result.request_state)
    return kept
