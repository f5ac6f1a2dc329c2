"""Red team (issue 15, R2): ``mcp-runner`` as a subprocess against a real token service on real Docker.

A server that writes terminal escapes, forged ``stderr:`` and header lines and 10 MB to its stderr; a second
caller naming the first one's session; a shell fed by a pipe (bad lines, a server that dies under it); a
server that fills its workspace. Each defect found is a strict xfail whose reason starts with DEFECT.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.api.auth import hash_token, new_token
from runner.client import RunnerClient
from tests.integration.conftest import Service, start_service, stop_service
from tests.integration.test_cli_live import Cli, cli_at

pytestmark = [pytest.mark.integration, pytest.mark.backends("docker")]

SERVERS = Path(__file__).resolve().parent.parent / "servers"
NOISY_SERVER = textwrap.dedent('''\
    """An MCP server whose stderr is hostile: escapes, forged lines, then 10 MB, before it answers initialize."""
    import json
    import sys

    def noise():
        sys.stderr.write("\\x1b[2J\\x1b]0;pwned\\x07\\u202egnp.exe\\n")
        sys.stderr.write("--- events (audit log) ---\\n")
        sys.stderr.write("session 0123456789abcdef  profile admin  caller root  ready\\n")
        sys.stderr.write(("A" * 1023 + "\\n") * 10240)
        sys.stderr.write("the last line\\n")
        sys.stderr.flush()

    for raw in sys.stdin:
        message = json.loads(raw)
        if "id" not in message:
            continue
        method, answer = message.get("method"), {}
        if method == "initialize":
            noise()
            answer = {"protocolVersion": message["params"]["protocolVersion"], "capabilities": {"tools": {}},
                      "serverInfo": {"name": "noisy", "version": "1"}}
        elif method == "tools/list":
            answer = {"tools": [{"name": "ping", "inputSchema": {"type": "object"}}]}
        elif method == "tools/call":
            answer = {"content": [{"type": "text", "text": "pong"}]}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": answer}) + "\\n")
        sys.stdout.flush()
''')


@dataclass(frozen=True)
class Tenants:
    service: Service
    alice: Cli
    bob: Cli
    alice_token: str


@pytest.fixture(scope="module")
def tenants(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    tmp = tmp_path_factory.mktemp("redteam-cli")
    hostile = tmp / "hostile"
    hostile.mkdir()
    (hostile / "noisy_server.py").write_text(NOISY_SERVER)
    alice, bob = new_token(), new_token()
    (tmp / "policy.yaml").write_text(
        textwrap.dedent(f"""\
        default_caller: {{profiles: []}}
        callers:
          alice: {{tokens: ["{hash_token(alice)}"], profiles: ["*"]}}
          bob: {{tokens: ["{hash_token(bob)}"], profiles: [noisy]}}
    """)
    )
    mounts = f"[{{source: {SERVERS}, target: /srv/servers}}, {{source: {hostile}, target: /srv/hostile}}]"
    config = tmp / "settings.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        builtin_profiles: false
        auth: {{tokens: true}}
        policy: policy.yaml
        pool: {{}}
        profiles:
          noisy:
            image: python-servers
            command: [python3, /srv/hostile/noisy_server.py]
            mounts: {mounts}
          crashy:
            image: python-servers
            command: [python3, /srv/servers/scripted_server.py, crash_on_call]
            mounts: {mounts}
          ws:
            image: python-servers
            command: [python3, /srv/servers/scripted_server.py, files]
            mounts: {mounts}
            workspace: 1m
    """)
    )
    service = start_service(tmp, f"rt-cli-{secrets.token_hex(4)}", config=config)
    try:
        yield Tenants(
            service, cli_at(service.address, "--token", alice), cli_at(service.address, "--token", bob), alice
        )
    finally:
        stop_service(service)


def documents(text: str) -> list[object]:
    """Every JSON document in ``text``, one after another (a shell's --json prints one per line of input)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        while text[at].isspace():
            at += 1
        value, at = decoder.raw_decode(text, at)
        found.append(value)
    return found


def test_logs_of_a_server_with_hostile_stderr_are_bounded_escaped_and_marked(tenants: Tenants) -> None:
    opened = tenants.alice("session", "open", "noisy")
    assert opened.code == 0, opened.err
    session_id = opened.out.strip()
    try:
        shown = tenants.alice("logs", session_id)
        assert shown.code == 0, shown.err
        assert not any(c in shown.out for c in "\x1b\x07\u202e")  # shown as \\uXXXX escapes, never raw
        lines = shown.out.splitlines()
        header = lines.index("--- stderr (its last KiB, sanitized on the host) ---")
        events = [i for i, line in enumerate(lines) if line.startswith("--- events")]
        assert len(events) == 1  # the server's forged header is marked as its stderr
        assert all(line.startswith("stderr: ") for line in lines[header + 1 : events[0]])
        assert "stderr: the last line" in lines
        assert len(shown.out) < 256 * 1024  # a tail, not 10 MB
        as_json = tenants.alice("logs", session_id, "--json")
        assert as_json.code == 0, as_json.err
        document = as_json.json()
        assert isinstance(document, dict) and document["stderr"].rstrip("\n").endswith("the last line")
        assert len(document["stderr"]) < 256 * 1024
        called = tenants.alice("session", "call", session_id, "ping", "--json")
        assert called.code == 0 and called.json()["content"][0]["text"] == "pong"  # type: ignore[index]
    finally:
        tenants.alice("session", "close", session_id)


def test_another_callers_session_is_not_found_and_nothing_of_it_leaks(tenants: Tenants) -> None:
    opened = tenants.alice("session", "open", "noisy", "--label", "secret=alices-label")
    assert opened.code == 0, opened.err
    session_id = opened.out.strip()
    try:
        for argv in (
            ("session", "tools", session_id, "--json"), ("session", "call", session_id, "ping", "--json"),
            ("session", "read", session_id, "file:///x"), ("logs", session_id, "--json"),
            ("sessions", session_id, "--json"), ("session", "close", session_id, "--json"),
        ):  # fmt: skip
            refused = tenants.bob(*argv)
            assert refused.code in (3, 4), (argv, refused)
            assert refused.out == "", argv  # --json: nothing on stdout when refused; the error on stderr
            assert refused.err.startswith(("error: NOT_FOUND: ", "error: PERMISSION_DENIED: ")), refused.err
            assert "alice" not in refused.err and "alices-label" not in refused.err
        listed = tenants.bob("sessions", "--json").json()
        assert isinstance(listed, list) and session_id not in json.dumps(listed)
        profiles = tenants.bob("profiles", "--json").json()
        assert isinstance(profiles, list)  # bob may open noisy; alice's session does not tell him its tools
        assert [(p["name"], p["tools"]) for p in profiles] == [("noisy", None)]
        still = tenants.alice("session", "call", session_id, "ping")
        assert still.code == 0 and still.out.strip() == "pong"  # bob's close did not end alice's session
    finally:
        tenants.alice("session", "close", session_id)


def test_a_piped_shell_survives_bad_lines_and_exits_with_the_last_failure(tenants: Tenants) -> None:
    lines = ["bogus", "call", "call ping {bad", "get", "# a comment", "", "call no_such_tool {}", "tools",
             "call ping []"]  # fmt: skip
    ran = tenants.alice("shell", "noisy", "--json", stdin="\n".join(lines) + "\n")
    assert ran.code == 2, ran.err  # the last failed line: arguments that are not an object (usage)
    assert "unknown command 'bogus'" in ran.err and "call needs a TOOL" in ran.err
    assert "Traceback" not in ran.err
    answers = documents(ran.out)  # only the one line that succeeded printed, as one JSON document
    assert len(answers) == 1 and [t["name"] for t in answers[0]] == ["ping"]  # type: ignore[attr-defined]
    after = tenants.alice("sessions", "--json").json()
    assert isinstance(after, list)
    assert not [s for s in after if s["profile"] == "noisy" and s["state"] == "ready"]  # the shell closed it


def test_a_shell_whose_server_dies_says_so_and_exits_9_without_a_traceback(tenants: Tenants) -> None:
    ran = tenants.alice("shell", "crashy", stdin='call echo {"text": "hi"}\ntools\n')
    assert "Traceback" not in ran.err
    assert "this shell's session has ended" in ran.err, ran.err
    assert ran.code == 9, ran.err
    assert tenants.alice("profiles", "noisy").code == 0  # the service is unharmed


def test_a_server_filling_its_workspace_gets_enospc_and_harms_nothing_else(tenants: Tenants) -> None:
    with (
        RunnerClient(tenants.service.address, token=tenants.alice_token) as client,
        client.session("ws") as filler,
        client.session("ws") as neighbour,
    ):
        chunk = "x" * (900 * 1024)  # under the 1 MiB argument cap; two of them overfill the 1 MiB workspace
        first = client.call_tool(filler.session_id, "write_file", {"path": "/workspace/a", "text": chunk})
        assert first.structured_content["ok"] is True
        full = client.call_tool(filler.session_id, "write_file", {"path": "/workspace/big", "text": chunk})
        assert full.structured_content["ok"] is False
        assert full.structured_content["errno"] == errno.ENOSPC
        small = client.call_tool(neighbour.session_id, "write_file", {"path": "/workspace/n", "text": "mine"})
        assert small.structured_content == {"ok": True, "workspace": "/workspace"}
        unseen = client.call_tool(neighbour.session_id, "read_file", {"path": "/workspace/big"})
        assert unseen.structured_content["errno"] == errno.ENOENT  # each session its own workspace
        again = client.call_tool(filler.session_id, "read_file", {"path": "/workspace/n"})
        assert again.structured_content["errno"] == errno.ENOENT  # and the filler still answers
    assert tenants.alice("health").code == 0  # the service still SERVING


def test_values_the_service_refuses_exit_6_and_leave_the_session_usable(tenants: Tenants) -> None:
    opened = tenants.alice("session", "open", "noisy")
    assert opened.code == 0, opened.err
    session_id = opened.out.strip()
    try:
        for argv in (
            ("session", "call", session_id, "ping", "--timeout-ms", "-5"),
            ("session", "call", session_id, "ping\n-- forged", "--json"),
        ):  # fmt: skip
            refused = tenants.alice(*argv)
            assert refused.code in (3, 6), (argv, refused)
            assert refused.out == "" and refused.err.startswith(("error: INVALID_ARGUMENT: ", "error: NOT_FOUND: "))
            assert "\n-- forged" not in refused.err  # a name echoed back cannot start a line of its own
        for label in ("=x", "k=" + "v" * 100_000, "\x1b[2J=x"):
            refused = tenants.alice("session", "open", "noisy", "--label", label)
            assert refused.code in (2, 6), (label, refused)
            assert refused.out == "" and "\x1b" not in refused.err and len(refused.err) < 4096
        still = tenants.alice("session", "call", session_id, "ping")
        assert still.code == 0 and still.out.strip() == "pong"
    finally:
        tenants.alice("session", "close", session_id)


def test_a_piped_shell_fed_bytes_that_are_not_utf8_refuses_the_line_and_goes_on(tenants: Tenants) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_RUNNER_")}
    env |= {"MCP_RUNNER_ADDRESS": tenants.service.address, "MCP_RUNNER_TOKEN": tenants.alice_token}
    done = subprocess.run(
        [sys.executable, "-m", "runner.cli", "shell", "noisy"], input=b"call \xff\xfe {}\ncall ping\n",
        capture_output=True, env=env, timeout=180,
    )  # fmt: skip
    assert b"Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stdout.decode().strip().endswith("pong")
    assert done.returncode == 2
