"""``mcp-runner config check`` and start-up's checks: did-you-mean at every level, mounts, images, workspace."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from runner.cli import main
from runner.config import ConfigError, Limits, Mount, Profile, Settings
from runner.config_check import Problem, check_config, refuse_problems, settings_problems
from runner.did_you_mean import allowed_keys, closest
from runner.sandbox.kube_objects import AGENT_ENTRYPOINT
from runner.settings_file import _FileModel, load_settings


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def never_asked(ref: str) -> bool | None:
    raise AssertionError(f"the engine was asked about {ref}")


P = "profiles:\n  p:\n    image: python-servers\n    command: [c]\n"


@pytest.mark.parametrize(
    ("text", "where", "meant"),
    [
        ("mcp_htp: {}\n", "mcp_htp", "mcp_http"),
        ("lsiten: 127.0.0.1:1\n", "lsiten", "listen"),
        (P + "    mount: []\n", "profiles.p.mount", "mounts"),
        (P + "    limits: {memroy: 64m}\n", "profiles.p.limits.memroy", "memory"),
        (P + "    mounts: [{source: d, target: /d, writeable: true}]\n", "profiles.p.mounts.0.writeable", "writable"),
        (P + "    network: {egress: [a.example:443], upstreem: x}\n", "profiles.p.network.upstreem", "upstream"),
        (P + "    network: {egress: [{host: a.example, port: 1, privat: true}]}\n",
         "profiles.p.network.egress.0.privat", "private"),
        (P + "    sanitize: {injektion: flag}\n", "profiles.p.sanitize.injektion", "injection"),
        (P + "    secrets: {A: {enf: X}}\n", "profiles.p.secrets.A.enf", "env"),
        (P + "    workspce: 64m\n", "profiles.p.workspce", "workspace"),
        ("audit: {retension: 1d}\n", "audit.retension", "retention"),
        ("tls: {cert: a, key: b, client_cs: c}\n", "tls.client_cs", "client_ca"),
    ],
)
def test_an_unknown_key_names_the_key_meant_at_every_level(tmp_path: Path, text: str, where: str, meant: str) -> None:
    report = check_config(write(tmp_path, text), images=never_asked)
    expected = f"{where}: Extra inputs are not permitted (unknown key); did you mean `{meant}`?"
    assert expected in [f"{p.where}: {p.message}" for p in report.problems]
    with pytest.raises(ConfigError) as caught:  # serve reads the file the same way, with the same words
        load_settings(write(tmp_path, text))
    assert expected in caught.value.message


def test_an_unknown_key_far_from_any_lists_the_keys_there(tmp_path: Path) -> None:
    report = check_config(write(tmp_path, P + "    limits: {zzzzzz: 1}\n"), images=never_asked)
    (problem,) = report.problems
    assert problem.where == "profiles.p.limits.zzzzzz"
    assert "the keys here are: call_timeout_s, cpus, idle_timeout_s" in problem.message


def test_allowed_keys_follow_mappings_lists_and_optionals() -> None:
    assert "mounts" in allowed_keys(_FileModel, ["profiles", "any-name"])
    assert "writable" in allowed_keys(_FileModel, ["profiles", "x", "mounts", 3])
    assert "client_ca" in allowed_keys(_FileModel, ["tls"])  # tls: _TlsModel | None
    assert allowed_keys(_FileModel, ["profiles", "x", "command", 0]) == []  # a string: no keys
    assert allowed_keys(_FileModel, ["nonsense"]) == []
    assert closest("Mounts", ["mounts", "image"]) == "mounts" and closest("qqq", ["mounts"]) is None


def test_every_schema_problem_is_listed_each_with_its_key_path(tmp_path: Path) -> None:
    path = write(tmp_path, P + "    imag: x\n    limits: {cpus: 0}\nbogus: 1\n")
    report = check_config(path, images=never_asked)
    assert not report.ok and report.settings is None
    assert {p.where for p in report.problems} == {"profiles.p.imag", "profiles.p.limits.cpus", "bogus"}
    assert all(p.file == str(path) for p in report.problems)


def test_a_file_that_cannot_be_read_or_parsed_is_one_problem(tmp_path: Path) -> None:
    missing = check_config(tmp_path / "none.yaml", images=never_asked)
    assert [p.message for p in missing.problems] == [f"cannot read settings file {tmp_path / 'none.yaml'}: "
                                                     "No such file or directory"]
    broken = check_config(write(tmp_path, "profiles: [1,\n"), images=never_asked)
    assert "is not valid YAML" in broken.problems[0].message


def test_a_missing_mount_source_is_a_problem_naming_the_path_and_why(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    path = write(tmp_path, P + "    mounts: [{source: data, target: /d}, {source: dtaa, target: /e}]\n")
    report = check_config(path, images=never_asked)
    (problem,) = report.problems
    assert problem.where == "profiles.p.mounts.1.source"
    assert f"{tmp_path / 'dtaa'} does not exist" in problem.message and "empty directory" in problem.message


def test_a_writable_mount_the_sandbox_user_cannot_write_is_noted(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir(mode=0o755)
    report = check_config(write(tmp_path, P + "    mounts: [{source: data, target: /d, writable: true}]\n"),
                          images=never_asked)
    assert report.ok
    assert any("uid 10001 cannot write" in note or "(uid 10001) cannot write" in note for note in report.notes)


def test_images_the_runner_builds_are_never_asked_about_and_others_must_be_present(tmp_path: Path) -> None:
    asked: list[str] = []

    def probe(ref: str) -> bool | None:
        asked.append(ref)
        return ref == "here:1"

    path = write(tmp_path, """\
        profiles:
          a: {image: here:1, command: [c]}
          b: {image: gone:2, command: [c]}
          c: {image: node-servers, command: [c]}
    """)
    report = check_config(path, images=probe)
    assert sorted(asked) == ["gone:2", "here:1"]
    (problem,) = report.problems
    assert problem.where == "profiles.b.image" and "'gone:2' is not on this machine" in problem.message


AGENT = {"Labels": {"mcp-runner.image": "python-servers"}, "Entrypoint": list(AGENT_ENTRYPOINT)}


def test_a_present_images_agent_and_an_inject_bases_onbuild_are_checked(tmp_path: Path) -> None:
    configs: dict[str, dict[str, object]] = {
        "plain:1": {"Labels": {}, "Entrypoint": ["/srv"]},
        "replaced:1": {**AGENT, "Entrypoint": ["/srv/server"]},
        "triggers:1": {"OnBuild": ["RUN id", "ADD http://127.0.0.1:9/x /x"]},
        "fine:1": {"Entrypoint": ["/srv"]},
        "ours:1": AGENT,
    }
    path = write(tmp_path, """\
        profiles:
          a: {image: plain:1, command: [c]}
          b: {image: replaced:1, command: [c]}
          c: {image: triggers:1, inject_agent: true}
          d: {image: fine:1, inject_agent: true}
          e: {image: ours:1, command: [c]}
    """)
    report = check_config(path, images=configs.get)
    (problem,) = report.problems
    assert problem.where == "profiles.c.image"
    assert "image 'triggers:1' has ONBUILD triggers (RUN id; ADD http://127.0.0.1:9/x /x)" in problem.message
    notes = [n for n in report.notes if ".image: " in n]
    assert notes == [
        "profiles.a.image: image plain:1 has no mcp-runner agent: build it with `mcp-runner images add` or set "
        "`inject_agent: true` on its profile; its sessions will not open",
        notes[1],
    ]
    assert notes[1].startswith("profiles.b.image: image replaced:1 has no mcp-runner agent at its ENTRYPOINT: ")


def test_an_engine_that_cannot_answer_is_not_a_problem(tmp_path: Path) -> None:
    report = check_config(write(tmp_path, P.replace("python-servers", "mine:1")), images=lambda _: None)
    assert report.ok


def test_a_workspace_that_does_not_fit_in_memory_or_a_mount_inside_it_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    path = write(tmp_path, P + "    workspace: 600m\n    mounts: [{source: d, target: /workspace/in}]\n")
    report = check_config(path, images=never_asked)
    assert {p.where for p in report.problems} == {"profiles.p.workspace", "profiles.p.mounts.0.target"}
    fits = check_config(write(tmp_path, P + "    workspace: 64m\n"), images=never_asked)
    assert fits.ok and fits.settings is not None and fits.settings.profiles["p"].limits.workspace_bytes == 64 * 1024**2


def test_policy_tls_and_listen_problems_are_found_too(tmp_path: Path) -> None:
    write(tmp_path, "callers: {alice: {rolez: []}}\n", "policy.yaml")
    path = write(tmp_path, "policy: policy.yaml\nlisten: 0.0.0.0:1\ntls: {cert: c.pem, key: k.pem}\n")
    report = check_config(path, images=never_asked)
    found = {(Path(p.file).name, p.where) for p in report.problems}
    expected = {("s.yaml", "tls.cert"), ("s.yaml", "tls.key"), ("", "listen"), ("policy.yaml", "callers.alice.rolez")}
    assert expected <= found
    policy_problem = next(p for p in report.problems if p.file.endswith("policy.yaml"))
    assert policy_problem.message.endswith("(unknown key); did you mean `roles`?")


def test_a_policy_file_given_alone_is_checked_as_the_policy_it_is(tmp_path: Path) -> None:
    good = write(tmp_path, "callers:\n  alice: {roles: [admin]}\n  bob: {}\n", "policy.yaml")
    report = check_config(good, images=never_asked)
    assert report.ok and report.summary() == "policy file, 2 caller(s)"
    assert any("is a policy file" in note and "`policy: policy.yaml`" in note for note in report.notes)
    bad = check_config(write(tmp_path, "approvals: {timeout: 3}\n", "p2.yaml"), images=never_asked)
    assert [(p.where, p.message) for p in bad.problems] == [
        ("approvals.timeout", "Extra inputs are not permitted (unknown key); did you mean `timeout_s`?")
    ]
    assert bad.summary() == "1 problem(s)"


def test_the_built_in_settings_are_fine_and_the_fetch_profile_explains_its_missing_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MCP_RUNNER_CONFIG", raising=False)
    report = check_config(None, images=never_asked)
    assert report.ok, report.problems
    assert report.summary().startswith("6 profiles, listen 127.0.0.1:50051, mcp door 127.0.0.1:50052")
    assert any("'fetch' has no network" in note and "egress" in note for note in report.notes)
    assert "allowlist" in load_settings(None).profiles["fetch"].description


def test_on_kubernetes_mount_sources_are_node_paths_not_checked_here(tmp_path: Path) -> None:
    path = write(tmp_path, P + "    mounts: [{source: nowhere, target: /d}]\n")
    report = check_config(path, backend="kubernetes")
    assert report.ok and any("not checked" in note for note in report.notes)


def test_start_up_refuses_with_one_line_per_problem(tmp_path: Path) -> None:
    profile = Profile(name="p", image="python-servers", command=("c",),
                      mounts=(Mount(str(tmp_path / "a"), "/a"), Mount(str(tmp_path / "b"), "/b")))
    settings = Settings(profiles={"p": profile}, config_file=tmp_path / "s.yaml")
    with pytest.raises(ConfigError) as caught:
        refuse_problems(settings)
    lines = caught.value.message.splitlines()
    assert lines[0].startswith("2 problem(s) in the configuration")
    assert lines[1] == f"  {tmp_path / 's.yaml'}: profiles.p.mounts.0.source: {tmp_path / 'a'} does not exist " \
        "(No such file or directory); create it or fix the path (a relative source is relative to the settings " \
        "file's directory). Docker would bind an empty directory in its place"
    refuse_problems(Settings(profiles={"p": Profile(name="p", image="node-servers", command=("c",))}))


def test_settings_problems_without_an_image_probe_skip_images() -> None:
    settings = Settings(profiles={"p": Profile(name="p", image="mine:1", command=("c",), limits=Limits())})
    assert settings_problems(settings, None) == ([], [])
    assert Problem("", "listen", "m").line() == "listen: m"


def test_the_cli_exits_0_when_fine_1_with_problems_2_for_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("runner.config_check.docker_image_probe", lambda: None)
    good = write(tmp_path, P, "good.yaml")
    assert main(["config", "check", str(good)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("ok: 7 profiles, listen 127.0.0.1:50051")
    bad = write(tmp_path, P + "    mount: []\n", "bad.yaml")
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    said = "profiles.p.mount: Extra inputs are not permitted (unknown key); did you mean `mounts`?"
    assert f"error: {bad}: {said}" in err
    assert main(["config", "check", "--json", str(bad)]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False and document["problems"][0]["where"] == "profiles.p.mount"
    with pytest.raises(SystemExit) as usage:
        main(["config", "check", "--bogus"])
    assert usage.value.code == 2
    monkeypatch.setenv("MCP_RUNNER_CONFIG", str(bad))  # what serve would read
    assert main(["config", "check"]) == 1


def test_a_pool_naming_a_profile_not_there_names_the_one_meant(tmp_path: Path) -> None:
    report = check_config(write(tmp_path, "pool: {tme: 1}\n"), images=never_asked)
    (problem,) = report.problems
    assert problem.message.startswith("pool: no profile named 'tme'") and problem.message.endswith(
        "did you mean `time`?"
    )


def test_a_mount_source_that_is_neither_file_nor_directory_or_cannot_be_looked_at_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    report = check_config(write(tmp_path, P + f"    mounts: [{{source: {fifo}, target: /p}}]\n"), images=never_asked)
    assert [p.message for p in report.problems] == [f"{fifo} is neither a directory nor a file; mount one of those"]

    def denied(path: object, *args: object, **kwargs: object) -> os.stat_result:
        raise PermissionError(13, "Permission denied")

    path = write(tmp_path, P + "    mounts: [{source: secret, target: /s}]\n")
    settings = load_settings(path)
    monkeypatch.setattr("runner.config_check.os.stat", denied)
    problems, _ = settings_problems(settings, None)
    assert [p.message for p in problems] == [f"{tmp_path / 'secret'} cannot be looked at (Permission denied); fix "
                                             "its path or the permissions of the directories above it"]


@pytest.mark.parametrize("text, policy", [
    ("callers: {}\n", True), ("caler: {}\ndefault_caller: {profiles: []}\n", True), ("calers: {}\n", True),
    ("profiles: {}\n", False), ("profils: {}\nlisten: 127.0.0.1:1\n", False), ("callers: {}\nlisten: x:1\n", False),
    ("lisen: 127.0.0.1:1\n", False), ("{}\n", False),
])  # fmt: skip
def test_a_document_is_checked_as_a_policy_when_its_own_keys_or_the_keys_meant_say_so(
    tmp_path: Path, text: str, policy: bool
) -> None:
    report = check_config(write(tmp_path, text), images=never_asked)
    assert any("is a policy file" in note for note in report.notes) == policy
