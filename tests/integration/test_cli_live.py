"""``mcp-runner`` as a person runs it: a subprocess against the real service (real Docker, real servers).

Profiles, a session kept across commands, the shell with the stateful ``memory`` server, a crashed session's
logs, ``--json`` that parses, and the exit codes and messages of what goes wrong: not found, denied, no token,
TLS expected, an unknown CA, no service at all.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.api.auth import hash_token, new_token
from runner.certs import DevCerts, make_dev_certs
from tests.integration.conftest import Service, free_port, start_service, stop_service

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


Cli = Callable[..., Ran]


def cli_at(address: str, *common: str) -> Cli:
    """``mcp-runner`` with MCP_RUNNER_ADDRESS set to ``address`` (and nothing else of the user's environment's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_RUNNER_")}
    env["MCP_RUNNER_ADDRESS"] = address

    def run(*argv: str, stdin: str | None = None) -> Ran:
        done = subprocess.run(
            [sys.executable, "-m", "runner.cli", *argv, *common], input=stdin, capture_output=True, text=True,
            env=env, timeout=180,
        )  # fmt: skip
        return Ran(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture
def cli(service: Service) -> Cli:
    return cli_at(service.address)


def test_profiles_text_and_json(cli: Cli) -> None:
    listed = cli("profiles", "--json")
    assert listed.code == 0, listed.err
    profiles = {p["name"]: p for p in listed.json()}  # type: ignore[attr-defined]
    assert {"time", "memory", "scripted", "networked"} <= set(profiles)
    assert profiles["time"]["image"] == "python-servers" and profiles["time"]["network"] == "none"
    assert profiles["networked"]["network"].startswith("egress proxy: never-contacted.invalid:443")
    assert "Current time" in profiles["time"]["description"]
    opened = cli("session", "open", "time")
    assert opened.code == 0, opened.err
    try:
        text = cli("profiles")
        assert text.code == 0
        block = text.out.split("\ntime — ", 1)[1].split("\n", 3)
        assert "network: none — give it an allowlist (network.egress)" in block[1], text.out
        assert "get_current_time" in block[2], text.out
        assert opened.out.strip() in block[2]
    finally:
        assert cli("session", "close", opened.out.strip()).code == 0


def test_a_session_across_commands(cli: Cli) -> None:
    opened = cli("session", "open", "time", "--json")
    assert opened.code == 0, opened.err
    shown = opened.json()
    session_id = shown["session_id"]  # type: ignore[index]
    assert "get_current_time" in [t["name"] for t in shown["tools"]]  # type: ignore[index]
    called = cli("session", "call", session_id, "get_current_time", '{"timezone": "Asia/Tokyo"}', "--json")
    assert called.code == 0, called.err
    result = called.json()
    assert result["structured_content"]["timezone"] == "Asia/Tokyo" and not result["is_error"]  # type: ignore[index]
    assert result["audit_id"].startswith("aud_")  # type: ignore[index]
    invalid = cli("session", "call", session_id, "get_current_time", '{"timezone": 5}')
    assert invalid.code == 6 and invalid.err.startswith("error: INVALID_ARGUMENT: ")
    unknown_tool = cli("session", "call", session_id, "no_such_tool", "{}")
    assert unknown_tool.code == 3 and "get_current_time" in unknown_tool.err  # the message lists the tools
    detail = cli("sessions", session_id, "--json")
    assert detail.code == 0 and detail.json()["usage"]["calls"] >= 1  # type: ignore[index]
    closed = cli("session", "close", session_id)
    assert closed.code == 0 and closed.out.startswith(f"session {session_id} closed: ")
    after = cli("session", "call", session_id, "get_current_time", '{"timezone": "UTC"}')
    assert after.code == 9 and after.err.startswith("error: FAILED_PRECONDITION: ")


def test_the_shell_keeps_memorys_knowledge_across_lines(cli: Cli) -> None:
    entities = {"entities": [{"name": "Ada Lovelace", "entityType": "person",
                              "observations": ["wrote the first published program"]}]}  # fmt: skip
    script = "\n".join([
        "# a stateful server: what one line stores, the next reads",
        f"call create_entities {json.dumps(entities)}",
        'call open_nodes {"names": ["Ada Lovelace"]}',
        "exit",
    ])  # fmt: skip
    ran = cli("shell", "memory", stdin=script)
    assert ran.code == 0, ran.err
    assert ran.out.count("wrote the first published program") >= 2, ran.out  # created, then read back
    assert "help` lists the commands" in ran.err
    listed = cli("sessions", "--json").json()
    shells = [s for s in listed if s["profile"] == "memory" and s["usage"]["calls"] == 2]  # type: ignore[union-attr]
    assert shells and all(s["state"] == "closed" for s in shells)  # closed at exit


def test_logs_of_a_crashed_session(cli: Cli) -> None:
    opened = cli("session", "open", "crash_on_call")
    assert opened.code == 0, opened.err
    session_id = opened.out.strip()
    crashed = cli("session", "call", session_id, "echo", '{"text": "hi"}')
    assert crashed.code == 9 and "segfault simulated" in crashed.err
    logs = cli("logs", session_id, "--json")
    assert logs.code == 0, logs.err
    shown = logs.json()
    assert "boom: segfault simulated" in shown["stderr"]  # type: ignore[index]
    assert shown["session"]["state"] == "failed"  # type: ignore[index]
    kinds = [event["kind"] for event in shown["events"]]  # type: ignore[index]
    assert {"session.open", "request", "exit", "session.close"} <= set(kinds), kinds
    assert kinds.index("session.open") < kinds.index("exit") < kinds.index("session.close"), kinds
    text = cli("logs", session_id)
    assert "--- stderr (its last KiB, sanitized on the host) ---\nstderr: boom: segfault simulated" in text.out
    assert "\nfailure: session " in text.out and "\n    boom: segfault simulated" in text.out  # quoted, indented
    assert "--- events (audit log) ---" in text.out and "session.open" in text.out
    events = cli("audit", "list", "--session", session_id, "--json")
    assert [json.loads(line)["kind"] for line in events.out.splitlines()] == kinds  # JSON Lines


def test_not_found_and_service_not_running(cli: Cli) -> None:
    missing = cli("call", "--profile", "no-such-profile", "tool")
    assert missing.code == 3 and missing.err.startswith("error: NOT_FOUND: no profile named 'no-such-profile'")
    assert cli("logs", "0123456789abcdef").code == 3
    assert cli("audit", "show", "aud_ffffffffffffffff").code == 3
    nobody = f"127.0.0.1:{free_port()}"
    down = cli("sessions", "--address", nobody)
    assert down.code == 5
    assert down.err.startswith(f"error: UNAVAILABLE: no service is listening at {nobody}. Start one with `make run`")
    assert cli_at(nobody)("profiles").code == 5  # the address from MCP_RUNNER_ADDRESS, as the option's


@dataclass(frozen=True)
class Guarded:
    service: Service
    certs: DevCerts
    other_ca: Path
    alice: str
    bob: str


@pytest.fixture(scope="module")
def guarded(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    tmp = tmp_path_factory.mktemp("cli-guarded")
    ours = make_dev_certs(tmp / "certs", clients=["alice"], server_names=("127.0.0.1",))
    other = make_dev_certs(tmp / "other", clients=["mallory"], server_names=("127.0.0.1",))
    alice, bob = new_token(), new_token()
    (tmp / "policy.yaml").write_text(textwrap.dedent(f"""
        default_caller: {{profiles: []}}
        callers:
          alice: {{tokens: ["{hash_token(alice)}"], profiles: [time, memory]}}
          bob: {{tokens: ["{hash_token(bob)}"], profiles: [time]}}
    """))  # fmt: skip
    config = tmp / "settings.yaml"
    config.write_text(textwrap.dedent(f"""
        tls: {{cert: {ours.server_cert}, key: {ours.server_key}}}
        auth: {{tokens: true}}
        policy: policy.yaml
        pool: {{}}
    """))  # fmt: skip
    service = start_service(tmp, f"it-cli-{secrets.token_hex(4)}", config=config, ca=ours.ca_cert)
    yield Guarded(service, ours, other.ca_cert, alice, bob)
    stop_service(service)


def test_denied_unauthenticated_and_tls_mistakes(guarded: Guarded) -> None:
    address, ca = guarded.service.address, str(guarded.certs.ca_cert)
    as_bob = cli_at(address, "--ca", ca, "--token", guarded.bob)
    listed = as_bob("profiles", "--json")
    assert listed.code == 0, listed.err
    assert [p["name"] for p in listed.json()] == ["time"]  # type: ignore[union-attr]
    as_alice = cli_at(address, "--ca", ca, "--token", guarded.alice)
    assert [p["name"] for p in as_alice("profiles", "--json").json()] == ["memory", "time"]  # type: ignore[union-attr]
    hidden = as_bob("profiles", "memory")  # as a name no profile has: other tenants' names stay unknown
    assert hidden.code == 3 and hidden.err.startswith("error: NOT_FOUND: no profile named 'memory' (profiles you may")
    denied = as_bob("session", "open", "memory")
    assert denied.code == 4 and denied.err.startswith("error: PERMISSION_DENIED: caller bob may not open profile")
    anonymous = cli_at(address, "--ca", ca)("sessions")
    assert anonymous.code == 4 and "pass --token TOKEN (or set MCP_RUNNER_TOKEN)" in anonymous.err
    plaintext = cli_at(address, "--token", guarded.alice)("sessions")
    assert plaintext.code == 5 and "it expects TLS. Pass --ca FILE" in plaintext.err, plaintext.err
    wrong_ca = cli_at(address, "--ca", str(guarded.other_ca), "--token", guarded.alice)("sessions")
    assert wrong_ca.code == 5 and "is not signed by the CA given with --ca" in wrong_ca.err, wrong_ca.err


def test_tls_against_a_plaintext_service(service: Service, guarded: Guarded) -> None:
    ran = cli_at(service.address, "--ca", str(guarded.certs.ca_cert))("sessions")
    assert ran.code == 5 and "does not speak TLS, but the CLI used it" in ran.err, ran.err
