"""``mcp-runner config check`` as a person runs it, and ``serve`` refusing the same files before it listens.

Real processes, the real Docker engine (an image reference is looked up there), real files.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

SERVERS = Path(__file__).resolve().parent.parent / "servers"


def mcp_runner(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_RUNNER_")}
    env["MCP_RUNNER_STATE_DIR"] = str(cwd / "state")
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def write(tmp_path: Path, text: str, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_good_file_is_ok_with_its_summary(tmp_path: Path, images: dict[str, str]) -> None:
    (tmp_path / "data").mkdir()
    path = write(tmp_path, f"""\
        listen: 127.0.0.1:6001
        profiles:
          mine:
            image: {images["python-servers"]}     # a full reference, present on this engine
            command: [mcp-server-time]
            mounts: [{{source: data, target: /data}}]
            workspace: 32m
    """)
    done = mcp_runner("config", "check", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        "ok: 7 profiles, listen 127.0.0.1:6001, mcp door 127.0.0.1:50052, backend docker"
    )
    assert "'fetch' has no network" in done.stdout


def test_a_bad_file_lists_every_problem_with_file_key_and_remedy(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        profiles:
          time:
            image: python-servers
            command: [mcp-server-time]
            mount: [{source: ./data, target: /data}]
            limits: {memroy: 64m}
    """)
    done = mcp_runner("config", "check", str(path), cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert f"error: {path}: profiles.time.mount: Extra inputs are not permitted (unknown key); did you mean " \
        "`mounts`?" in lines
    assert f"error: {path}: profiles.time.limits.memroy: Extra inputs are not permitted (unknown key); did you " \
        "mean `memory`?" in lines
    assert lines[-1] == "2 problem(s) found"


def test_a_missing_mount_source_and_a_missing_image_are_found_on_the_machine(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        profiles:
          mine:
            image: mcp-runner-test/never-built:0
            command: [x]
            mounts: [{source: ./dtaa, target: /data}]
    """)
    done = mcp_runner("config", "check", "--json", str(path), cwd=tmp_path)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    problems = {p["where"]: p for p in report["problems"]}
    assert set(problems) == {"profiles.mine.mounts.0.source", "profiles.mine.image"}
    assert f"{tmp_path / 'dtaa'} does not exist" in problems["profiles.mine.mounts.0.source"]["message"]
    assert "'mcp-runner-test/never-built:0' is not on this machine" in problems["profiles.mine.image"]["message"]
    assert not (tmp_path / "dtaa").exists()  # checking never creates it


def test_the_file_serve_would_read_is_the_default_and_usage_errors_exit_2(tmp_path: Path) -> None:
    bad = write(tmp_path, "lsiten: 127.0.0.1:1\n")
    env_file = subprocess.run(
        [sys.executable, "-m", "runner.cli", "config", "check"], capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "MCP_RUNNER_CONFIG": str(bad)}, timeout=60,
    )
    assert env_file.returncode == 1 and "did you mean `listen`?" in env_file.stderr
    builtin = mcp_runner("config", "check", cwd=tmp_path)
    assert builtin.returncode == 0 and builtin.stdout.splitlines()[-1].startswith("ok: 6 profiles")
    assert mcp_runner("config", "check", "--nonsense", cwd=tmp_path).returncode == 2
    assert mcp_runner("config", "check", "a.yaml", "b.yaml", cwd=tmp_path).returncode == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("profiles:\n  time: {image: python-servers, command: [c], mount: []}\n",
         "profiles.time.mount: Extra inputs are not permitted (unknown key); did you mean `mounts`?"),
        ("profiles:\n  mine: {image: python-servers, command: [c], mounts: [{source: ./nope, target: /d}]}\n",
         "profiles.mine.mounts.0.source: {tmp}/nope does not exist"),
        ("profiles:\n  mine: {image: mcp-runner-test/never-built:0, command: [c]}\n",
         "profiles.mine.image: image 'mcp-runner-test/never-built:0' is not on this machine"),
    ],
)
def test_serve_refuses_a_bad_file_before_it_listens_with_the_same_words(
    tmp_path: Path, images: dict[str, str], text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    port = free_port()
    done = mcp_runner("serve", "--config", str(path), "--listen", f"127.0.0.1:{port}", "--mcp-listen", "",
                      cwd=tmp_path)
    assert done.returncode != 0
    assert expected.format(tmp=tmp_path) in done.stderr
    checked = mcp_runner("config", "check", str(path), cwd=tmp_path)
    assert expected.format(tmp=tmp_path) in checked.stderr  # the check says it the same way
    assert not (tmp_path / "state").exists()  # refused before the instance lock, let alone the engine's sweep
    assert not (tmp_path / "nope").exists()
    with socket.socket() as probe:  # nothing was left listening
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_policy_file_is_checked_as_a_policy_with_a_reminder_of_where_it_goes(tmp_path: Path) -> None:
    good = write(tmp_path, "callers:\n  alice: {roles: [admin], profiles: [time]}\n", "policy.yaml")
    done = mcp_runner("config", "check", str(good), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "ok: policy file, 1 caller(s)"
    assert "`policy: policy.yaml`" in done.stdout
    bad = write(tmp_path, "callers:\n  alice: {roles: [admin], profile: [time]}\n", "bad-policy.yaml")
    refused = mcp_runner("config", "check", str(bad), cwd=tmp_path)
    assert refused.returncode == 1
    assert f"error: {bad}: callers.alice.profile: Extra inputs are not permitted (unknown key); did you mean " \
        "`profiles`?" in refused.stderr.splitlines()


def test_a_present_image_without_the_agent_is_noted_and_an_onbuild_base_is_a_problem(
    tmp_path: Path, images: dict[str, str]
) -> None:
    tag = os.urandom(4).hex()
    plain, triggers = f"mcp-runner-test/cc-plain:{tag}", f"mcp-runner-test/cc-onbuild:{tag}"
    dockerfiles = {plain: f'FROM {images["rootfs"]}\nENTRYPOINT ["python3"]\n',
                   triggers: f'FROM {images["rootfs"]}\nONBUILD RUN ["python3", "-c", "print(1)"]\n'}
    try:
        for ref, dockerfile in dockerfiles.items():
            subprocess.run(["docker", "build", "-q", "-t", ref, "-"], input=dockerfile, text=True, check=True,
                           capture_output=True, timeout=300)
        path = write(tmp_path, f"""\
            profiles:
              plain: {{image: "{plain}", command: [x]}}
              triggers: {{image: "{triggers}", inject_agent: true}}
              ours: {{image: "{images["python-servers"]}", command: [mcp-server-time]}}
        """)
        done = mcp_runner("config", "check", "--json", str(path), cwd=tmp_path)
    finally:
        subprocess.run(["docker", "rmi", "-f", *dockerfiles], capture_output=True, timeout=120)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    (problem,) = report["problems"]
    assert problem["where"] == "profiles.triggers.image"
    assert f"image '{triggers}' has ONBUILD triggers (RUN [\"python3\", \"-c\", \"print(1)\"])" in problem["message"]
    assert f"profiles.plain.image: image {plain} has no mcp-runner agent: build it with" in "\n".join(report["notes"])
    assert not [n for n in report["notes"] if n.startswith("profiles.ours.")]
