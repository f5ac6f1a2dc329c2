"""Pure conversions between domain values / mcp_types and protobuf."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import mcp_types
import pytest

from runner.api import convert
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.approvals import Approval, ApprovalState
from runner.errors import InvalidArgument, ResultRejected
from runner.guard.findings import Finding
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


def test_parse_arguments() -> None:
    assert convert.parse_arguments("") == {}
    assert convert.parse_arguments("  ") == {}
    assert convert.parse_arguments('{"n": 12345678901234567890}') == {"n": 12345678901234567890}
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        convert.parse_arguments("{")
    with pytest.raises(InvalidArgument, match="JSON object, got list"):
        convert.parse_arguments("[]")


def test_limits_from_proto() -> None:
    assert convert.limits_from_proto(pb.OpenSessionRequest(profile="p")) is None
    empty = pb.OpenSessionRequest(profile="p", limits=pb.Limits())
    assert convert.limits_from_proto(empty) == LimitsRequest()
    full = pb.OpenSessionRequest(
        limits=pb.Limits(
            memory_bytes=1 << 30,
            cpus=0.5,
            pids=64,
            call_timeout_ms=2500,
            idle_timeout_ms=60_000,
            max_lifetime_ms=3_600_000,
        )
    )
    assert convert.limits_from_proto(full) == LimitsRequest(
        memory_bytes=1 << 30,
        cpus=0.5,
        pids=64,
        call_timeout_s=2.5,
        idle_timeout_s=60.0,
        max_lifetime_s=3600.0,
    )
    with pytest.raises(InvalidArgument, match=r"limits\.pids"):
        convert.limits_from_proto(pb.OpenSessionRequest(limits=pb.Limits(pids=-1)))
    with pytest.raises(InvalidArgument, match=r"limits\.cpus"):
        convert.limits_from_proto(pb.OpenSessionRequest(limits=pb.Limits(cpus=float("nan"))))


def _info(**overrides: object) -> SessionInfo:
    values: dict[str, object] = {
        "session_id": "s1",
        "profile": "time",
        "caller": "alice",
        "state": SessionState.FAILED,
        "created_at": 1_700_000_000.25,
        "age_seconds": 2.5,
        "usage": Usage(wall_seconds=2.5, cpu_seconds=0.125, peak_memory_bytes=4096, calls=7),
        "labels": {"k": "v"},
        "failure": "OOM-killed",
    }
    values.update(overrides)
    return SessionInfo(**values)  # type: ignore[arg-type]


def test_session_to_proto() -> None:
    msg = convert.session_to_proto(_info())
    assert (msg.session_id, msg.profile, msg.caller) == ("s1", "time", "alice")
    assert msg.state == pb.SESSION_STATE_FAILED
    assert msg.created_at.seconds == 1_700_000_000 and msg.created_at.nanos == 250_000_000
    assert msg.age_ms == 2500
    assert (msg.usage.wall_ms, msg.usage.cpu_ms, msg.usage.peak_memory_bytes, msg.usage.calls) == (
        2500,
        125,
        4096,
        7,
    )
    assert dict(msg.labels) == {"k": "v"}
    assert msg.failure == "OOM-killed"
    assert not msg.HasField("server")

    server = ServerInfo(name="srv", version="2", protocol_version="2025-06-18")
    with_server = convert.session_to_proto(_info(server=server, failure=None))
    assert with_server.server.name == "srv" and with_server.server.instructions == ""
    assert with_server.failure == ""


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (SessionState.STARTING, pb.SESSION_STATE_STARTING),
        (SessionState.READY, pb.SESSION_STATE_READY),
        (SessionState.CLOSED, pb.SESSION_STATE_CLOSED),
        (SessionState.FAILED, pb.SESSION_STATE_FAILED),
    ],
)
def test_states(state: SessionState, expected: int) -> None:
    assert convert.session_to_proto(_info(state=state)).state == expected


def test_tool_to_proto_keeps_json_exact() -> None:
    tool = mcp_types.Tool(
        name="add",
        title="Add",
        description="Adds",
        input_schema={"type": "object", "properties": {"n": {"maximum": 2**63}}},
        output_schema={"type": "object"},
        annotations=mcp_types.ToolAnnotations(read_only_hint=True),
    )
    msg = convert.tool_to_proto(tool)
    assert (msg.name, msg.title, msg.description) == ("add", "Add", "Adds")
    assert json.loads(msg.input_schema_json)["properties"]["n"]["maximum"] == 2**63
    assert json.loads(msg.output_schema_json) == {"type": "object"}
    assert json.loads(msg.annotations_json) == {"readOnlyHint": True}

    bare = convert.tool_to_proto(mcp_types.Tool(name="t", input_schema={"type": "object"}))
    assert (bare.title, bare.description, bare.output_schema_json, bare.annotations_json) == ("", "", "", "")


def test_opened_to_proto() -> None:
    server = ServerInfo(name="srv", version="2", protocol_version="p", instructions="hi")
    tool = mcp_types.Tool(name="t", input_schema={"type": "object"})
    msg = convert.opened_to_proto(OpenedSession(info=_info(server=server), server=server, tools=(tool,)))
    assert msg.session_id == "s1" and msg.server.instructions == "hi"
    assert [t.name for t in msg.tools] == ["t"] and msg.session.session_id == "s1"
    assert list(msg.findings) == []
    finding = Finding(kind="poisoned_tool", count=1, action="blocked", where="tools[bad].description")
    flagged = convert.opened_to_proto(
        OpenedSession(info=_info(server=server), server=server, tools=(tool,), findings=(finding,))
    )
    assert _rows(flagged.findings) == [("poisoned_tool", 1, "blocked", "tools[bad].description")]


def _rows(findings: Any) -> list[tuple[str, int, str, str]]:
    return [(f.kind, f.count, f.action, f.where) for f in findings]


def test_findings_to_proto_keeps_order_and_fields() -> None:
    findings = (
        Finding(kind="email", count=3, action="redacted", where="content[0].text"),
        Finding(kind="control_chars", count=12, action="stripped", where="content[1].text"),
        Finding(kind="injection_role_marker", count=1, action="flagged", where="structured_content.a"),
    )
    assert _rows(convert.findings_to_proto(findings)) == [
        ("email", 3, "redacted", "content[0].text"),
        ("control_chars", 12, "stripped", "content[1].text"),
        ("injection_role_marker", 1, "flagged", "structured_content.a"),
    ]
    assert convert.findings_to_proto(()) == []


def test_content_kinds() -> None:
    text = convert.content_to_proto(
        mcp_types.TextContent(type="text", text="hi", annotations=mcp_types.Annotations(priority=0.5))
    )
    assert text.WhichOneof("kind") == "text" and text.text == "hi"
    assert json.loads(text.annotations_json) == {"priority": 0.5}

    image = convert.content_to_proto(mcp_types.ImageContent(type="image", data="iVBORw==", mime_type="image/png"))
    assert image.WhichOneof("kind") == "image"
    assert image.image.data == b"\x89PNG" and image.image.mime_type == "image/png"

    audio = convert.content_to_proto(mcp_types.AudioContent(type="audio", data="AAE=", mime_type="audio/wav"))
    assert audio.WhichOneof("kind") == "audio" and audio.audio.data == b"\x00\x01"

    embedded_text = convert.content_to_proto(
        mcp_types.EmbeddedResource(
            type="resource", resource=mcp_types.TextResourceContents(uri="mem://a", text="body")
        )
    )
    assert embedded_text.resource.uri == "mem://a" and embedded_text.resource.text == "body"

    embedded_blob = convert.content_to_proto(
        mcp_types.EmbeddedResource(
            type="resource",
            resource=mcp_types.BlobResourceContents(uri="mem://b", mime_type="x/y", blob="AAE="),
        )
    )
    assert embedded_blob.resource.WhichOneof("body") == "blob"
    assert embedded_blob.resource.blob == b"\x00\x01" and embedded_blob.resource.mime_type == "x/y"

    link = convert.content_to_proto(
        mcp_types.ResourceLink(type="resource_link", uri="file:///x", name="x", size=12)
    )
    assert link.WhichOneof("kind") == "resource_link"
    assert (link.resource_link.uri, link.resource_link.name, link.resource_link.size) == ("file:///x", "x", 12)


def test_bad_base64_is_rejected() -> None:
    with pytest.raises(ResultRejected, match="base64"):
        convert.content_to_proto(mcp_types.ImageContent(type="image", data="not base64!", mime_type="image/png"))


def test_outcome_to_proto() -> None:
    result = mcp_types.CallToolResult(
        content=[mcp_types.TextContent(type="text", text="ok")],
        structured_content={"n": 2**62, "nested": [1, {"a": None}]},
        is_error=True,
    )
    finding = Finding(kind="secret", count=2, action="redacted", where="content[0].text")
    msg = convert.outcome_to_proto(ToolCallOutcome(result=result, findings=(finding,), audit_id="a1"))
    assert msg.content[0].text == "ok"
    assert json.loads(msg.structured_content_json) == {"n": 2**62, "nested": [1, {"a": None}]}
    assert msg.is_error is True and msg.audit_id == "a1"
    assert [(f.kind, f.count, f.action, f.where) for f in msg.findings] == [
        ("secret", 2, "redacted", "content[0].text")
    ]
    assert not msg.HasField("approval")
    plain = convert.outcome_to_proto(ToolCallOutcome(result=mcp_types.CallToolResult(content=[])))
    assert plain.structured_content_json == "" and plain.is_error is False


def test_pending_outcome_has_approval_and_no_result() -> None:
    finding = Finding(kind="email", count=1, action="redacted", where="arguments.to")
    outcome = ToolCallOutcome(result=None, findings=(finding,), audit_id="a2", approval=_approval())
    msg = convert.outcome_to_proto(outcome)
    assert msg.HasField("approval")
    assert msg.approval.state == pb.APPROVAL_STATE_PENDING and msg.approval.approval_id == "apr_0123456789abcdef"
    assert list(msg.content) == [] and msg.structured_content_json == "" and msg.is_error is False
    assert msg.audit_id == "a2" and _rows(msg.findings) == [("email", 1, "redacted", "arguments.to")]


def test_approved_outcome_has_approval_and_result() -> None:
    result = mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text="deployed")])
    approval = _approval(state=ApprovalState.APPROVED, decided_by="bob", decided_at=1_700_000_010.0, used=True)
    msg = convert.outcome_to_proto(ToolCallOutcome(result=result, approval=approval))
    assert msg.content[0].text == "deployed"
    assert msg.approval.state == pb.APPROVAL_STATE_APPROVED and msg.approval.used is True


def _approval(**overrides: Any) -> Approval:
    values: dict[str, Any] = {
        "approval_id": "apr_0123456789abcdef",
        "session_id": "s1",
        "caller": "alice",
        "profile": "files",
        "tool": "delete",
        "arguments": MappingProxyType({"path": "/data/ä", "n": 2**63, "nested": {"deep": [1, None]}}),
        "rule": "deletes-need-approval",
        "state": ApprovalState.PENDING,
        "requested_at": 1_700_000_000.125,
        "expires_at": 1_700_000_300.75,
    }
    values.update(overrides)
    return Approval(**values)


def test_approval_to_proto_pending() -> None:
    msg = convert.approval_to_proto(_approval())
    assert (msg.approval_id, msg.session_id, msg.caller, msg.profile, msg.tool, msg.rule) == (
        "apr_0123456789abcdef",
        "s1",
        "alice",
        "files",
        "delete",
        "deletes-need-approval",
    )
    assert json.loads(msg.arguments_json) == {"path": "/data/ä", "n": 2**63, "nested": {"deep": [1, None]}}
    assert "/data/ä" in msg.arguments_json  # compact UTF-8 text, not \u escapes
    assert ", " not in msg.arguments_json and ": " not in msg.arguments_json
    assert msg.state == pb.APPROVAL_STATE_PENDING
    assert (msg.requested_at.seconds, msg.requested_at.nanos) == (1_700_000_000, 125_000_000)
    assert (msg.expires_at.seconds, msg.expires_at.nanos) == (1_700_000_300, 750_000_000)
    assert not msg.HasField("decided_at")
    assert (msg.decided_by, msg.reason, msg.used) == ("", "", False)


def test_approval_to_proto_decided() -> None:
    msg = convert.approval_to_proto(
        _approval(
            state=ApprovalState.DENIED,
            decided_by="bob",
            reason="not on a Friday",
            decided_at=1_700_000_042.5,
        )
    )
    assert msg.state == pb.APPROVAL_STATE_DENIED
    assert (msg.decided_by, msg.reason) == ("bob", "not on a Friday")
    assert msg.HasField("decided_at")
    assert (msg.decided_at.seconds, msg.decided_at.nanos) == (1_700_000_042, 500_000_000)
    used = convert.approval_to_proto(
        _approval(state=ApprovalState.APPROVED, decided_by="bob", decided_at=1_700_000_001.0, used=True)
    )
    assert used.used is True and (used.decided_at.seconds, used.decided_at.nanos) == (1_700_000_001, 0)


def test_approval_to_proto_empty_arguments() -> None:
    assert convert.approval_to_proto(_approval(arguments=MappingProxyType({}))).arguments_json == "{}"


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (ApprovalState.PENDING, pb.APPROVAL_STATE_PENDING),
        (ApprovalState.APPROVED, pb.APPROVAL_STATE_APPROVED),
        (ApprovalState.DENIED, pb.APPROVAL_STATE_DENIED),
        (ApprovalState.EXPIRED, pb.APPROVAL_STATE_EXPIRED),
    ],
)
def test_approval_states(state: ApprovalState, expected: int) -> None:
    assert convert.approval_to_proto(_approval(state=state)).state == expected


def test_every_approval_state_is_mapped() -> None:
    states = {convert.approval_to_proto(_approval(state=state)).state for state in ApprovalState}
    assert pb.APPROVAL_STATE_UNSPECIFIED not in states and len(states) == len(ApprovalState)


def test_progress_to_proto() -> None:
    msg = convert.progress_to_proto(ProgressEvent(progress=1, total=4, message="one"))
    assert msg.WhichOneof("event") == "progress"
    assert (msg.progress.progress, msg.progress.total, msg.progress.message) == (1.0, 4.0, "one")
    open_ended = convert.progress_to_proto(ProgressEvent(progress=0.5))
    assert not open_ended.progress.HasField("total") and open_ended.progress.message == ""


def test_resources_and_prompts() -> None:
    resource = convert.resource_to_proto(
        mcp_types.Resource(name="r", uri="file:///r", title="R", description="d", mime_type="text/plain")
    )
    assert (resource.uri, resource.name, resource.title, resource.description, resource.size) == (
        "file:///r",
        "r",
        "R",
        "d",
        0,
    )
    read = convert.read_result_to_proto([mcp_types.TextResourceContents(uri="file:///r", text="t")], ())
    assert read.contents[0].text == "t" and read.contents[0].mime_type == ""
    assert list(read.findings) == []
    redacted = convert.read_result_to_proto(
        [mcp_types.TextResourceContents(uri="file:///r", text="[redacted:email]")],
        (Finding(kind="email", count=1, action="redacted", where="contents[0].text"),),
    )
    assert _rows(redacted.findings) == [("email", 1, "redacted", "contents[0].text")]

    prompt = convert.prompt_to_proto(
        mcp_types.Prompt(name="p", arguments=[mcp_types.PromptArgument(name="a", description="the a")])
    )
    assert prompt.name == "p" and prompt.arguments[0].description == "the a"
    assert prompt.arguments[0].required is False
    assert convert.prompt_to_proto(mcp_types.Prompt(name="q")).arguments == []

    rendered = convert.prompt_result_to_proto(
        mcp_types.GetPromptResult(
            messages=[
                mcp_types.PromptMessage(role="assistant", content=mcp_types.TextContent(type="text", text="x"))
            ]
        ),
        (Finding(kind="injection_role_marker", count=2, action="flagged", where="messages[0].content.text"),),
    )
    assert rendered.description == ""
    assert rendered.messages[0].role == "assistant" and rendered.messages[0].content.text == "x"
    assert _rows(rendered.findings) == [("injection_role_marker", 2, "flagged", "messages[0].content.text")]
