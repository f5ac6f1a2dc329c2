"""Pure conversions between domain values / mcp_types and protobuf."""

from __future__ import annotations

import json

import mcp_types
import pytest

from runner.api import convert
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.errors import InvalidArgument, ResultRejected
from runner.sessions.models import (
    Finding,
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
    plain = convert.outcome_to_proto(ToolCallOutcome(result=mcp_types.CallToolResult(content=[])))
    assert plain.structured_content_json == "" and plain.is_error is False


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
    read = convert.read_result_to_proto([mcp_types.TextResourceContents(uri="file:///r", text="t")])
    assert read.contents[0].text == "t" and read.contents[0].mime_type == ""

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
        )
    )
    assert rendered.description == ""
    assert rendered.messages[0].role == "assistant" and rendered.messages[0].content.text == "x"
