"""Red team, bring your own server (no Docker, no registry): hostile package specs, the content hash of package
images, ``images add`` exit codes, and the Dockerfile derived from a hostile image's config.

Defects found are strict xfails whose reason starts with DEFECT.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner import image_packages
from runner.image_inject import _dockerfile as injected_dockerfile
from runner.image_packages import _Resolved, ensure_package
from runner.package_spec import PackageSpec, PackageSpecError, parse_package

HOSTILE_SPECS = [
    "pypi:foo; rm -rf /", "pypi:foo$(id)", "pypi:`id`", "pypi:foo|sh", "pypi:../x", "pypi:/etc/passwd",
    "pypi:foo[bar]", "pypi:foo[bar]==1.0", "pypi:foo==1.2; os.system('id')", "pypi:foo>=1.0", "pypi:foo==1.*",
    "pypi:foo~=1.0", "pypi:foo==1.0,<2", "pypi:foo @ https://example.invalid/x.whl", "pypi:https://example.invalid/x",
    "pypi:git+https://example.invalid/x", "pypi:-r/etc/passwd", "pypi:--index-url=http://127.0.0.1:1/", "pypi:",
    "pypi:fôo", "pypi:foo\nRUN id", "pypi:foo==1.0\nRUN id", "pypi:foo==1.0 --pre", "pypi:" + "a" * 201,
    "npm:@scope/", "npm:@/x", "npm:Foo", "npm:../x", "npm:foo/bar", "npm:foo@^1.0.0", "npm:foo@latest",
    "npm:foo@1.0.0 || 2", "npm:foo@>=1", "npm:git+https://example.invalid/x.git", "npm:file:../x",
    "npm:https://example.invalid/x.tgz", "npm:-g", "npm:fôo", "npm:foo@1.0.0\nRUN id", "npm:" + "a" * 215,
    "cargo:ripgrep", "pypi", ":foo", "",
]


@pytest.mark.parametrize("text", HOSTILE_SPECS)
def test_hostile_specs_are_refused_with_a_spec_error(text: str) -> None:
    with pytest.raises(PackageSpecError):
        parse_package(text)


@pytest.mark.parametrize("text", ["npm:foo\n@1.0.0", "npm:@scope/foo\n@1.0.0"])
def test_a_line_break_never_ends_an_npm_name(text: str) -> None:
    with pytest.raises(PackageSpecError):
        parse_package(text)


@pytest.mark.parametrize("text", ["pypi:foo==1.0.po\u017ft1", "pypi:foo==1.0+\u212a", "pypi:foo==1.0+\u0131"])
def test_a_pypi_version_is_ascii_only(text: str) -> None:
    with pytest.raises(PackageSpecError):
        parse_package(text)


@pytest.mark.parametrize("text", ["pypi:" + "a" * 100_000, "npm:" + "a" * 100_000, "pypi:foo==" + "x" * 100_000])
def test_a_huge_spec_gets_a_short_message(text: str) -> None:
    with pytest.raises(PackageSpecError) as refused:
        parse_package(text)
    assert len(str(refused.value)) < 2000


def _fake_build(monkeypatch: pytest.MonkeyPatch, base: str) -> None:
    """ensure_package up to its tag, with the registry and Docker replaced: the image counts as present."""
    resolved = _Resolved(PackageSpec("pypi", "mcp-server-x", "1.0"), Path("/nonexistent"),
                         b"mcp_server_x-1.0-py3-none-any.whl 00ff", ("mcp-server-x",))
    monkeypatch.setattr(image_packages, "find_package_image", lambda spec: None)
    monkeypatch.setattr(image_packages, "ensure_images", lambda names, log: {n: base for n in names})
    monkeypatch.setattr(image_packages, "_resolve_pypi", lambda spec, log: resolved)
    monkeypatch.setattr(image_packages, "image_present", lambda ref: True)


def test_the_package_tag_is_a_content_hash_of_spec_lock_and_base(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_build(monkeypatch, "mcp-runner/python-servers:aaaaaaaaaaaa")
    first = ensure_package(parse_package("pypi:mcp-server-x"), lambda line: None)
    again = ensure_package(parse_package("pypi:MCP_Server_X"), lambda line: None)
    assert first.ref == again.ref and first.ref.startswith("mcp-runner/pypi-mcp-server-x:")
    _fake_build(monkeypatch, "mcp-runner/python-servers:bbbbbbbbbbbb")
    assert ensure_package(parse_package("pypi:mcp-server-x"), lambda line: None).ref != first.ref


def test_nothing_of_a_package_runs_on_the_host_and_its_build_has_no_network(monkeypatch: pytest.MonkeyPatch,
                                                                             tmp_path: Path) -> None:
    ran: list[list[str]] = []

    def record(cmd: list[str], *args: object, **kwargs: object) -> None:
        ran.append(list(cmd))
        if cmd[0] != "docker":
            raise image_packages.ImageBuildError("stop after the host's fetch")

    monkeypatch.setattr(image_packages, "run", record)
    monkeypatch.setattr(image_packages, "CACHE_DIR", tmp_path)
    for resolve, spec in ((image_packages._resolve_pypi, "pypi:x"), (image_packages._resolve_npm, "npm:x")):
        with pytest.raises(image_packages.ImageBuildError):
            resolve(parse_package(spec), lambda line: None)
    pip, npm = ran
    assert "--only-binary=:all:" in pip and "--no-binary" not in " ".join(pip)  # wheels only: no setup.py here
    assert "--ignore-scripts" in npm  # no install scripts on the host
    _fake_build(monkeypatch, "mcp-runner/python-servers:aaaaaaaaaaaa")
    monkeypatch.setattr(image_packages, "image_present", lambda ref: False)
    monkeypatch.setattr(image_packages, "smoke_check", lambda ref, argv, log: None)
    monkeypatch.setattr(image_packages, "link_or_copy", lambda src, dst: None)
    ensure_package(parse_package("pypi:mcp-server-x"), lambda line: None)
    build = ran[-1]
    assert build[:2] == ["docker", "build"] and build[build.index("--network") + 1] == "none"


def _images_add(spec: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner.cli", "images", "add", spec], capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.parametrize("spec", ["pypi:foo; rm -rf /", "npm:@scope/", "pypi:foo[bar]", "pypi:foo==1.2; os.system"])
def test_images_add_refuses_a_hostile_spec_with_exit_2_and_no_traceback(spec: str) -> None:
    done = _images_add(spec, {"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_images_add_without_docker_says_so_with_exit_1(tmp_path: Path) -> None:
    done = _images_add("pypi:mcp-server-calculator", {"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert done.returncode == 1, done.stderr
    assert "docker CLI not found" in done.stderr and "Traceback" not in done.stderr


HOSTILE_CONFIG = {
    "User": "app\nRUN touch /pwned",
    "Entrypoint": ["/bin/sh", "-c", "x\nRUN touch /pwned"],
    "Cmd": ["]\nRUN touch /pwned", "\"; echo"],
    "Labels": {"mcp-runner.image": "python-servers", "x\nRUN": "y"},
    "Env": ["A=1\nRUN touch /pwned"],
    "OnBuild": ["RUN touch /pwned"],
    "WorkingDir": "/\nRUN touch /pwned",
}


def test_a_hostile_image_config_adds_no_instruction_to_the_derived_dockerfile() -> None:
    lines = injected_dockerfile(HOSTILE_CONFIG).decode().splitlines()
    instructions = [line.split(" ", 1)[0] for line in lines if line and not line.startswith("#")]
    assert instructions == ["ARG", "FROM", "COPY", "USER", "RUN", "USER", "ENV", "ENTRYPOINT", "CMD"]
    assert "USER 0" in lines and not any("pwned" in line for line in lines if not line.startswith("CMD "))
    cmd = next(line for line in lines if line.startswith("CMD "))
    assert json.loads(cmd[4:]) == [*HOSTILE_CONFIG["Entrypoint"], *HOSTILE_CONFIG["Cmd"]]
