"""``mcp-runner logs SESSION --follow``: what a session writes and does from now on, until it ends.

The service keeps only a tail of a sandbox's stderr (the last few KiB, sanitized), so following means asking
again each second and showing what the new tail adds past its overlap with the last one; events are the audit
records after the last one shown.
"""

from __future__ import annotations

import time
from typing import Any

import grpc

from runner import cli_json
from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.cli_audit import audit_records, record_json, record_line
from runner.cli_exit import Exit
from runner.client import RunnerClient
from runner.text import control_free

POLL_S = 1.0
ENDED = (pb.SESSION_STATE_CLOSED, pb.SESSION_STATE_FAILED)


def added_text(before: str, now: str) -> str:
    """What the tail ``now`` adds to the tail ``before``: the part after the longest end of ``before`` that ``now``
    starts with (a tail slides: what it dropped at the front is not new, what it grew at the end is)."""
    for overlap in range(min(len(before), len(now)), 0, -1):
        if before.endswith(now[:overlap]):
            return now[overlap:]
    return now


def stderr_lines(text: str) -> str:
    """A server's stderr as lines that each say so: none can pass for a line of the command's own (a header, an
    event), nor overwrite one (the host's sanitizer keeps ``\\r``; ``control_free`` shows it escaped)."""
    return "\n".join(f"stderr: {line}" for line in control_free(text).rstrip("\n").split("\n"))


def follow(client: RunnerClient, session_id: str, stderr: str, after_seq: int, events: bool, as_json: bool) -> int:
    """Poll until the session has ended (and its last records are shown); Ctrl-C stops it sooner (exit 130)."""
    ended = False
    while True:
        time.sleep(POLL_S)
        try:
            held = client.get_session_logs(session_id)
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.NOT_FOUND:  # forgotten meanwhile
                return Exit.OK
            raise
        added, stderr = added_text(stderr, held.stderr_tail), held.stderr_tail
        if added:
            _show({"stderr": added}, stderr_lines(added), as_json)
        for record in audit_records(client, session_id=session_id, after_seq=after_seq) if events else ():
            after_seq = record.seq
            _show({"event": record_json(record)}, record_line(record), as_json)
        if ended:  # one more round after the end: its session.close record is written as it ends
            return Exit.OK
        ended = held.session.state in ENDED


def _show(value: dict[str, Any], text: str, as_json: bool) -> None:
    if as_json:
        cli_json.emit_line(value)
    else:
        print(text, flush=True)
