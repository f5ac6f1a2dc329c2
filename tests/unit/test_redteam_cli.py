"""Red team (issue 15, R2): the CLI's options and exit codes, and ``config check`` on hostile files, without a service.

Each defect found is a strict xfail whose reason starts with DEFECT: it fails today and passes once fixed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.cli import build_parser, main
from runner.config_check import check_config

PROFILE = textwrap.dedent("""\
    builtin_profiles: false
    profiles:
      p:
        image: python-servers
        command: [x]
""")


def settings_with(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(PROFILE + textwrap.indent(textwrap.dedent(extra), "    "))
    return path


def checked_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code = main(argv)
    out = capsys.readouterr()
    document = json.loads(out.out)  # one JSON document, whatever went wrong
    assert isinstance(document, dict)
    return code, document


@pytest.mark.parametrize("argv, address", [
    (["--address", "127.0.0.1:2", "sessions", "--address", "127.0.0.1:3"], "127.0.0.1:3"),
    (["sessions", "--address", "127.0.0.1:2", "--address", "127.0.0.1:3"], "127.0.0.1:3"),
    (["session", "call", "ID", "tool", "{}", "--address", "127.0.0.1:3", "--json"], "127.0.0.1:3"),
    (["shell", "time", "--json", "--address", "127.0.0.1:3"], "127.0.0.1:3"),
    (["--address", "127.0.0.1:3", "logs", "ID", "--follow"], "127.0.0.1:3"),
])  # fmt: skip
def test_connection_options_anywhere_the_last_one_wins(
    argv: list[str], address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_RUNNER_ADDRESS", "127.0.0.1:9")
    assert build_parser().parse_args(argv).address == address


def test_an_option_after_double_dash_is_an_argument_and_local_commands_refuse_connection_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parsed = build_parser().parse_args(["logs", "--", "--address"])
    assert parsed.session_id == "--address"
    with pytest.raises(SystemExit) as refused:
        main(["config", "check", "--address", "127.0.0.1:3"])
    assert refused.value.code == 2
    assert "unrecognized arguments: --address" in capsys.readouterr().err


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:abc"])
def test_an_address_whose_port_is_not_a_port_is_a_usage_error(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sessions", "--address", address])
    err = capsys.readouterr().err
    assert code == 2 and "port" in err


@pytest.mark.parametrize("size, said", [
    ("0", "between 1m and 1g"), ("-1", "between 1m and 1g"), ("64x", "not a size: '64x'"),
    ("2g", "between 1m and 1g"), ("0.5m", "between 1m and 1g"), ("nan", "not a size"),
    ("99999999999999999999g", "between 1m and 1g"), ("1e3m", "not a size"),
])  # fmt: skip
def test_a_workspace_size_out_of_bounds_is_one_problem_at_its_key(
    size: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = settings_with(tmp_path, f"workspace: {size}\n")
    code, document = checked_json(["config", "check", str(path), "--json"], capsys)
    assert code == 1 and document["ok"] is False
    problems = document["problems"]
    assert isinstance(problems, list) and len(problems) == 1
    assert problems[0]["where"] == "profiles.p.workspace" and said in problems[0]["message"]


def _bomb(path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path.write_text("\n".join(lines) + "\nprofiles: {p: {command: *a8}}\n")


@pytest.mark.parametrize("make, said", [
    (lambda p: p.mkdir(), "Is a directory"),
    (lambda p: p.write_bytes(b"listen: \"\xff\xfe\"\n"), "not UTF-8"),
    (lambda p: None, "No such file or directory"),
    (_bomb, "Extra inputs are not permitted"),
    (lambda p: p.write_text("[" * 200_000), "not valid YAML"),
    (lambda p: p.write_text("- a\n- b\n"), "the top level must be a mapping"),
    (lambda p: p.write_text("a: 1\na: 2\n"), "found key 'a' twice"),
])  # fmt: skip
def test_config_check_json_is_one_document_for_files_that_are_not_settings(
    make: object, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "settings.yaml"
    make(path)  # type: ignore[operator]
    code, document = checked_json(["config", "check", str(path), "--json"], capsys)
    assert code == 1 and document["ok"] is False
    problems = document["problems"]
    assert isinstance(problems, list) and problems and len(problems) <= 20
    text = json.dumps(problems)
    assert said in text and len(text) < 20_000  # a problem names what is wrong; it does not echo the file


def test_a_huge_listen_value_is_refused_as_not_an_address_without_echoing_it_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("listen: '" + "x" * 3_000_000 + "'\n")  # under read_document's 4 MiB cap
    code, document = checked_json(["config", "check", str(path), "--json"], capsys)
    assert code == 1
    text = json.dumps(document["problems"])
    assert "HOST:PORT" in text and len(text) < 20_000


@pytest.mark.parametrize("extra, where, meant", [
    ("mounts: [{source: /, target: /h, writeable: true}]\n", "profiles.p.mounts.0.writeable", "writable"),
    ("limits: {memroy: 256m}\n", "profiles.p.limits.memroy", "memory"),
    ("workspce: 64m\n", "profiles.p.workspce", "workspace"),
])  # fmt: skip
def test_a_typo_at_any_depth_is_a_problem_naming_the_key_meant(
    extra: str, where: str, meant: str, tmp_path: Path
) -> None:
    report = check_config(settings_with(tmp_path, extra), images=lambda ref: True)
    assert [p.where for p in report.problems] == [where]
    assert f"did you mean `{meant}`?" in report.problems[0].message


def test_a_policy_typo_deep_in_a_caller_names_the_key_meant(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("callers:\n  alice:\n    profils: [time]\n")
    report = check_config(policy)
    assert [p.where for p in report.problems] == ["callers.alice.profils"]
    assert "did you mean `profiles`?" in report.problems[0].message


def test_a_relative_mount_source_is_the_settings_files_neighbour_wherever_the_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf" / "data").mkdir(parents=True)
    path = tmp_path / "conf" / "settings.yaml"
    path.write_text(PROFILE + "    mounts: [{source: data, target: /data}]\n")
    monkeypatch.chdir(tmp_path)
    report = check_config(path, images=lambda ref: True)
    assert report.ok, report.problems
    assert report.settings is not None
    assert report.settings.profiles["p"].mounts[0].source == str(tmp_path / "conf" / "data")
    (tmp_path / "conf" / "data").rmdir()
    missing = check_config(path, images=lambda ref: True)
    assert [p.where for p in missing.problems] == ["profiles.p.mounts.0.source"]
    assert str(tmp_path / "conf" / "data") in missing.problems[0].message


def test_a_mount_source_that_is_a_symlink_loop_is_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")
    path = settings_with(tmp_path, f"mounts: [{{source: {tmp_path / 'loop1'}, target: /data}}]\n")
    code, document = checked_json(["config", "check", str(path), "--json"], capsys)
    assert code == 1
    assert [p["where"] for p in document["problems"]] == ["profiles.p.mounts.0.source"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("mount", [
    "{source: 'co:lon', target: /data}", "{source: data, target: '/srv/a:b'}", "{source: data, target: /tmp}",
    "{source: data, target: /}",
])  # fmt: skip
def test_a_mount_docker_cannot_bind_is_a_problem(mount: str, tmp_path: Path) -> None:
    (tmp_path / "co:lon").mkdir()
    (tmp_path / "data").mkdir()
    report = check_config(settings_with(tmp_path, f"mounts: [{mount}]\n"), images=lambda ref: True)
    assert [p.where.rsplit(".", 1)[0] for p in report.problems] == ["profiles.p.mounts.0"]


def test_serve_with_a_bad_settings_file_exits_2_with_one_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = settings_with(tmp_path, "mounts: [{source: /no/such/a, target: /a}, {source: /no/such/b, target: /b}]\n")
    code = main(["serve", "--config", str(path), "--listen", "127.0.0.1:0", "--mcp-listen", ""])
    err = capsys.readouterr().err
    assert "profiles.p.mounts.0.source: /no/such/a does not exist" in err
    assert "profiles.p.mounts.1.source: /no/such/b does not exist" in err
    assert code == 2


def test_config_check_of_an_endless_file_is_one_problem_not_a_memory_error() -> None:
    def capped() -> None:  # a MemoryError here rather than the test machine's memory
        resource.setrlimit(resource.RLIMIT_AS, (1536 * 1024**2, 1536 * 1024**2))

    done = subprocess.run(
        [sys.executable, "-m", "runner.cli", "config", "check", "/dev/zero", "--json"],
        capture_output=True, text=True, timeout=300, preexec_fn=capped,
    )  # fmt: skip
    assert "Traceback" not in done.stderr
    assert done.returncode == 1 and json.loads(done.stdout)["ok"] is False


def test_a_policy_file_with_a_typo_at_the_top_is_still_checked_as_a_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("caler: {}\ndefault_caller: {profiles: []}\n")
    report = check_config(policy)
    assert [p.where for p in report.problems] == ["caler"]
    assert "did you mean `callers`?" in report.problems[0].message


def test_an_empty_address_is_a_usage_error_not_the_default_service(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MCP_RUNNER_ADDRESS", "127.0.0.1:1")
    code = main(["sessions", "--address", ""])
    err = capsys.readouterr().err
    assert code == 2 and "--address" in err and "127.0.0.1:1" not in err


def test_an_argument_that_is_not_utf8_is_a_usage_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["call", "--address", "127.0.0.1:1", "--profile", b"\xff".decode("utf-8", "surrogateescape"), "x"])
    assert code == 2 and "UTF-8" in capsys.readouterr().err
