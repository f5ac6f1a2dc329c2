"""What ``--json`` prints: the API's messages as plain JSON values, for ``jq`` and scripts.

Field names are the proto's; ``*_json`` text fields are parsed into the values they hold (``input_schema``,
``structured_content``, ``arguments``), times are ISO 8601 UTC, enums are lower-case words, binary data is
base64. Apart from the commands so every command shows one message the same way.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.client import ToolResult

SESSION_STATES = {1: "starting", 2: "ready", 3: "closed", 4: "failed"}
APPROVAL_STATES = {1: "pending", 2: "approved", 3: "denied", 4: "expired"}


def emit(value: Any) -> None:
    """One JSON document on standard output (controls are escaped by the CLI's output stream, JSON's way)."""
    print(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


def emit_line(value: Any) -> None:
    """One JSON Lines record, flushed: for streams read as they come."""
    print(json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")), flush=True)


def parsed(text: str, empty: Any = None) -> Any:
    """A ``*_json`` field's value; ``empty`` when there is none, the text itself when it is not JSON."""
    try:
        return json.loads(text) if text else empty
    except ValueError:
        return text


def iso(stamp: Timestamp) -> str | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, UTC).isoformat().replace("+00:00", "Z")


def findings(found: Iterable[pb.Finding]) -> list[dict[str, Any]]:
    return [{"kind": f.kind, "count": f.count, "action": f.action, "where": f.where} for f in found]


def tool(t: pb.Tool) -> dict[str, Any]:
    return {
        "name": t.name, "title": t.title, "description": t.description,
        "input_schema": parsed(t.input_schema_json, {}), "output_schema": parsed(t.output_schema_json),
        "annotations": parsed(t.annotations_json),
    }  # fmt: skip


def server(s: pb.ServerInfo) -> dict[str, Any]:
    return {"name": s.name, "version": s.version, "protocol_version": s.protocol_version,
            "instructions": s.instructions}  # fmt: skip


def session(s: pb.Session) -> dict[str, Any]:
    return {
        "session_id": s.session_id, "profile": s.profile, "caller": s.caller,
        "state": SESSION_STATES.get(s.state, "unknown"), "created_at": iso(s.created_at), "age_ms": s.age_ms,
        "usage": {"wall_ms": s.usage.wall_ms, "cpu_ms": s.usage.cpu_ms,
                  "peak_memory_bytes": s.usage.peak_memory_bytes, "calls": s.usage.calls},
        "labels": dict(s.labels), "failure": s.failure,
        "server": server(s.server) if s.HasField("server") else None,
        "network": s.network, "runtime": s.runtime, "mounts": list(s.mounts), "workspace_bytes": s.workspace_bytes,
        "egress": [
            {"time": iso(d.time), "method": d.method, "host": d.host, "port": d.port, "address": d.address,
             "rule": d.rule, "allowed": d.allowed, "code": d.code, "reason": d.reason}
            for d in s.egress
        ],
    }  # fmt: skip


def profile(p: pb.ProfileInfo) -> dict[str, Any]:
    return {
        "name": p.name, "description": p.description, "image": p.image, "network": p.network, "runtime": p.runtime,
        "tools": [tool(t) for t in p.tools] if p.tools_known else None, "tools_session_id": p.tools_session_id,
    }  # fmt: skip


def approval(a: pb.Approval) -> dict[str, Any]:
    return {
        "approval_id": a.approval_id, "session_id": a.session_id, "caller": a.caller, "profile": a.profile,
        "tool": a.tool, "arguments": parsed(a.arguments_json, {}), "rule": a.rule,
        "state": APPROVAL_STATES.get(a.state, "unknown"), "requested_at": iso(a.requested_at),
        "expires_at": iso(a.expires_at), "decided_at": iso(a.decided_at), "decided_by": a.decided_by,
        "reason": a.reason, "used": a.used,
    }  # fmt: skip


def resource_contents(c: pb.ResourceContents) -> dict[str, Any]:
    shown: dict[str, Any] = {"uri": c.uri, "mime_type": c.mime_type}
    if c.WhichOneof("body") == "blob":
        shown["blob"] = base64.b64encode(c.blob).decode()
    else:
        shown["text"] = c.text
    return shown


def content(c: pb.Content) -> dict[str, Any]:
    kind = c.WhichOneof("kind") or "unknown"
    shown: dict[str, Any] = {"type": kind, "annotations": parsed(c.annotations_json)}
    if kind == "text":
        shown["text"] = c.text
    elif kind in ("image", "audio"):
        media = getattr(c, kind)
        shown.update(mime_type=media.mime_type, data=base64.b64encode(media.data).decode())
    elif kind == "resource":
        shown["resource"] = resource_contents(c.resource)
    elif kind == "resource_link":
        link = c.resource_link
        shown.update(uri=link.uri, name=link.name, title=link.title, description=link.description,
                     mime_type=link.mime_type, size=link.size)  # fmt: skip
    return shown


def result(r: ToolResult) -> dict[str, Any]:
    return {
        "content": [content(c) for c in r.content], "structured_content": r.structured_content,
        "is_error": r.is_error, "findings": findings(r.findings), "audit_id": r.audit_id,
    }  # fmt: skip


def resource(r: pb.Resource) -> dict[str, Any]:
    return {"uri": r.uri, "name": r.name, "title": r.title, "description": r.description,
            "mime_type": r.mime_type, "size": r.size}  # fmt: skip


def template(t: pb.ResourceTemplate) -> dict[str, Any]:
    return {"uri_template": t.uri_template, "name": t.name, "title": t.title, "description": t.description,
            "mime_type": t.mime_type, "annotations": parsed(t.annotations_json)}  # fmt: skip


def prompt(p: pb.Prompt) -> dict[str, Any]:
    return {
        "name": p.name, "title": p.title, "description": p.description,
        "arguments": [{"name": a.name, "title": a.title, "description": a.description, "required": a.required}
                      for a in p.arguments],
    }  # fmt: skip


def prompt_result(r: pb.GetPromptResponse) -> dict[str, Any]:
    return {
        "description": r.description,
        "messages": [{"role": m.role, "content": content(m.content)} for m in r.messages],
        "findings": findings(r.findings),
    }  # fmt: skip
