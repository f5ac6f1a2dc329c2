"""Moving images to a cluster: the exact commands, with a fake command runner (no Docker, containerd or registry).

A real registry cannot be tested here (no registry image exists offline), so `images push` is checked only by the
command lines it runs; `images load --kubernetes` runs for real in tests/integration/test_kubernetes_deploy.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from runner import cli, image_profiles, image_transfer
from runner.image_transfer import (
    CLUSTER_IMAGE_NAMES,
    ImageTransferError,
    containerd_name,
    find_containerd_socket,
    load_into_containerd,
    push_to_registry,
    registry_ref,
)

REFS = {name: f"mcp-runner/{name}:{i:012x}" for i, name in enumerate(CLUSTER_IMAGE_NAMES, start=1)}


class FakeCommands:
    """Records every command; ``ctr images list`` answers what was imported so far."""

    def __init__(self, held: Sequence[str] = (), fail: str | None = None) -> None:
        self.held = set(held)
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail

    def output(self, argv: Sequence[str], step: str) -> str:
        self.calls.append(tuple(argv))
        if self.fail and self.fail in argv:
            raise ImageTransferError(f"{step} failed (exit 1): {' '.join(argv)}")
        return "\n".join(sorted(self.held)) + "\n" if "list" in argv else ""

    def pipe(self, producer: Sequence[str], consumer: Sequence[str], step: str) -> str:
        self.calls.append((*producer, "|", *consumer))
        self.held.add(containerd_name(producer[-1]))
        return f"unpacking {containerd_name(producer[-1])} (sha256:...)...done\n"


def fake_ensure(asked: list[tuple[str, ...]]) -> Any:
    def ensure(names: Sequence[str], **_: object) -> dict[str, str]:
        asked.append(tuple(names))
        return {n: REFS[n] for n in names}

    return ensure


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[Path]:
    """A real unix socket, as containerd's would be."""
    path = tmp_path / "containerd" / "containerd.sock"
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        yield path


def test_load_imports_what_containerd_lacks_streaming(sock: Path) -> None:
    commands = FakeCommands(held=[containerd_name(REFS["egress"])])
    asked: list[tuple[str, ...]] = []
    logs: list[str] = []
    out = load_into_containerd(sock, log=logs.append, commands=commands, ensure=fake_ensure(asked), ctr="/usr/bin/ctr")
    assert out == REFS
    assert asked == [CLUSTER_IMAGE_NAMES]  # built first; the root filesystem is not a cluster image
    ctr = ("/usr/bin/ctr", "--address", str(sock), "--namespace", "k8s.io")
    listing = (*ctr, "images", "list", "--quiet")
    loads = [(*("docker", "save", REFS[n]), "|", *ctr, "images", "import", "-") for n in
             ("python-servers", "node-servers", "service")]
    assert commands.calls == [listing, *loads, listing]
    assert any(REFS["egress"] in line and "is in the cluster" in line for line in logs)
    assert any(line.startswith("  [ctr] unpacking") for line in logs)


def test_load_twice_imports_nothing_the_second_time(sock: Path) -> None:
    commands = FakeCommands()
    load_into_containerd(sock, log=lambda _: None, commands=commands, ensure=fake_ensure([]), ctr="ctr")
    commands.calls.clear()
    load_into_containerd(sock, log=lambda _: None, commands=commands, ensure=fake_ensure([]), ctr="ctr")
    assert all("import" not in call for call in commands.calls)


def test_load_says_when_containerd_does_not_list_an_import(sock: Path) -> None:
    class Forgetful(FakeCommands):
        def pipe(self, producer: Sequence[str], consumer: Sequence[str], step: str) -> str:
            self.calls.append((*producer, "|", *consumer))
            return ""

    with pytest.raises(ImageTransferError, match=r"not listed by containerd.*docker\.io/mcp-runner/python-servers"):
        load_into_containerd(sock, log=lambda _: None, commands=Forgetful(), ensure=fake_ensure([]), ctr="ctr")


def test_load_without_ctr_or_socket_says_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ImageTransferError, match=r"`ctr`.*not on PATH.*make kubernetes"):
        load_into_containerd(tmp_path / "x.sock", commands=FakeCommands(), ensure=fake_ensure([]))
    not_a_socket = tmp_path / "containerd.sock"
    not_a_socket.write_text("")
    with pytest.raises(ImageTransferError, match=r"not a socket.*make kubernetes"):
        load_into_containerd(not_a_socket, commands=FakeCommands(), ensure=fake_ensure([]), ctr="ctr")


def test_socket_discovery(tmp_path: Path, sock: Path) -> None:
    with pytest.raises(ImageTransferError, match=r"not up.*make kubernetes"):
        find_containerd_socket(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageTransferError, match=r"no containerd socket under .*--containerd-socket"):
        find_containerd_socket(tmp_path / "empty")
    assert find_containerd_socket(sock.parent.parent) == sock


def test_containerd_names_follow_docker_normalisation() -> None:
    assert containerd_name("mcp-runner/egress:abc") == "docker.io/mcp-runner/egress:abc"
    assert containerd_name("busybox:1") == "docker.io/library/busybox:1"
    assert containerd_name("registry.local:5000/x/y:1") == "registry.local:5000/x/y:1"
    assert containerd_name("localhost/y:1") == "localhost/y:1"


def test_push_tags_and_pushes_each_cluster_image() -> None:
    commands = FakeCommands()
    asked: list[tuple[str, ...]] = []
    out = push_to_registry("registry.example:5000/team/", log=lambda _: None, commands=commands,
                           ensure=fake_ensure(asked))
    assert asked == [CLUSTER_IMAGE_NAMES]
    expected = {n: f"registry.example:5000/team/{n}:{REFS[n].split(':')[1]}" for n in CLUSTER_IMAGE_NAMES}
    assert out == expected
    assert commands.calls == [
        call for n in CLUSTER_IMAGE_NAMES
        for call in (("docker", "tag", REFS[n], expected[n]), ("docker", "push", expected[n]))
    ]


def test_push_refuses_a_url_and_stops_at_the_first_failure() -> None:
    with pytest.raises(ImageTransferError, match="HOST"):
        push_to_registry("https://registry.example", commands=FakeCommands(), ensure=fake_ensure([]))
    commands = FakeCommands(fail="push")
    with pytest.raises(ImageTransferError, match="docker push"):
        push_to_registry("r.example", log=lambda _: None, commands=commands, ensure=fake_ensure([]))
    assert [c[1] for c in commands.calls] == ["tag", "push"]


def test_registry_ref() -> None:
    assert registry_ref("r:5000/p", "mcp-runner/service:0123456789ab") == "r:5000/p/service:0123456789ab"


def test_real_pipe_streams_and_reports_the_failing_side(tmp_path: Path) -> None:
    run = image_transfer.Subprocesses()
    assert run.pipe(["printf", "a\\nb\\n"], ["wc", "-l"], "count").strip() == "2"
    with pytest.raises(ImageTransferError, match=r"save failed \(exit 3\): sh -c"):
        run.pipe(["sh", "-c", "echo boom >&2; exit 3"], ["cat"], "save")
    with pytest.raises(ImageTransferError, match="not installed"):
        run.output([str(tmp_path / "nope")], "x")


def test_cli_load_and_push(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, object] = {}
    added = {"pypi:foo==1.0": "mcp-runner/pypi-foo:123456789abc"}
    monkeypatch.setattr(image_profiles, "added_images", lambda: added)
    monkeypatch.setattr(image_transfer, "load_into_containerd",
                        lambda s, added: seen.setdefault("load", (s, added)) and REFS)
    monkeypatch.setattr(image_transfer, "push_to_registry",
                        lambda r, added: seen.setdefault("push", (r, added)) and REFS)
    assert cli.main(["images", "load"]) == 2
    assert "--kubernetes" in capsys.readouterr().err
    assert cli.main(["images", "load", "--kubernetes", "--containerd-socket", "/run/x.sock"]) == 0
    assert cli.main(["images", "push"]) == 2
    assert cli.main(["images", "push", "--registry", "r.example/p"]) == 0
    assert seen == {"load": (Path("/run/x.sock"), added), "push": ("r.example/p", added)}

    def broken(_: object, added: object) -> dict[str, str]:
        raise ImageTransferError("no containerd socket: run `make kubernetes`")

    monkeypatch.setattr(image_transfer, "load_into_containerd", broken)
    capsys.readouterr()
    assert cli.main(["images", "load", "--kubernetes"]) == 2
    assert "make kubernetes" in capsys.readouterr().err
