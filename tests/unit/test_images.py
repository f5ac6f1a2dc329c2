"""Image tags are a pure function of the build inputs (no Docker needed here)."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

from runner import images

REAL_IMAGES_DIR = Path(images.__file__).resolve().parents[1] / "sandbox_images"


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of every input, so tests can edit them; host apt config pinned too."""
    shutil.copytree(REAL_IMAGES_DIR, tmp_path / "sandbox_images")
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "__main__.py").write_text("print('agent')\n")
    (agent / "app.py").write_text("X = 1\n")
    egress = tmp_path / "egress"
    egress.mkdir()
    (egress / "proxy.py").write_text("P = 1\n")
    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\nComponents: main\n")
    monkeypatch.setattr(images, "IMAGES_DIR", tmp_path / "sandbox_images")
    monkeypatch.setattr(images, "AGENT_DIR", agent)
    monkeypatch.setattr(images, "EGRESS_DIR", egress)
    monkeypatch.setattr(images, "APT_SOURCES", (sources,))
    monkeypatch.delenv("BASE_IMAGE", raising=False)
    return tmp_path


def refs() -> dict[str, str]:
    return {n: images.image_ref(n) for n in images.IMAGE_NAMES}


def changed(before: dict[str, str]) -> set[str]:
    after = refs()
    return {n for n in images.IMAGE_NAMES if before[n] != after[n]}


def test_names_and_format(inputs: Path) -> None:
    assert images.IMAGE_NAMES == ("rootfs", "python-servers", "node-servers", "egress")
    for name, ref in refs().items():
        assert re.fullmatch(rf"mcp-runner/{name}:[0-9a-f]{{12}}", ref)


def test_same_inputs_same_tag(inputs: Path) -> None:
    assert refs() == refs()
    assert len(set(refs().values())) == 4


def test_real_repo_inputs_hash_without_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no docker, no mmdebstrap: still computable
    assert images.image_ref("python-servers") == images.image_ref("python-servers")


def test_unknown_name(inputs: Path) -> None:
    with pytest.raises(ValueError, match="known images"):
        images.image_ref("ruby-servers")
    with pytest.raises(ValueError):
        images.missing_images(["nope"])


def test_agent_change_rebuilds_server_images_only(inputs: Path) -> None:
    before = refs()
    (inputs / "agent" / "app.py").write_text("X = 2\n")
    assert changed(before) == {"python-servers", "node-servers"}


def test_egress_code_change_rebuilds_the_egress_image_only(inputs: Path) -> None:
    before = refs()
    (inputs / "egress" / "proxy.py").write_text("P = 2\n")
    assert changed(before) == {"egress"}


def test_new_agent_file_changes_tag_but_non_python_files_do_not(inputs: Path) -> None:
    before = refs()
    (inputs / "agent" / "notes.txt").write_text("not copied, not hashed\n")
    (inputs / "agent" / "__pycache__").mkdir()
    assert changed(before) == set()
    (inputs / "agent" / "extra.py").write_text("")
    assert changed(before) == {"python-servers", "node-servers"}


def test_agent_file_rename_changes_tag(inputs: Path) -> None:
    before = refs()
    (inputs / "agent" / "app.py").rename(inputs / "agent" / "app2.py")
    assert changed(before) == {"python-servers", "node-servers"}


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("rootfs/packages.txt", {"rootfs", "python-servers", "node-servers", "egress"}),  # cascades via FROM
        ("egress/Dockerfile", {"egress"}),
        ("constraints.txt", {"python-servers", "node-servers"}),
        ("agent.txt", {"python-servers", "node-servers"}),
        ("python-servers/servers.txt", {"python-servers"}),
        ("python-servers/Dockerfile", {"python-servers"}),
        ("node-servers/Dockerfile", {"node-servers"}),
        ("node-servers/package.json", {"node-servers"}),
        ("node-servers/package-lock.json", {"node-servers"}),
        ("rootfs/Dockerfile.base", set()),  # only used with BASE_IMAGE
    ],
)
def test_each_input_file_matters(inputs: Path, rel: str, expected: set[str]) -> None:
    before = refs()
    with open(inputs / "sandbox_images" / rel, "a") as f:
        f.write("\n# changed\n")
    assert changed(before) == expected


def test_apt_sources_are_an_input(inputs: Path) -> None:
    before = refs()
    src = images.APT_SOURCES[0]
    src.write_text(src.read_text().replace("bookworm", "bookworm bookworm-updates"))
    assert changed(before) == set(images.IMAGE_NAMES)


def test_base_image_changes_everything(inputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = refs()
    monkeypatch.setenv("BASE_IMAGE", "debian:bookworm-slim")
    with_base = refs()
    assert changed(before) == set(images.IMAGE_NAMES)
    monkeypatch.setenv("BASE_IMAGE", "debian:bookworm-20250520-slim")
    assert changed(with_base) == set(images.IMAGE_NAMES)
    # with BASE_IMAGE the base Dockerfile is an input
    (inputs / "sandbox_images" / "rootfs" / "Dockerfile.base").write_text("FROM x\n")
    third = refs()
    assert third["rootfs"] != with_base["rootfs"]


def test_digest_is_unambiguous() -> None:
    assert images.digest([("a", b"bc")]) != images.digest([("ab", b"c")])
    assert images.digest([("a", b""), ("b", b"")]) != images.digest([("a", b"\0"), ("b", b"")])


def test_pip_targets_the_image_python() -> None:
    t = images.WHEEL_TARGET
    assert "--only-binary=:all:" in t
    for flag, value in [("--python-version", "3.11"), ("--implementation", "cp"), ("--abi", "cp311")]:
        assert t[t.index(flag) + 1] == value
    plats = {t[i + 1] for i, a in enumerate(t) if a == "--platform"}
    assert {"manylinux_2_36_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"} <= plats
    assert not any(p.startswith("manylinux_2_37") for p in plats)  # bookworm's glibc is 2.36


def test_no_mirror_hostname_in_code() -> None:
    src = Path(images.__file__).read_text()
    assert "deb.debian.org" not in src and "http://" not in src


def test_docker_missing_is_actionable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(images.ImageBuildError, match="docker CLI not found"):
        images.ensure_images()


def test_ensure_builds_missing_dependencies_first(inputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "CACHE_DIR", inputs / "cache")
    present = {images.image_ref("python-servers")}
    built: list[str] = []
    monkeypatch.setattr(images, "check_docker", lambda: None)
    monkeypatch.setattr(images, "image_present", lambda ref: ref in present)

    def fake_build(*args: object, **kw: object) -> None:
        ref = str(args[-1])
        built.append(ref.split("/")[1].split(":")[0])
        present.add(ref)

    monkeypatch.setattr(images, "_build_rootfs", lambda ref, **kw: fake_build(ref))
    monkeypatch.setattr(images, "_build_server_image", lambda name, refs, code, **kw: fake_build(refs[name]))
    monkeypatch.setattr(images, "_build_egress_image", lambda refs, code, **kw: fake_build(refs["egress"]))
    logs: list[str] = []
    out = images.ensure_images(["node-servers", "python-servers"], log=logs.append)
    assert built == ["rootfs", "node-servers"]
    assert out == {n: images.image_ref(n) for n in ("node-servers", "python-servers")}
    assert any(line.startswith("building mcp-runner/rootfs:") and "missing" in line for line in logs)
    assert any("python-servers" in line and "present" in line for line in logs)
    assert images.missing_images() == ["egress"]
    images.ensure_images(log=logs.append)
    assert built == ["rootfs", "node-servers", "egress"]
    assert images.missing_images() == []
    assert [p for _, _, p in images.list_images()] == [True, True, True, True]

    built.clear()
    images.ensure_images(["python-servers"], force=True, log=logs.append)
    assert built == ["python-servers"]  # force rebuilds what was named, not its present base


def test_no_module_imports_another_modules_private_names() -> None:
    """A name shared between modules is public: a leading underscore says no other module relies on it."""
    root = Path(images.__file__).resolve().parent
    private = [f"{path.relative_to(root)}: {node.module}.{alias.name}"
               for path in sorted(root.rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("runner")
               for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert private == []
