"""Red team, for real (real Docker, real services on loopback ports): hostile images given ``inject_agent``, an image
that claims the agent by its label, and traces toward a collector nobody listens on (calls served, health kept,
shutdown ending), tracing switched off by the standard variable (no connection made), and the server-bound
``_meta`` at the MCP door (the runner's traceparent, never the caller's, whatever the caller put there).

Defects found are strict xfails whose reason starts with DEFECT. Every address used is loopback.
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from runner.images import image_ref
from tests.integration.conftest import Service, free_port, start_service, stop_service

pytestmark = pytest.mark.integration

SERVERS = Path(__file__).parent.parent / "servers"
CALLER_PARENT = "00-77777777777777777777777777777777-8888888888888888-01"
OTEL_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED",
            "OTEL_TRACES_EXPORTER")


def _build(ref: str, dockerfile: str, ctx: Path) -> None:
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    subprocess.run(["docker", "build", "--network", "none", "-q", "-t", ref, str(ctx)], check=True,
                   capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=300)


def _remove_with_derived(ref: str) -> None:
    derived = subprocess.run(["docker", "image", "ls", "--filter", f"label=mcp-runner.base={ref}", "--format",
                              "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True).stdout.split()
    subprocess.run(["docker", "rmi", "-f", ref, *derived], capture_output=True)


@pytest.fixture
def loopback_web() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on 127.0.0.1 recording the paths asked for (the host's loopback: only the host reaches it)."""
    hits: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("content-length", "3")
            self.end_headers()
            self.wfile.write(b"hi\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def onbuild_image(images: dict[str, str], tmp_path: Path, loopback_web: tuple[int, list[str]]) -> Iterator[str]:
    """A user's image with python3 whose ONBUILD triggers run code and fetch a URL of the host's loopback."""
    port, _ = loopback_web
    ref = f"mcp-runner-test/red3-onbuild:{secrets.token_hex(4)}"
    _build(ref, f"FROM {image_ref('rootfs')}\n"
                "ONBUILD RUN [\"python3\", \"-c\", \"open('/onbuild-ran', 'w').write('x')\"]\n"
                f"ONBUILD ADD http://127.0.0.1:{port}/onbuild /onbuild-fetched\n"
                'ENTRYPOINT ["python3", "-c", "print(1)"]\n', tmp_path / "onbuild")
    try:
        yield ref
    finally:
        _remove_with_derived(ref)


def test_inject_agent_runs_no_onbuild_trigger_and_fetches_nothing(onbuild_image: str,
                                                                  loopback_web: tuple[int, list[str]]) -> None:
    from runner.image_checks import ImageBuildError
    from runner.image_inject import ensure_injected

    _, hits = loopback_web
    try:
        ref = ensure_injected(onbuild_image, lambda line: None)
    except ImageBuildError as refused:
        assert "ONBUILD" in str(refused).upper()
    else:
        ran = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", ref, "-c",
                              "import os; print(os.path.exists('/onbuild-ran'))"], capture_output=True, text=True,
                             timeout=120)
        assert ran.stdout.strip() == "False"
    assert hits == []


@pytest.fixture
def hostile_config_image(images: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """An image with python3 and a hostile config: labels claiming the agent, a USER of no account, an argv with
    line breaks and quotes, a WORKDIR that does not exist (the sandbox's root is read-only)."""
    ref = f"mcp-runner-test/red3-config:{secrets.token_hex(4)}"
    _build(ref, f"FROM {image_ref('python-servers')} AS servers\n"
                f"FROM {image_ref('rootfs')}\n"
                "COPY --from=servers /opt/servers /opt/servers\n"
                'LABEL mcp-runner.image="python-servers" mcp-runner.base="evil\\nRUN id"\n'
                "USER 4242:4242\n"
                'ENTRYPOINT ["/opt/servers/bin/mcp-server-time"]\n'
                'CMD ["--local-timezone", "UTC"]\n', tmp_path / "config")
    try:
        yield ref
    finally:
        _remove_with_derived(ref)


def test_inject_agent_over_a_hostile_config_runs_what_the_image_ran(hostile_config_image: str,
                                                                    tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"pool": {}, "profiles": {
        "hostile": {"image": hostile_config_image, "inject_agent": True}}}))  # fmt: skip
    service = start_service(tmp_path, f"it-red3-{secrets.token_hex(3)}", config=config)
    try:
        with service.client() as client:
            opened = client.open_session("hostile", timeout=120)
            result = client.call_tool(opened.session_id, "get_current_time", {"timezone": "UTC"}, timeout=60)
            client.close_session(opened.session_id)
    finally:
        stop_service(service)
    assert not result.is_error and "UTC" in json.dumps([str(c) for c in result.content])


@pytest.fixture
def claiming_image(images: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """FROM python-servers (so its label says the agent is there) with the server as ENTRYPOINT: the agent is in the
    image but never runs, the commonest way to write an image "with" the agent wrongly."""
    ref = f"mcp-runner-test/red3-claims-agent:{secrets.token_hex(4)}"
    _build(ref, f"FROM {image_ref('python-servers')}\n"
                'ENTRYPOINT ["/opt/servers/bin/mcp-server-time"]\n', tmp_path / "claims")
    try:
        yield ref
    finally:
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)


def test_an_image_whose_entrypoint_replaced_the_agent_is_refused_saying_so(claiming_image: str,
                                                                         tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"pool": {}, "open_timeout_s": 20, "profiles": {
        "claims": {"image": claiming_image, "command": ["--local-timezone", "UTC"]}}}))  # fmt: skip
    service = start_service(tmp_path, f"it-red3-{secrets.token_hex(3)}", config=config)
    try:
        with service.client() as client, pytest.raises(grpc.RpcError) as refused:
            client.open_session("claims", timeout=120)
        assert service.healthy()
    finally:
        stop_service(service)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value.details()
    assert "agent" in (refused.value.details() or "") and claiming_image in (refused.value.details() or "")


@pytest.fixture
def no_python_image(images: dict[str, str], tmp_path: Path) -> Iterator[str]:
    ref = f"mcp-runner-test/red3-no-python:{secrets.token_hex(4)}"
    _build(ref, f"FROM {image_ref('rootfs')}\n"
                'RUN ["/bin/sh", "-c", "rm -f /usr/bin/python3 /usr/bin/python3.*"]\n'
                'ENTRYPOINT ["/bin/cat"]\n', tmp_path / "no-python")
    try:
        yield ref
    finally:
        _remove_with_derived(ref)


def test_inject_agent_on_an_image_without_python3_says_so_and_builds_nothing(no_python_image: str) -> None:
    from runner.image_checks import ImageBuildError
    from runner.image_inject import ensure_injected

    with pytest.raises(ImageBuildError) as refused:
        ensure_injected(no_python_image, lambda line: None)
    assert f"image {no_python_image!r} has no python3 the agent can run on" in str(refused.value)
    derived = subprocess.run(["docker", "image", "ls", "-q", "--filter", f"label=mcp-runner.base={no_python_image}"],
                             capture_output=True, text=True, check=True).stdout
    assert derived.strip() == ""


@pytest.fixture
def odd_package_label(images: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """Any image on the engine labelled a package image, its package label without a version."""
    ref = f"mcp-runner-test/red3-label:{secrets.token_hex(4)}"
    _build(ref, f"FROM {image_ref('rootfs')}\n"
                'LABEL mcp-runner.image="package" mcp-runner.package="pypi:foo"\n', tmp_path / "label")
    try:
        yield ref
    finally:
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)


def test_images_list_survives_an_image_with_an_odd_package_label(odd_package_label: str) -> None:
    done = subprocess.run([sys.executable, "-m", "runner.cli", "images", "list", "--json"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    listed = json.loads(done.stdout)
    assert isinstance(listed, list) and odd_package_label not in json.dumps(listed)
    assert f"warning: {odd_package_label} is left out" in done.stderr


# -- traces toward a collector nobody listens on ------------------------------------------------------------------


@pytest.fixture(scope="module")
def dead_collector(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service tracing every request (ratio 1) to a loopback port nobody listens on."""
    tmp = tmp_path_factory.mktemp("dead-collector")
    with pytest.MonkeyPatch.context() as env:
        for name in OTEL_ENV:
            env.delenv(name, raising=False)
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # export (and fail) often while requests are served
        meta_echo = {"image": "python-servers", "command": ["python3", "/srv/servers/meta_echo_server.py"],
                     "mounts": [{"source": str(SERVERS), "target": "/srv/servers"}]}
        config = tmp / "settings.yaml"
        config.write_text(yaml.safe_dump({"pool": {}, "profiles": {"meta_echo": meta_echo}, "tracing": {
            "otlp_endpoint": f"http://127.0.0.1:{free_port()}", "sample_ratio": 1.0}}))  # fmt: skip
        service = start_service(tmp, f"it-red3-dead-{secrets.token_hex(3)}", config=config)
    try:
        yield service
    finally:
        stop_service(service)


@pytest.mark.parametrize("callers", [CALLER_PARENT, "00-zz-1-01", "00-" + "f" * 32 + "-" + "e" * 16 + "-01" * 2000])
async def test_the_door_sends_the_server_the_runners_traceparent_never_the_callers(dead_collector: Service,
                                                                                   callers: str) -> None:
    url = f"http://{dead_collector.mcp_listen}/mcp/meta_echo"
    async with httpx2.AsyncClient(timeout=120) as http, Client(
        streamable_http_client(url, http_client=http), mode="legacy"  # type: ignore[arg-type]
    ) as mcp:
        result = await mcp.call_tool("meta", {}, meta={"traceparent": callers, "tracestate": "x=" + "y" * 5000})
    assert not result.is_error
    sent = json.loads(result.content[0].text)  # type: ignore[union-attr]
    version, trace_id, span_id, _flags = sent["traceparent"].split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16 and sent["traceparent"] != callers
    # A valid parent's trace is continued by the runner's own span; a malformed one starts the runner's own trace.
    assert (trace_id == CALLER_PARENT.split("-")[1]) is (callers == CALLER_PARENT)
    assert "y" * 100 not in json.dumps(sent)


def test_a_dead_collector_fails_no_request_and_the_service_stops(dead_collector: Service) -> None:
    with dead_collector.client() as client:
        for _ in range(3):
            opened = client.open_session("time", timeout=120)
            for zone in ("UTC", "Europe/Paris"):
                result = client.call_tool(opened.session_id, "get_current_time", {"timezone": zone}, timeout=60)
                assert not result.is_error
            client.close_session(opened.session_id)
    assert dead_collector.healthy()
    dead_collector.process.send_signal(signal.SIGTERM)
    try:
        code = dead_collector.process.wait(90)  # generous: a failure bound for a hang, not a measurement
    except subprocess.TimeoutExpired:
        pytest.fail("the service did not stop within 90 s of SIGTERM with its collector unreachable")
    assert code == 0, dead_collector.log()[-3000:]


def test_otel_sdk_disabled_makes_no_connection_to_the_named_collector(images: dict[str, str],
                                                                      tmp_path: Path) -> None:
    """Tracing named in the file and the environment, turned off by OTEL_SDK_DISABLED: nothing connects to it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.5)
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"pool": {}, "tracing": {"otlp_endpoint": endpoint}}))
    with pytest.MonkeyPatch.context() as env:
        for name in OTEL_ENV:
            env.delenv(name, raising=False)
        env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
        env.setenv("OTEL_SDK_DISABLED", "true")
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        service = start_service(tmp_path, f"it-red3-off-{secrets.token_hex(3)}", config=config)
    try:
        with service.client() as client, client.session("time", timeout=120) as opened:
            assert not client.call_tool(opened.session_id, "get_current_time", {"timezone": "UTC"}).is_error
    finally:
        stop_service(service)
    try:
        accepted, _ = listener.accept()
        accepted.close()
        connected = True
    except TimeoutError:
        connected = False
    finally:
        listener.close()
    assert not connected


def test_the_audit_log_is_closed_before_traces_wait_on_a_dead_collector(images: dict[str, str],
                                                                        tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"pool": {}, "tracing": {"otlp_endpoint": f"http://127.0.0.1:{free_port()}"}}))
    with pytest.MonkeyPatch.context() as env:
        for name in OTEL_ENV:
            env.delenv(name, raising=False)
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # nothing exported before the shutdown's flush
        service = start_service(tmp_path, f"it-red3-order-{secrets.token_hex(3)}", config=config)
    try:
        with service.client() as client, client.session("time", timeout=120) as opened:
            assert not client.call_tool(opened.session_id, "get_current_time", {"timezone": "UTC"}).is_error
        service.process.send_signal(signal.SIGTERM)
        service.process.wait(120)  # generous: a failure bound for a hang, not a measurement
    finally:
        stop_service(service)
    lines = service.log().splitlines()
    after_stop = lines[next(i for i, line in enumerate(lines) if "shutting down" in line):]
    closed = next(i for i, line in enumerate(after_stop) if "audit log closed at seq" in line)
    exporting = [i for i, line in enumerate(after_stop) if "opentelemetry.exporter" in line]
    assert exporting, "\n".join(after_stop)  # the flush did meet the dead collector
    assert closed < exporting[0], "\n".join(after_stop)
