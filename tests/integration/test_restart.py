"""The service killed with sessions open leaves containers behind; the next start removes them.

Docker only: what a killed service leaves there includes Docker networks. The Kubernetes counterpart (pods,
Secrets, NetworkPolicies) is test_kubernetes_faults.py::test_orphan_pods_secrets_and_policies_removed_at_restart.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import docker
import pytest

from runner.sandbox.base import INSTANCE_LABEL
from tests.integration.conftest import start_service, stop_service

pytestmark = pytest.mark.integration


def test_orphans_removed_at_restart(images: dict[str, str], tmp_path: Path) -> None:
    instance = f"restart-{secrets.token_hex(4)}"
    first = start_service(tmp_path, instance)
    try:
        with first.client() as client:
            opened = [client.open_session(profile).session_id for profile in ("scripted", "networked")]
        assert len(first.containers()) == 3  # two sandboxes and the networked one's egress proxy
        first.process.kill()
        first.process.wait(10)
        assert len(first.containers()) == 3, "SIGKILL leaves the sandboxes behind"
        assert _networks(instance), "and the session's network"
    finally:
        if first.process.poll() is None:
            first.process.kill()
    second = start_service(tmp_path, instance)
    try:
        assert not second.containers() and not _networks(instance)
        assert "removed 3 orphaned" in second.log()
        with second.client() as client:
            assert opened[0] not in [s.session_id for s in client.list_sessions()]
            with client.session("scripted") as fresh:
                assert client.call_tool(fresh.session_id, "add", {"a": 1, "b": 2}).structured_content == {"sum": 3}
    finally:
        stop_service(second)


def _networks(instance: str) -> list[str]:
    return [n.name for n in docker.from_env().networks.list(filters={"label": f"{INSTANCE_LABEL}={instance}"})]
