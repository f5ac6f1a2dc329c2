"""What both clients of ``runner.client`` send and get back: requests built from plain values, replies made results.

Apart from ``runner.client`` so that the async and sync clients there stay side by side, method for method,
while the one copy of what they share lives here: the request builders (open, call, audit query, the
authorization metadata), the result objects (``OpenedSession``, ``ToolResult``, ``Progress``) and the
conversions of reply messages into them. ``runner.client`` exports the result objects; import them from there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api.timestamps import set_time

Metadata = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class OpenedSession:
    """A ready session: ``server`` is a ``ServerInfo`` message, ``tools`` are ``Tool`` messages."""

    session_id: str
    server: pb.ServerInfo
    tools: list[pb.Tool]
    session: pb.Session
    findings: list[pb.Finding]
    """What the sanitizer found in the server's instructions and tool definitions (held-back tools too)."""


@dataclass(frozen=True)
class InputRequest:
    """A server's request to the caller (sampling, elicitation, roots): answer it with ``answer_input``."""

    input_id: str
    method: str
    params: dict[str, Any]
    """The request's MCP params (parsed JSON)."""
    expires_at: float
    """Unix time; unanswered by then, the call it belongs to is cancelled."""


@dataclass(frozen=True)
class InputError:
    """An answer that refuses a server's request: the server gets this JSON-RPC error (-1: the user declined)."""

    code: int
    message: str


@dataclass(frozen=True)
class ToolResult:
    """A tool's validated result. ``content`` holds ``Content`` messages, ``findings`` ``Finding`` messages."""

    content: list[pb.Content]
    structured_content: Any
    """Parsed JSON, or None when the tool returned no structured content."""
    is_error: bool
    findings: list[pb.Finding]
    audit_id: str
    approval: pb.Approval | None = None
    """Set when the tool needs approval; PENDING means the call has not run (see ``pending``)."""
    input_request: InputRequest | None = None
    """Set (and nothing else) when the pending call waits for the caller's answer (``answer_input``)."""

    @property
    def pending(self) -> bool:
        """The call waits for an approver: call again with ``approval_id=result.approval.approval_id``."""
        return self.approval is not None and self.approval.state == pb.APPROVAL_STATE_PENDING

    @property
    def text(self) -> str:
        """The content blocks rendered as text, one per line (media and links as short placeholders)."""
        return "\n".join(content_text(c) for c in self.content)


@dataclass(frozen=True)
class Progress:
    """A progress notification the server sent during a streamed call."""

    progress: float
    total: float | None
    message: str


def content_text(content: pb.Content) -> str:
    """One content block as readable text."""
    kind = content.WhichOneof("kind")
    if kind == "text":
        return str(content.text)
    if kind in ("image", "audio"):
        media = getattr(content, kind)
        return f"[{kind}: {media.mime_type}, {len(media.data)} bytes]"
    if kind == "resource":
        res = content.resource
        if res.WhichOneof("body") == "text":
            return f"[resource {res.uri}]\n{res.text}"
        return f"[resource {res.uri}: {res.mime_type or 'binary'}, {len(res.blob)} bytes]"
    if kind == "resource_link":
        link = content.resource_link
        return f"[link: {link.uri}" + (f" ({link.name})" if link.name else "") + "]"
    return "[empty content]"


def open_request(
    profile: str, labels: Mapping[str, str] | None, limits: Mapping[str, float] | None
) -> pb.OpenSessionRequest:
    request = pb.OpenSessionRequest(profile=profile, labels=dict(labels or {}))
    if limits is not None:
        request.limits.CopyFrom(cast(Any, pb.Limits)(**limits))
    return request


def opened_session(response: pb.OpenSessionResponse) -> OpenedSession:
    return OpenedSession(
        session_id=response.session_id,
        server=response.server,
        tools=list(response.tools),
        session=response.session,
        findings=list(response.findings),
    )


def call_metadata(metadata: Metadata | None, token: str | None) -> tuple[tuple[str, str], ...]:
    sent = tuple(metadata or ())
    return (*sent, ("authorization", f"Bearer {token}")) if token else sent


def arguments_json(arguments: Mapping[str, Any]) -> str:
    """Compact JSON with non-ASCII text as itself: the service caps arguments_json at 1 MiB of UTF-8, and
    ``\\uXXXX`` escapes made Cyrillic text three times its size (a 400 KB Russian document to write was refused).
    Text that cannot be UTF-8 (a lone surrogate) goes escaped, so the service names it instead of protobuf
    failing to encode the request here."""
    compact = json.dumps(dict(arguments), separators=(",", ":"), ensure_ascii=False)
    try:
        compact.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(dict(arguments), separators=(",", ":"))
    return compact


def call_request(
    session_id: str,
    tool: str,
    arguments: Mapping[str, Any] | None,
    timeout_ms: int,
    approval_id: str,
    answers_input: bool = False,
) -> pb.CallToolRequest:
    return pb.CallToolRequest(
        session_id=session_id,
        tool=tool,
        arguments_json=arguments_json(arguments) if arguments is not None else "",
        timeout_ms=timeout_ms,
        approval_id=approval_id,
        answers_input=answers_input,
    )


def answer_request(session_id: str, input_id: str, answer: Mapping[str, Any] | InputError) -> pb.AnswerInputRequest:
    request = pb.AnswerInputRequest(session_id=session_id, input_id=input_id)
    if isinstance(answer, InputError):
        request.error.CopyFrom(pb.InputError(code=answer.code, message=answer.message))
    else:
        request.result_json = arguments_json(answer)
    return request


def input_request(message: pb.InputRequired) -> InputRequest:
    return InputRequest(
        input_id=message.input_id,
        method=message.method,
        params=json.loads(message.params_json) if message.params_json else {},
        expires_at=message.expires_at.seconds + message.expires_at.nanos / 1e9,
    )


def audit_query(
    record_id: str,
    session_id: str,
    caller: str,
    since: float | None,
    until: float | None,
    kinds: Iterable[str],
    after_seq: int,
    limit: int,
) -> pb.QueryAuditRequest:
    request = pb.QueryAuditRequest(
        record_id=record_id, session_id=session_id, caller=caller, kinds=list(kinds), after_seq=after_seq,
        limit=limit,
    )  # fmt: skip
    if since is not None:
        set_time(request.since, since)
    if until is not None:
        set_time(request.until, until)
    return request


def tool_result(response: pb.CallToolResponse) -> ToolResult:
    text = response.structured_content_json
    return ToolResult(
        content=list(response.content),
        structured_content=json.loads(text) if text else None,
        is_error=response.is_error,
        findings=list(response.findings),
        audit_id=response.audit_id,
        approval=response.approval if response.HasField("approval") else None,
        input_request=input_request(response.input_required) if response.HasField("input_required") else None,
    )


def stream_item(message: pb.CallToolStreamResponse) -> Progress | pb.Approval | InputRequest | ToolResult:
    kind = message.WhichOneof("event")
    if kind == "input_required":
        return input_request(message.input_required)
    if kind == "approval":
        approval: pb.Approval = message.approval
        return approval
    if kind == "progress":
        event = message.progress
        return Progress(
            progress=event.progress,
            total=event.total if event.HasField("total") else None,
            message=event.message,
        )
    return tool_result(message.result)
