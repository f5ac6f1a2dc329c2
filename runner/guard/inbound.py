"""What a sandboxed server sends unasked, and what a client answers it: validated and sanitized on the host.

A server's requests to the client (sampling, elicitation, roots) and its notifications are parsed into their
``mcp_types`` models with the bounds of any result (``parse_result``), then every string in them passes the
session's sanitizer, since a person reads them (an elicitation's message is a prompt put to a user). The
client's answer is parsed into the result model its request asks for, and an ``ElicitResult``'s content is
checked against the ``requestedSchema`` the server sent, compiled once, with the guard's safe validators
(``runner.guard.schema``): the server gets only an answer that fits what it asked for.

An input-required result (2026-07-28 era) carries requests of the same kinds, sanitized the same way; its
``requestState`` is the server's opaque state, handed back verbatim on the retry, so it is never rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mcp_types
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from pydantic import BaseModel

from runner.errors import InvalidArgument, ResultRejected
from runner.guard.findings import FindingLog
from runner.guard.results import sanitize_value
from runner.guard.sanitize import Sanitizer
from runner.guard.schema import UnsafeSchema, ValidationTooSlow, compile_schema, first_error, short
from runner.guard.validate import parse_input, parse_result

JSONObject = dict[str, Any]

SERVER_REQUESTS: dict[str, type[BaseModel]] = {
    "sampling/createMessage": mcp_types.CreateMessageRequest,
    "elicitation/create": mcp_types.ElicitRequest,
    "roots/list": mcp_types.ListRootsRequest,
}
"""The server requests the runner forwards to a client, by method, with their MCP request models: the one list
(the channel's frame check and the door's forwarding use it)."""
NOTIFICATIONS: dict[str, type[BaseModel]] = {
    "notifications/message": mcp_types.LoggingMessageNotification,
    "notifications/tools/list_changed": mcp_types.ToolListChangedNotification,
    "notifications/resources/list_changed": mcp_types.ResourceListChangedNotification,
    "notifications/prompts/list_changed": mcp_types.PromptListChangedNotification,
    "notifications/resources/updated": mcp_types.ResourceUpdatedNotification,
}
"""The server notifications the runner passes on, by method, with their MCP models: the one list."""


@dataclass(frozen=True)
class CheckedRequest:
    """A server's request to the client, parsed; with what its answer will be checked against."""

    method: str
    request: BaseModel
    """The whole request model (``CreateMessageRequest``, ``ElicitRequest``, ``ListRootsRequest``)."""
    answer_schema: Validator | None = None
    """An elicitation form's ``requestedSchema``, compiled: an accepted answer's content must fit it."""


def check_server_request(method: str, params: JSONObject) -> CheckedRequest:
    """ResultRejected naming what does not fit (the server is answered -32602 with it)."""
    model = SERVER_REQUESTS.get(method)
    if model is None:
        raise ResultRejected(f"the server sent a request the client does not take ({short(method, 60)!r})")
    request = parse_result(model, {"method": method, "params": params}, f"{method} request")
    validator = None
    if isinstance(request, mcp_types.ElicitRequest) and isinstance(request.params, mcp_types.ElicitRequestFormParams):
        schema = request.params.requested_schema
        if _holds_reference(schema):
            raise ResultRejected("the server's requestedSchema holds a reference; MCP asks for a flat object of "
                                 "primitive properties")  # fmt: skip
        try:
            validator = compile_schema(schema)
        except SchemaError as exc:
            problem = short(exc.message)
            raise ResultRejected(f"the server's requestedSchema is not valid JSON Schema: {problem}") from None
        except UnsafeSchema as exc:
            raise ResultRejected(f"the server's requestedSchema is refused: {exc}") from None
    return CheckedRequest(method, request, validator)


_REFERENCES = frozenset({"$ref", "$dynamicRef", "$recursiveRef"})


def _holds_reference(schema: Any) -> bool:
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not _REFERENCES.isdisjoint(item):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def sanitize_server_request(s: Sanitizer, checked: CheckedRequest, log: FindingLog) -> JSONObject:
    """The request's params as the client is shown them: every string sanitized (wire JSON)."""
    params = getattr(checked.request, "params", None)
    if params is None:
        return {}
    clean = sanitize_value(s, params, "params", log)
    dumped: JSONObject = clean.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


def check_answer(checked: CheckedRequest, answer: Any) -> JSONObject:
    """The client's answer as the server gets it (wire JSON of the validated model); InvalidArgument naming what
    does not fit (the server is answered -32602 with it)."""
    what = f"the client's answer to {checked.method}"
    result: BaseModel
    if checked.method == "sampling/createMessage":
        params = getattr(checked.request, "params", None)
        with_tools = isinstance(params, mcp_types.CreateMessageRequestParams) and params.tools is not None
        model = mcp_types.CreateMessageResultWithTools if with_tools else mcp_types.CreateMessageResult
        result = parse_input(model, answer, what)
    elif checked.method == "elicitation/create":
        elicited = parse_input(mcp_types.ElicitResult, answer, what)
        if elicited.action == "accept" and checked.answer_schema is not None:
            _check_content(checked.answer_schema, elicited.content or {}, what)
        result = elicited
    else:
        result = parse_input(mcp_types.ListRootsResult, answer, what)
    dumped: JSONObject = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


def _check_content(validator: Validator, content: JSONObject, what: str) -> None:
    try:
        error = first_error(validator, content)
    except (UnsafeSchema, ValidationTooSlow):
        raise InvalidArgument(f"{what} could not be checked against the requestedSchema in time") from None
    if error is not None:
        where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise InvalidArgument(f"{what} breaks the requestedSchema at {short(where, 120)}: {short(error.message)}")


def check_notification(method: str, params: JSONObject) -> BaseModel:
    """A notification's params as their model; ResultRejected naming what does not fit (it is dropped)."""
    model = NOTIFICATIONS.get(method)
    if model is None:
        raise ResultRejected(f"the server sent a notification the runner does not pass on ({short(method, 60)!r})")
    notification = parse_result(model, {"method": method, "params": params}, f"{method} notification")
    return getattr(notification, "params", None) or mcp_types.NotificationParams()


def sanitize_notification(s: Sanitizer, params: BaseModel, log: FindingLog) -> JSONObject:
    clean = sanitize_value(s, params, "params", log)
    dumped: JSONObject = clean.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


def sanitize_input_required(
    s: Sanitizer, result: mcp_types.InputRequiredResult, log: FindingLog
) -> mcp_types.InputRequiredResult:
    """Its input requests (and ``_meta``) sanitized; ``requestState`` is the server's, passed back as it was."""
    bare = result.model_copy(update={"request_state": None})
    clean = sanitize_value(s, bare, "", log)
    return clean.model_copy(update={"request_state": result.request_state})


def parse_input_required(raw: JSONObject, what: str) -> mcp_types.InputRequiredResult:
    return parse_result(mcp_types.InputRequiredResult, raw, what)


def is_input_required(raw: JSONObject) -> bool:
    """Whether a result is an input-required one (2026-07-28: ``resultType``), not the request's own result."""
    return raw.get("resultType") == "input_required"


def check_input_responses(raw: Any) -> JSONObject:
    """A client's answers to an input-required result, as the retry carries them; InvalidArgument if they do not
    fit MCP's ``InputResponses``."""
    if not isinstance(raw, dict):
        raise InvalidArgument("inputResponses must be a JSON object of answers by key")
    checked: JSONObject = {}
    for key, answer in raw.items():
        what = f"inputResponses[{short(str(key), 40)!r}]"
        checked[key] = _one_response(answer, what)
    return checked


def _one_response(answer: Any, what: str) -> JSONObject:
    """One answer: whichever of the input response models it fits (they share no required field)."""
    problems = []
    for model in (mcp_types.ElicitResult, mcp_types.ListRootsResult, mcp_types.CreateMessageResult,
                  mcp_types.CreateMessageResultWithTools):  # fmt: skip
        try:
            parsed = parse_input(model, answer, what)
        except InvalidArgument as exc:
            problems.append(exc.message)
            continue
        dumped: JSONObject = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
        return dumped
    raise InvalidArgument(f"{what} fits no MCP input response ({short(problems[0], 200)})")
