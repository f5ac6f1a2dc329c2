"""``mcp-runner audit …`` and ``mcp-runner replay`` against the fake audit server of test_api_audit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from runner import cli, cli_audit, errors
from runner.audit.records import AuditEvent, AuditQuery, ReplayVerdict, canonical_json
from runner.when import parse_when
from tests.unit.test_api_audit import BROKEN, DIFF, INTACT, T0, FakeAudit, chain, sample_records, serve_audit


@pytest.fixture
def audit() -> FakeAudit:
    return FakeAudit()


@pytest.fixture
async def address(audit: FakeAudit) -> AsyncIterator[str]:
    async with serve_audit(audit) as address:
        yield address


async def run(address: str, *argv: str) -> int:
    return await asyncio.to_thread(cli.main, ["--address", address, *argv])


def local(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def json_documents(text: str) -> list[Any]:
    """Consecutive pretty-printed JSON documents."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        value, at = decoder.raw_decode(text, at)
        found.append(value)
    return found


# ------------------------------------------------------------------------- list


def _listed(kind: str, data: dict[str, Any], session: str = "s1", caller: str = "alice") -> AuditEvent:
    return AuditEvent(kind, session, caller, data, at=T0)


SUMMARIES = [
    (_listed("request", {"method": "tools/call", "params": {"name": "get_current_time"}, "outcome": "ok",
                         "result": {"content": []}, "findings": [], "duration_ms": 4}),
     "tools/call get_current_time → ok"),
    (_listed("request", {"method": "tools/call", "tool": "delete", "outcome": "error",
                         "error": {"status": "PERMISSION_DENIED", "message": "denied by rule no-deletes"},
                         "findings": [{"kind": "secret"}, {"kind": "secret"}]}),
     "tools/call delete → PERMISSION_DENIED: denied by rule no-deletes [2 findings]"),
    (_listed("request", {"method": "tools/list", "outcome": "ok", "findings": [{"kind": "control_chars"}]}),
     "tools/list → ok [1 finding]"),
    (_listed("request", {"method": "tools/call", "params": {"name": "fails"}, "outcome": "ok",
                         "result": {"isError": True}}),
     "tools/call fails → ok (the tool reported an error)"),
    (_listed("request", {}), "request → ?"),
    (_listed("session.open", {"profile": "time", "image": "mcp/time:1", "image_id": "sha256:ab", "outcome": "ok"}),
     "profile time image mcp/time:1 (ab)"),
    (_listed("session.open", {"profile": "web", "image": "mcp/web:2", "outcome": "error",
                              "error": {"status": "UNAVAILABLE", "message": "docker is down"}}),
     "profile web image mcp/web:2 → error: UNAVAILABLE: docker is down"),
    (_listed("session.close", {"state": "closed", "reason": "idle for 300 s", "usage": {"calls": 2}}),
     "closed (idle for 300 s)"),
    (_listed("policy", {"action": "call", "verdict": "deny", "rule": "no-deletes", "tool": "delete"}),
     "deny call delete (rule no-deletes)"),
    (_listed("egress", {"method": "CONNECT", "host": "api.example", "port": 443, "allowed": True,
                        "reason": "allowed by rule api.example:443"}),
     "allowed CONNECT api.example:443"),
    (_listed("egress", {"method": "GET", "host": "evil.example", "port": 80, "allowed": False,
                        "reason": "not on the allowlist"}),
     "refused GET evil.example:80 (not on the allowlist)"),
    (_listed("approval", {"approval_id": "apr_1", "state": "denied", "tool": "deploy", "decided_by": "bob",
                          "reason": "not today"}),
     "denied deploy apr_1 by bob (not today)"),
    (_listed("throttle", {"limit": "calls", "retry_after_ms": 250}), '{"limit":"calls","retry_after_ms":250}'),
    (_listed("finding", {"text": "x" * 300}), '{"text":"' + "x" * 90 + "…"),
]  # fmt: skip


async def test_list_prints_one_readable_line_per_record(
    address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]
) -> None:
    audit.records = chain(event for event, _ in SUMMARIES)
    assert await run(address, "audit", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(SUMMARIES)
    for seq, (line, (event, summary)) in enumerate(zip(lines, SUMMARIES, strict=True), 1):
        assert line == f"{seq:>6}  {local(T0)}  {event.kind:<14}  s1  alice  {summary}"  # request.intent is 14


async def test_list_makes_recorded_text_printable(
    address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = "\x1b]0;owned\x07red\x1b[31m\nnext\u202eline\x9b2J"
    audit.records = chain([
        AuditEvent("session.close", "s\x1b[2J1", "mal\nlory", {"state": "closed", "reason": hostile}, at=T0),
        AuditEvent("quarantine", "s1", "alice", {"why": hostile}, at=T0),
    ])  # fmt: skip
    assert await run(address, "audit", "list") == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"     1  {local(T0)}  session.close   s1  mal lory  closed (red nextline)",
        # JSON escapes C0 controls into plain text; what JSON leaves raw (C1, bidi overrides) is removed
        f"     2  {local(T0)}  quarantine      s1  alice  " + r'{"why":"\u001b]0;owned\u0007red\u001b[31m\nnextline"}',
    ]


async def test_list_sends_the_filters(address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["audit", "list", "--session", "s1", "--caller", "bob", "--since", "2026-11-25", "--until", "2026-11-26",
            "--kind", "request", "--kind", "policy", "--limit", "5"]  # fmt: skip
    assert await run(address, *argv) == 0
    assert audit.queries == [(
        AuditQuery(
            session_id="s1", caller="bob", since=parse_when("2026-11-25"), until=parse_when("2026-11-26"),
            kinds=("request", "policy"), limit=5,
        ),
        "anonymous",
    )]  # fmt: skip
    assert capsys.readouterr().out == ""


async def test_list_pages_through_a_server_that_caps_answers(
    address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]
) -> None:
    audit.page_size = 2
    assert await run(address, "audit", "list") == 0
    assert [int(line.split()[0]) for line in capsys.readouterr().out.splitlines()] == [1, 2, 3, 4, 5]
    assert [(q.after_seq, q.limit) for q, _ in audit.queries] == [(0, 0), (2, 0), (4, 0), (5, 0)]

    audit.queries.clear()
    assert await run(address, "audit", "list", "--limit", "3") == 0
    assert [int(line.split()[0]) for line in capsys.readouterr().out.splitlines()] == [1, 2, 3]
    assert [(q.after_seq, q.limit) for q, _ in audit.queries] == [(0, 3), (2, 1)]


async def test_list_json_is_the_records_json(
    address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(address, "audit", "list", "--json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [r.to_json() for r in audit.records]
    assert [canonical_json(json.loads(line)) for line in lines] == [line.rstrip("\n") for line in audit.lines]
    assert list(json.loads(lines[0])) == ["seq", "id", "at", "kind", "session_id", "caller", "data", "prev", "hash"]


async def test_list_refuses_a_time_it_cannot_read(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        await run(address, "audit", "list", "--since", "last tuesday")
    assert exited.value.code == 2
    assert "argument --since: cannot read 'last tuesday' as a time; use" in capsys.readouterr().err


async def test_list_unknown_kind_is_the_servers_refusal(
    address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(address, "audit", "list", "--kind", "nope") == 6
    assert capsys.readouterr().err.startswith("error: INVALID_ARGUMENT: unknown audit record kind 'nope'; known: ")
    assert audit.queries == []


# ------------------------------------------------------------------------- show


async def test_show_one_record(address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "audit", "show", "aud_0000000000000003") == 0
    assert json_documents(capsys.readouterr().out) == [audit.records[2].to_json()]
    assert audit.queries[0][0] == AuditQuery(record_id="aud_0000000000000003", limit=1)


async def test_show_a_session(address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "audit", "show", "s1") == 0
    shown = json_documents(capsys.readouterr().out)
    assert shown == [r.to_json() for r in audit.records if r.session_id == "s1"]
    assert [r["seq"] for r in shown] == [1, 2, 5]


@pytest.mark.parametrize(
    ("target", "message"),
    [("aud_ffffffffffffffff", "no audit record aud_ffffffffffffffff"), ("s404", "no audit records of session s404")],
)
async def test_show_nothing_is_not_found(address: str, target: str, message: str, capsys: Any) -> None:
    assert await run(address, "audit", "show", target) == 3
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"error: NOT_FOUND: {message}\n")


async def test_show_denied(address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]) -> None:
    audit.error = errors.PermissionDenied("alice may read only her own records")
    assert await run(address, "audit", "show", "s2") == 4
    assert capsys.readouterr().err == "error: PERMISSION_DENIED: alice may read only her own records\n"


# ----------------------------------------------------------------------- export


async def test_export_to_stdout(address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "audit", "export", "s1") == 0
    assert capsys.readouterr().out == "".join(audit.lines)
    assert audit.exports == [("s1", "anonymous")]


async def test_export_to_a_file(
    address: str, audit: FakeAudit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit.lines = [*audit.lines, canonical_json({"text": "é\u2028"}) + "\n"]
    target = tmp_path / "s1.jsonl"
    assert await run(address, "audit", "export", "s1", "-o", str(target)) == 0
    assert target.read_bytes() == "".join(audit.lines).encode()
    assert capsys.readouterr().err == f"exported 6 records of session s1 to {target}\n"
    assert sorted(tmp_path.iterdir()) == [target]


async def test_export_of_nothing_writes_nothing(
    address: str, audit: FakeAudit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit.lines = []
    assert await run(address, "audit", "export", "s404", "-o", str(tmp_path / "out.jsonl")) == 3
    assert capsys.readouterr().err == "error: NOT_FOUND: no audit records of session s404\n"
    assert list(tmp_path.iterdir()) == []


async def test_export_failing_midway_leaves_no_file(
    address: str, audit: FakeAudit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit.error, audit.fail_after = errors.AuditError("the audit log could not be read"), 3
    audit.lines = [json.dumps({"seq": n, "pad": "x" * 40_000}) + "\n" for n in range(1, 6)]
    target = tmp_path / "out.jsonl"
    target.write_text("an older export\n")
    assert await run(address, "audit", "export", "s1", "-o", str(target)) == 5
    assert capsys.readouterr().err == "error: UNAVAILABLE: the audit log could not be read\n"
    assert sorted(tmp_path.iterdir()) == [target] and target.read_text() == "an older export\n"


async def test_export_to_an_unwritable_place(address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "audit", "export", "s1", "-o", str(tmp_path / "missing" / "out.jsonl")) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write {tmp_path / 'missing' / 'out.jsonl'}: ")


# ----------------------------------------------------------------------- verify


async def test_verify_on_the_server(address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "audit", "verify") == 0
    assert capsys.readouterr().out == f"audit log intact: 5 records (seq 1..5), head {'ab' * 32}\n"
    audit.verification = BROKEN
    assert await run(address, "audit", "verify") == 1
    assert capsys.readouterr().out == (
        "audit log BROKEN at record seq 3 (aud_0000000000000003): its hash does not match its contents\n"
    )
    audit.verification = type(INTACT)(intact=True, checked=0, first_seq=0, head_seq=0, head_hash="")
    assert await run(address, "audit", "verify") == 0
    assert capsys.readouterr().out == "audit log intact: no records\n"
    assert audit.verifies == ["anonymous"] * 3


async def test_verify_an_export_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = sample_records()
    export = tmp_path / "audit.jsonl"
    export.write_text("".join(canonical_json(r.to_json()) + "\n" for r in records), encoding="utf-8")
    assert cli.main(["--address", "127.0.0.1:1", "audit", "verify", "--export", str(export)]) == 0
    assert capsys.readouterr().out == f"audit log intact: 5 records (seq 1..5), head {records[-1].hash}\n"

    lines = export.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = lines[2].replace("no-deletes", "no-deletez")
    export.write_text("".join(lines), encoding="utf-8")
    assert cli.main(["audit", "verify", "--export", str(export)]) == 1
    assert capsys.readouterr().out.startswith(f"audit log BROKEN at record seq 3 ({records[2].id}): ")


async def test_verify_a_database_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.audit import verify

    checked: list[Path] = []

    def verify_database(path: Path) -> Any:
        checked.append(path)
        return BROKEN

    monkeypatch.setattr(verify, "verify_database", verify_database)
    assert cli.main(["audit", "verify", "--db", str(tmp_path / "audit.db")]) == 1
    assert checked == [tmp_path / "audit.db"]
    assert capsys.readouterr().out.startswith("audit log BROKEN at record seq 3 ")


def test_verify_offline_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", "verify", "--export", str(tmp_path / "nope.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_verify_takes_one_source(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["audit", "verify", "--db", "a", "--export", "b"])
    assert "not allowed with argument" in capsys.readouterr().err


# ----------------------------------------------------------------------- replay


async def test_replay_prints_each_verdict_and_a_summary(
    address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(address, "replay", "s1") == 1
    assert capsys.readouterr().out.splitlines() == [
        "#1 get_current_time: same",
        "#2 get_current_time: different",
        '  replace /content/0/text: "12:00" → "12:01"',
        "#3 delete: refused: denied by rule no-deletes",
        "3 calls: 1 same, 1 different, 1 refused (replayed in session s9)",
    ]
    assert audit.replays == [("s1", "anonymous", None)]


async def test_replay_all_same_exits_0(address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]) -> None:
    audit.verdicts = (ReplayVerdict(1, "get_current_time", "same", "aud_a", "s9", replay_audit_id="aud_b"),)
    assert await run(address, "replay", "s1", "--timeout", "2.5") == 0
    assert capsys.readouterr().out.splitlines() == [
        "#1 get_current_time: same", "1 call: 1 same, 0 different, 0 refused (replayed in session s9)",
    ]  # fmt: skip
    assert audit.replays == [("s1", "anonymous", pytest.approx(2.5))]


async def test_replay_of_no_calls(address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]) -> None:
    audit.verdicts = ()
    assert await run(address, "replay", "s1") == 0
    assert capsys.readouterr().out == "0 calls: 0 same, 0 different, 0 refused\n"


async def test_replay_json(address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "replay", "s1", "--json") == 1
    captured = capsys.readouterr()
    verdicts = [json.loads(line) for line in captured.out.splitlines()]
    assert [v["verdict"] for v in verdicts] == ["same", "different", "refused"]
    assert verdicts[1] == {
        "index": 2, "tool": "get_current_time", "verdict": "different", "diff": list(DIFF), "reason": "",
        "original_audit_id": "aud_c", "replay_audit_id": "aud_d", "replay_session_id": "s9",
    }  # fmt: skip
    assert captured.err == "3 calls: 1 same, 1 different, 1 refused (replayed in session s9)\n"


async def test_replay_shows_odd_diffs_as_they_are(
    address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = ({"op": "remove", "path": "", "old": {"a": 1}}, {"op": "add", "path": "/b"}, {"what": "\x1b[2Jx"})
    audit.verdicts = (ReplayVerdict(1, "t", "different", "aud_a", "s9", diff=odd),)
    assert await run(address, "replay", "s1") == 1
    assert capsys.readouterr().out.splitlines()[1:4] == [
        '  remove (root): {"a":1}', '  {"op":"add","path":"/b"}', r'  {"what":"\u001b[2Jx"}',
    ]  # fmt: skip


@pytest.mark.parametrize("timeout", ["0", "-1", "1e9"])
async def test_replay_refuses_a_bad_timeout(address: str, timeout: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "replay", "s1", "--timeout", timeout) == 2
    assert "--timeout must be a positive number of seconds" in capsys.readouterr().err


async def test_replay_refused_by_the_runner(
    address: str, audit: FakeAudit, capsys: pytest.CaptureFixture[str]
) -> None:
    audit.error = errors.SessionNotFound("no recorded session s404")
    assert await run(address, "replay", "s404") == 3
    assert capsys.readouterr().err == "error: NOT_FOUND: no recorded session s404\n"


async def test_audit_disabled(capsys: pytest.CaptureFixture[str]) -> None:
    async with serve_audit(None) as address:
        assert await run(address, "audit", "list") == 9
    assert capsys.readouterr().err == (
        "error: FAILED_PRECONDITION: this service runs with the audit log disabled (settings: audit.enabled: false)\n"
    )


@pytest.mark.parametrize(
    ("kind", "data", "expected"),
    [
        ("validation", {"method": "tools/call", "error": {"status": "INVALID_ARGUMENT", "message": "bad $.a"}},
         "tools/call → INVALID_ARGUMENT: bad $.a"),
        ("throttle", {"action": "open", "profile": "time", "error": {"status": "RESOURCE_EXHAUSTED", "message": "m"}},
         "open time → RESOURCE_EXHAUSTED: m"),
        ("finding", {"where": "tools/call", "findings": [{"kind": "email", "action": "redacted", "where": "c[0]"}]},
         "tools/call: email redacted in c[0]"),
        ("exit", {"oom_killed": True, "error": {"status": "RESOURCE_EXHAUSTED", "message": "killed"}},
         "killed for memory: RESOURCE_EXHAUSTED: killed"),
        ("exit", {"oom_killed": False, "exit_code": 3, "error": {"status": "FAILED_PRECONDITION", "message": "x"}},
         "exit status 3: FAILED_PRECONDITION: x"),
        ("quarantine", {"reason": "quarantined after 3 events"}, "quarantined after 3 events"),
        ("session.open", {"profile": "time", "image": "python-servers", "image_id": "sha256:41e95f6ca3c2ffff"},
         "profile time image python-servers (41e95f6ca3c2)"),
    ],
)
def test_summaries_of_every_kind_read_as_a_sentence(kind: str, data: dict[str, Any], expected: str) -> None:
    assert cli_audit._audit_summary(kind, data) == expected
