"""Pure conversions between the domain (``runner.sessions.models``, ``mcp_types``) and protobuf.

The servicer is conversion only, and all of the conversion lives here so it can
be tested without a server. Requests become domain values (raising
``InvalidArgument`` for what the caller got wrong); domain values become
response messages. JSON travels as compact JSON text so integers and nesting
survive exactly; audit data travels as canonical JSON, the text its hash covers.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import mcp_types
from pydantic import BaseModel

from runner.api import inputs
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api.timestamps import set_time, unix_time
from runner.approvals import Approval, ApprovalState
from runner.audit.records import KINDS, AuditQuery, AuditRecord, ReplayVerdict, Verification, canonical_json
from runner.errors import InvalidArgument, ResultRejected
from runner.guard.findings import Finding
from runner.sessions.catalog import ProfileEntry, SessionLogs
from runner.sessions.models import (
    LimitsRequest,
    OpenedSession,
    ProgressEvent,
    ServerInfo,
    SessionInfo,
    SessionState,
    ToolCallOutcome,
    Usage,
)

ContentBlock = (
    mcp_types.TextContent
    | mcp_types.ImageContent
    | mcp_types.AudioContent
    | mcp_types.ResourceLink
    | mcp_types.EmbeddedResource
)
ResourceContents = mcp_types.TextResourceContents | mcp_types.BlobResourceContents

_APPROVAL_STATE = {
    ApprovalState.PENDING: pb.APPROVAL_STATE_PENDING,
    ApprovalState.APPROVED: pb.APPROVAL_STATE_APPROVED,
    ApprovalState.DENIED: pb.APPROVAL_STATE_DENIED,
    ApprovalState.EXPIRED: pb.APPROVAL_STATE_EXPIRED,
}

_STATE = {
    SessionState.STARTING: pb.SESSION_STATE_STARTING,
    SessionState.READY: pb.SESSION_STATE_READY,
    SessionState.CLOSED: pb.SESSION_STATE_CLOSED,
    SessionState.FAILED: pb.SESSION_STATE_FAILED,
}


def dump_json(value: Any) -> str:
    """Compact JSON text; ``None`` becomes the empty string (the proto's "absent")."""
    if value is None:
        return ""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


# ----------------------------------------------------------------- requests


def parse_arguments(arguments_json: str) -> dict[str, Any]:
    """The tool arguments of a CallToolRequest; empty text means no arguments (checked by the door)."""
    return inputs.arguments(arguments_json)


def limits_from_proto(request: Any) -> LimitsRequest | None:
    """The ``limits`` of an OpenSessionRequest; unset or 0 fields keep the profile's value."""
    if not request.HasField("limits"):
        return None
    lim = request.limits
    for name in ("memory_bytes", "pids", "call_timeout_ms", "idle_timeout_ms", "max_lifetime_ms"):
        if getattr(lim, name) < 0:
            raise InvalidArgument(f"limits.{name} must not be negative")
    if lim.cpus < 0 or not math.isfinite(lim.cpus):
        raise InvalidArgument("limits.cpus must be a non-negative number")

    def secs(ms: int) -> float | None:
        return ms / 1000 if ms else None

    return LimitsRequest(
        memory_bytes=lim.memory_bytes or None,
        cpus=lim.cpus or None,
        pids=lim.pids or None,
        call_timeout_s=secs(lim.call_timeout_ms),
        idle_timeout_s=secs(lim.idle_timeout_ms),
        max_lifetime_s=secs(lim.max_lifetime_ms),
    )


def require_session_id(session_id: str) -> str:
    return inputs.identifier(session_id, "session_id")


# ----------------------------------------------------------------- sessions


def usage_to_proto(usage: Usage) -> Any:
    return pb.Usage(
        wall_ms=_ms(usage.wall_seconds),
        cpu_ms=_ms(usage.cpu_seconds),
        peak_memory_bytes=usage.peak_memory_bytes,
        calls=usage.calls,
    )


def server_to_proto(server: ServerInfo) -> Any:
    return pb.ServerInfo(
        name=server.name,
        version=server.version,
        protocol_version=server.protocol_version,
        instructions=server.instructions or "",
    )


def session_to_proto(info: SessionInfo) -> Any:
    msg = pb.Session(
        session_id=info.session_id,
        profile=info.profile,
        caller=info.caller,
        state=_STATE.get(info.state, pb.SESSION_STATE_UNSPECIFIED),
        age_ms=_ms(info.age_seconds),
        usage=usage_to_proto(info.usage),
        labels=dict(info.labels),
        failure=info.failure or "",
        network=info.network,
        runtime=info.runtime,
        mounts=list(info.mounts),
        workspace_bytes=info.workspace_bytes,
    )
    for decision in info.egress:
        entry = msg.egress.add(
            method=decision.method, host=decision.host, port=decision.port, address=decision.address,
            rule=decision.rule, allowed=decision.allowed, code=decision.code, reason=decision.reason,
        )
        set_time(entry.time, decision.time)
    set_time(msg.created_at, info.created_at)
    if info.server is not None:
        msg.server.CopyFrom(server_to_proto(info.server))
    return msg


def opened_to_proto(opened: OpenedSession) -> Any:
    return pb.OpenSessionResponse(
        session_id=opened.info.session_id,
        server=server_to_proto(opened.server),
        tools=[tool_to_proto(t) for t in opened.tools],
        session=session_to_proto(opened.info),
        findings=findings_to_proto(opened.findings),
    )


def profile_to_proto(entry: ProfileEntry) -> Any:
    return pb.ProfileInfo(
        name=entry.name,
        description=entry.description,
        image=entry.image,
        network=entry.network,
        runtime=entry.runtime,
        tools_known=entry.tools is not None,
        tools=[tool_to_proto(t) for t in entry.tools or ()],
        tools_session_id=entry.tools_session_id,
    )


def logs_to_proto(logs: SessionLogs) -> Any:
    return pb.GetSessionLogsResponse(
        session=session_to_proto(logs.info), stderr_tail=logs.stderr_tail, findings=findings_to_proto(logs.findings)
    )


# -------------------------------------------------------------------- tools


def tool_to_proto(tool: mcp_types.Tool) -> Any:
    return pb.Tool(
        name=tool.name,
        title=tool.title or "",
        description=tool.description or "",
        input_schema_json=dump_json(tool.input_schema),
        output_schema_json=dump_json(tool.output_schema),
        annotations_json=dump_json(tool.annotations),
    )


def _size(size: int | None) -> int:
    """A server's declared size as the proto's int64 (``guard.validate`` refused any size outside it)."""
    return 0 if size is None else size


def _b64decode(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ResultRejected(f"{what} is not valid base64") from None


def resource_contents_to_proto(contents: ResourceContents) -> Any:
    msg = pb.ResourceContents(uri=str(contents.uri), mime_type=contents.mime_type or "")
    if isinstance(contents, mcp_types.TextResourceContents):
        msg.text = contents.text
    else:
        msg.blob = _b64decode(contents.blob, "resource blob")
    return msg


def content_to_proto(block: ContentBlock) -> Any:
    msg = pb.Content(annotations_json=dump_json(block.annotations))
    if isinstance(block, mcp_types.TextContent):
        msg.text = block.text
    elif isinstance(block, mcp_types.ImageContent):
        msg.image.CopyFrom(pb.Media(data=_b64decode(block.data, "image data"), mime_type=block.mime_type))
    elif isinstance(block, mcp_types.AudioContent):
        msg.audio.CopyFrom(pb.Media(data=_b64decode(block.data, "audio data"), mime_type=block.mime_type))
    elif isinstance(block, mcp_types.EmbeddedResource):
        msg.resource.CopyFrom(resource_contents_to_proto(block.resource))
    elif isinstance(block, mcp_types.ResourceLink):
        msg.resource_link.CopyFrom(
            pb.ResourceLink(
                uri=str(block.uri),
                name=block.name,
                title=block.title or "",
                description=block.description or "",
                mime_type=block.mime_type or "",
                size=_size(block.size),
            )
        )
    else:  # pragma: no cover - the guard only lets known content types through
        raise ResultRejected(f"unsupported content type {type(block).__name__}")
    return msg


def findings_to_proto(findings: Iterable[Finding]) -> list[Any]:
    return [pb.Finding(kind=f.kind, count=f.count, action=f.action, where=f.where) for f in findings]


def approval_to_proto(approval: Approval) -> Any:
    msg = pb.Approval(
        approval_id=approval.approval_id,
        session_id=approval.session_id,
        caller=approval.caller,
        profile=approval.profile,
        tool=approval.tool,
        arguments_json=dump_json(dict(approval.arguments)),
        rule=approval.rule,
        state=_APPROVAL_STATE.get(approval.state, pb.APPROVAL_STATE_UNSPECIFIED),
        decided_by=approval.decided_by,
        reason=approval.reason,
        used=approval.used,
    )
    set_time(msg.requested_at, approval.requested_at)
    set_time(msg.expires_at, approval.expires_at)
    if approval.decided_at is not None:
        set_time(msg.decided_at, approval.decided_at)
    return msg


def outcome_to_proto(outcome: ToolCallOutcome) -> Any:
    msg = pb.CallToolResponse(findings=findings_to_proto(outcome.findings), audit_id=outcome.audit_id)
    if outcome.approval is not None:
        msg.approval.CopyFrom(approval_to_proto(outcome.approval))
    result = outcome.result
    if result is not None:
        msg.content.extend(content_to_proto(block) for block in result.content)
        msg.structured_content_json = dump_json(result.structured_content)
        msg.is_error = bool(result.is_error)
    return msg


def progress_to_proto(event: ProgressEvent) -> Any:
    msg = pb.ProgressEvent(progress=event.progress, message=event.message or "")
    if event.total is not None:
        msg.total = event.total
    return pb.CallToolStreamResponse(progress=msg)


# ---------------------------------------------------------- resources/prompts


def resource_to_proto(resource: mcp_types.Resource) -> Any:
    return pb.Resource(
        uri=str(resource.uri),
        name=resource.name,
        title=resource.title or "",
        description=resource.description or "",
        mime_type=resource.mime_type or "",
        size=_size(resource.size),
    )


def read_result_to_proto(contents: Iterable[ResourceContents], findings: Iterable[Finding]) -> Any:
    return pb.ReadResourceResponse(
        contents=[resource_contents_to_proto(c) for c in contents], findings=findings_to_proto(findings)
    )


def prompt_to_proto(prompt: mcp_types.Prompt) -> Any:
    return pb.Prompt(
        name=prompt.name,
        title=prompt.title or "",
        description=prompt.description or "",
        arguments=[
            pb.PromptArgument(
                name=arg.name,
                title=arg.title or "",
                description=arg.description or "",
                required=bool(arg.required),
            )
            for arg in prompt.arguments or ()
        ],
    )


def prompt_result_to_proto(result: mcp_types.GetPromptResult, findings: Iterable[Finding]) -> Any:
    return pb.GetPromptResponse(
        description=result.description or "",
        messages=[
            pb.PromptMessage(role=str(m.role), content=content_to_proto(m.content)) for m in result.messages
        ],
        findings=findings_to_proto(findings),
    )


# -------------------------------------------------------------------- audit


def audit_query_from_proto(request: Any) -> AuditQuery:
    """A QueryAuditRequest as the query the audit log answers; unset timestamps are no bound."""
    unknown = sorted(set(inputs.kinds(list(request.kinds))) - set(KINDS))
    if unknown:
        raise InvalidArgument(f"unknown audit record kind {', '.join(map(repr, unknown))}; known: {', '.join(KINDS)}")
    if request.after_seq < 0:
        raise InvalidArgument("after_seq must not be negative")
    if request.limit < 0:
        raise InvalidArgument("limit must not be negative (0 means no limit)")
    since = unix_time(inputs.timestamp(request.since, "since")) if request.HasField("since") else None
    until = unix_time(inputs.timestamp(request.until, "until")) if request.HasField("until") else None
    if since is not None and until is not None and since >= until:
        raise InvalidArgument("since must be before until (since is inclusive, until exclusive)")
    return AuditQuery(
        record_id=inputs.identifier(request.record_id, "record_id", required=False),
        session_id=inputs.identifier(request.session_id, "session_id", required=False),
        caller=inputs.text(request.caller, "caller", inputs.MAX_TEXT),
        since=since,
        until=until,
        kinds=tuple(dict.fromkeys(request.kinds)),
        after_seq=request.after_seq,
        limit=request.limit,
    )


def _plain(value: Any) -> Any:
    """``value`` with every Mapping a dict and every tuple a list, so it serializes as JSON."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def audit_record_to_proto(record: AuditRecord) -> Any:
    msg = pb.AuditRecord(
        seq=record.seq,
        id=record.id,
        kind=record.kind,
        session_id=record.session_id,
        caller=record.caller,
        data_json=canonical_json(_plain(record.data)),
        prev_hash=record.prev,
        hash=record.hash,
    )
    set_time(msg.at, record.at)
    return msg


def verification_to_proto(verification: Verification) -> Any:
    return pb.VerifyAuditResponse(
        intact=verification.intact,
        checked=verification.checked,
        first_seq=verification.first_seq,
        head_seq=verification.head_seq,
        head_hash=verification.head_hash,
        broken_seq=verification.broken_seq,
        broken_id=verification.broken_id,
        problem=verification.problem,
    )


def verdict_to_proto(verdict: ReplayVerdict) -> Any:
    return pb.ReplayVerdict(
        index=verdict.index,
        tool=verdict.tool,
        verdict=verdict.verdict,
        diff_json=canonical_json(_plain(verdict.diff)) if verdict.diff else "",
        reason=verdict.reason,
        original_audit_id=verdict.original_audit_id,
        replay_audit_id=verdict.replay_audit_id,
        replay_session_id=verdict.replay_session_id,
    )
