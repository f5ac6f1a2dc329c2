"""The warm pool against real Docker: a warm open works and is recorded as warm, the pool refills, nothing is left
behind, the orphan sweep takes a dead service's pooled sandboxes, and other limits start cold.

Each test runs its own service with ``pool: {time: 1}`` (the built-in mcp-server-time profile).
"""

from __future__ import annotations

import json
import secrets
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from runner.audit import records
from runner.sandbox.base import INSTANCE_LABEL, SESSION_LABEL
from tests.integration.conftest import Service, start_service, stop_service
from tests.kubernetes_cluster import network_policies

pytestmark = [pytest.mark.integration, pytest.mark.backends("docker", "kubernetes")]

NOW = {"timezone": "UTC"}


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(0.2)


def pooled(service: Service) -> list[str]:
    """Session ids of the service's warm sandboxes that are ready (the log says so) and still running."""
    ready = [line.split()[line.split().index("sandbox") + 1] for line in service.log().splitlines()
             if "warm sandbox" in line and "is ready" in line]
    running = {c.labels.get(SESSION_LABEL) for c in service.sandboxes() if c.running}
    return [session_id for session_id in ready if session_id in running]


def session_containers(service: Service, session_id: str) -> list[str]:
    return [c.id for c in service.sandboxes() if c.labels.get(SESSION_LABEL) == session_id]


def open_record(service: Service, session_id: str) -> dict[str, object]:
    with service.client() as client:
        [record] = list(client.query_audit(session_id=session_id, kinds=[records.SESSION_OPEN]))
    data: dict[str, object] = json.loads(record.data_json)
    return data


@pytest.fixture
def pool_service(images: dict[str, str], backend: str, tmp_path: Path) -> Iterator[Service]:
    config = tmp_path / "pool.yaml"
    config.write_text("pool: {time: 1}\nreap_interval_s: 0.5\n", encoding="utf-8")
    service = start_service(tmp_path, f"it-pool-{secrets.token_hex(3)}", config=config, backend=backend)
    try:
        yield service
    finally:
        stop_service(service)


def test_a_warm_open_works_is_recorded_as_warm_and_the_pool_refills(pool_service: Service) -> None:
    _wait_for(lambda: len(pooled(pool_service)) == 1, "the pool filled")
    [warm_id] = pooled(pool_service)
    with pool_service.client() as client:
        opened = client.open_session("time")
        assert opened.session_id == warm_id  # the pooled container was this session's from the start
        result = client.call_tool(opened.session_id, "get_current_time", NOW)
        assert not result.is_error and "UTC" in result.text
        record = open_record(pool_service, opened.session_id)
        assert record["start"] == "warm" and record["outcome"] == "ok"
        assert str(record["image_id"]).startswith("sha256:") and record["network"] == "none"
        _wait_for(lambda: [s for s in pooled(pool_service) if s != warm_id] != [], "the pool refilled")
        assert [s.session_id for s in client.list_sessions()] == [opened.session_id]  # pooled ones are no sessions
        client.close_session(opened.session_id)
    _wait_for(lambda: session_containers(pool_service, warm_id) == [], "the closed session's container gone", 30)


def test_other_limits_than_the_pools_start_cold(pool_service: Service) -> None:
    _wait_for(lambda: len(pooled(pool_service)) == 1, "the pool filled")
    [warm_id] = pooled(pool_service)
    with pool_service.client() as client:
        opened = client.open_session("time", limits={"memory_bytes": 200 * 1024**2})
        assert opened.session_id != warm_id
        assert open_record(pool_service, opened.session_id)["start"] == "cold"
        assert not client.call_tool(opened.session_id, "get_current_time", NOW).is_error
        client.close_session(opened.session_id)
    assert pooled(pool_service) == [warm_id]  # left for an open with the pool's limits
    assert "starts cold: its granted limits are not the pool's (memory_bytes" in pool_service.log()


def test_shutdown_removes_the_pooled_sandboxes(pool_service: Service) -> None:
    _wait_for(lambda: len(pooled(pool_service)) == 1, "the pool filled")
    pool_service.process.send_signal(signal.SIGTERM)
    pool_service.process.wait(60)
    assert pool_service.sandboxes() == []


def test_the_orphan_sweep_removes_a_dead_services_pooled_sandboxes(
    images: dict[str, str], backend: str, tmp_path: Path
) -> None:
    instance = f"it-pool-sweep-{secrets.token_hex(3)}"
    warm = tmp_path / "warm.yaml"
    warm.write_text("pool: {time: 1}\n", encoding="utf-8")
    first = start_service(tmp_path, instance, config=warm, backend=backend)
    try:
        _wait_for(lambda: len(pooled(first)) == 1, "the pool filled")
        [orphan] = pooled(first)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(30)
        assert session_containers(first, orphan) != []  # left behind by the kill
    except BaseException:
        stop_service(first)
        raise
    cold = tmp_path / "cold.yaml"
    cold.write_text("pool: {}\n", encoding="utf-8")
    second = start_service(tmp_path, instance, config=cold, backend=backend)
    try:
        assert session_containers(second, orphan) == []
        assert "removed 1 orphaned sandbox(es)" in second.log()
    finally:
        stop_service(second)  # and whatever of the instance is left, on either backend


def test_a_settings_file_can_turn_the_pool_off(images: dict[str, str], backend: str, tmp_path: Path) -> None:
    config = tmp_path / "off.yaml"
    config.write_text(textwrap.dedent("pool: {}\n"), encoding="utf-8")
    service = start_service(tmp_path, f"it-pool-off-{secrets.token_hex(3)}", config=config, backend=backend)
    try:
        with service.client() as client:
            opened = client.open_session("time")
            assert open_record(service, opened.session_id)["start"] == "cold"
            client.close_session(opened.session_id)
        assert "warm sandbox" not in service.log()
    finally:
        stop_service(service)


def test_a_warm_session_with_network_gets_its_own_proxy_and_leaves_nothing(
    images: dict[str, str], backend: str, tmp_path: Path
) -> None:
    servers = Path(__file__).parent.parent / "servers"
    config = tmp_path / "networked.yaml"
    config.write_text(textwrap.dedent(f"""\
        pool: {{networked: 1}}
        profiles:
          networked:
            image: python-servers
            command: [python3, /srv/servers/scripted_server.py, good]
            mounts: [{{source: {json.dumps(str(servers))}, target: /srv/servers}}]
            network: {{egress: ["never-contacted.invalid:443"]}}
        """), encoding="utf-8")
    service = start_service(tmp_path, f"it-pool-net-{secrets.token_hex(3)}", config=config, backend=backend)
    try:
        _wait_for(lambda: len(pooled(service)) == 1, "the pool filled")
        [warm_id] = pooled(service)
        assert len(session_containers(service, warm_id)) == 2  # the sandbox and its egress proxy, booted ahead
        with service.client() as client:
            opened = client.open_session("networked")
            assert opened.session_id == warm_id
            record = open_record(service, opened.session_id)
            assert record["start"] == "warm" and record["network"] == "egress proxy: never-contacted.invalid:443"
            client.close_session(opened.session_id)
        _wait_for(lambda: session_containers(service, warm_id) == [], "the session's sandbox and proxy gone", 30)
    finally:
        stop_service(service)
    # The refill that was booting when the service stopped: its network (or NetworkPolicies) went with it (they
    # outlived the service once).
    if backend == "kubernetes":
        assert network_policies(f"{INSTANCE_LABEL}={service.instance}") == []
    else:
        networks = docker.from_env().networks.list(filters={"label": f"{INSTANCE_LABEL}={service.instance}"})
        assert [n.name for n in networks] == []
