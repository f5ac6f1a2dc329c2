"""The ``mcp_http:`` settings: defaults, the file, the environment and ``serve --mcp-listen``; the door's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.config import ConfigError, McpHttpConfig
from runner.settings_file import load_settings
from tests.unit.test_readme import _blocks


def test_defaults_serve_the_door_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_RUNNER_MCP_LISTEN", raising=False)
    monkeypatch.delenv("MCP_RUNNER_CONFIG", raising=False)
    assert load_settings().mcp_http == McpHttpConfig(listen="127.0.0.1:50052")


def test_file_environment_and_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MCP_RUNNER_MCP_LISTEN", raising=False)
    path = tmp_path / "runner.yaml"
    path.write_text(
        "mcp_http: {listen: '127.0.0.1:6000', session_idle_timeout_s: 30, lease_idle_timeout_s: 20, "
        "max_body_bytes: 64k}\n"
    )
    door = load_settings(path).mcp_http
    assert door == McpHttpConfig(
        listen="127.0.0.1:6000", session_idle_timeout_s=30, lease_idle_timeout_s=20, max_body_bytes=65536
    )
    monkeypatch.setenv("MCP_RUNNER_MCP_LISTEN", "")
    assert load_settings(path).mcp_http.listen == ""  # empty: no door
    assert load_settings(path, mcp_listen="127.0.0.1:7000").mcp_http.listen == "127.0.0.1:7000"


@pytest.mark.parametrize("line", ["mcp_http: {max_body_bytes: 10}", "mcp_http: {lease_idle_timeout_s: 0}",
                                  "mcp_http: {port: 1}"])
def test_bad_values_are_refused(tmp_path: Path, line: str) -> None:
    path = tmp_path / "runner.yaml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match="mcp_http"):
        load_settings(path)


def test_the_readme_example_means_what_it_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_RUNNER_MCP_LISTEN", raising=False)
    [example] = _blocks("# door-settings.yaml")
    path = tmp_path / "settings.yaml"
    path.write_text(example, encoding="utf-8")
    assert load_settings(path).mcp_http == McpHttpConfig()
