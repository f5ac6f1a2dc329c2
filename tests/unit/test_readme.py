"""The README's settings and policy examples load as written (documentation that drifts is worse than none)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runner.policy import load_policy
from runner.settings_file import load_settings

README = Path(__file__).resolve().parents[2] / "README.md"
_YAML_BLOCKS = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def _blocks(marker: str) -> list[str]:
    return [block for block in _YAML_BLOCKS.findall(README.read_text(encoding="utf-8")) if marker in block]


def test_the_policy_example_loads_and_decides_as_the_readme_says(tmp_path: Path) -> None:
    [example] = _blocks("# policy.yaml")
    path = tmp_path / "policy.yaml"
    path.write_text(example, encoding="utf-8")
    policy = load_policy(path)
    assert policy.tool_decision("agent-prod", "files", "delete_file").verdict == "deny"
    assert policy.tool_decision("agent-prod", "everything", "get-env").verdict == "approval"
    assert policy.tool_decision("agent-prod", "everything", "echo").verdict == "allow"
    assert policy.tool_decision("agent-prod", "everything", "get-tiny-image").verdict == "deny"
    assert policy.has_role("alice", "approver") and not policy.has_role("agent-prod", "approver")


@pytest.mark.parametrize(
    "marker", ["# settings.yaml", "project-files:", "github:", "# network-profiles.yaml", "# audit-settings.yaml",
     "# pool-settings.yaml", "# kubernetes-settings.yaml"]
)
def test_the_settings_examples_load(marker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_RUNNER_CONFIG", raising=False)
    [example] = _blocks(marker)
    text = example if example.lstrip().startswith(("#", "listen", "profiles")) else f"profiles:\n{example}"
    path = tmp_path / "settings.yaml"
    path.write_text(text, encoding="utf-8")
    load_settings(path)


def test_the_audit_settings_example_means_what_it_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_RUNNER_AUDIT_DB", raising=False)
    [example] = _blocks("# audit-settings.yaml")
    path = tmp_path / "settings.yaml"
    path.write_text(example, encoding="utf-8")
    audit = load_settings(path).audit
    assert audit.path == Path("/var/lib/mcp-runner/audit.sqlite3") and audit.enabled
    assert audit.retention_s == 90 * 86400
    assert audit.exports == Path("/var/lib/mcp-runner/exports")
    monkeypatch.setenv("MCP_RUNNER_AUDIT_DB", str(tmp_path / "elsewhere.sqlite3"))
    assert load_settings(path).audit.path == tmp_path / "elsewhere.sqlite3"


def test_the_pool_example_means_what_it_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_RUNNER_CONFIG", raising=False)
    [example] = _blocks("# pool-settings.yaml")
    path = tmp_path / "settings.yaml"
    path.write_text(example, encoding="utf-8")
    settings = load_settings(path)
    assert dict(settings.pool) == {"time": 4, "everything": 2}  # the built-in pool replaced whole
    assert settings.max_concurrent_boots == 4 and settings.open_queue_timeout_s == 300
    assert settings.open_timeout_s == 60


def test_the_kubernetes_example_means_what_it_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MCP_RUNNER_BACKEND", "MCP_RUNNER_KUBECONFIG", "MCP_RUNNER_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    [example] = _blocks("# kubernetes-settings.yaml")
    path = tmp_path / "settings.yaml"
    path.write_text(example, encoding="utf-8")
    settings = load_settings(path)
    assert settings.backend == "kubernetes"
    assert settings.kubernetes.kubeconfig == Path("~/.kube/config").expanduser()
    assert settings.kubernetes.namespace == "mcp-runner"
    assert dict(settings.kubernetes.runtime_classes) == {"runsc": "gvisor"}
    assert settings.profiles["time"].limits.cpus == 0.25
    monkeypatch.setenv("MCP_RUNNER_BACKEND", "docker")
    assert load_settings(path).backend == "docker"  # the environment overrides the file
    assert load_settings(path, backend="kubernetes").backend == "kubernetes"  # and --backend the environment
