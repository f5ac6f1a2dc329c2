"""``mcp-runner`` client commands against the fake server of test_api (the blocking CLI runs in a thread)."""

from __future__ import annotations

import asyncio
import json
import re
import stat
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from runner import cli, errors
from runner.api.auth import TOKEN_PREFIX, Authenticator, hash_token, new_token
from runner.approvals import ApprovalState
from runner.client import DEFAULT_ADDRESS
from runner.config import AuthConfig, LogConfig, TlsConfig
from runner.guard.findings import Finding
from runner.observe import logs
from runner.policy import load_policy
from tests.unit.test_api import APPROVAL_ID, GATED, FakeManager, make_approval, serve


@pytest.fixture
def fake() -> FakeManager:
    return FakeManager()


@pytest.fixture
async def address(fake: FakeManager) -> AsyncIterator[str]:
    async with serve(fake) as port:
        yield f"127.0.0.1:{port}"


async def run(address: str, *argv: str) -> int:
    return await asyncio.to_thread(cli.main, ["--address", address, *argv])


async def test_tools(address: str, fake: FakeManager, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "tools", "--profile", "time") == 0
    out = capsys.readouterr().out
    assert "fake 1.0" in out
    assert "echo — Echo the arguments back." in out
    assert 'input: {"type":"object","properties":{"x":{"type":"integer"}}}' in out
    assert fake.sessions == {}  # closed again


async def test_call_prints_text_and_structured(
    address: str, fake: FakeManager, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(address, "call", "--profile", "time", "echo", '{"x": 1}', "--timeout-ms", "900") == 0
    captured = capsys.readouterr()
    assert "echo {'x': 1}" in captured.out
    assert "structured content:" in captured.out
    body = captured.out.split("structured content:\n", 1)[1]
    assert json.loads(body) == {"big": 2**62, "echo": {"x": 1}}
    assert "finding: secret x1 redacted at content[0].text" in captured.err
    assert fake.timeouts[-1] == pytest.approx(0.9)
    assert fake.sessions == {}
    assert fake.call_args["streamed"] and fake.call_args["on_approval"]  # always the streaming RPC
    assert [method for method, _ in fake.callers] == ["open", "call_tool", "close"]


async def test_call_tool_error_exits_1(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "call", "--profile", "time", "fails") == 1
    captured = capsys.readouterr()
    assert "it broke" in captured.out and "reported an error" in captured.err


async def test_call_stream_shows_progress(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "call", "--profile", "time", "progress", "{}", "--stream") == 0
    captured = capsys.readouterr()
    assert "progress 1/3: step 1" in captured.err and "progress 3/3: step 3" in captured.err
    assert "structured content:" in captured.out


async def test_call_hides_progress_without_stream_flag(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "call", "--profile", "time", "progress", "{}") == 0
    captured = capsys.readouterr()
    assert "progress" not in captured.err
    assert "structured content:" in captured.out


async def test_call_waits_for_approval_and_shows_it(
    address: str, fake: FakeManager, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(address, "call", "--profile", "time", GATED, '{"env": "prod"}') == 0
    captured = capsys.readouterr()
    pending, approved = [line for line in captured.err.splitlines() if line.startswith("approval ")]
    assert pending.startswith(f"approval {APPROVAL_ID}  pending  caller=anonymous session=s1 tool={GATED}")
    assert pending.endswith('arguments={"env":"prod"}  rule: deploys-need-approval')
    assert approved.startswith(f"approval {APPROVAL_ID}  approved by bob (looks fine)  ")
    assert "echo {'env': 'prod'}" in captured.out
    assert fake.call_args["on_approval"] and fake.sessions == {}


async def test_call_bad_json_is_usage_error(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "call", "--profile", "time", "echo", "{nope") == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert await run(address, "call", "--profile", "time", "echo", "[1]") == 2
    assert "JSON object" in capsys.readouterr().err


async def test_grpc_error_prints_code_and_exits_by_status(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "tools", "--profile", "missing") == 3
    assert capsys.readouterr().err.strip() == "error: NOT_FOUND: no profile 'missing'"


async def test_call_deadline_exceeded(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(address, "call", "--profile", "time", "slow", "--timeout-ms", "50") == 7
    assert capsys.readouterr().err.startswith("error: DEADLINE_EXCEEDED: ")


async def test_sessions_table(address: str, fake: FakeManager, capsys: pytest.CaptureFixture[str]) -> None:
    await fake.open("time", caller="bob", labels={"team": "a", "env": "dev"})
    assert await run(address, "sessions") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["SESSION", "PROFILE", "CALLER", "STATE", "AGE", "CALLS", "LABELS"]
    assert row.split() == ["s1", "time", "bob", "ready", "0.0s", "0", "env=dev,team=a"]


async def test_session_detail_shows_network_and_egress_decisions(
    address: str, fake: FakeManager, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    from runner.sandbox.base import EgressDecision

    opened = await fake.open("time", caller="bob")
    refused = EgressDecision(
        time=1_700_000_000.0, method="CONNECT", host="evil.example", port=443, address="", rule="",
        allowed=False, code="not_allowed", reason="evil.example:443 is not on the allowlist",
    )
    allowed = dataclasses.replace(
        refused, method="GET", host="api.example", port=80, address="203.0.113.9", rule="api.example:80",
        allowed=True, code="allowed", reason="allowed by rule api.example:80",
    )
    fake.sessions[opened.info.session_id] = dataclasses.replace(
        opened.info, network="egress proxy: api.example:80", runtime="runsc", egress=(allowed, refused)
    )
    assert await run(address, "sessions", opened.info.session_id) == 0
    out = capsys.readouterr().out
    assert "runtime: runsc" in out and "network: egress proxy: api.example:80" in out
    assert re.search(r"allowed\s+GET\s+api\.example:80 \[203\.0\.113\.9\]  allowed: allowed by rule", out), out
    assert re.search(r"REFUSED\s+CONNECT evil\.example:443  not_allowed: evil\.example:443 is not on", out), out


def test_unreachable_server_is_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--address", "127.0.0.1:1", "sessions"]) == 5
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE: no service is listening at 127.0.0.1:1. Start one with `make run`")
    assert "MCP_RUNNER_ADDRESS" in err


def test_address_default_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_RUNNER_ADDRESS", raising=False)
    assert cli.build_parser().parse_args(["sessions"]).address == DEFAULT_ADDRESS
    monkeypatch.setenv("MCP_RUNNER_ADDRESS", "10.0.0.1:9")
    assert cli.build_parser().parse_args(["sessions"]).address == "10.0.0.1:9"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "serve" in capsys.readouterr().err


def test_serve_loads_settings_and_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def load_settings(
        config_path: str | None = None, *, listen: str | None = None, backend: str | None = None,
        mcp_listen: str | None = None,
    ) -> types.SimpleNamespace:
        seen["load"] = (config_path, listen, backend, mcp_listen)
        return loaded

    async def run_service(settings: types.SimpleNamespace) -> None:
        seen["run"] = settings
        configured.append("run")

    loaded = types.SimpleNamespace(log=LogConfig(level="warning", format="json"))
    configured: list[object] = []
    monkeypatch.setitem(
        sys.modules, "runner.settings_file", types.SimpleNamespace(load_settings=load_settings)
    )
    monkeypatch.setitem(sys.modules, "runner.service", types.SimpleNamespace(run_service=run_service))
    monkeypatch.setattr(logs, "configure", configured.append)
    assert cli.main([
        "serve", "--config", "r.yaml", "--listen", "0.0.0.0:1", "--backend", "kubernetes", "--mcp-listen", "",
    ]) == 0
    assert seen == {"load": ("r.yaml", "0.0.0.0:1", "kubernetes", ""), "run": loaded}
    assert configured == [loaded.log, "run"]  # once, by serve, from the settings, before the service runs


def test_images(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import runner.cli_images
    import runner.images

    monkeypatch.setattr(runner.cli_images, "_added_rows", list)  # images built from packages: not this test's

    def ensure_images(names: object = None, *, force: bool = False) -> dict[str, str]:
        return {"rootfs": "mcp-runner/rootfs:1" + ("f" if force else "")}

    monkeypatch.setattr(runner.images, "ensure_images", ensure_images)
    monkeypatch.setattr(runner.images, "list_images", lambda names=None: [("rootfs", "mcp-runner/rootfs:1", False)])
    assert cli.main(["images", "build", "--force"]) == 0
    assert cli.main(["images", "list"]) == 0
    out = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert out == ["rootfs mcp-runner/rootfs:1f", "rootfs mcp-runner/rootfs:1 missing (run: mcp-runner images build)"]


def test_images_build_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import runner.images

    def broken(names: object = None, *, force: bool = False) -> dict[str, str]:
        raise runner.images.ImageBuildError("docker build failed: disk full")

    monkeypatch.setattr(runner.images, "ensure_images", broken)
    assert cli.main(["images", "build"]) == 2
    assert "disk full" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ token


def _token_output(out: str) -> tuple[str, str, dict[str, Any]]:
    """The token, its hash, and the policy entry (parsed) that ``mcp-runner token`` printed."""
    first, rest = out.split("\n", 1)
    match = re.fullmatch(r"token for \S+ \(.*\): (\S+)", first)
    assert match, first
    assert rest.startswith("policy file entry:\n")
    entry = yaml.safe_load(rest.split("\n", 1)[1])
    [token_hash] = re.findall(r"sha256:[0-9a-f]{64}", rest)
    return match.group(1), token_hash, entry


def test_token_prints_a_token_and_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "alice"]) == 0
    token, token_hash, entry = _token_output(capsys.readouterr().out)
    assert token.startswith(TOKEN_PREFIX) and len(token) > len(TOKEN_PREFIX) + 40
    assert hash_token(token) == token_hash
    assert entry == {"callers": {"alice": {"tokens": [token_hash]}}}
    assert cli.main(["token", "alice"]) == 0
    second, second_hash, _ = _token_output(capsys.readouterr().out)
    assert second != token and second_hash != token_hash  # fresh randomness every time


@pytest.mark.parametrize("name", ["bad name", "bob: {roles: [admin]}", "alice\n", ""])
def test_token_refuses_a_name_the_policy_could_not_hold(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", name]) == 2
    out, err = capsys.readouterr()
    assert "caller name" in err and TOKEN_PREFIX not in out  # no token handed out for it


async def test_token_entry_works_in_a_policy_file_and_on_the_wire(
    fake: FakeManager, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printed entry, pasted into a policy file, lets ``--token`` identify the caller to the runner."""
    assert cli.main(["token", "carol"]) == 0
    out = capsys.readouterr().out
    token, _, _ = _token_output(out)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(out.split("policy file entry:\n", 1)[1])
    policy = load_policy(policy_file)
    assert policy.token_owner(hash_token(token)) == "carol"

    async with serve(fake, Authenticator(AuthConfig(tokens=True), policy.token_owner)) as port:
        address = f"127.0.0.1:{port}"
        assert await run(address, "--token", token, "sessions") == 0
        assert fake.callers == [("list_sessions", "carol")]
        capsys.readouterr()

        assert await run(address, "sessions") == 4
        err = capsys.readouterr().err
        assert err.startswith("error: UNAUTHENTICATED: authentication required") and "pass --token TOKEN" in err
        assert await run(address, "sessions", "--token", new_token()) == 4  # the option after the command too
        err = capsys.readouterr().err
        assert err.startswith("error: UNAUTHENTICATED: the bearer token is not known") and "its hash" in err
        assert fake.callers == [("list_sessions", "carol")]


async def test_token_is_sent_as_authorization_metadata(
    fake: FakeManager, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token = new_token()
    seen: list[str] = []

    def token_owner(token_hash: str) -> str | None:
        seen.append(token_hash)
        return "dave" if token_hash == hash_token(token) else None

    async with serve(fake, Authenticator(AuthConfig(tokens=True), token_owner)) as port:
        address = f"127.0.0.1:{port}"
        assert await run(address, "--token", token, "call", "--profile", "time", "echo", "{}") == 0
        monkeypatch.setenv("MCP_RUNNER_TOKEN", token)
        assert await run(address, "approvals", "list") == 0
    assert seen and set(seen) == {hash_token(token)}
    assert fake.callers == [("open", "dave"), ("call_tool", "dave"), ("close", "dave"), ("list_approvals", "dave")]
    assert token not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ certs


def _common_name(path: Path) -> str:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_certs_creates_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "certs"
    assert cli.main(["certs", str(directory), "--client", "bob", "--client", "carol"]) == 0
    names = {p.name for p in directory.iterdir()}
    assert names == {
        "ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "bob.pem", "bob-key.pem", "carol.pem", "carol-key.pem"
    }
    for key in ("ca-key.pem", "server-key.pem", "bob-key.pem", "carol-key.pem"):
        assert stat.S_IMODE((directory / key).stat().st_mode) == 0o600, key
    assert (_common_name(directory / "bob.pem"), _common_name(directory / "carol.pem")) == ("bob", "carol")
    out = capsys.readouterr().out
    assert f"CA           {directory / 'ca.pem'}" in out
    assert f"client_ca: {directory / 'ca.pem'}" in out
    assert "  policy: policy.yaml" in out  # an authenticated service will not start without one
    assert '    bob: {profiles: ["*"]}' in out and '    carol: {profiles: ["*"]}' in out


def test_certs_default_client_is_alice(tmp_path: Path) -> None:
    assert cli.main(["certs", str(tmp_path)]) == 0
    assert _common_name(tmp_path / "alice.pem") == "alice"


def test_certs_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["certs", str(tmp_path)]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert cli.main(["certs", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "already exists" in captured.err
    assert captured.out == ""
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing was touched
    assert cli.main(["certs", str(tmp_path), "--force"]) == 0
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after.keys() == before.keys() and after["ca.pem"] != before["ca.pem"]


def test_certs_bad_client_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["certs", str(tmp_path / "d"), "--client", "../evil"]) == 2
    assert "not allowed" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


async def test_certs_work_for_mutual_tls(
    fake: FakeManager, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``certs`` output, served with TLS and client_ca, lets ``--ca/--cert/--key`` identify the caller by its CN."""
    assert cli.main(["certs", str(tmp_path), "--client", "erin"]) == 0
    tls = TlsConfig(cert=tmp_path / "server.pem", key=tmp_path / "server-key.pem", client_ca=tmp_path / "ca.pem")
    authenticator = Authenticator(AuthConfig(mtls=True), lambda token_hash: None)
    async with serve(fake, authenticator, tls=tls) as port:
        address = f"127.0.0.1:{port}"
        tls_args = ["--ca", str(tmp_path / "ca.pem"), "--cert", str(tmp_path / "erin.pem")]
        assert await run(address, *tls_args, "--key", str(tmp_path / "erin-key.pem"), "sessions") == 0
        assert fake.callers == [("list_sessions", "erin")]
        capsys.readouterr()
        # TLS without a client certificate: the handshake refuses, the manager never hears of it
        assert await run(address, "--ca", str(tmp_path / "ca.pem"), "sessions") == 5
        assert "it asks for a client certificate. Pass --cert FILE --key FILE" in capsys.readouterr().err
        assert fake.callers == [("list_sessions", "erin")]


def test_client_tls_file_problems_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--ca", str(tmp_path / "missing.pem"), "sessions"]) == 2
    assert f"cannot read the TLS CA certificate {tmp_path / 'missing.pem'}" in capsys.readouterr().err
    assert cli.main(["--cert", str(tmp_path / "c.pem"), "sessions"]) == 2
    assert "give both or neither" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ approvals


async def test_approvals_list(address: str, fake: FakeManager, capsys: pytest.CaptureFixture[str]) -> None:
    fake.approvals = [
        make_approval(),
        make_approval(ApprovalState.DENIED, approval_id="apr_2", reason="not\non a Friday"),
    ]
    assert await run(address, "approvals", "list") == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{APPROVAL_ID}  pending  caller=alice session=s1 tool={GATED} "
        f'arguments={{"env":"prod","n":{2**60}}}  rule: deploys-need-approval'
    ]
    assert fake.listed_with == {"include_decided": False}
    assert await run(address, "approvals", "list", "--all") == 0
    lines = capsys.readouterr().out.splitlines()
    assert fake.listed_with == {"include_decided": True}
    assert len(lines) == 2
    assert lines[1].startswith("apr_2  denied by bob (not on a Friday)  caller=alice")  # one line per approval


async def test_approvals_watch(address: str, fake: FakeManager, capsys: pytest.CaptureFixture[str]) -> None:
    fake.approvals = [make_approval(approval_id="apr_1"), make_approval(ApprovalState.APPROVED, approval_id="apr_1")]
    assert await run(address, "approvals", "watch") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[:2] for line in lines] == [["apr_1", "pending"], ["apr_1", "approved by bob (looks fine)"]]


@pytest.mark.parametrize(
    ("action", "reason", "state"), [("approve", "ok", "approved"), ("deny", "too risky", "denied")]
)
async def test_approvals_decide(
    address: str, fake: FakeManager, capsys: pytest.CaptureFixture[str], action: str, reason: str, state: str
) -> None:
    fake.approvals = [make_approval()]
    assert await run(address, "approvals", action, APPROVAL_ID, "--reason", reason) == 0
    assert fake.decided == [(APPROVAL_ID, action == "approve", reason)]
    assert capsys.readouterr().out.startswith(f"{APPROVAL_ID}  {state} by anonymous ({reason})  caller=alice")


async def test_approvals_decide_needs_an_id(
    address: str, fake: FakeManager, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(address, "approvals", "approve") == 2
    assert "approvals approve needs an APPROVAL_ID" in capsys.readouterr().err
    assert fake.callers == []


async def test_approvals_errors_exit_4(address: str, fake: FakeManager, capsys: pytest.CaptureFixture[str]) -> None:
    fake.approvals = [make_approval(caller="anonymous")]
    assert await run(address, "approvals", "approve", APPROVAL_ID) == 4
    assert capsys.readouterr().err.strip() == "error: PERMISSION_DENIED: 'anonymous' may not approve their own call"
    fake.error = errors.PermissionDenied("anonymous is not an approver")
    for action in ("list", "watch"):
        assert await run(address, "approvals", action) == 4
        assert capsys.readouterr().err.strip() == "error: PERMISSION_DENIED: anonymous is not an approver"


HOSTILE = "a\x1b]52;c;ZXZpbA==\x07b\u202ec\u200bd\U000e0041e\r\x9bf\u2028"


async def test_everything_printed_is_control_free(
    address: str, fake: FakeManager, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.findings["open"] = (Finding("email", 1, "redacted", HOSTILE),)
    assert await run(address, "tools", "--profile", "time") == 0
    assert await run(address, "call", "--profile", "time", "echo", json.dumps({"x": HOSTILE})) == 0
    captured = capsys.readouterr()
    for stream in (captured.out, captured.err):
        assert not any(ch in stream for ch in "\x1b\x07\u202e\u200b\U000e0041\r\x9b\u2028"), stream
    assert "at a\\u001b]52;c;ZXZpbA==\\u0007b\\u202ec\\u200bd\\udb40\\udc41e\\u000d\\u009bf\\u2028" in captured.err
    body = captured.out.split("structured content:\n", 1)[1]
    assert json.loads(body)["echo"] == {"x": HOSTILE}  # escaped the JSON way: the same value, still valid JSON


def test_control_free_streams_are_restored(capsys: pytest.CaptureFixture[str]) -> None:
    stdout, stderr = sys.stdout, sys.stderr
    assert cli.main(["token", "b\u202eob"]) == 2  # not a caller name the policy can hold
    assert sys.stdout is stdout and sys.stderr is stderr
    assert "b\\u202eob" in capsys.readouterr().err


async def test_line_breaks_from_the_service_cannot_forge_lines(
    address: str, fake: FakeManager, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    from tests.unit import test_api

    forged = "\nsafe_tool — verified by the operator"
    monkeypatch.setattr(test_api, "SERVER", dataclasses.replace(test_api.SERVER, name="fake" + forged))
    assert await run(address, "tools", "--profile", "time") == 0
    out = capsys.readouterr().out
    assert "# fake\\nsafe_tool — verified by the operator 1.0" in out
    assert not any(line.startswith("safe_tool") for line in out.splitlines())
    opened = await fake.open("time", caller="bob", labels={"team": "a\tb"})
    fake.sessions[opened.info.session_id] = dataclasses.replace(opened.info, runtime="runsc" + forged)
    assert await run(address, "sessions") == 0
    assert "team=a\\tb" in capsys.readouterr().out
    assert await run(address, "sessions", opened.info.session_id) == 0
    assert "runtime: runsc\\nsafe_tool" in capsys.readouterr().out
