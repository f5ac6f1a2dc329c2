"""Red team of the operators' view (issue 15) against the real service and real Docker: ``/metrics`` counts exactly
what both doors (gRPC and MCP over HTTP) did, including an OOM kill and a quarantine, under hostile scrapes and
concurrent sessions; the JSON log holds no session secret and cannot be split by what a caller sends; the log level
is honoured. A test marked ``xfail(strict=True, reason="DEFECT: ...")`` shows a defect: it fails today.

The service is this module's own (its own instance, config, policy and log), so its counters and log hold only what
these tests did. Its tests run in file order and read counters as deltas; the throttle test comes last, since it
uses up the callers' refusal burst.
"""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families

from runner.certs import make_dev_certs
from tests.integration.conftest import Service, start_service, stop_service
from tests.integration.test_mcp_http import _wait_for_port

pytestmark = pytest.mark.integration

SERVERS = Path(__file__).resolve().parent.parent / "servers"
LEAK = "rt-" + secrets.token_hex(16)
"""The session secret (API_TOKEN) of the leaky and spill profiles: it must reach no log line and no label."""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# A server that spills its API_TOKEN on stderr at start, in an error message and on stderr as it crashes.
SPILL_SERVER = r"""
import json, os, sys

token = os.environ.get("API_TOKEN", "")
sys.stderr.write(f"starting with token {token}\n")
sys.stderr.flush()

def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()

for line in sys.stdin:
    if not line.strip():
        continue
    msg = json.loads(line)
    if "id" not in msg:
        continue
    rid, method = msg["id"], msg.get("method")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": rid, "result": {
            "protocolVersion": msg["params"].get("protocolVersion", "2025-06-18"), "capabilities": {"tools": {}},
            "serverInfo": {"name": "spill", "version": "1"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": rid, "result": {"tools": [
            {"name": "spill_error", "inputSchema": {"type": "object"}},
            {"name": "crash", "inputSchema": {"type": "object"}}]}})
    elif method == "tools/call" and msg["params"]["name"] == "spill_error":
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32603, "message": f"upstream refused token {token}"}})
    elif method == "tools/call":
        sys.stderr.write(f"fatal: token {token} was revoked\n")
        sys.stderr.flush()
        sys.exit(9)
    else:
        send({"jsonrpc": "2.0", "id": rid, "result": {}})
"""


@pytest.fixture(scope="module")
def observed(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("redteam-observe")
    (tmp / "spill").mkdir()
    (tmp / "spill" / "spill_server.py").write_text(SPILL_SERVER, encoding="utf-8")
    (tmp / "leak.txt").write_text(LEAK + "\n", encoding="utf-8")
    (tmp / "policy.yaml").write_text(textwrap.dedent("""\
        anomaly: {max_events: 3, window_s: 600}
        default_caller:
          profiles: ["*"]
          tools: {deny: [slow]}
          rates: {refusals_per_min: 0.5, refusal_burst: 3}
        """), encoding="utf-8")  # fmt: skip
    servers = json.dumps(str(SERVERS))
    scripted = f"image: python-servers, mounts: [{{source: {servers}, target: /srv/servers}}]"
    secret = "secrets: {API_TOKEN: {file: leak.txt}}"
    config = tmp / "settings.yaml"
    config.write_text(textwrap.dedent(f"""\
        reap_interval_s: 0.5
        max_sessions: 20
        pool: {{}}
        policy: policy.yaml
        defaults: {{call_timeout_s: 20}}
        profiles:
          scripted: {{{scripted}, command: [python3, /srv/servers/scripted_server.py, good]}}
          memory_hog: {{{scripted}, command: [python3, /srv/servers/scripted_server.py, memory_hog],
                        limits: {{memory: 96m}}}}
          leaky: {{{scripted}, command: [python3, /srv/servers/scripted_server.py, leaky], {secret}}}
          spill: {{image: python-servers, command: [python3, /srv/spill/spill_server.py], {secret},
                   mounts: [{{source: {json.dumps(str(tmp / "spill"))}, target: /srv/spill}}]}}
        """), encoding="utf-8")  # fmt: skip
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MCP_RUNNER_LOG_FORMAT", "json")  # the service's subprocess inherits it
        env.delenv("MCP_RUNNER_LOG_LEVEL", raising=False)
        service = start_service(tmp, f"it-redteam-{secrets.token_hex(4)}", config=config)
    try:
        _wait_for_port(service.mcp_listen, service)
        yield service
    finally:
        stop_service(service)


def scrape(service: Service, path: str = "/metrics") -> Samples:
    connection = http.client.HTTPConnection(service.mcp_listen, timeout=15)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        text = answer.read().decode()
    finally:
        connection.close()
    assert answer.status == 200, text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def settled(service: Service, profile: str) -> Samples:
    """A scrape once no session of ``profile`` is open (the door closes its sandbox after the client's DELETE)."""
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(service)
        if value(samples, "mcp_runner_sessions_open", profile=profile) == 0 or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def door_client(service: Service, profile: str) -> Client:
    http = httpx2.AsyncClient(timeout=60)
    url = f"http://{service.mcp_listen}/mcp/{profile}"
    return Client(streamable_http_client(url, http_client=http), mode="legacy")


def code_of(caught: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return caught.value.code()


def log_lines(service: Service) -> list[str]:
    return [line for line in service.log().split("\n") if line.strip()]


# -- metrics ------------------------------------------------------------------------------------------------------


async def test_counters_are_exact_after_a_mix_of_calls_on_both_doors(observed: Service) -> None:
    before = scrape(observed)
    with observed.client() as client, client.session("scripted") as opened:
        assert client.call_tool(opened.session_id, "echo", {"text": "hi"}).text == "hi"
        for tool, arguments, code in (
            ("add", {"a": "x", "b": 1}, grpc.StatusCode.INVALID_ARGUMENT),
            ("slow", {"steps": 1}, grpc.StatusCode.PERMISSION_DENIED),
            ("no_such_tool", {}, grpc.StatusCode.NOT_FOUND),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                client.call_tool(opened.session_id, tool, arguments)
            assert code_of(refused) is code, tool
    async with door_client(observed, "scripted") as mcp:
        result = await mcp.call_tool("echo", {"text": "hi"})
        assert not result.is_error
        for tool, arguments in (("add", {"a": "x", "b": 1}), ("slow", {"steps": 1})):
            with pytest.raises(MCPError):
                await mcp.call_tool(tool, arguments)
    after = settled(observed, "scripted")

    def delta(name: str, **labels: str) -> float:
        return moved(before, after, name, **labels)

    assert delta("mcp_runner_sessions_opened_total", profile="scripted", outcome="ok") == 2
    assert delta("mcp_runner_sessions_closed_total", profile="scripted", state="closed") == 2
    assert value(after, "mcp_runner_sessions_open", profile="scripted") == 0
    assert delta("mcp_runner_tool_calls_total", profile="scripted", tool="echo", outcome="ok") == 2
    assert delta("mcp_runner_tool_calls_total", profile="scripted", tool="add", outcome="invalid_argument") == 2
    assert delta("mcp_runner_tool_calls_total", profile="scripted", tool="slow", outcome="permission_denied") == 2
    assert delta("mcp_runner_tool_calls_total", profile="scripted", tool="other", outcome="not_found") == 1
    assert delta("mcp_runner_tool_call_seconds_count", profile="scripted", tool="echo") == 2
    assert delta("mcp_runner_validation_failures_total", profile="scripted", method="tools/call") == 2
    assert delta("mcp_runner_policy_decisions_total", action="tools/call", verdict="deny") == 2
    assert delta("mcp_runner_policy_decisions_total", action="open", verdict="allow") == 2
    assert delta("mcp_runner_session_open_seconds_count", profile="scripted", start="cold") == 2


def test_an_oom_kill_and_a_quarantine_each_count_once(observed: Service) -> None:
    before = scrape(observed)
    with observed.client() as client:
        hog = client.open_session("memory_hog")
        with pytest.raises(grpc.RpcError) as killed:
            client.call_tool(hog.session_id, "echo", {"text": "x"})
        assert code_of(killed) is grpc.StatusCode.RESOURCE_EXHAUSTED
        suspect = client.open_session("scripted")
        answers = []
        for _ in range(6):  # denied calls until the anomaly rule (3 in the window) quarantines the session
            with pytest.raises(grpc.RpcError) as refused:
                client.call_tool(suspect.session_id, "slow", {"steps": 1})
            answers.append(code_of(refused))
            if "quarantined" in (refused.value.details() or ""):
                break
        assert answers[-1] is grpc.StatusCode.PERMISSION_DENIED and len(answers) == 3, answers
    after = settled(observed, "scripted")
    assert moved(before, after, "mcp_runner_sandbox_exits_total", profile="memory_hog", reason="oom_killed") == 1
    assert moved(before, after, "mcp_runner_sessions_closed_total", profile="memory_hog", state="failed") == 1
    assert moved(before, after, "mcp_runner_quarantines_total", profile="scripted") == 1
    assert moved(before, after, "mcp_runner_sessions_closed_total", profile="scripted", state="failed") == 1
    assert value(after, "mcp_runner_sessions_open", profile="memory_hog") == 0


def test_the_call_that_killed_its_sandbox_counts_under_its_profile_and_tool(observed: Service) -> None:
    before = scrape(observed)
    with observed.client() as client:
        hog = client.open_session("memory_hog")
        with pytest.raises(grpc.RpcError) as killed:
            client.call_tool(hog.session_id, "echo", {"text": "x"})
        assert code_of(killed) is grpc.StatusCode.RESOURCE_EXHAUSTED
    after = scrape(observed)
    assert moved(before, after, "mcp_runner_tool_calls_total", profile="memory_hog", tool="echo",
                 outcome="resource_exhausted") == 1  # fmt: skip


def test_scrapes_while_sessions_open_and_close_always_parse_and_stay_in_range(observed: Service) -> None:
    baseline = value(settled(observed, "scripted"), "mcp_runner_sessions_open", profile="scripted")
    failures: list[BaseException] = []

    def churn() -> None:
        try:
            with observed.client() as client:
                for _ in range(2):
                    with client.session("scripted") as opened:
                        client.call_tool(opened.session_id, "echo", {"text": "x"})
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    workers = [threading.Thread(target=churn) for _ in range(2)]
    for worker in workers:
        worker.start()
    seen: list[float] = []
    while any(worker.is_alive() for worker in workers):
        seen.append(value(scrape(observed), "mcp_runner_sessions_open", profile="scripted"))
    for worker in workers:
        worker.join()
    assert not failures, failures
    assert seen and all(baseline <= v <= baseline + 2 for v in seen), seen
    assert value(scrape(observed), "mcp_runner_sessions_open", profile="scripted") == baseline


def test_hostile_scrapes_get_clear_answers_and_the_service_keeps_serving(observed: Service) -> None:
    def ask(method: str, path: str, **headers: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection(observed.mcp_listen, timeout=15)
        try:
            connection.request(method, path, headers=headers)
            answer = connection.getresponse()
            return answer.status, answer.read().decode(errors="replace")
        except (ConnectionError, http.client.HTTPException):
            return 0, ""  # the server hung up: a refusal too
        finally:
            connection.close()

    status, body = ask("GET", "/metrics?name[]=mcp_runner_build_info&format=protobuf")
    assert status == 200 and "mcp_runner_sessions_opened_total" in body
    status, body = ask("GET", "/metrics/")
    assert status == 404 and "/mcp/<profile>" in body
    for method in ("HEAD", "OPTIONS", "PUT", "TRACE"):
        status, _ = ask(method, "/metrics")
        assert status == 405, method
    assert ask("GET", "/metrics", Host="attacker.example")[0] == 421
    assert ask("GET", "/metrics", Origin="http://attacker.example")[0] == 403
    assert ask("GET", "/metrics", Host=f"localhost:{observed.mcp_listen.rpartition(':')[2]}")[0] == 200
    huge, _ = ask("GET", "/metrics", **{"X-Filler": "a" * 200_000})
    assert huge == 0 or 400 <= huge < 500
    assert observed.healthy() and scrape(observed)


def test_with_mtls_a_scrape_needs_a_certificate_of_the_ca_even_when_public(images: dict[str, str],
                                                                           tmp_path: Path) -> None:  # fmt: skip
    ours = make_dev_certs(tmp_path / "ca", clients=["alice", "prober"])
    theirs = make_dev_certs(tmp_path / "other-ca", clients=["alice"])
    (tmp_path / "policy.yaml").write_text("callers:\n  alice: {profiles: []}\n", encoding="utf-8")
    config = tmp_path / "settings.yaml"
    config.write_text(textwrap.dedent(f"""\
        tls: {{cert: {ours.server_cert}, key: {ours.server_key}, client_ca: {ours.ca_cert}}}
        policy: policy.yaml
        pool: {{}}
        metrics: {{public: true}}
        """), encoding="utf-8")  # fmt: skip
    service = start_service(tmp_path, f"it-redteam-mtls-{secrets.token_hex(4)}", config=config, ca=ours.ca_cert,
                            probe_cert=ours.clients["prober"])  # fmt: skip

    def scrape_status(cert: tuple[Path, Path] | None) -> int:
        context = ssl.create_default_context(cafile=str(ours.ca_cert))
        if cert is not None:
            context.load_cert_chain(*map(str, cert))
        host, _, port = service.mcp_listen.rpartition(":")
        connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=15)
        try:
            connection.request("GET", "/metrics")
            answer = connection.getresponse()
            answer.read()
            return answer.status
        except (ssl.SSLError, ConnectionError, http.client.HTTPException):
            return 0  # refused in the TLS handshake
        finally:
            connection.close()

    try:
        _wait_for_port(service.mcp_listen, service)
        assert scrape_status(None) == 0
        assert scrape_status(theirs.clients["alice"]) == 0
        assert scrape_status(ours.clients["alice"]) == 200
        assert service.healthy()
    finally:
        stop_service(service)


# -- logs ---------------------------------------------------------------------------------------------------------


async def test_a_session_secret_reaches_no_log_line_and_no_label(observed: Service) -> None:
    with observed.client() as client:
        with client.session("leaky") as opened:
            client.call_tool(opened.session_id, "echo", {"text": "hi"})
            with pytest.raises(grpc.RpcError):
                client.call_tool(opened.session_id, "leaky_error", {})
        with client.session("spill") as opened:
            with pytest.raises(grpc.RpcError) as refused:
                client.call_tool(opened.session_id, "spill_error", {})
            assert LEAK not in (refused.value.details() or "")
            with pytest.raises(grpc.RpcError) as crashed:
                client.call_tool(opened.session_id, "crash", {})
            assert LEAK not in (crashed.value.details() or "")
    async with door_client(observed, "spill") as mcp:
        with pytest.raises(MCPError) as spilled:
            await mcp.call_tool("spill_error", {})
        assert LEAK not in str(spilled.value)
    samples = settled(observed, "spill")
    assert not any(LEAK in v for _, labels in samples for _, v in labels)
    lines = log_lines(observed)
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(line.get("event") == "session.close" and line.get("profile") == "spill" for line in parsed)
    leaked = [line for line in lines if LEAK in line or LEAK[3:19] in line]
    assert not leaked, leaked[:3]


async def test_a_callers_line_breaks_cannot_split_a_json_log_line(observed: Service) -> None:
    marker = secrets.token_hex(6)
    method = f'tools/list\u2028{{"level": "critical", "forged": "{marker}"}}\x85'
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": "2025-06-18", "mcp-session-id": f"gone-{marker}"}  # fmt: skip
    async with httpx2.AsyncClient(timeout=30) as http:
        answer = await http.post(f"http://{observed.mcp_listen}/mcp/scripted", headers=headers,
                                 json={"jsonrpc": "2.0", "id": 1, "method": method})  # fmt: skip
    assert answer.status_code in (404, 429)
    deadline = time.monotonic() + 10
    while marker not in observed.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    ours = [line for line in observed.log().splitlines() if marker in line]  # as a line-based reader splits it
    assert ours and all(json.loads(line)["level"] in ("info", "warning") for line in ours)
    assert "\u2028" not in observed.log() and "\x85" not in observed.log()
    (refused,) = [json.loads(line) for line in ours if json.loads(line).get("event") == "request"]
    assert refused["method"] == method and refused["status"] == "NOT_FOUND"  # escaped in the file, exact in JSON


def test_the_warning_level_hides_info_lines_and_keeps_warnings(
    images: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_RUNNER_LOG_LEVEL", "warning")
    monkeypatch.delenv("MCP_RUNNER_LOG_FORMAT", raising=False)
    config = tmp_path / "settings.yaml"
    config.write_text("pool: {}\n", encoding="utf-8")
    service = start_service(tmp_path, f"it-redteam-level-{secrets.token_hex(4)}", config=config)
    try:
        with service.client() as client, pytest.raises(grpc.RpcError) as refused:
            client.open_session("no-such-profile")
        assert code_of(refused) is grpc.StatusCode.NOT_FOUND
    finally:
        stop_service(service)
    lines = log_lines(service)
    assert any(" WARNING " in line and "no-such-profile" in line for line in lines), lines
    assert not [line for line in lines if " INFO " in line]


async def test_every_throttled_refusal_counts_on_both_doors(observed: Service) -> None:
    before = scrape(observed)
    throttled = 0
    with observed.client() as client:
        for n in range(6):
            with pytest.raises(grpc.RpcError) as refused:
                client.call_tool(f"ses_{n:032x}", "echo", {"text": "x"})
            throttled += code_of(refused) is grpc.StatusCode.RESOURCE_EXHAUSTED
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": "2025-06-18", "mcp-session-id": "no-such-session"}  # fmt: skip
    async with httpx2.AsyncClient(timeout=30) as http:
        for n in range(4):
            answer = await http.post(f"http://{observed.mcp_listen}/mcp/scripted", headers=headers,
                                     json={"jsonrpc": "2.0", "id": n, "method": "tools/list"})  # fmt: skip
            throttled += answer.status_code == 429
    after = scrape(observed)
    counted = sum(moved(before, after, name, **dict(labels)) for name, labels in after
                  if name == "mcp_runner_throttled_total")  # fmt: skip
    assert throttled >= 4 and counted == throttled
