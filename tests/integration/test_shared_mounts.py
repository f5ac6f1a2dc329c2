"""A writable mount is shared by every session of its profile: ``mcp-runner config check`` notes it and a real
``serve`` logs it as a warning at start-up (real processes, the real Docker engine, real files)."""

from __future__ import annotations

import secrets
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import start_service, stop_service
from tests.integration.test_config_check import mcp_runner

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path) -> tuple[Path, str]:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    path = tmp_path / "settings.yaml"
    path.write_text(textwrap.dedent(f"""\
        builtin_profiles: false
        pool: {{}}
        profiles:
          writer:
            image: python-servers
            command: [mcp-server-time]
            mounts: [{{source: {tmp_path}, target: /in}}, {{source: {out}, target: /out, writable: true}}]
    """), encoding="utf-8")  # fmt: skip
    return path, (
        f"profiles.writer.mounts.1: {out} is mounted writable at /out, shared by every session of profile writer, "
        "whichever caller: one session's server can leave files another reads"
    )


def test_config_check_notes_each_writable_mount(tmp_path: Path, images: dict[str, str]) -> None:
    path, line = _settings(tmp_path)
    done = mcp_runner("config", "check", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sum(line in shown for shown in (done.stdout + done.stderr).splitlines()) == 1
    assert "mounts.0" not in done.stdout + done.stderr  # the read-only one is not shared writing


def test_serve_warns_of_each_writable_mount_at_start_up(tmp_path: Path, images: dict[str, str]) -> None:
    path, line = _settings(tmp_path)
    service = start_service(tmp_path, f"it-shared-{secrets.token_hex(4)}", config=path)
    try:
        warned = [shown for shown in service.log().splitlines() if line in shown]
    finally:
        stop_service(service)
    assert len(warned) == 1 and "WARNING" in warned[0], service.log()
