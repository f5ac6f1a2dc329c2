"""``profiles``, ``session …``, ``shell`` and ``logs`` against a real SessionManager on the fake backend, over a real
gRPC server (the blocking CLI runs in a thread); ListProfiles answers only what the caller's policy lets it open."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

import grpc
import pytest

from runner import cli, cli_shell
from runner.api.auth import Authenticator, hash_token
from runner.config import AuthConfig
from runner.policy import PolicyStore
from runner.sandbox.fake import FakeBackend
from runner.sessions.manager import SessionManager
from tests.unit.test_api import serve
from tests.unit.test_manager import SETTINGS, by_command

LEAKED = "AKIAIOSFODNN7EXAMPLE"
"""An AWS access key id in the crashing server's environment, which its stderr then prints."""
PROFILES = {**SETTINGS.profiles}
PROFILES["crash_on_call"] = replace(PROFILES["crash_on_call"], env=MappingProxyType({"AWS_KEY_ID": LEAKED}))

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"
POLICY = f"""
default_caller: {{profiles: []}}
callers:
  alice:
    tokens: ["{hash_token(ALICE)}"]
    profiles: ["good", "crash_on_call"]
    profile_tools:
      good: {{deny: ["say"]}}
  bob:
    tokens: ["{hash_token(BOB)}"]
    profiles: ["good"]
"""


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, SessionManager]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    store = PolicyStore(policy)
    settings = replace(SETTINGS, profiles=MappingProxyType(PROFILES))
    manager = SessionManager(FakeBackend(by_command), settings, policy=store)
    await manager.start()
    authenticator = Authenticator(AuthConfig(tokens=True), lambda h: store.current.token_owner(h))
    try:
        async with serve(manager, authenticator) as port:  # type: ignore[arg-type]
            yield f"127.0.0.1:{port}", manager
    finally:
        await manager.shutdown()


def runner_for(address: str, token: str) -> Callable[..., Any]:
    async def run(*argv: str) -> int:
        return await asyncio.to_thread(cli.main, [*argv, "--address", address, "--token", token])

    return run


async def test_profiles_lists_what_the_caller_may_open(
    served: tuple[str, SessionManager], capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = served
    alice, bob = runner_for(address, ALICE), runner_for(address, BOB)
    assert await alice("profiles", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in listed] == ["crash_on_call", "good"]
    assert all(p["tools"] is None and p["network"] == "none" and p["image"] == "fake" for p in listed)
    assert await bob("profiles") == 0
    out = capsys.readouterr().out
    assert out.startswith("good\n") and "crash_on_call" not in out
    assert "tools: unknown until a session opens (`mcp-runner tools --profile good`)" in out
    assert "\n    image: fake  runtime: runc  network: none — give it an allowlist (network.egress) to reach hosts\n" \
        in out
    assert await alice("profiles", "crash_on_call", "--json") == 0
    assert [p["name"] for p in json.loads(capsys.readouterr().out)] == ["crash_on_call"]
    assert await bob("profiles", "crash_on_call") == 3  # as a name no profile has: other tenants' names stay unknown
    assert "NOT_FOUND: no profile named 'crash_on_call' (profiles you may open: " in capsys.readouterr().err
    assert await bob("profiles", "nonesuch") == 3


async def test_profiles_show_tools_from_the_callers_own_session_only(
    served: tuple[str, SessionManager], capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = served
    alice, bob = runner_for(address, ALICE), runner_for(address, BOB)
    assert await alice("session", "open", "good") == 0
    session_id = capsys.readouterr().out.strip()
    assert await alice("profiles", "--json") == 0
    good = {p["name"]: p for p in json.loads(capsys.readouterr().out)}["good"]
    # the policy denies alice `say` on good: she is not shown it
    assert [t["name"] for t in good["tools"]] == ["echo", "sleep"] and good["tools_session_id"] == session_id
    assert await bob("profiles", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["tools"] is None  # alice's session tells bob nothing
    assert await alice("profiles") == 0
    assert f"tools: echo, sleep  (as session {session_id} listed them)" in capsys.readouterr().out


async def test_a_session_across_commands(
    served: tuple[str, SessionManager], capsys: pytest.CaptureFixture[str]
) -> None:
    address, manager = served
    alice = runner_for(address, ALICE)
    assert await alice("session", "open", "good", "--label", "team=a") == 0
    captured = capsys.readouterr()
    session_id = captured.out.strip()
    assert f"end it with `mcp-runner session close {session_id}`" in captured.err
    assert await alice("session", "tools", session_id, "--json") == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)] == ["echo", "sleep", "say"]
    assert await alice("session", "call", session_id, "echo", '{"text": "hi"}', "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["structured_content"] == {"text": "hi"} and not result["is_error"] and result["audit_id"]
    assert await alice("session", "call", session_id, "echo", '{"text": "again"}') == 0
    assert "again" in capsys.readouterr().out
    assert await runner_for(address, BOB)("session", "call", session_id, "echo", "{}") == 4  # not bob's
    assert "belongs to another caller" in capsys.readouterr().err
    assert await alice("session", "call", session_id, "echo", "[1]") == 2
    assert "must be a JSON object" in capsys.readouterr().err
    assert await alice("session", "close", session_id, "--json") == 0
    closed = json.loads(capsys.readouterr().out)
    assert closed["state"] == "closed" and closed["usage"]["calls"] == 2 and closed["labels"] == {"team": "a"}
    assert await alice("session", "call", session_id, "echo", "{}") == 9  # closed: FAILED_PRECONDITION
    assert await alice("session", "call", "0123456789abcdef", "echo", "{}") == 3
    assert manager.list_sessions(caller="alice")[0].usage.calls == 2


async def test_the_shell_keeps_one_session(
    served: tuple[str, SessionManager], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    address, manager = served
    script = "# a comment\ntools\ncall echo {\"text\": \"one\"}\n\ncall echo {\"text\": \"two\"}\nbogus\nexit\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert await runner_for(address, ALICE)("shell", "good", "--json") == 2  # `bogus`: the last failed line's
    captured = capsys.readouterr()
    decoder, out, documents = json.JSONDecoder(), captured.out.strip(), []
    while out:
        document, end = decoder.raw_decode(out)
        documents.append(document)
        out = out[end:].strip()
    assert [t["name"] for t in documents[0]] == ["echo", "sleep", "say"]
    assert [d["structured_content"] for d in documents[1:]] == [{"text": "one"}, {"text": "two"}]
    assert "unknown command 'bogus'" in captured.err
    [session] = manager.list_sessions(caller="alice")
    assert session.usage.calls == 2 and session.state.value == "closed"  # one session, closed at exit


async def test_shell_lines_that_fail_do_not_end_it(
    served: tuple[str, SessionManager], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = served
    monkeypatch.setattr(sys, "stdin", io.StringIO("call nosuchtool {}\ncall echo {\"text\": \"still here\"}\n"))
    assert await runner_for(address, ALICE)("shell", "good") == 3  # NOT_FOUND, and end of input is exit
    captured = capsys.readouterr()
    assert "error: NOT_FOUND" in captured.err and "still here" in captured.out


async def test_logs_show_the_sanitized_stderr_tail_and_events(
    served: tuple[str, SessionManager], capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = served
    alice = runner_for(address, ALICE)
    assert await alice("session", "open", "crash_on_call") == 0
    session_id = capsys.readouterr().out.strip()
    assert await alice("session", "call", session_id, "echo", '{"text": "x"}') == 9  # the server crashed
    capsys.readouterr()
    assert await alice("logs", session_id, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert "boom: segfault simulated" in shown["stderr"] and shown["session"]["state"] == "failed"
    assert LEAKED not in shown["stderr"] and "'AWS_KEY_ID'" in shown["stderr"]  # redacted on the host
    assert {f["kind"] for f in shown["findings"]} == {"aws_access_key"}
    assert shown["events"] == [] and "audit log disabled" in shown["events_unavailable"]
    assert await alice("logs", session_id) == 0
    out = capsys.readouterr().out
    assert "--- stderr (its last KiB, sanitized on the host) ---\nstderr: boom: segfault simulated" in out
    assert await runner_for(address, BOB)("logs", session_id) == 4
    assert await alice("logs", "0123456789abcdef") == 3


@pytest.mark.parametrize(
    ("before", "now", "added"),
    [
        ("", "a\nb\n", "a\nb\n"), ("a\nb\n", "a\nb\n", ""), ("a\nb\n", "a\nb\nc\n", "c\n"),
        ("a\nb\nc\n", "b\nc\nd\n", "d\n"),  # the tail slid: its front dropped, its end grew
        ("xyz", "abc", "abc"),  # nothing in common: all of it is new
    ],
)  # fmt: skip
def test_what_a_sliding_tail_adds(before: str, now: str, added: str) -> None:
    from runner.cli_follow import added_text

    assert added_text(before, now) == added


async def test_logs_follow_until_the_session_ends(
    served: tuple[str, SessionManager], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner import cli_follow

    monkeypatch.setattr(cli_follow, "POLL_S", 0.05)
    address, _ = served
    alice = runner_for(address, ALICE)
    assert await alice("session", "open", "crash_on_call") == 0
    session_id = capsys.readouterr().out.strip()
    following = asyncio.ensure_future(alice("logs", session_id, "--follow"))
    assert await alice("session", "call", session_id, "echo", '{"text": "x"}') == 9  # it crashes, and so ends
    assert await asyncio.wait_for(following, 30) == 0  # the follow ended with the session
    out = capsys.readouterr().out
    assert out.startswith(f"session {session_id}  profile crash_on_call  caller alice  ")
    # the tail's line shown once: in the first tail, or as a line added to it (the failure line also quotes it)
    shown = [line for line in out.splitlines() if line.startswith("stderr: boom: segfault")]
    assert len(shown) == 1, out


def test_a_servers_lines_cannot_pass_for_the_commands_own() -> None:
    from runner.cli_follow import stderr_lines
    from runner.cli_inspect import indented

    forged = "oops\n--- events (audit log) ---\n     1  2026-01-01 00:00:00  session.close  s1  alice  closed\n"
    assert all(line.startswith("stderr: ") for line in stderr_lines(forged).splitlines())
    assert all(line.startswith("    ") for line in indented(f"ended: {forged}").splitlines()[1:])



class _Ended(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"session s-1: {self._code.name.lower()}"


class _EndedClient:
    """A session that ended before the shell closed it (reaped: NOT_FOUND; ended otherwise: FAILED_PRECONDITION)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code, self.closes = code, 0

    def open_session(self, profile: str, labels: object = None) -> Any:
        server = SimpleNamespace(name="srv", version="1")
        return SimpleNamespace(session_id="s-1", server=server, tools=[])

    def close_session(self, session_id: str) -> None:
        self.closes += 1
        raise _Ended(self.code)


@pytest.mark.parametrize("code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION])
def test_a_shell_whose_session_already_ended_exits_with_its_own_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], code: grpc.StatusCode
) -> None:
    client = _EndedClient(code)
    monkeypatch.setattr(cli_shell, "open_client", lambda args: contextlib.nullcontext(client))
    monkeypatch.setattr(sys, "stdin", io.StringIO("bogus\nexit\n"))
    assert cli.main(["shell", "good"]) == 2  # the failed line's status, not the close's
    assert client.closes == 1 and "Traceback" not in capsys.readouterr().err


def test_a_shell_whose_close_fails_otherwise_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _EndedClient(grpc.StatusCode.UNAVAILABLE)
    monkeypatch.setattr(cli_shell, "open_client", lambda args: contextlib.nullcontext(client))
    monkeypatch.setattr(sys, "stdin", io.StringIO("exit\n"))
    assert cli.main(["shell", "good"]) != 0
