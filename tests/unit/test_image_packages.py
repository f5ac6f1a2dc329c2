"""Bring your own server, without Docker or a registry: package specs, executables, tags of derived images, the
``package:`` / ``inject_agent:`` profile keys, the agent check and the ``images add`` usage errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from runner import image_inject, image_packages, image_profiles
from runner.cli_images import add_images_parser
from runner.config import ConfigError, Profile
from runner.errors import FailedPrecondition
from runner.image_checks import ImageBuildError
from runner.package_spec import PackageSpec, PackageSpecError, injected_image, is_package, parse_package, uninjected
from runner.settings_file import load_settings


@pytest.mark.parametrize(("text", "spec", "exact"), [
    ("pypi:mcp-server-calculator", PackageSpec("pypi", "mcp-server-calculator"), False),
    ("pypi:MCP_Server.Calculator==0.2.1", PackageSpec("pypi", "mcp-server-calculator", "0.2.1"), True),
    (" pypi:foo == 1.0rc1 ", PackageSpec("pypi", "foo", "1.0rc1"), True),
    ("npm:left-pad@1.3.0", PackageSpec("npm", "left-pad", "1.3.0"), True),
    ("npm:@modelcontextprotocol/server-memory", PackageSpec("npm", "@modelcontextprotocol/server-memory"), False),
    ("npm:@scope/name@1.2", PackageSpec("npm", "@scope/name", "1.2"), False),
])  # fmt: skip
def test_specs_parse_normalized(text: str, spec: PackageSpec, exact: bool) -> None:
    assert parse_package(text) == spec
    assert parse_package(text).exact is exact
    assert parse_package(str(spec)) == spec  # the printed form reads back


@pytest.mark.parametrize(("text", "says"), [
    ("cargo:ripgrep", "ECOSYSTEM pypi or npm"),
    ("mcp-server-time", "ECOSYSTEM pypi or npm"),
    ("pypi:foo>=1.0", "pin one version with =="),
    ("pypi:foo[cli]", "pin one version with =="),
    ("pypi:-foo", "not a PyPI project name"),
    ("pypi:foo==latest", "not a single version"),
    ("npm:Left-Pad", "not an npm package name"),
    ("npm:left-pad@^1.0.0", "not an exact version"),
    ("npm:left-pad@latest", "not an exact version"),
    ("npm:@scope", "not an npm package name"),
    ("npm:", "not an npm package name"),
])  # fmt: skip
def test_bad_specs_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(PackageSpecError, match=says.replace("[", r"\[")):
        parse_package(text)


def test_profile_image_names() -> None:
    assert is_package("pypi:foo==1") and is_package("npm:@a/b")
    assert not is_package("python-servers") and not is_package("registry:5000/x:1")
    assert uninjected(injected_image("my/image:1")) == "my/image:1"
    assert uninjected("my/image:1") is None
    assert image_profiles.runner_built("pypi:foo") and image_profiles.runner_built("with-agent:x")
    assert not image_profiles.runner_built("debian:bookworm")
    assert PackageSpec("npm", "@model/server-x").slug == "model-server-x"


@pytest.mark.parametrize(("spec", "executables", "chosen"), [
    (PackageSpec("pypi", "mcp-server-calculator"), ("mcp-server-calculator", "other"), "mcp-server-calculator"),
    (PackageSpec("pypi", "mcp-server-calculator"), ("mcp_server_calculator",), "mcp_server_calculator"),
    (PackageSpec("pypi", "foo"), ("foo-mcp",), "foo-mcp"),
    (PackageSpec("npm", "@s/server-x"), ("a", "server-x"), "server-x"),
])  # fmt: skip
def test_the_default_executable(spec: PackageSpec, executables: tuple[str, ...], chosen: str) -> None:
    assert image_packages.choose_executable(spec, executables) == chosen


def test_no_or_ambiguous_executable_is_refused() -> None:
    with pytest.raises(ImageBuildError, match="has no executable \\(no console script\\)"):
        image_packages.choose_executable(PackageSpec("pypi", "six"), ())
    with pytest.raises(ImageBuildError, match="has no executable \\(no bin\\)"):
        image_packages.choose_executable(PackageSpec("npm", "left-pad"), ())
    with pytest.raises(ImageBuildError, match="several executables \\(a, b\\)"):
        image_packages.choose_executable(PackageSpec("pypi", "foo"), ("a", "b"))


def test_console_scripts_are_read_from_the_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "foo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("foo-1.0.dist-info/entry_points.txt",
                         "[console_scripts]\nFoo-Server = foo:main\nfoo = foo:cli\n[gui_scripts]\nfoo-gui = foo:gui\n")
    assert image_packages._console_scripts(FOO, wheel) == ("Foo-Server", "foo")
    bare = tmp_path / "bar-1.0-py3-none-any.whl"
    with zipfile.ZipFile(bare, "w") as archive:
        archive.writestr("bar/__init__.py", "")
    assert image_packages._console_scripts(FOO, bare) == ()


FOO = PackageSpec("pypi", "foo", "1.0")


@pytest.mark.parametrize("text", [
    "[console_scripts]\nfoo = foo:main\nfoo = foo:cli\n",  # a duplicate key
    "foo = foo:main\n",  # no section header
    "[console_scripts]\n[console_scripts]\n",  # a duplicate section
])
def test_a_malformed_entry_points_txt_is_an_image_build_error(tmp_path: Path, text: str) -> None:
    wheel = tmp_path / "foo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("foo-1.0.dist-info/entry_points.txt", text)
    with pytest.raises(ImageBuildError, match="^" + re.escape("pypi:foo==1.0: its entry_points.txt is malformed: ")):
        image_packages._console_scripts(FOO, wheel)


@pytest.mark.parametrize("text", ['{"name": "tool"}', '{"version": 3}', "[]", "{not json"])
def test_a_malformed_package_json_is_an_image_build_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "package.json").write_text(text)
    with pytest.raises(ImageBuildError, match="^" + re.escape("npm:tool: its package.json is malformed: ")):
        image_packages._npm_manifest(PackageSpec("npm", "tool"), tmp_path / "package.json")
    (tmp_path / "package.json").write_text('{"name": "tool", "version": "1.2.3"}')
    assert image_packages._npm_manifest(PackageSpec("npm", "tool"), tmp_path / "package.json")[0] == "1.2.3"


def test_a_resolve_that_lost_the_race_for_its_cache_dir_uses_the_winners(tmp_path: Path) -> None:
    dest = tmp_path / "packages" / "pypi" / "0123"
    dest.mkdir(parents=True)
    (dest / "a.whl").write_text("winner")
    scratch = tmp_path / "tmp-1"
    scratch.mkdir()
    (scratch / "a.whl").write_text("loser")
    assert image_packages._keep(scratch, dest) == dest
    assert (dest / "a.whl").read_text() == "winner"
    fresh = tmp_path / "packages" / "npm" / "4567"
    assert image_packages._keep(scratch, fresh) == fresh and (fresh / "a.whl").read_text() == "loser"
    with pytest.raises(OSError):
        image_packages._keep(tmp_path / "gone", tmp_path / "elsewhere")


def test_npm_bins() -> None:
    spec = PackageSpec("npm", "@scope/tool")
    assert image_packages._npm_bins(spec, {"bin": "dist/index.js"}) == ("tool",)
    assert image_packages._npm_bins(spec, {"bin": {"b": "x.js", "a": "y.js"}}) == ("a", "b")
    assert image_packages._npm_bins(spec, {}) == ()


def test_package_dockerfile_runs_the_executable() -> None:
    text = image_packages._dockerfile(PackageSpec("pypi", "foo", "1.0"), "foo-server").decode()
    assert text.startswith("# mcp-runner/pypi-NAME")
    assert text.rstrip().endswith('CMD ["foo-server"]')
    assert "FROM ${BASE}" in text


def test_images_whose_package_label_does_not_parse_are_left_out_with_a_warning(
        monkeypatch: pytest.MonkeyPatch) -> None:
    labels = {"good:1": "pypi:foo==1.0", "bare:1": "pypi:foo", "junk:1": "x" * 100_000, "none:1": None}
    monkeypatch.setattr(image_packages, "check_docker", lambda: None)
    monkeypatch.setattr(image_packages, "_images_labelled", lambda: list(labels))
    monkeypatch.setattr(image_packages.subprocess, "run", lambda argv, **k: _Done(
        0, json.dumps({"mcp-runner.package": labels[argv[-1]]}), ""))
    warned: list[str] = []
    assert [p.ref for p in image_packages.package_images(warned.append)] == ["good:1"]
    assert [w.split(" ", 2)[1] for w in warned] == ["bare:1", "junk:1", "none:1"]
    assert all(w.startswith("warning: ") and "left out" in w and len(w) < 800 for w in warned)


def test_snippet_pins_the_version() -> None:
    image = image_packages.PackageImage("mcp-runner/pypi-foo:abc", PackageSpec("pypi", "foo", "1.2.3"), "foo")
    snippet = image_packages.profile_snippet(image)
    assert '    package: "pypi:foo==1.2.3"' in snippet
    assert snippet.startswith("profiles:\n  foo:\n")
    assert image_packages.profile_snippet(image, "calc").startswith("profiles:\n  calc:\n")


def test_injected_tag_follows_base_image_and_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {"Id": "sha256:aaa", "Config": {"Entrypoint": ["/srv/server"], "Cmd": ["--stdio"]}}
    monkeypatch.setattr(image_inject, "_inspect", lambda image: seen)
    first = image_inject.injected_ref("user/image:1")
    assert first.startswith("mcp-runner/with-agent:") and len(first.rsplit(":", 1)[1]) == 12
    assert image_inject.injected_ref("user/image:1") == first  # a pure function of its inputs
    seen["Id"] = "sha256:bbb"
    second = image_inject.injected_ref("user/image:1")
    assert second != first
    monkeypatch.setattr(image_inject, "BOOT", image_inject.BOOT + "# changed\n")
    assert image_inject.injected_ref("user/image:1") != second


def test_an_image_with_onbuild_triggers_is_refused_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    triggers = ["RUN id", "ADD http://127.0.0.1:9/x /x", *(f"RUN \x1b[2J{n}\n" + "y" * 500 for n in range(9))]
    monkeypatch.setattr(image_inject, "_inspect", lambda image: {"Id": "sha256:a", "Config": {"OnBuild": triggers}})
    built: list[object] = []
    monkeypatch.setattr(image_inject, "run", lambda *a, **k: built.append(a))
    for action in (image_inject.injected_ref, image_inject.ensure_injected):
        with pytest.raises(ImageBuildError) as refused:
            action("user/image:1")
        said = str(refused.value)
        assert "has ONBUILD triggers (RUN id; ADD http://127.0.0.1:9/x /x; " in said and said.isprintable()
        assert "build your own image FROM it" in said and len(said) < 1500
    assert built == []


def test_injected_dockerfile_keeps_what_the_image_ran() -> None:
    text = image_inject._dockerfile({"Entrypoint": ["/srv/server"], "Cmd": ["--stdio"], "User": "app"}).decode()
    assert 'ENTRYPOINT ["python3", "-I", "/opt/mcp-runner-agent/boot.py", "--"]' in text
    assert 'CMD ["/srv/server", "--stdio"]' in text
    assert "USER app" in text
    assert image_inject._dockerfile({}).decode().rstrip().endswith("CMD []")


def test_an_image_config_cannot_add_instructions() -> None:
    text = image_inject._dockerfile({"User": "app\nRUN touch /pwned", "Cmd": ["srv", "a\nRUN x"]}).decode()
    assert "RUN touch" not in text and "\nUSER 0\n" in text.split("compileall")[1]
    assert 'CMD ["srv", "a\\nRUN x"]' in text  # JSON: the line break stays inside the string
    assert not [line for line in text.splitlines() if line.startswith("RUN") and "compileall" not in line]
    assert image_inject._dockerfile({"Entrypoint": "not-a-list", "Cmd": None}).decode().rstrip().endswith("CMD []")


@pytest.mark.parametrize(("stdout", "returncode", "says"), [
    ("3 11 x86_64 glibc\n", 0, None),
    ("3 9 x86_64 glibc\n", 0, "has Python 3.9 on x86_64 (glibc); the agent needs CPython >= 3.10"),
    ("3 12 aarch64 glibc\n", 0, "on aarch64"),
    ("3 12 x86_64 none\n", 0, "(none)"),
    ("\x1b[2Jgarbage", 0, "its python3 did not say its version"),
    ("", 127, "has no python3 the agent can run on"),
])  # fmt: skip
def test_the_images_python_is_checked(monkeypatch: pytest.MonkeyPatch, stdout: str, returncode: int,
                                      says: str | None) -> None:
    monkeypatch.setattr(image_inject.subprocess, "run", lambda *a, **k: _Done(returncode, stdout, "exec failed"))
    if says is None:
        assert image_inject._python_of("img", "sha256:a") == (3, 11)
        return
    with pytest.raises(ImageBuildError) as caught:
        image_inject._python_of("img", "sha256:a")
    assert says in str(caught.value) and "\x1b" not in str(caught.value)


def test_missing_base_image_says_to_pull_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_inject.subprocess, "run", lambda *a, **k: _Done(1, "", "No such image: x"))
    with pytest.raises(ImageBuildError, match="is not on this Docker engine: pull or build it first"):
        image_inject.injected_ref("x")


class _Done:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def test_a_hanging_python3_in_the_users_image_is_stopped_and_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def hang(argv: list[str], **kwargs: Any) -> _Done:
        calls.append(argv)
        if argv[:2] == ["docker", "run"]:
            raise image_inject.subprocess.TimeoutExpired(argv, kwargs["timeout"])
        return _Done(0, "", "")

    monkeypatch.setattr(image_inject.subprocess, "run", hang)
    said = f"image 'user/image:1': its python3 asked for its version did not finish within {image_inject.RUN_LIMIT} s"
    with pytest.raises(ImageBuildError, match=re.escape(said)):
        image_inject._python_of("user/image:1", "sha256:a")
    name = calls[0][calls[0].index("--name") + 1]
    assert calls[1] == ["docker", "rm", "-f", name]  # the CLI's timeout alone leaves the container running


def test_the_agent_is_added_from_the_inspected_id_and_its_failure_is_printable(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    inspected: list[str] = []
    monkeypatch.setattr(image_inject, "_inspect",
                        lambda image: inspected.append(image) or {"Id": "sha256:aaa", "Config": {"Cmd": ["srv"]}})
    monkeypatch.setattr(image_inject, "image_present", lambda ref: False)
    monkeypatch.setattr(image_inject, "CACHE_DIR", tmp_path)
    (tmp_path / "lib").mkdir()
    monkeypatch.setattr(image_inject, "_agent_lib", lambda python, log: tmp_path / "lib")
    built: list[list[str]] = []
    monkeypatch.setattr(image_inject, "run", lambda argv, *a, **k: built.append(list(argv)))
    ran: list[list[str]] = []

    def docker(argv: list[str], **kwargs: Any) -> _Done:
        ran.append(argv)
        if "-c" in argv and argv[argv.index("-c") + 1] == image_inject.PROBE:
            return _Done(0, "3 11 x86_64 glibc\n", "")
        return _Done(1, "", "Traceback\x1b]0;owned\x07\x1b[2J ImportError") if argv[1] == "run" else _Done(0, "", "")

    monkeypatch.setattr(image_inject.subprocess, "run", docker)
    with pytest.raises(ImageBuildError) as caught:
        image_inject.ensure_injected("user/image:1", log=lambda line: None)
    assert inspected == ["user/image:1"]
    assert "BASE=sha256:aaa" in built[0] and "BASE=user/image:1" not in built[0]
    assert "sha256:aaa" in ran[0]  # the version probe ran the same image
    said = str(caught.value)
    assert "the agent does not start in mcp-runner/with-agent:" in said and "ImportError" in said
    assert "\x1b" not in said and "\x07" not in said


def test_agent_check_names_the_image_and_the_fix() -> None:
    for labels in ({"mcp-runner.image": "python-servers"}, {"mcp-runner.image": "package"},
                   {"mcp-runner.image": "with-agent"}):
        image_profiles.check_agent("x", labels)
    for labels in (None, {}, {"mcp-runner.image": "rootfs"}, {"mcp-runner.image": "egress"}):
        with pytest.raises(FailedPrecondition) as caught:
            image_profiles.check_agent("user/image:1", labels)
        assert caught.value.message == (
            "image user/image:1 has no mcp-runner agent: build it with `mcp-runner images add` or set "
            "`inject_agent: true` on its profile")


AGENT = ["/usr/bin/tini", "--", "/opt/agent/bin/python", "-m", "runner.agent", "--"]
LAUNCHER = ["python3", "-I", "/opt/mcp-runner-agent/boot.py", "--"]


@pytest.mark.parametrize(("kind", "entrypoint"), [("python-servers", AGENT), ("node-servers", AGENT),
                                                  ("package", AGENT), ("with-agent", LAUNCHER)])
def test_an_image_keeping_its_agents_entrypoint_passes(kind: str, entrypoint: list[str]) -> None:
    image_profiles.check_agent("x", {"mcp-runner.image": kind}, entrypoint)


@pytest.mark.parametrize(("kind", "entrypoint"), [
    ("python-servers", ["/opt/servers/bin/mcp-server-time"]), ("python-servers", []), ("package", LAUNCHER),
    ("with-agent", AGENT), ("node-servers", [*AGENT, "extra"]), ("python-servers", ["\x1b]0;x\n" * 1000]),
])
def test_an_image_whose_entrypoint_replaced_the_agent_is_refused(kind: str, entrypoint: list[str]) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        image_profiles.check_agent("user/image:1", {"mcp-runner.image": kind}, entrypoint)
    said = caught.value.message
    assert said.startswith("image user/image:1 has no mcp-runner agent at its ENTRYPOINT: ")
    assert "`inject_agent: true`" in said and len(said) < 800 and said.isprintable()


def test_a_local_images_entrypoint_is_checked_and_an_absent_image_left_to_the_backend(
        monkeypatch: pytest.MonkeyPatch) -> None:
    configs: dict[str, dict[str, Any]] = {
        "ok:1": {"Labels": {"mcp-runner.image": "python-servers"}, "Entrypoint": AGENT},
        "claims:1": {"Labels": {"mcp-runner.image": "python-servers"}, "Entrypoint": ["/srv/server"]},
        "bare:1": {"Labels": None, "Entrypoint": None},
    }
    monkeypatch.setattr(image_profiles, "_config", configs.get)
    assert image_profiles.resolve_sandbox_image("ok:1") == "ok:1"
    assert image_profiles.resolve_sandbox_image("elsewhere:1") == "elsewhere:1"  # the backend says it is missing
    with pytest.raises(FailedPrecondition, match="at its ENTRYPOINT"):
        image_profiles.resolve_sandbox_image("claims:1")
    with pytest.raises(FailedPrecondition, match="has no mcp-runner agent: build it"):
        image_profiles.check_local_agent("bare:1")


def test_missing_package_image_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_profiles, "find_package_image", lambda spec: None)
    monkeypatch.setattr(image_profiles, "_config", lambda image: None)
    with pytest.raises(FailedPrecondition, match=re.escape("run `mcp-runner images add pypi:foo==1.0`")):
        image_profiles.resolve_sandbox_image("pypi:foo==1.0")
    assert image_profiles.resolve_sandbox_image("debian:bookworm") == "debian:bookworm"


def test_a_package_profile_runs_the_executable_its_image_names(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = {"mcp-runner.image": "package", "mcp-runner.command": "mcp-server-calculator"}
    monkeypatch.setattr(image_profiles, "resolve_sandbox_image", lambda image: "mcp-runner/pypi-x:1")
    monkeypatch.setattr(image_profiles, "_labels", lambda ref: labels)
    assert image_profiles.default_command("pypi:mcp-server-calculator") == ("mcp-server-calculator",)
    assert image_profiles.default_command("python-servers") == ()
    labels.pop("mcp-runner.command")
    with pytest.raises(FailedPrecondition, match="names no executable"):
        image_profiles.default_command("pypi:mcp-server-calculator")


def test_an_injected_profile_runs_what_the_users_image_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    cmd: tuple[str, ...] = ("/usr/local/bin/server", "--stdio")
    monkeypatch.setattr(image_profiles, "resolve_sandbox_image", lambda image: "mcp-runner/with-agent:1")
    monkeypatch.setattr(image_profiles, "image_command", lambda ref: cmd)
    assert image_profiles.default_command(injected_image("user/image:1")) == cmd
    cmd = ()
    with pytest.raises(FailedPrecondition, match=r"runs nothing of its own .* give the profile a command:"):
        image_profiles.default_command(injected_image("user/image:1"))


def test_a_pods_command_for_an_injected_image_names_its_launcher_with_the_gate() -> None:
    assert image_inject.pod_command(("srv", "-v")) == (
        "python3", "-I", "/opt/mcp-runner-agent/boot.py", "--start-gate", "--", "srv", "-v")


def test_the_launchers_gate_waits_for_one_line_and_consumes_no_more(tmp_path: Path) -> None:
    """boot.py as the derived image holds it, its agent a stand-in that shows its argv and what stdin still has."""
    import subprocess
    import sys

    agent = tmp_path / "lib" / "runner" / "agent"
    agent.mkdir(parents=True)
    (agent.parent / "__init__.py").write_text("")
    (agent / "__init__.py").write_text("")
    (agent / "__main__.py").write_text("import sys; print(sys.argv[1:], sys.stdin.read())")
    boot = tmp_path / "boot.py"
    boot.write_text(image_inject.BOOT.replace(image_inject.AGENT_ROOT, str(tmp_path)))
    gated = subprocess.run([sys.executable, "-I", str(boot), "--start-gate", "--", "srv"], input="\nrest",
                           capture_output=True, text=True, timeout=60)
    assert gated.stdout.strip() == "['--', 'srv'] rest", gated.stderr
    plain = subprocess.run([sys.executable, "-I", str(boot), "--", "srv"], input="\nrest", capture_output=True,
                           text=True, timeout=60)  # Docker: no gate, stdin untouched
    assert plain.stdout.strip() == "['--', 'srv'] \nrest", plain.stderr


def _profiles(tmp_path: Path) -> Any:
    return _settings(tmp_path, {"calc": {"package": "pypi:foo==1.0"}, "mine": {"image": "u/i:1", "inject_agent": True},
                                "time": {"image": "python-servers", "command": ["t"]}}).profiles.values()


def test_profile_images_go_to_the_clusters_containerd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refs = {"pypi:foo==1.0": "mcp-runner/pypi-foo:1", "with-agent:u/i:1": "mcp-runner/with-agent:2"}
    monkeypatch.setattr(image_profiles, "resolve_sandbox_image", refs.__getitem__)
    loaded: list[tuple[object, ...]] = []

    def load(socket: Path, *, log: object, names: tuple[str, ...], added: dict[str, str]) -> dict[str, str]:
        loaded.append((socket, names, added))
        return added

    monkeypatch.setattr(image_profiles, "load_into_containerd", load)
    socket = tmp_path / "containerd.sock"
    assert image_profiles.load_profile_images_into_cluster(_profiles(tmp_path), None, print, socket) == refs
    assert loaded == [(socket, (), refs)]  # only the profiles' images; the runner's own are `images load`'s
    loaded.clear()
    assert image_profiles.load_profile_images_into_cluster(_profiles(tmp_path), "reg.example/m", print) == refs
    assert loaded == []  # with a registry, the pods pull them


def test_profile_images_no_cluster_can_get_are_refused_saying_how(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_profiles, "resolve_sandbox_image", lambda image: "mcp-runner/pypi-foo:1")

    def nowhere() -> Path:
        raise image_profiles.ImageTransferError("no /run/mcp-runner-kubernetes: the test cluster is not up")

    monkeypatch.setattr(image_profiles, "find_containerd_socket", nowhere)
    with pytest.raises(FailedPrecondition) as caught:
        image_profiles.load_profile_images_into_cluster(_profiles(tmp_path), None, print)
    assert "the cluster's nodes cannot get them" in caught.value.message
    assert "`mcp-runner images push --registry HOST[:PORT]/PATH` and set kubernetes.registry" in caught.value.message
    assert "mcp-runner/pypi-foo:1" in caught.value.message


def _settings(tmp_path: Path, profiles: dict[str, Any]) -> Any:
    path = tmp_path / "settings.yaml"
    path.write_text(json.dumps({"profiles": profiles}))
    return load_settings(path)


def test_package_and_inject_profiles(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {
        "calc": {"package": "pypi:MCP_Server_Calculator==0.2.1"},
        "think": {"package": "npm:@modelcontextprotocol/server-sequential-thinking", "command": ["x", "--y"]},
        "mine": {"image": "user/image:1", "inject_agent": True},
    })  # fmt: skip
    calc, think, mine = (settings.profiles[n] for n in ("calc", "think", "mine"))
    assert (calc.image, calc.package, calc.command) == (
        "pypi:mcp-server-calculator==0.2.1", "pypi:mcp-server-calculator==0.2.1", ())
    assert think.command == ("x", "--y")
    assert (mine.image, mine.inject_agent, mine.command) == ("with-agent:user/image:1", True, ())


@pytest.mark.parametrize(("profile", "says"), [
    ({"package": "pypi:foo", "image": "python-servers"}, "names no `image`, `remote` or `inject_agent`"),
    ({"package": "pypi:foo", "inject_agent": True}, "names no `image`, `remote` or `inject_agent`"),
    ({"package": "cargo:foo"}, "ECOSYSTEM pypi or npm"),
    ({"package": "npm:x@^1"}, "not an exact version"),
    ({"image": "pypi:foo==1", "command": ["x"]}, "a registry package goes in `package:`"),
    ({"inject_agent": True, "command": ["x"]}, "`inject_agent: true` adds the agent to an `image`"),
])  # fmt: skip
def test_bad_package_profiles_are_refused_at_load(tmp_path: Path, profile: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("^", r"\^")):
        _settings(tmp_path, {"p": profile})


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="mcp-runner")
    add_images_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_images_add_usage_errors(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing is built for a bad spec")

    monkeypatch.setattr(image_packages, "ensure_package", never)
    assert _main(["images", "add", "cargo:foo"]) == 2
    assert "is not a package spec" in capsys.readouterr().err
    assert _main(["images", "add", "npm:x@latest"]) == 2


def test_images_add_prints_the_ref_and_a_pinned_profile(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    made = image_packages.PackageImage("mcp-runner/npm-x:123456789abc", PackageSpec("npm", "x", "2.0.1"), "x")
    monkeypatch.setattr(image_packages, "ensure_package", lambda spec, log, force=False: made)
    assert _main(["images", "add", "-q", "npm:x", "--profile", "ex"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "mcp-runner/npm-x:123456789abc"
    assert '  ex:\n    package: "npm:x@2.0.1"' in out

    def failing(spec: object, log: object, force: bool = False) -> None:
        raise ImageBuildError("npm:x: npm has no such package")

    monkeypatch.setattr(image_packages, "ensure_package", failing)
    assert _main(["images", "add", "-q", "npm:x"]) == 1
    assert "npm has no such package" in capsys.readouterr().err


def test_the_containerd_socket_is_looked_for_near_the_top_only() -> None:
    """containerd's state tree (a directory per running container, coming and going) is never walked."""
    import socket
    import tempfile

    from runner.image_transfer import ImageTransferError, find_containerd_socket

    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # a socket's path has at most 107 bytes
        run_dir = Path(short)
        deep = run_dir / "c" / "state" / "task" / "k8s.io" / "containerd.sock"
        deep.parent.mkdir(parents=True)
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(deep))
            with pytest.raises(ImageTransferError, match="no containerd socket under"):
                find_containerd_socket(run_dir)


@pytest.mark.parametrize(("raised", "says", "not_said"), [
    (FileNotFoundError(2, "No such file or directory", "docker"), "and there is none (No such file or directory)",
     "MCP_RUNNER_CACHE_DIR"),
    (PermissionError(13, "Permission denied", "/opt/service/.cache/build"),
     "could not be built here: Permission denied (/opt/service/.cache/build); images are built under ",
     "there is none"),
])  # fmt: skip
def test_an_image_that_cannot_be_built_says_why(monkeypatch: pytest.MonkeyPatch, raised: OSError, says: str,
                                               not_said: str) -> None:
    def fail(image: str, log: object) -> str:
        raise raised

    monkeypatch.setattr(image_profiles, "ensure_injected", fail)
    profile = Profile("mine", "with-agent:user/image:1", ("srv",))
    with pytest.raises(FailedPrecondition) as caught:
        image_profiles.ensure_profile_images([profile], print, print)
    assert caught.value.message.startswith("profile 'mine': its image with-agent:user/image:1 ")
    assert says in caught.value.message and not_said not in caught.value.message


def test_the_build_cache_is_where_mcp_runner_cache_dir_says(tmp_path: Path) -> None:
    code = "from runner.images import CACHE_DIR, REPO_ROOT; print(CACHE_DIR, CACHE_DIR == REPO_ROOT / '.cache')"
    env = {k: v for k, v in os.environ.items() if k != "MCP_RUNNER_CACHE_DIR"}
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert default.stdout.split()[-1] == "True"
    moved = subprocess.run([sys.executable, "-c", code], env={**env, "MCP_RUNNER_CACHE_DIR": str(tmp_path)},
                           capture_output=True, text=True, check=True)
    assert moved.stdout.split() == [str(tmp_path), "False"]
