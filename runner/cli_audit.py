"""The ``audit`` and ``replay`` commands: reading, exporting and verifying the audit log, and rendering records.

Apart from ``runner.cli`` because rendering untrusted recorded values as one-line summaries is most of their
code and none of the other commands'; ``runner.cli`` only registers them in its parser.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.api._proto.mcp_runner.v1 import runner_pb2 as pb
from runner.api.timestamps import unix_time
from runner.audit.diff import describe
from runner.audit.records import KINDS, Verification, is_capped, iso_time
from runner.cli_common import one_line, open_client
from runner.cli_exit import Exit
from runner.client import RunnerClient
from runner.text import printable
from runner.when import FORMS, parse_when


def when_arg(text: str) -> float:
    """``--since`` / ``--until``: a bad time is a usage error naming the accepted forms."""
    try:
        return parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _text(value: Any, limit: int = 100) -> str:
    """A recorded value (untrusted: it may hold anything a tool returned) as one printable line."""
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    line = one_line(printable(value))
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _json_value(text: str, empty: Any) -> Any:
    """``text`` parsed, ``empty`` when there is none, the text itself when it is not JSON (shown, never lost)."""
    try:
        return json.loads(text) if text else empty
    except ValueError:
        return text


def record_json(record: pb.AuditRecord) -> dict[str, Any]:
    """The record as the log exports it."""
    return {
        "seq": record.seq, "id": record.id, "at": iso_time(unix_time(record.at)), "kind": record.kind,
        "session_id": record.session_id, "caller": record.caller, "data": _json_value(record.data_json, {}),
        "prev": record.prev_hash, "hash": record.hash,
    }  # fmt: skip


def _shown(value: Any, limit: int = 100) -> str:
    """``_text``, with caller input the log kept as a digest shown as its prefix and size."""
    if is_capped(value):
        if "unrecordable" in value:
            return f"[unrecordable: {_text(value['unrecordable'], 60)}]"
        size = f" [{_text(value['bytes'], 20)} bytes, sha256 {_text(value['sha256'], 64)[:12]}]"
        return _text(value["prefix"], max(limit - len(size), 2)) + size
    return _text(value, limit)


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        status, message = _text(error.get("status") or "error", 40), _shown(error.get("message") or "")
        return f"{status}: {message}" if message else status
    return _text(error or "error")


_KIND_WIDTH = max(map(len, KINDS))
"""`audit list` lines up its columns on the longest record kind."""


def _audit_summary(kind: str, data: Any) -> str:
    """A short readable digest of a record's data; tolerant of missing or odd fields, generic for unknown kinds."""
    if not isinstance(data, dict):
        return _text(data)

    def field(key: str, limit: int = 60) -> str:
        value = data.get(key)
        return "" if value is None else _shown(value, limit)

    if kind in ("request", "request.intent"):
        params = data.get("params")
        tool = data.get("tool") or (params.get("name") if isinstance(params, dict) else None)
        head = " ".join(_shown(part, 60) for part in (data.get("method"), tool) if part) or "request"
        if kind == "request.intent":
            return f"sending {head}" + (f" (for {field('request_id')})" if data.get("request_id") else "")
        result = data.get("result")
        if data.get("outcome") == "error" or data.get("error"):
            outcome = _error_text(data.get("error"))
        elif isinstance(result, dict) and result.get("isError"):
            outcome = "ok (the tool reported an error)"
        else:
            outcome = field("outcome") or "?"
        findings = data.get("findings")
        count = len(findings) if isinstance(findings, list) else 0
        return f"{head} → {outcome}" + (f" [{count} finding{'s' if count != 1 else ''}]" if count else "")
    if kind in ("validation", "throttle", "finding") and data.get("error"):
        return " ".join(part for part in (field("method") or field("action"), field("profile")) if part) + (
            f" → {_error_text(data.get('error'))}"
        )
    found = data.get("findings")
    if kind == "finding" and isinstance(found, list):
        listed = ", ".join(
            f"{_text(f.get('kind'), 30)} {_text(f.get('action'), 20)} in {_text(f.get('where'), 40)}"
            for f in found if isinstance(f, dict)
        )
        return f"{field('where') or field('method')}: {listed}"
    if kind == "exit" and data.get("error"):
        how = "killed for memory" if data.get("oom_killed") else f"exit status {field('exit_code') or '?'}"
        return f"{how}: {_error_text(data.get('error'))}"
    if kind == "quarantine" and data.get("reason"):
        return field("reason", 200)
    if kind == "session.open":
        digest = field("image_id", 80).removeprefix("sha256:")[:12]
        image = field("image", 80) or "?"
        summary = f"profile {field('profile') or '?'} image {image}" + (
            f" ({digest})" if digest and digest not in image else ""
        )
        if data.get("outcome") not in (None, "ok"):
            summary += f" → {field('outcome')}: {_error_text(data.get('error'))}"
        return summary
    if kind == "session.close":
        reason = field("reason")
        return (field("state") or "?") + (f" ({reason})" if reason else "")
    if kind == "policy":
        rule = field("rule")
        head = " ".join(part for part in (field("verdict"), field("action"), field("tool")) if part) or "?"
        return head + (f" (rule {rule})" if rule else "")
    if kind == "egress":
        allowed = data.get("allowed")
        verdict = "allowed" if allowed else "refused"
        target = f"{field('host')}:{field('port')}" if data.get("port") else field("host")
        reason = "" if allowed else field("reason")
        head = " ".join(part for part in (verdict, field("method"), target) if part)
        return head + (f" ({reason})" if reason else "")
    if kind == "approval":
        by, reason = field("decided_by"), field("reason")
        head = " ".join(part for part in (field("state"), field("tool"), field("approval_id")) if part) or "?"
        return head + (f" by {by}" if by else "") + (f" ({reason})" if reason else "")
    return _text(data)


def record_line(record: pb.AuditRecord) -> str:
    at = datetime.fromtimestamp(unix_time(record.at)).strftime("%Y-%m-%d %H:%M:%S")
    session, caller = _text(record.session_id, 60) or "-", _text(record.caller, 60) or "-"
    summary = _audit_summary(record.kind, _json_value(record.data_json, {}))
    return f"{record.seq:>6}  {at}  {_text(record.kind, 20):<{_KIND_WIDTH}}  {session}  {caller}  {summary}"


def _print_record(record: pb.AuditRecord) -> None:
    print(printable(json.dumps(record_json(record), indent=2, ensure_ascii=False)))


def audit_records(
    client: RunnerClient, *, limit: int = 0, after_seq: int = 0, **filters: Any
) -> Iterator[pb.AuditRecord]:
    """Every matching record after ``after_seq``, page after page: the server may answer a query with fewer records
    than asked."""
    after, shown = after_seq, 0
    while True:
        page = 0
        for record in client.query_audit(after_seq=after, limit=limit - shown if limit else 0, **filters):
            if record.seq <= after:  # no progress: never loop over the same page
                return
            yield record
            after, shown, page = record.seq, shown + 1, page + 1
            if shown == limit:
                return
        if not page:
            return


def audit_list(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        for record in audit_records(
            client, session_id=args.session, caller=args.caller, since=args.since, until=args.until,
            kinds=args.kind, limit=args.limit,
        ):  # fmt: skip
            if args.json:
                print(json.dumps(record_json(record), separators=(",", ":")), flush=True)
            else:
                print(record_line(record), flush=True)
    return 0


def audit_show(args: argparse.Namespace) -> int:
    shown = 0
    with open_client(args) as client:
        if args.id.startswith("aud_"):
            records: Iterator[pb.AuditRecord] = client.query_audit(record_id=args.id, limit=1)
        else:
            records = audit_records(client, session_id=args.id)
        for record in records:
            if args.json:
                print(json.dumps(record_json(record), separators=(",", ":")), flush=True)
            else:
                _print_record(record)
            shown += 1
    if not shown:
        what = f"audit record {args.id}" if args.id.startswith("aud_") else f"audit records of session {args.id}"
        print(f"error: NOT_FOUND: no {_text(what)}", file=sys.stderr)
        return Exit.NOT_FOUND
    return Exit.OK


def audit_export(args: argparse.Namespace) -> int:
    lines = 0
    with open_client(args) as client:
        chunks = client.export_session(args.session_id)
        if args.output is None:
            for chunk in chunks:
                sys.stdout.write(chunk)
                lines += chunk.count("\n")
            sys.stdout.flush()
        else:
            # Written beside the target and renamed at the end: a failed export never looks like a finished one.
            target = Path(args.output)
            partial = target.with_name(target.name + ".partial")
            try:
                with partial.open("w", encoding="utf-8", newline="") as out:
                    for chunk in chunks:
                        out.write(chunk)
                        lines += chunk.count("\n")
                if lines:
                    partial.replace(target)
            except OSError as exc:
                print(f"error: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
                return Exit.USAGE
            finally:
                partial.unlink(missing_ok=True)
    if not lines:
        print(f"error: NOT_FOUND: no audit records of session {_text(args.session_id)}", file=sys.stderr)
        return Exit.NOT_FOUND
    if args.output is not None:
        print(f"exported {lines} records of session {args.session_id} to {args.output}", file=sys.stderr)
    return 0


def audit_verify(args: argparse.Namespace) -> int:
    result: Verification | pb.VerifyAuditResponse
    if args.db or args.export:
        from runner.audit.verify import verify_database, verify_export

        result = verify_database(Path(args.db)) if args.db else verify_export(Path(args.export))
    else:
        with open_client(args) as client:
            result = client.verify_audit()
    if not result.intact:
        print(f"audit log BROKEN at record seq {result.broken_seq} ({_text(result.broken_id, 40)}): "
              f"{_text(result.problem, 500)}")  # fmt: skip
        return 1
    if not result.checked:
        print("audit log intact: no records")
    else:
        print(f"audit log intact: {result.checked} records (seq {result.first_seq}..{result.head_seq}), "
              f"head {result.head_hash}")  # fmt: skip
    return 0


def _diff_lines(diff_json: str) -> list[str]:
    """``  replace /content/0/text: "old" → "new"`` per entry (an entry of another shape as JSON)."""
    entries = _json_value(diff_json, [])
    lines = []
    for entry in entries if isinstance(entries, list) else [entries]:
        try:
            lines.append(f"  {_text(describe(entry), 300)}")
        except (KeyError, TypeError, ValueError):
            lines.append(f"  {_text(entry)}")
    return lines


def replay(args: argparse.Namespace) -> int:
    timeout_ms = 0
    if args.timeout is not None:
        timeout_ms = round(args.timeout * 1000)
        if not 0 < timeout_ms < 2**32:
            print("error: --timeout must be a positive number of seconds (under 49 days)", file=sys.stderr)
            return Exit.USAGE
    verdicts: Counter[str] = Counter()
    replayed_in = ""
    with open_client(args) as client:
        for verdict in client.replay_session(args.session_id, timeout_ms=timeout_ms):
            verdicts[verdict.verdict] += 1
            replayed_in = verdict.replay_session_id or replayed_in
            if args.json:
                print(json.dumps({
                    "index": verdict.index, "tool": verdict.tool, "verdict": verdict.verdict,
                    "diff": _json_value(verdict.diff_json, []),
                    "reason": verdict.reason, "original_audit_id": verdict.original_audit_id,
                    "replay_audit_id": verdict.replay_audit_id, "replay_session_id": verdict.replay_session_id,
                }, separators=(",", ":")), flush=True)  # fmt: skip
                continue
            head = f"#{verdict.index} {_text(verdict.tool, 60)}: {_text(verdict.verdict, 20)}"
            if verdict.reason:
                head += f": {_text(verdict.reason, 300)}"
            print("\n".join([head, *_diff_lines(verdict.diff_json)]), flush=True)
    total = sum(verdicts.values())
    summary = (
        f"{total} call{'s' if total != 1 else ''}: {verdicts['same']} same, {verdicts['different']} different, "
        f"{verdicts['refused']} refused" + (f" (replayed in session {_text(replayed_in, 60)})" if replayed_in else "")
    )
    print(summary, file=sys.stderr if args.json else sys.stdout)
    return 0 if verdicts["same"] == total else 1


AUDIT_EXAMPLES = """\
examples:
  mcp-runner audit list --caller agent-7 --since yesterday --until today
  mcp-runner audit list --since 2h --kind throttle --kind quarantine --kind exit --json | jq .data
  mcp-runner audit show 3f9c0a1b2c3d4e5f            # a session's records (or one: aud_…)
  mcp-runner audit export 3f9c0a1b2c3d4e5f -o session.jsonl
  mcp-runner audit verify                           # or offline: --db FILE, --export FILE
"""
REPLAY_EXAMPLES = """\
examples:
  mcp-runner replay 3f9c0a1b2c3d4e5f
  mcp-runner replay 3f9c0a1b2c3d4e5f --timeout 120 --json
"""


def add_commands(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Register ``audit`` (list, show, export, verify) and ``replay`` on the CLI's subparsers."""
    audit = sub.add_parser("audit", help="list, show, export or verify audit records", epilog=AUDIT_EXAMPLES,
                           formatter_class=formatter)  # fmt: skip
    audit_actions = audit.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, helptext: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = audit_actions.add_parser(
            name, help=helptext, description=helptext, epilog=AUDIT_EXAMPLES, formatter_class=formatter
        )
        return parser

    listing = action("list", "one line per record, oldest first")
    listing.add_argument("--session", default="", help="only this session's records")
    listing.add_argument("--caller", default="", help="only this caller's records")
    listing.add_argument("--since", type=when_arg, metavar="WHEN", help=f"from this time on (inclusive): {FORMS}")
    listing.add_argument("--until", type=when_arg, metavar="WHEN", help="before this time (exclusive); same forms")
    listing.add_argument(
        "--kind", action="append", default=[], metavar="KIND", help=f"only this kind (repeatable): {', '.join(KINDS)}"
    )
    listing.add_argument("--limit", type=int, default=0, metavar="N", help="at most N records (default: all)")
    listing.add_argument("--json", action="store_true", help="JSON Lines: each record as one JSON object")
    listing.set_defaults(func=audit_list)
    show = action("show", "one record (aud_…) or every record of a session, in full")
    show.add_argument("id", metavar="ID", help="an audit record id (aud_…) or a session id")
    show.add_argument("--json", action="store_true", help="JSON Lines: each record as one JSON object")
    show.set_defaults(func=audit_show)
    export = action("export", "a session's records as JSON Lines (what verify --export checks)")
    export.add_argument("session_id", metavar="SESSION")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    export.set_defaults(func=audit_export)
    verify = action("verify", "check the hash chain: on the server, or a file offline")
    offline = verify.add_mutually_exclusive_group()
    offline.add_argument("--db", metavar="PATH", help="check this audit SQLite database offline")
    offline.add_argument("--export", metavar="FILE", help="check this JSON Lines export offline")
    verify.set_defaults(func=audit_verify)

    replaying = sub.add_parser("replay", help="re-run a recorded session's tool calls and compare the results",
                               epilog=REPLAY_EXAMPLES, formatter_class=formatter)  # fmt: skip
    replaying.add_argument("session_id", metavar="SESSION")
    replaying.add_argument("--timeout", type=float, metavar="SECONDS", help="time limit for the replay")
    replaying.add_argument("--json", action="store_true", help="JSON Lines: each verdict as one JSON object")
    replaying.set_defaults(func=replay)
