"""Conversions of the protocol RPCs (templates, completion, logging, watch events, input requests and answers).

Beside ``convert`` (which holds the rest), pure like it: requests become domain values, raising
``InvalidArgument`` for what the caller got wrong; domain values become response messages.
"""

from __future__ import annotations

from typing import Any, get_args

import mcp_types

from runner.api import inputs
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api.convert import dump_json, findings_to_proto, outcome_to_proto
from runner.api.timestamps import set_time
from runner.errors import ClientDeclined, InvalidArgument
from runner.guard.findings import Finding
from runner.sessions.continuations import Answer, InputRequest, Step
from runner.sessions.models import ServerNotification

LOGGING_LEVELS: tuple[str, ...] = get_args(mcp_types.LoggingLevel)
_LISTS = {f"notifications/{kind}/list_changed": kind for kind in ("tools", "resources", "prompts")}


def template_to_proto(template: mcp_types.ResourceTemplate) -> Any:
    return pb.ResourceTemplate(
        uri_template=template.uri_template,
        name=template.name,
        title=template.title or "",
        description=template.description or "",
        mime_type=template.mime_type or "",
        annotations_json=dump_json(template.annotations),
    )


def templates_to_proto(templates: list[mcp_types.ResourceTemplate], findings: tuple[Finding, ...]) -> Any:
    return pb.ListResourceTemplatesResponse(
        resource_templates=[template_to_proto(t) for t in templates], findings=findings_to_proto(findings)
    )


def complete_params(request: Any) -> mcp_types.CompleteRequestParams:
    """A CompleteRequest as MCP's params: the reference, the argument and its context."""
    kind = request.WhichOneof("ref")
    ref: mcp_types.PromptReference | mcp_types.ResourceTemplateReference
    if kind == "prompt":
        ref = mcp_types.PromptReference(type="ref/prompt", name=inputs.name(request.prompt, "prompt"))
    elif kind == "resource_template":
        uri = inputs.text(request.resource_template, "resource_template", inputs.MAX_URI, required=True)
        ref = mcp_types.ResourceTemplateReference(type="ref/resource", uri=uri)
    else:
        raise InvalidArgument("say what to complete: prompt (a name) or resource_template (a URI template)")
    argument = mcp_types.CompletionArgument(
        name=inputs.name(request.argument_name, "argument_name"),
        value=inputs.text(request.argument_value, "argument_value", inputs.MAX_PROMPT_VALUE, multiline=True),
    )
    chosen = inputs.prompt_arguments(request.context_arguments)
    context = mcp_types.CompletionContext(arguments=chosen) if chosen else None
    return mcp_types.CompleteRequestParams(ref=ref, argument=argument, context=context)


def completion_to_proto(result: mcp_types.CompleteResult) -> Any:
    completion = result.completion
    msg = pb.CompleteResponse(values=list(completion.values), has_more=bool(completion.has_more))
    if completion.total is not None:
        msg.total = completion.total
    return msg


def logging_level(level: str) -> str:
    if level not in LOGGING_LEVELS:
        shown = inputs.text(level, "level", inputs.MAX_NAME)[:40]
        raise InvalidArgument(f"level {shown!r} is not one of {', '.join(LOGGING_LEVELS)}")
    return level


def input_to_proto(request: InputRequest) -> Any:
    msg = pb.InputRequired(input_id=request.input_id, method=request.method, params_json=dump_json(request.params))
    set_time(msg.expires_at, request.expires_at)
    return msg


def step_to_proto(step: Step) -> Any:
    """A unary call's next response: its outcome, or the input request it waits for."""
    if isinstance(step, InputRequest):
        return pb.CallToolResponse(input_required=input_to_proto(step))
    return outcome_to_proto(step)


def answer_from_proto(request: Any) -> Answer:
    """An AnswerInputRequest's answer: the result as a JSON object, or the error the server is to get."""
    kind = request.WhichOneof("answer")
    if kind == "result_json":
        return inputs.arguments(request.result_json, "result_json")
    if kind == "error":
        if request.error.code == 0:
            raise InvalidArgument("error.code must be a JSON-RPC error code (e.g. -1: the user declined), not 0")
        message = inputs.text(request.error.message, "error.message", inputs.MAX_TEXT, multiline=True)
        return ClientDeclined(request.error.code, message or "the client declined")
    raise InvalidArgument("the answer is missing: give result_json or error")


def event_to_proto(notification: ServerNotification) -> Any | None:
    """A server notification as a watch event; None for one a watcher is not shown."""
    params = notification.params
    if notification.method == "notifications/message":
        log = pb.LogMessage(
            level=str(params.get("level", "")), logger=str(params.get("logger") or ""),
            data_json=dump_json(params.get("data")),
        )  # fmt: skip
        return pb.SessionEvent(log=log)
    if notification.method == "notifications/resources/updated":
        return pb.SessionEvent(resource_updated=str(params.get("uri", "")))
    if notification.method in _LISTS:
        return pb.SessionEvent(list_changed=_LISTS[notification.method])
    return None
