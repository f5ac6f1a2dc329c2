"""Network isolation against the project's own hosts only: two Docker networks this module creates.

``upstream`` holds an HTTP echo server (aliases ``allowed-web`` and
``private-web``) and a Streamable HTTP MCP server (``remote-mcp``, the npm
``everything`` server); ``other`` holds a second echo server the allowlist does
not name. Sessions reach them only through their egress proxy; every probe
runs inside a real sandbox, and every decision is read back through the API.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest
import yaml

from runner.client import RunnerClient
from tests.integration.conftest import Service, start_service, stop_service
from tests.unit.test_egress_proxy import client_hello, sni

pytestmark = pytest.mark.integration

SERVERS = Path(__file__).resolve().parents[1] / "servers"
TOKEN = "tok-" + secrets.token_hex(12)
TEST_LABEL = "mcp-runner.test"


@dataclass
class Hosts:
    upstream: str
    other: str
    web_ip: str
    other_ip: str
    gateway_ip: str
    web: str  # the allowed-web container, whose log lists every request it received


def _run_server(api: Any, name: str, network: str, aliases: list[str], **kwargs: Any) -> str:
    container = api.create_container(
        name=name,
        labels={TEST_LABEL: "network"},
        host_config=api.create_host_config(
            network_mode=network,
            binds={str(SERVERS): {"bind": "/srv/servers", "mode": "ro"}},
            auto_remove=False,
        ),
        networking_config=api.create_networking_config({network: api.create_endpoint_config(aliases=aliases)}),
        user="10001:10001",
        **kwargs,
    )
    api.start(container["Id"])
    return str(container["Id"])


def _ip(api: Any, container: str, network: str) -> str:
    return str(api.inspect_container(container)["NetworkSettings"]["Networks"][network]["IPAddress"])


@pytest.fixture(scope="module")
def hosts(images: dict[str, str]) -> Iterator[Hosts]:
    api = docker.from_env().api
    tag = secrets.token_hex(4)
    upstream, other = f"mcpr-test-{tag}-upstream", f"mcpr-test-{tag}-other"
    made: list[str] = []
    for network in (upstream, other):
        api.create_network(network, driver="bridge", labels={TEST_LABEL: "network"})
    try:
        echo = ["/usr/bin/python3", "/srv/servers/http_echo.py"]
        web = _run_server(api, f"{upstream}-web", upstream, ["allowed-web", "private-web"],
                          image=images["python-servers"], entrypoint=echo, command=["allowed-web", "8080"])
        made.append(web)
        other_web = _run_server(api, f"{other}-web", other, ["other-web"],
                                image=images["python-servers"], entrypoint=echo, command=["other-web", "8080"])
        made.append(other_web)
        made.append(_run_server(api, f"{upstream}-mcp", upstream, ["remote-mcp"],
                                image=images["node-servers"], entrypoint=["mcp-server-everything"],
                                command=["streamableHttp"],
                                # Debian bookworm ships Node 18, where the server needs WebCrypto switched on.
                                environment={"PORT": "3001", "NODE_OPTIONS": "--experimental-global-webcrypto"}))
        gateway = api.inspect_network(upstream)["IPAM"]["Config"][0]["Gateway"]
        yield Hosts(upstream, other, _ip(api, web, upstream), _ip(api, other_web, other), gateway, web)
    finally:
        for container in made:
            api.remove_container(container, force=True)
        for network in (upstream, other):
            api.remove_network(network)


@pytest.fixture(scope="module")
def networked(hosts: Hosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("network")
    (tmp / "token").write_text(TOKEN)
    probe = {"image": "python-servers", "command": ["python3", "/srv/servers/scripted_server.py", "net_probe"],
             "mounts": [{"source": str(SERVERS), "target": "/srv/servers"}]}
    egress = [
        {"host": "allowed-web", "port": 8080, "private": True,
         "headers": {"Authorization": {"file": "token", "template": "Bearer {}"}}},
        "private-web:8080",
        "localhost:8080",
        {"host": "remote-mcp", "port": 3001, "private": True},
    ]
    settings = {
        "reap_interval_s": 0.5,
        "pool": {},  # no warm sandboxes: the tests count what a session leaves behind
        "defaults": {"call_timeout_s": 20},
        "profiles": {
            "probe-none": probe,
            "probe-net": {**probe, "network": {"egress": egress, "upstream": hosts.upstream}},
            "remote": {"remote": {"url": "http://remote-mcp:3001/mcp"},
                       "network": {"egress": ["remote-mcp:3001"], "upstream": hosts.upstream}},
            "remote-private": {"remote": {"url": "http://remote-mcp:3001/mcp"},
                               "network": {"egress": [{"host": "remote-mcp", "port": 3001, "private": True}],
                                           "upstream": hosts.upstream}},
            "gvisor": {**probe, "runtime": "runsc"},
            "fetch-net": {"image": "python-servers", "command": ["mcp-server-fetch", "--ignore-robots-txt"],
                          "network": {"egress": [egress[0]], "upstream": hosts.upstream}},
        },
    }
    config = tmp / "settings.yaml"
    config.write_text(yaml.safe_dump(settings))
    service = start_service(tmp, f"net-{secrets.token_hex(4)}", config=config)
    yield service
    stop_service(service)


def _call(client: RunnerClient, session_id: str, tool: str, **arguments: Any) -> dict[str, Any]:
    value: dict[str, Any] = client.call_tool(session_id, tool, arguments).structured_content
    return value


def _decisions(client: RunnerClient, session_id: str, wanted: int, seconds: float = 5.0) -> list[Any]:
    """The session's egress decisions, once at least ``wanted`` arrived (they come from the proxy's stream)."""
    deadline = time.monotonic() + seconds
    while True:
        found = list(client.get_session(session_id).egress)
        if len(found) >= wanted or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_session_without_network_has_only_loopback_and_reaches_nothing(networked: Service, hosts: Hosts) -> None:
    with networked.client() as client, client.session("probe-none") as opened:
        sid = opened.session_id
        assert _call(client, sid, "inspect_sandbox")["interfaces"] == ["lo"]
        assert not _call(client, sid, "tcp_connect", host=hosts.web_ip, port=8080)["connected"]
        assert _call(client, sid, "resolve", name="allowed-web")["addresses"] == []
        assert _call(client, sid, "http_get", url="http://allowed-web:8080/")["status"] == 0
        seen = client.get_session(sid)
        assert seen.network == "none" and list(seen.egress) == []


def test_allowlisted_traffic_passes_with_the_credential_added_at_the_edge(networked: Service) -> None:
    with networked.client() as client, client.session("probe-net") as opened:
        sid = opened.session_id
        env = _call(client, sid, "net_env")
        assert env["http_proxy"].startswith("http://") and not env["docker_socket"]
        for secret_form in (TOKEN, f"Bearer {TOKEN}"):  # the sandbox never holds the credential
            assert hashlib.sha256(secret_form.encode()).hexdigest() not in env["value_sha256"]

        got = _call(client, sid, "http_get", url="http://allowed-web:8080/hello?x=1")
        assert got["status"] == 200, got
        body = json.loads(got["body"])
        assert body["server"] == "allowed-web" and body["path"] == "/hello?x=1" and body["host"] == "allowed-web:8080"
        assert body["authorization_sha256"] == hashlib.sha256(f"Bearer {TOKEN}".encode()).hexdigest()
        # The echo reflected the credential into the sandbox; the host redacts it on the way out.
        assert TOKEN not in got["body"] and "[REDACTED" in body["authorization"]

        [allowed] = _decisions(client, sid, 1)
        assert (allowed.allowed, allowed.code, allowed.method, allowed.host, allowed.port) == (
            True, "allowed", "GET", "allowed-web", 8080)
        assert allowed.rule == "allowed-web:8080" and allowed.address
        assert "allowed-web:8080 (private)" in client.get_session(sid).network
    assert TOKEN not in networked.log()


def test_everything_else_is_refused_and_recorded(networked: Service, hosts: Hosts) -> None:
    service_port = int(networked.address.rsplit(":", 1)[1])
    with networked.client() as client, client.session("probe-net") as opened:
        sid = opened.session_id
        proxy = _call(client, sid, "net_env")["http_proxy"].removeprefix("http://")
        proxy_host, proxy_port = proxy.rsplit(":", 1)
        refused = {
            "other name": _call(client, sid, "http_get", url="http://other-web:8080/"),
            "direct IP": _call(client, sid, "http_get", url=f"http://{hosts.web_ip}:8080/"),
            "name resolving to a private address": _call(client, sid, "http_get", url="http://private-web:8080/"),
            "name resolving to loopback": _call(client, sid, "http_get", url="http://localhost:8080/"),
            "the service's own port": _call(client, sid, "http_get", url=f"http://{hosts.gateway_ip}:{service_port}/"),
            "Docker's API port": _call(client, sid, "http_get", url=f"http://{hosts.gateway_ip}:2375/version"),
        }
        for what, outcome in refused.items():
            assert outcome["status"] == 403 and "mcp-runner egress" in outcome["body"], (what, outcome)

        ssh = _call(client, sid, "tcp_connect", host=proxy_host, port=int(proxy_port), send="SSH-2.0-probe\r\n")
        assert ssh["connected"] and ssh["reply"].startswith("HTTP/1.1 400"), ssh
        tunnel = _call(client, sid, "tcp_connect", host=proxy_host, port=int(proxy_port),
                       send="CONNECT other-web:8080 HTTP/1.1\r\nHost: other-web:8080\r\n\r\n")
        assert tunnel["reply"].startswith("HTTP/1.1 403"), tunnel
        # No way around the proxy: no route to the servers, and no DNS for their names.
        assert not _call(client, sid, "tcp_connect", host=hosts.web_ip, port=8080)["connected"]
        assert not _call(client, sid, "tcp_connect", host=hosts.other_ip, port=8080)["connected"]
        assert not _call(client, sid, "tcp_connect", host=hosts.gateway_ip, port=service_port)["connected"]
        assert _call(client, sid, "resolve", name="allowed-web")["addresses"] == []

        decisions = _decisions(client, sid, 8)
        by_host = {(d.host, d.code) for d in decisions}
        assert not any(d.allowed for d in decisions)
        assert {("other-web", "not_allowed"), (hosts.web_ip, "not_allowed"), ("private-web", "refused_address"),
                ("localhost", "refused_address"), (hosts.gateway_ip, "not_allowed")} <= by_host
        assert "bad_request" in {d.code for d in decisions}
        private = next(d for d in decisions if d.host == "private-web")
        assert private.address == hosts.web_ip and "private" in private.reason
        # The audit log holds the same decisions, each in a record of its own.
        recorded = [json.loads(r.data_json) for r in client.query_audit(session_id=sid, kinds=["egress"])]
        assert {(d["host"], d["code"]) for d in recorded} >= by_host
        assert not any(d["allowed"] for d in recorded)
    assert "egress session=" in networked.log()


def _echo_log(hosts: Hosts, until: str, seconds: float = 10.0) -> str:
    """The allowed-web echo server's log, once it holds ``until``."""
    api = docker.from_env().api
    deadline = time.monotonic() + seconds
    while True:
        log = api.logs(hosts.web, stdout=False, stderr=True).decode(errors="replace")
        if until in log or time.monotonic() > deadline:
            return log
        time.sleep(0.2)


def test_trace_a_pipelined_request_and_a_fronted_tunnel_never_reach_the_upstream(
    networked: Service, hosts: Hosts
) -> None:
    """TRACE would echo the credential the proxy adds; a pipelined request would pass unchecked and unrecorded;
    a tunnel to one allowed host whose TLS hello names another would reach that other name (domain fronting)."""
    mark = secrets.token_hex(4)
    with networked.client() as client, client.session("probe-net") as opened:
        sid = opened.session_id
        proxy_host, proxy_port = _call(client, sid, "net_env")["http_proxy"].removeprefix("http://").rsplit(":", 1)

        def raw(text: str) -> str:
            reply: str = _call(client, sid, "tcp_connect", host=proxy_host, port=int(proxy_port), send=text)["reply"]
            return reply

        trace = raw(f"TRACE http://allowed-web:8080/trace-{mark} HTTP/1.1\r\nHost: allowed-web:8080\r\n\r\n")
        assert trace.startswith("HTTP/1.1 405"), trace
        first = f"GET http://allowed-web:8080/first-{mark} HTTP/1.1\r\nHost: allowed-web:8080\r\n\r\n"
        second = f"GET http://other-web:8080/second-{mark} HTTP/1.1\r\nHost: other-web:8080\r\n\r\n"
        assert raw(first + second).startswith("HTTP/1.0 200"), "the first request is answered"
        # Every byte of this hand-made ClientHello is ASCII, so it survives the probe's text argument.
        hello = client_hello(sni(b"other-web")).decode("ascii")
        fronted = raw(f"CONNECT remote-mcp:3001 HTTP/1.1\r\nHost: remote-mcp:3001\r\n\r\n{hello}")
        assert fronted.startswith("HTTP/1.1 200"), fronted  # the tunnel opened, then closed on the hello

        expected = [("TRACE", "allowed-web", "method_not_allowed"), ("GET", "allowed-web", "allowed"),
                    ("CONNECT", "remote-mcp", "sni_mismatch")]
        assert [(d.method, d.host, d.code) for d in _decisions(client, sid, 3)] == expected
        recorded = [json.loads(r.data_json) for r in client.query_audit(session_id=sid, kinds=["egress"])]
        assert [(d["method"], d["host"], d["code"]) for d in recorded] == expected

    log = _echo_log(hosts, f"done with /first-{mark}")
    assert f"done with /first-{mark}: 0 bytes after it" in log, log
    assert f"trace-{mark}" not in log and f"second-{mark}" not in log


def test_a_real_server_fetches_through_the_proxy(networked: Service) -> None:
    with networked.client() as client, client.session("fetch-net") as opened:
        page = client.call_tool(opened.session_id, "fetch", {"url": "http://allowed-web:8080/page", "raw": True})
        assert '"server": "allowed-web"' in page.text and '"path": "/page"' in page.text, page.text
        assert TOKEN not in page.text  # reflected by the echo server, redacted by the host
        refused = client.call_tool(opened.session_id, "fetch", {"url": "http://other-web:8080/"})
        assert refused.is_error and "403" in refused.text, refused.text
        codes = [(d.host, d.code) for d in _decisions(client, opened.session_id, 2)]
        assert ("allowed-web", "allowed") in codes and ("other-web", "not_allowed") in codes


def test_a_remote_streamable_http_server_through_the_proxy(networked: Service) -> None:
    with networked.client() as client:
        with client.session("remote-private") as opened:
            assert "everything" in opened.server.name.lower()
            assert "echo" in {t.name for t in opened.tools}
            echoed = client.call_tool(opened.session_id, "echo", {"message": "mail me at someone@example.com"})
            assert "someone@example.com" not in echoed.text and "[REDACTED:email]" in echoed.text
            assert ("email", "redacted") in {(f.kind, f.action) for f in echoed.findings}
            with pytest.raises(grpc.RpcError) as invalid:
                client.call_tool(opened.session_id, "echo", {"message": 42})
            assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            decisions = _decisions(client, opened.session_id, 2)
            assert decisions and all(d.allowed and d.host == "remote-mcp" and d.port == 3001 for d in decisions)
        # The same server behind a rule without `private: true`: its private address is refused.
        with pytest.raises(grpc.RpcError) as refused:
            client.open_session("remote")
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION, refused.value.details()
        assert "egress proxy refused POST remote-mcp:3001 (private address" in str(refused.value.details())


def test_a_session_under_gvisor(networked: Service) -> None:
    with networked.client() as client, client.session("gvisor") as opened:
        seen = _call(client, opened.session_id, "inspect_sandbox")
        assert seen["interfaces"] == ["lo"] and seen["uid"] == 10001 and not seen["root_writable"]
        assert seen["kernel"] != docker.from_env().info()["KernelVersion"]  # gVisor's own kernel, not the host's
        assert _call(client, opened.session_id, "add", a=2, b=40)["sum"] == 42
        [container] = [c for c in networked.containers() if opened.session_id in c.name]
        assert container.attrs["HostConfig"]["Runtime"] == "runsc"
        assert client.get_session(opened.session_id).runtime == "runsc"


def test_the_network_and_proxy_are_hardened_and_removed_with_the_session(networked: Service) -> None:
    engine = docker.from_env()
    with networked.client() as client, client.session("probe-net") as opened:
        name = f"mcp-runner-{networked.instance}-{opened.session_id}"
        [network] = engine.networks.list(names=[name])
        options = network.attrs["Options"]
        assert network.attrs["Internal"] and options["com.docker.network.bridge.inhibit_ipv4"] == "true"
        containers = {c.name: c for c in networked.containers()}
        sandbox, proxy = containers[name], containers[f"{name}-egress"]
        assert list(sandbox.attrs["NetworkSettings"]["Networks"]) == [name]
        assert sandbox.attrs["HostConfig"]["Dns"] == ["127.0.0.1"]
        for container in (sandbox, proxy):
            host = container.attrs["HostConfig"]
            assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
            assert container.attrs["Config"]["User"] == "10001:10001" and host["Memory"] > 0 and host["PidsLimit"] > 0
            assert host["LogConfig"]["Type"] == "none"
        assert proxy.attrs["HostConfig"]["Binds"] in (None, [])
    assert not engine.networks.list(names=[name])
    assert not any(c.name.startswith(name) for c in networked.containers())


@pytest.mark.parametrize(
    ("profile", "deadline"), [("probe-none", 0.4), ("probe-net", 0.3), ("probe-net", 0.7), ("probe-net", 0.9)]
)
def test_an_open_given_up_midway_leaves_nothing_behind(networked: Service, profile: str, deadline: float) -> None:
    """Deadlines that end the open while the proxy or the sandbox is still being started."""
    engine = docker.from_env()
    with networked.client() as client:
        try:
            opened = client.open_session(profile, timeout=deadline)
        except grpc.RpcError as late:
            assert late.code() is grpc.StatusCode.DEADLINE_EXCEEDED, late.details()
        else:  # a fast machine beat the deadline: nothing was given up, and closing must clean up as well
            client.close_session(opened.session_id)
    label = f"mcp-runner.instance={networked.instance}"
    deadline_s = time.monotonic() + 30
    while time.monotonic() < deadline_s and (networked.containers() or engine.networks.list(filters={"label": label})):
        time.sleep(0.2)
    left = [(c.name, c.status, c.labels.get("mcp-runner.profile")) for c in networked.containers()]
    assert not left and not engine.networks.list(filters={"label": label})
