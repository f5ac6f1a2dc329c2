"""A profile's ``roots:`` key: sandbox paths and file:// URIs made URIs, bad ones refused naming the field; the
built-in filesystem profile answers with its allowed directory."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner.config import ConfigError
from runner.roots import MAX_ROOTS, profile_roots, root_uri, roots_result
from runner.settings_file import load_settings


def _settings(tmp_path: Path, roots: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(textwrap.dedent(f"""
        profiles:
          files:
            image: node-servers
            command: [mcp-server-filesystem, /data]
            {roots}
    """), encoding="utf-8")  # fmt: skip
    return path


def test_the_builtin_filesystem_profile_answers_with_its_allowed_directory() -> None:
    profiles = load_settings(None).profiles
    filesystem = profiles["filesystem"]
    assert filesystem.command[-1] == "/tmp" and filesystem.roots == ("file:///tmp",)
    assert all(profiles[name].roots is None for name in ("time", "everything", "git"))  # their callers are asked


@pytest.mark.parametrize(
    ("line", "roots"),
    [
        ("", None),  # absent: the caller is asked
        ("roots: []", ()),  # an empty list, answered by the runner
        (
            "roots: [/data, 'file:///srv/my docs/', 'file://localhost/opt', /data/]",
            ("file:///data", "file:///srv/my%20docs", "file:///opt"),
        ),
    ],
)
def test_roots_are_read_as_uris(tmp_path: Path, line: str, roots: tuple[str, ...] | None) -> None:
    assert load_settings(_settings(tmp_path, line)).profiles["files"].roots == roots


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("roots: [/data, 'https://example.test/data']", "entry 1: root 'https://example.test/data' is neither"),
        ("roots: [data]", "is neither a file:// URI nor an absolute sandbox path"),
        ("roots: ['file://host/data']", "no host, query or fragment"),
        ("roots: ['file:///data?x=1']", "no host, query or fragment"),
        ("roots: ['file:///data/../etc']", "without '.' or '..'"),
        ("roots: [/data/..]", "without '.' or '..'"),
        ("roots: ['file:///data/%2e%2e']", "without '.' or '..'"),
        ('roots: ["/da\\tta"]', "control character"),  # a tab, as YAML reads it
        ("roots: /data", "roots: Input should be a valid list"),
        ("roots: [1]", "roots.0: Input should be a valid string"),
    ],
)
def test_bad_roots_are_refused_naming_the_field(tmp_path: Path, line: str, said: str) -> None:
    path = _settings(tmp_path, line)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(path) in caught.value.message and "profiles.files.roots" in caught.value.message
    assert said in caught.value.message


def test_roots_are_bounded_and_each_named_once() -> None:
    assert profile_roots(["/a", "file:///a", "/b"]) == ("file:///a", "file:///b")
    with pytest.raises(ValueError, match=f"at most {MAX_ROOTS} roots"):
        profile_roots([f"/d{i}" for i in range(MAX_ROOTS + 1)])
    assert root_uri("/") == "file:///" and root_uri("//x//y/") == "file:///x/y"


def test_the_answer_is_a_list_roots_result() -> None:
    import mcp_types

    answer = roots_result(("file:///tmp", "file:///srv/my%20docs"))
    parsed = mcp_types.ListRootsResult.model_validate(answer)
    assert [str(root.uri) for root in parsed.roots] == ["file:///tmp", "file:///srv/my%20docs"]
