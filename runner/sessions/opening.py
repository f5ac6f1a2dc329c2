"""The session.open record: who opened what, in which image, with which limits and network, and what they saw.

Made alike for a warm claim and a cold start (only ``start`` tells them apart), for the durable record of an open
and for the one an abandoned open leaves.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from runner.sessions.egress_record import describe_network
from runner.sessions.journal import as_json, redacted
from runner.sessions.session import LiveSession


def open_record(session: LiveSession, outcome: str) -> dict[str, Any]:
    profile = session.profile
    return {
        "profile": profile.name,
        "outcome": outcome,
        "door": session.door,
        "protocol": session.protocol,
        "start": session.start,
        "image": profile.image,
        "image_id": session.handle.image_id if session.handle is not None else "",
        "command": list(profile.command),
        "remote_url": profile.remote_url,
        "mounts": [
            {"source": m.source, "target": m.target, "mode": "rw" if m.writable else "ro"} for m in profile.mounts
        ],
        "env": sorted(profile.env),
        "secrets": sorted(profile.secrets),
        "limits": asdict(session.limits),
        "network": describe_network(profile),
        "runtime": profile.runtime,
        "labels": redacted(dict(session.labels), session.sanitizer.redact_secrets),
        "server": asdict(session.server) if session.server is not None else None,
        "tools": as_json(list(session.listing.tools)),  # as the caller got them: sanitized, blocked ones left out
        "findings": [asdict(f) for f in session.instructions_findings + session.listing.findings],
    }
