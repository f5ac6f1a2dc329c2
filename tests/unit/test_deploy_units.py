"""deploy/compose/compose.yaml and deploy/systemd/mcp-runner.service: what they say, read as their tools read them.

Both run the same container of the service image. ``compose_run`` and ``unit_run`` turn each file into the
``docker run`` options it means (compose: the keys this file uses, each translated as Compose does, anything
else refused so that a new key cannot slip by untested; the unit: its ``ExecStart`` with the environment
file's variables); tests/integration/test_service_container.py starts exactly that container.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.api.auth import check_listen_safety, check_policy_required
from runner.images import image_ref
from runner.policy import load_policy
from runner.settings_file import load_settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose" / "compose.yaml"
CONFIG = REPO / "deploy" / "compose" / "config"
UNIT = REPO / "deploy" / "systemd" / "mcp-runner.service"
SERVICE = "mcp-runner"

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:\?|:-)([^}]*))?\}")
_BOOLEAN_OPTIONS = frozenset({"--rm", "--read-only", "--detach", "-d", "--init"})


@dataclass(frozen=True)
class DockerRun:
    """A ``docker run``: its options in order (``(name, value)``, value "" for a flag), image and command."""

    options: tuple[tuple[str, str], ...]
    image: str
    command: tuple[str, ...]

    def values(self, name: str) -> list[str]:
        return [value for option, value in self.options if option == name]

    def argv(self) -> list[str]:
        flat = [part for option, value in self.options for part in ((option,) if value == "" else (option, value))]
        return ["docker", "run", *flat, self.image, *self.command]


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:?message}`` and ``${NAME:-default}``; a missing required one fails as Compose
    fails, with its message."""

    def value(match: re.Match[str]) -> str:
        name, form, extra = match.groups()
        if env.get(name):
            return env[name]
        if form == ":-":
            return str(extra)
        raise LookupError(f"{name}: {extra or 'not set'}")

    done = _VARIABLE.sub(value, text)
    assert "$" not in done, f"an interpolation form this test does not know: {text!r}"
    return done


def _duration_s(text: str) -> int:
    match = re.fullmatch(r"(\d+)s", text)
    assert match, f"durations here are whole seconds ('30s'), not {text!r}"
    return int(match.group(1))


def compose_service() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert set(document) == {"name", "services", "volumes"}, sorted(document)
    assert list(document["services"]) == [SERVICE]
    service: dict[str, Any] = document["services"][SERVICE]
    return service


def compose_run(env: Mapping[str, str]) -> DockerRun:
    """The compose service as ``docker run`` options, translated key by key; named volumes keep their compose
    name (``<project>_<volume>``), relative bind sources resolve against the compose file's directory."""
    document = yaml.safe_load(COMPOSE.read_text())
    service = compose_service()
    options: list[tuple[str, str]] = []
    for key, value in service.items():
        if key in ("image", "command"):
            continue
        if key == "pull_policy":
            options.append(("--pull", value))
        elif key == "restart":
            options.append(("--restart", value))
        elif key == "stop_grace_period":
            options.append(("--stop-timeout", str(_duration_s(value))))
        elif key == "read_only":
            assert value is True
            options.append(("--read-only", ""))
        elif key in ("tmpfs", "cap_drop", "security_opt", "group_add"):
            flag = {"tmpfs": "--tmpfs", "cap_drop": "--cap-drop", "security_opt": "--security-opt",
                    "group_add": "--group-add"}[key]
            options += [(flag, interpolate(str(item), env)) for item in value]
        elif key == "pids_limit":
            options.append(("--pids-limit", str(value)))
        elif key == "mem_limit":
            options.append(("--memory", str(value)))
        elif key == "volumes":
            for entry in value:
                source, target, *mode = entry.split(":")
                if source.startswith("."):
                    source = str((COMPOSE.parent / source).resolve())
                elif not source.startswith("/"):
                    assert source in document["volumes"], f"volume {source} is not declared"
                    source = f"{document['name']}_{source}"
                options.append(("--volume", ":".join([source, target, *mode])))
        elif key == "ports":
            options += [("--publish", port) for port in value]
        elif key == "healthcheck":
            form, *command = value["test"]
            assert form == "CMD", "the exec form: no shell needed in the image"
            options.append(("--health-cmd", shlex.join(command)))
            for part in ("interval", "timeout", "start_period"):
                options.append((f"--health-{part.replace('_', '-')}", f"{_duration_s(value[part])}s"))
            options.append(("--health-retries", str(value["retries"])))
        elif key == "logging":
            options.append(("--log-driver", value["driver"]))
            options += [("--log-opt", f"{k}={v}") for k, v in value.get("options", {}).items()]
        else:
            raise AssertionError(f"compose key {key!r} has no translation here: add one, so the test runs it")
    return DockerRun(tuple(options), interpolate(service["image"], env), tuple(service["command"]))


def unit_sections() -> dict[str, list[tuple[str, str]]]:
    """The unit file as systemd reads it: sections of ``(key, value)`` in order, repeats kept, continuation lines
    joined, comments dropped."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        assert current is not None and "=" in line, f"not a unit line: {line!r}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(section: str, key: str) -> list[str]:
    return [value for k, value in unit_sections()[section] if k == key]


def unit_command(key: str, env: Mapping[str, str]) -> list[str]:
    """A unit's ``Exec*=`` line as argv: ``${NAME}`` from ``env`` (as the EnvironmentFile gives it), quotes removed."""
    [line] = unit_values("Service", key)
    line = line.lstrip("-")  # "-": a failure is ignored
    return shlex.split(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env[m.group(1)], line))


def parse_docker_run(argv: list[str]) -> DockerRun:
    assert argv[:2] == ["/usr/bin/docker", "run"], argv[:2]
    options: list[tuple[str, str]] = []
    rest = argv[2:]
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if "=" in option:
            name, _, value = option.partition("=")
            options.append((name, value))
        elif option in _BOOLEAN_OPTIONS:
            options.append((option, ""))
        else:
            options.append((option, rest.pop(0)))
    return DockerRun(tuple(options), rest[0], tuple(rest[1:]))


def unit_run(env: Mapping[str, str]) -> DockerRun:
    return parse_docker_run(unit_command("ExecStart", env))


ENV = {"MCP_RUNNER_IMAGE": "mcp-runner/service:0123456789ab", "DOCKER_GID": "105"}


# --------------------------------------------------------------------------------------------------------------------


def test_the_compose_image_is_the_service_image_the_cli_lists() -> None:
    current = image_ref("service")
    assert compose_run({**ENV, "MCP_RUNNER_IMAGE": current}).image == current
    with pytest.raises(LookupError, match=r"MCP_RUNNER_IMAGE: set MCP_RUNNER_IMAGE .*`mcp-runner images list`"):
        compose_run({"DOCKER_GID": "105"})
    with pytest.raises(LookupError, match=r"DOCKER_GID: .*stat -c %g /var/run/docker.sock"):
        compose_run({"MCP_RUNNER_IMAGE": current})
    # The command the header says to run picks the service's line of `mcp-runner images list`.
    assert "mcp-runner images list | awk '$1 == \"service\" {print $2}'" in COMPOSE.read_text()
    assert "mcp-runner images list | awk '$1 == \"service\" {print $2}'" in UNIT.read_text()


def test_the_compose_container_is_hardened() -> None:
    run = compose_run(ENV)
    assert run.values("--read-only") == [""]
    assert run.values("--cap-drop") == ["ALL"]
    assert run.values("--security-opt") == ["no-new-privileges:true"]
    assert run.values("--pull") == ["never"]
    [tmpfs] = run.values("--tmpfs")
    assert tmpfs.startswith("/tmp:") and "size=64m" in tmpfs and "noexec" in tmpfs
    assert run.values("--group-add") == ["105"]
    assert run.values("--pids-limit") and run.values("--memory")
    assert all(port.startswith("127.0.0.1:") for port in run.values("--publish")), "published on loopback only"
    volumes = {v.split(":")[1]: v for v in run.values("--volume")}
    assert volumes["/var/lib/mcp-runner"] == "mcp-runner_state:/var/lib/mcp-runner"
    assert volumes["/etc/mcp-runner"] == f"{CONFIG}:/etc/mcp-runner:ro"
    assert volumes["/var/run/docker.sock"] == "/var/run/docker.sock:/var/run/docker.sock"
    assert run.values("--health-cmd") == ["mcp-runner health --address 127.0.0.1:50051 --timeout 4"]
    assert run.command == ("serve", "--config", "/etc/mcp-runner/settings.yaml")
    assert "user" not in compose_service(), "the image's own user (10001) runs it"


def test_the_unit_runs_the_same_container_as_compose() -> None:
    unit, compose = unit_run(ENV), compose_run(ENV)
    assert unit.image == compose.image == ENV["MCP_RUNNER_IMAGE"]
    assert unit.command == compose.command
    same = ["--read-only", "--tmpfs", "--cap-drop", "--security-opt", "--group-add", "--pids-limit", "--memory",
            "--publish", "--pull", "--stop-timeout", "--health-cmd", "--health-interval", "--health-timeout",
            "--health-retries", "--health-start-period"]
    for option in same:
        assert sorted(unit.values(option)) == sorted(compose.values(option)), option

    def targets(run: DockerRun) -> list[tuple[str, ...]]:
        return sorted(tuple(v.split(":")[1:]) for v in run.values("--volume"))

    assert targets(unit) == targets(compose)
    assert "/var/run/docker.sock:/var/run/docker.sock" in unit.values("--volume")
    assert "/etc/mcp-runner:/etc/mcp-runner:ro" in unit.values("--volume")
    state = "mcp-runner_state:/var/lib/mcp-runner"
    assert state in unit.values("--volume") and state in compose.values("--volume"), "one state volume for both"
    assert unit.values("--name") == [SERVICE] and unit.values("--rm") == [""]
    assert unit.values("--log-driver") == ["none"], "the attached CLI hands the output to the journal: no second copy"


def test_the_unit_restarts_on_failure_but_not_on_a_configuration_error() -> None:
    assert unit_values("Service", "Restart") == ["on-failure"]
    assert unit_values("Service", "RestartPreventExitStatus") == ["2"]
    assert unit_values("Service", "EnvironmentFile") == ["/etc/default/mcp-runner"]
    assert unit_command("ExecStop", ENV) == ["/usr/bin/docker", "stop", "--time", "30", SERVICE]
    assert unit_command("ExecStartPre", ENV) == ["/usr/bin/docker", "rm", "--force", SERVICE]
    assert unit_values("Unit", "Requires") == ["docker.service"]
    assert unit_values("Install", "WantedBy") == ["multi-user.target"]


def test_the_unit_hardening_leaves_the_docker_socket_reachable() -> None:
    service = dict(unit_sections()["Service"])
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == "" and service["PrivateNetwork"] == "yes"
    assert service["DynamicUser"] == "yes"
    # The CLI reaches the engine only over its Unix socket, as a member of the socket's group.
    assert service["RestrictAddressFamilies"] == "AF_UNIX"
    assert service["SupplementaryGroups"] == "docker"
    assert "PrivateUsers" not in service, "a user namespace would map the docker group away"
    assert not any(k in service for k in ("InaccessiblePaths", "TemporaryFileSystem", "BindPaths"))
    assert service.get("SystemCallErrorNumber") == "EPERM", "a filtered call fails; it does not kill the CLI"


def test_the_unit_verifies_with_systemd_analyze(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing under CI=true (Debian: apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed; the unit's content is checked by the tests above")
    shutil.copy(UNIT, tmp_path / UNIT.name)
    done = subprocess.run([tool, "verify", str(tmp_path / UNIT.name)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_container_settings_and_policy_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MCP_RUNNER_CONFIG", "MCP_RUNNER_LISTEN", "MCP_RUNNER_MCP_LISTEN", "MCP_RUNNER_INSTANCE",
                 "MCP_RUNNER_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(CONFIG / "settings.yaml")
    assert settings.listen == "0.0.0.0:50051" and settings.mcp_http.listen == "0.0.0.0:50052"
    assert settings.backend == "docker" and settings.instance == "service"
    assert settings.policy == CONFIG / "policy.yaml"
    for listen in (settings.listen, settings.mcp_http.listen):  # the checks `serve` makes before it binds
        check_listen_safety(listen, settings.tls, settings.auth)
        check_policy_required(listen, settings.auth, settings.policy)
    policy = load_policy(CONFIG / "policy.yaml")
    assert policy.caller("agent").profiles and not policy.default_caller.profiles
    assert not policy.tokens, "no token is shipped: each installation makes its own"
