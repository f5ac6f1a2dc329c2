"""A profile's writable ``/workspace`` and its writable mounts, on a real service, on Docker and on the test cluster.

The scripted server's ``files`` behaviour writes and reads paths inside the sandbox and reports the error a write
meets (a read-only file system, a missing directory) as data, so each test can tell a refusal from a crash.
"""

from __future__ import annotations

import errno
import json
import secrets
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner import cli
from runner.audit import records
from runner.client import RunnerClient
from tests.integration.conftest import Service, start_service, stop_service

pytestmark = [pytest.mark.integration, pytest.mark.backends("docker", "kubernetes")]

SERVERS = Path(__file__).resolve().parent.parent / "servers"
FILES_SERVER = ["python3", "/srv/servers/scripted_server.py", "files"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host directory the sandbox's user (uid 10001) may write, with one file in it."""
    data = tmp_path_factory.mktemp("workspace-data")
    data.chmod(0o777)
    (data / "seed.txt").write_text("from the host")
    (data / "seed.txt").chmod(0o666)
    return data


@pytest.fixture(scope="module")
def workspace_service(
    images: dict[str, str], backend: str, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    if backend == "kubernetes":
        from tests.kubernetes_cluster import ensure_images_loaded

        ensure_images_loaded()
    tmp = tmp_path_factory.mktemp("workspace-service")
    servers = f"{{source: {SERVERS}, target: /srv/servers}}"
    config = tmp / "settings.yaml"
    config.write_text(textwrap.dedent(f"""\
        builtin_profiles: false
        pool: {{}}
        profiles:
          ws:
            image: python-servers
            command: {FILES_SERVER}
            mounts: [{servers}]
            workspace: 16m
          ro:
            image: python-servers
            command: {FILES_SERVER}
            mounts: [{servers}, {{source: {data_dir}, target: /data}}]
          rw:
            image: python-servers
            command: {FILES_SERVER}
            mounts: [{servers}, {{source: {data_dir}, target: /data, writable: true}}]
    """))
    service = start_service(tmp, f"ws-{secrets.token_hex(4)}", config=config, backend=backend)
    yield service
    stop_service(service)


@pytest.fixture
def client(workspace_service: Service) -> Iterator[RunnerClient]:
    with workspace_service.client() as c:
        yield c


def call(client: RunnerClient, session_id: str, tool: str, **arguments: str) -> dict[str, Any]:
    result = client.call_tool(session_id, tool, arguments)
    assert not result.is_error, result.text
    answer: dict[str, Any] = result.structured_content
    return answer


def test_a_server_writes_its_workspace_and_the_next_session_starts_empty(client: RunnerClient) -> None:
    with client.session("ws") as first:
        wrote = call(client, first.session_id, "write_file", path="/workspace/notes.txt", text="kept for now")
        assert wrote == {"ok": True, "workspace": "/workspace"}  # the server is told where it may write
        assert call(client, first.session_id, "read_file", path="/workspace/notes.txt") == {
            "ok": True, "text": "kept for now"
        }
        # Everything else stays read-only: the root file system refuses, /tmp is the only other place.
        refused = call(client, first.session_id, "write_file", path="/notes.txt", text="x")
        assert refused["ok"] is False and refused["errno"] == errno.EROFS
    with client.session("ws") as second:
        gone = call(client, second.session_id, "read_file", path="/workspace/notes.txt")
        assert gone["ok"] is False and gone["errno"] == errno.ENOENT


def test_a_profile_without_a_workspace_has_nowhere_to_write_it(client: RunnerClient) -> None:
    with client.session("ro") as opened:
        refused = call(client, opened.session_id, "write_file", path="/workspace/notes.txt", text="x")
        assert refused["ok"] is False and refused["errno"] in (errno.ENOENT, errno.EROFS)


def test_a_read_only_mount_refuses_a_write_and_the_host_file_stays(client: RunnerClient, data_dir: Path) -> None:
    with client.session("ro") as opened:
        assert call(client, opened.session_id, "read_file", path="/data/seed.txt")["text"] == "from the host"
        refused = call(client, opened.session_id, "write_file", path="/data/seed.txt", text="changed")
        assert refused["ok"] is False and refused["errno"] == errno.EROFS
    assert (data_dir / "seed.txt").read_text() == "from the host"


def test_a_writable_mount_takes_a_write_and_the_host_sees_it(client: RunnerClient, data_dir: Path) -> None:
    name = f"written-{secrets.token_hex(4)}.txt"
    with client.session("rw") as opened:
        assert call(client, opened.session_id, "write_file", path=f"/data/{name}", text="from the sandbox")["ok"]
    assert (data_dir / name).read_text() == "from the sandbox"


def test_a_session_shows_its_mounts_with_their_mode_and_its_workspace(
    client: RunnerClient, workspace_service: Service, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with client.session("rw") as writable, client.session("ws") as sized:
        shown = client.get_session(writable.session_id)
        assert list(shown.mounts) == [f"{SERVERS}:/srv/servers:ro", f"{data_dir}:/data:rw"]
        assert shown.workspace_bytes == 0
        assert client.get_session(sized.session_id).workspace_bytes == 16 * 2**20
        assert cli.main(["sessions", writable.session_id, "--address", workspace_service.address]) == 0
        assert f"\nmount: {SERVERS}:/srv/servers:ro\nmount: {data_dir}:/data:rw\n" in capsys.readouterr().out
        assert cli.main(["sessions", writable.session_id, "--json", "--address", workspace_service.address]) == 0
        assert json.loads(capsys.readouterr().out)["mounts"] == list(shown.mounts)
        assert cli.main(["sessions", sized.session_id, "--address", workspace_service.address]) == 0
        assert "\nworkspace: /workspace, 16 MiB (writable)\n" in capsys.readouterr().out
    [opened] = client.query_audit(session_id=writable.session_id, kinds=[records.SESSION_OPEN])
    assert json.loads(opened.data_json)["mounts"] == [
        {"source": str(SERVERS), "target": "/srv/servers", "mode": "ro"},
        {"source": str(data_dir), "target": "/data", "mode": "rw"},
    ]
