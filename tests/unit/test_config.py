"""Settings and profiles from YAML/TOML files plus environment."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner.config import DEFAULT_LISTEN, ConfigError, Limits, Mount, parse_size
from runner.config_document import read_document
from runner.settings_file import load_settings

P = "profiles:\n  p:\n    image: i\n"
BUILTINS = {"time", "fetch", "git", "everything", "filesystem", "memory"}
MIB = 1024**2


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MCP_RUNNER_CONFIG", "MCP_RUNNER_LISTEN", "MCP_RUNNER_INSTANCE", "MCP_RUNNER_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)


def problem(error: ConfigError, path: Path) -> str:
    """The message with the file's path cut out (it names the file; tmp paths also contain test names)."""
    assert str(path) in error.message
    return error.message.replace(str(path), "<file>")


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


USER_YAML = """
    listen: "0.0.0.0:7000"
    instance: ci-1
    max_sessions: 4
    max_message_bytes: 64MiB
    profiles:
      mine:
        image: python-servers
        command: [my-server, --flag]
        env: {A: "1"}
        mounts:
          - {source: data, target: /data}
          - {source: /abs/elsewhere, target: /other}
        limits: {memory: 256m, cpus: 0.5, pids: 64}
        description: mine
      time:
        image: registry.example/time:1
        command: [replaced]
"""

USER_TOML = """
    listen = "0.0.0.0:7000"
    instance = "ci-1"
    max_sessions = 4
    max_message_bytes = "64MiB"

    [profiles.mine]
    image = "python-servers"
    command = ["my-server", "--flag"]
    env = { A = "1" }
    mounts = [{ source = "data", target = "/data" }, { source = "/abs/elsewhere", target = "/other" }]
    limits = { memory = "256m", cpus = 0.5, pids = 64 }
    description = "mine"

    [profiles.time]
    image = "registry.example/time:1"
    command = ["replaced"]
"""


def test_builtin_profiles_without_a_file() -> None:
    settings = load_settings()
    assert set(settings.profiles) == BUILTINS
    assert settings.profiles["time"].command == ("mcp-server-time", "--local-timezone", "UTC")
    assert settings.profiles["time"].image == "python-servers"
    assert settings.profiles["git"].env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert settings.profiles["everything"].image == "node-servers"
    assert all(p.limits == Limits() for p in settings.profiles.values())
    assert (settings.listen, settings.instance, settings.max_message_bytes) == (DEFAULT_LISTEN, "default", 4 * MIB)


@pytest.mark.parametrize(("name", "text"), [("runner.yaml", USER_YAML), ("runner.toml", USER_TOML)])
def test_user_file_adds_and_replaces_profiles(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path / "conf", name, text)
    settings = load_settings(path)
    assert set(settings.profiles) == BUILTINS | {"mine"}
    mine = settings.profiles["mine"]
    assert mine.command == ("my-server", "--flag") and dict(mine.env) == {"A": "1"}
    assert mine.mounts == (
        Mount(str((tmp_path / "conf" / "data").resolve()), "/data"),
        Mount("/abs/elsewhere", "/other"),
    )
    assert mine.limits == Limits(memory_bytes=256 * MIB, cpus=0.5, pids=64)
    assert mine.description == "mine"
    assert settings.profiles["time"].image == "registry.example/time:1"
    assert settings.profiles["time"].command == ("replaced",)
    assert settings.profiles["fetch"].command == ("mcp-server-fetch",)
    assert (settings.listen, settings.instance, settings.max_sessions) == ("0.0.0.0:7000", "ci-1", 4)
    assert settings.max_message_bytes == 64 * MIB


def test_relative_mount_resolves_against_file_dir_not_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "a" / "b", "r.yaml", USER_YAML)
    monkeypatch.chdir(tmp_path)
    settings = load_settings("a/b/r.yaml")
    assert settings.profiles["mine"].mounts[0].source == str(path.parent.resolve() / "data")


def test_builtin_profiles_off(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "builtin_profiles: false\n" + textwrap.dedent(USER_YAML))
    assert set(load_settings(path).profiles) == {"mine", "time"}


def test_empty_file_gives_builtins(tmp_path: Path) -> None:
    assert set(load_settings(write(tmp_path, "r.yaml", "")).profiles) == BUILTINS


@pytest.mark.parametrize(
    ("size", "expected"),
    [("256m", 256 * MIB), ("1g", 1024**3), ("64MiB", 64 * MIB), ("4m", 4 * MIB), ("8192k", 8 * MIB),
     ("1.5g", 1536 * MIB), (" 8 mb ", 8 * MIB), (10 * MIB, 10 * MIB)],
)
def test_sizes(tmp_path: Path, size: str | int, expected: int) -> None:
    assert parse_size(size) == expected
    value = f'"{size}"' if isinstance(size, str) else str(size)
    path = write(tmp_path, "r.yaml", f"{P}    command: [c]\n    limits: {{memory: {value}}}\n")
    assert load_settings(path).profiles["p"].limits.memory_bytes == expected


def test_defaults_apply_to_profiles_without_own_limits(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", """
        defaults: {memory: 1g, call_timeout_s: 5, tmpfs: 16m}
        profiles:
          own: {image: i, command: [c], limits: {memory: 128m, cpus: 2}}
          bare: {image: i, command: [c]}
    """)
    profiles = load_settings(path).profiles
    assert profiles["bare"].limits == Limits(memory_bytes=1024**3, call_timeout_s=5.0, tmpfs_bytes=16 * MIB)
    assert profiles["time"].limits == profiles["bare"].limits
    assert profiles["own"].limits == Limits(memory_bytes=128 * MIB, cpus=2.0, call_timeout_s=5.0, tmpfs_bytes=16 * MIB)


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        ("r.yaml", "bogus: 1\n", ["bogus: Extra inputs are not permitted"]),
        ("r.yaml", P + "    command: [c]\n    imag: x\n", ["profiles.p.imag: Extra inputs are not permitted"]),
        ("r.yaml", P + "    command: [c]\n    limits: {memory: lots}\n", ["profiles.p.limits.memory", "not a size"]),
        ("r.yaml", P + "    command: [c]\n    limits: {memory: 1m}\n", ["profiles.p.limits.memory", "at least 4m"]),
        ("r.yaml", "defaults: {tmpfs: 12q}\n", ["defaults.tmpfs", "not a size"]),
        ("r.yaml", P + "    command: [c]\n    limits: {cpus: 0}\n", ["profiles.p.limits.cpus"]),
        ("r.yaml", P + "    command: []\n", ["profiles.p.command", "at least 1 item"]),
        ("r.yaml", P, ["profiles.p: Value error, name exactly one of `command`"]),
        ("r.yaml", P + "    command: [c]\n    mounts: [{source: d, target: data}]\n",
         ["profiles.p.mounts.0.target", "absolute path"]),
        ("r.yaml", P + "    command: [c]\n    mounts: [{source: d, target: /data/../etc}]\n",
         ["profiles.p.mounts.0.target", "without '..'"]),
        ("r.yaml", P + "    command: [c]\n    mounts: [{source: d, target: /opt}]\n",
         ["profiles.p.mounts.0.target", "would cover /opt/agent, the runner's agent"]),
        ("r.yaml", P + "    command: [c]\n    mounts: [{source: d, target: /proc/x}]\n",
         ["profiles.p.mounts.0.target", "would cover /proc"]),
        ("r.yaml", P + "    command: [c]\n    mounts: [{source: d, target: //tmp/.}]\n",
         ["profiles.p.mounts.0.target", "/tmp would cover /tmp, the sandbox's own tmpfs"]),
        ("r.yaml", P + "    command: [c]\n    mounts: [{source: d, target: /d}, {source: e, target: /d/}]\n",
         ["profiles.p.mounts", "two mounts have the target /d"]),
        ("r.yaml", "instance: 'two words'\n", ["instance: String should match pattern"]),
        ("r.yaml", "profiles: [1,\n", ["is not valid YAML"]),
        ("r.toml", "profiles = [1,\n", ["is not valid TOML"]),
        ("r.yaml", "- a\n- b\n", ["the top level must be a mapping"]),
        ("r.yaml", "just a string\n", ["the top level must be a mapping"]),
    ],
)
def test_errors_name_file_and_field(tmp_path: Path, name: str, text: str, fragments: list[str]) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = problem(caught.value, path)
    for fragment in fragments:
        assert fragment in message


def test_mount_targets_are_normalized_and_may_sit_inside_tmp_and_dev(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", P + "    command: [c]\n    mounts: [{source: d, target: /tmp/./x/}, "
                                        "{source: d, target: /dev/fuse}]\n")
    assert [m.target for m in load_settings(path).profiles["p"].mounts] == ["/tmp/x", "/dev/fuse"]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read settings file") as caught:
        load_settings(missing)
    assert str(missing) in caught.value.message and "No such file" in caught.value.message


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "r.yaml", "listen: '1.2.3.4:1'\ninstance: fromfile\n")
    monkeypatch.setenv("MCP_RUNNER_LISTEN", "127.0.0.1:9999")
    monkeypatch.setenv("MCP_RUNNER_INSTANCE", "fromenv")
    settings = load_settings(path)
    assert (settings.listen, settings.instance) == ("127.0.0.1:9999", "fromenv")
    assert load_settings(path, listen="[::]:1234").listen == "[::]:1234"


def test_config_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_RUNNER_CONFIG", str(write(tmp_path, "r.yaml", "builtin_profiles: false\n")))
    assert dict(load_settings().profiles) == {}


def test_bad_max_message_bytes_names_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "max_message_bytes: lots\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "not a size" in problem(caught.value, path)
    assert "max_message_bytes" in problem(caught.value, path)


@pytest.mark.parametrize("value", ["-1", "'0.5'"])
def test_nonpositive_max_message_bytes_rejected(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, "r.yaml", f"max_message_bytes: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "max_message_bytes" in problem(caught.value, path)


@pytest.mark.parametrize("value", ["bad name/x=y", "blue\n", ""])
def test_instance_from_env_is_validated(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # "blue\n" passed the pattern's $ (Python's matches before a final newline) and named the lock and audit files.
    monkeypatch.setenv("MCP_RUNNER_INSTANCE", value)
    with pytest.raises(ConfigError, match="MCP_RUNNER_INSTANCE"):
        load_settings()


def test_audit_defaults_to_one_file_per_instance_in_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MCP_RUNNER_AUDIT_DB", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("MCP_RUNNER_INSTANCE", "blue")
    audit = load_settings().audit
    assert audit.path == tmp_path / "state" / "mcp-runner" / "audit-blue.sqlite3"
    assert audit.enabled and audit.retention_s is None
    assert audit.exports == tmp_path / "state" / "mcp-runner" / "audit-exports"


def test_state_dir_defaults_to_xdg_and_is_settable_by_file_then_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MCP_RUNNER_AUDIT_DB", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert load_settings().state_dir == tmp_path / "xdg" / "mcp-runner"
    path = write(tmp_path / "conf", "s.yaml", "state_dir: st\ninstance: red\n")
    settings = load_settings(path)
    # Relative to the file, like every other path in it; the default audit file follows the state directory.
    assert settings.state_dir == tmp_path / "conf" / "st"
    assert settings.audit.path == tmp_path / "conf" / "st" / "audit-red.sqlite3"
    monkeypatch.setenv("MCP_RUNNER_STATE_DIR", str(tmp_path / "env"))
    assert load_settings(path).state_dir == tmp_path / "env"


def test_audit_paths_resolve_against_the_file_and_durations_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MCP_RUNNER_AUDIT_DB", raising=False)
    path = write(tmp_path, "s.yaml", "audit: {path: logs/a.sqlite3, retention: 12h, export_dir: out}\n")
    audit = load_settings(path).audit
    assert (audit.path, audit.retention_s, audit.exports) == (tmp_path / "logs/a.sqlite3", 43200, tmp_path / "out")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("audit: {retention: 0}\n", "audit.retention: Value error, must be longer than 0 s"),
        ("audit: {retention: soon}\n", "audit.retention: Value error, not a duration: 'soon'"),
        ("audit: {keep: 1}\n", "audit.keep: Extra inputs are not permitted"),
    ],
)
def test_bad_audit_settings_name_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "s.yaml", text))
    assert fragment in caught.value.message


def test_state_and_audit_paths_expand_home_and_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "~/state" made a directory named "~" beside the file; a relative env path depended on the working directory.
    monkeypatch.delenv("MCP_RUNNER_AUDIT_DB", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(
        tmp_path / "conf", "s.yaml",
        "state_dir: ~/st\naudit: {path: ~/a.sqlite3, export_dir: ~/out}\npolicy: ~/p.yaml\n"
        "tls: {cert: ~/c.pem, key: ~/k.pem, client_ca: ~/ca.pem}\n",
    )
    settings = load_settings(path)
    assert settings.policy == tmp_path / "home" / "p.yaml"
    assert settings.tls is not None and settings.tls.client_ca == tmp_path / "home" / "ca.pem"
    assert (settings.tls.cert, settings.tls.key) == (tmp_path / "home" / "c.pem", tmp_path / "home" / "k.pem")
    assert settings.state_dir == tmp_path / "home" / "st"
    assert (settings.audit.path, settings.audit.exports) == (tmp_path / "home" / "a.sqlite3", tmp_path / "home" / "out")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MCP_RUNNER_STATE_DIR", "rel")
    monkeypatch.setenv("MCP_RUNNER_AUDIT_DB", "~/env.sqlite3")
    settings = load_settings(path)
    assert (settings.state_dir, settings.audit.path) == (tmp_path / "rel", tmp_path / "home" / "env.sqlite3")
    monkeypatch.setenv("MCP_RUNNER_STATE_DIR", "")
    assert load_settings(path).state_dir == tmp_path / "home" / "st"


def test_a_relative_xdg_state_home_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")
    assert load_settings().state_dir == tmp_path / ".local" / "state" / "mcp-runner"


def test_a_key_given_twice_is_refused_naming_it(tmp_path: Path) -> None:
    # PyYAML silently kept the later of two blocks; merges ('<<') may still be overridden.
    path = write(tmp_path, "s.yaml", "instance: red\nlisten: 127.0.0.1:1\ninstance: blue\n")
    with pytest.raises(ConfigError, match="found key 'instance' twice"):
        load_settings(path)
    merged = write(tmp_path, "m.yaml", "base: &b {a: 1, b: 2}\nx:\n  <<: *b\n  a: 3\n")
    assert read_document(merged, "settings file")["x"] == {"a": 3, "b": 2}


# -- the warm pool and admission --------------------------------------------------------------------------------------

SERVER = "profiles:\n  p:\n    image: i\n    command: [s]\n"


def test_the_builtin_pool_keeps_one_warm_sandbox_per_builtin_profile() -> None:
    settings = load_settings()
    assert dict(settings.pool) == dict.fromkeys(BUILTINS, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pool: {}\n", {}),  # off
        ("pool: {time: 3, fetch: 0}\n", {"time": 3}),  # replaces the built-in pool whole; 0 means none
        (SERVER + "pool: {p: 2}\n", {"p": 2}),
        ("builtin_profiles: false\n" + SERVER, {}),  # no built-in profiles, no built-in pool
        # A built-in profile the file replaces is the file's own: no warm sandbox unless the file asks.
        (SERVER.replace("  p:", "  time:"), dict.fromkeys(BUILTINS - {"time"}, 1)),
    ],
)
def test_pool_settings(tmp_path: Path, text: str, expected: dict[str, int]) -> None:
    settings = load_settings(write(tmp_path, "s.yaml", text))
    assert dict(settings.pool) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("pool: {nosuch: 1}\n", "pool: no profile named 'nosuch'"),
        ("pool: {time: 65}\n", "pool: sizes must be 0 to 64"),
        ("pool: {time: -1}\n", "pool: sizes must be 0 to 64"),
        ("pool: [time]\n", "pool: Input should be a valid dictionary"),
        ("max_concurrent_boots: 0\n", "max_concurrent_boots: Input should be greater than or equal to 1"),
        ("open_queue_timeout_s: 0\n", "open_queue_timeout_s: Input should be greater than 0"),
    ],
)
def test_bad_pool_and_admission_settings_name_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, "s.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert fragment in problem(caught.value, path)


def test_admission_settings(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "s.yaml", "max_concurrent_boots: 3\nopen_queue_timeout_s: 45\n"))
    assert (settings.max_concurrent_boots, settings.open_queue_timeout_s) == (3, 45)
    default = load_settings()
    assert default.max_concurrent_boots >= 2 and default.open_queue_timeout_s == 300


@pytest.fixture
def no_backend_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MCP_RUNNER_BACKEND", "MCP_RUNNER_KUBECONFIG", "MCP_RUNNER_NAMESPACE", "MCP_RUNNER_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_backend_env")
def test_the_backend_is_docker_unless_chosen_and_kubernetes_defaults_to_the_test_cluster(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.backend == "docker"
    assert settings.kubernetes.kubeconfig == Path("~/.kube/mcp-runner-test.yaml").expanduser()
    assert settings.kubernetes.namespace == "mcp-runner"
    path = write(tmp_path, "k.yaml", "backend: kubernetes\nkubernetes: {in_cluster: true, namespace: sessions}\n")
    chosen = load_settings(path)
    cluster = chosen.kubernetes
    assert (chosen.backend, cluster.kubeconfig, cluster.namespace) == ("kubernetes", None, "sessions")
    relative = write(tmp_path, "r.yaml", "kubernetes: {kubeconfig: cluster/admin.yaml}\n")
    assert load_settings(relative).kubernetes.kubeconfig == tmp_path / "cluster" / "admin.yaml"


@pytest.mark.usefixtures("no_backend_env")
def test_the_environment_names_the_backend_cluster_and_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_RUNNER_BACKEND", "kubernetes")
    monkeypatch.setenv("MCP_RUNNER_KUBECONFIG", str(tmp_path / "kc.yaml"))
    monkeypatch.setenv("MCP_RUNNER_NAMESPACE", "elsewhere")
    settings = load_settings(write(tmp_path, "s.yaml", "kubernetes: {in_cluster: true}\n"))
    assert settings.backend == "kubernetes"
    assert settings.kubernetes.kubeconfig == tmp_path / "kc.yaml"  # a kubeconfig named at run time wins
    assert settings.kubernetes.namespace == "elsewhere"
    monkeypatch.setenv("MCP_RUNNER_NAMESPACE", "Not_A_Namespace")
    with pytest.raises(ConfigError, match="MCP_RUNNER_NAMESPACE"):
        load_settings()
    monkeypatch.setenv("MCP_RUNNER_BACKEND", "podman")
    monkeypatch.delenv("MCP_RUNNER_NAMESPACE")
    with pytest.raises(ConfigError, match="backend 'podman': use one of docker, kubernetes"):
        load_settings()


@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize(("text", "said"), [
    ("kubernetes: {in_cluster: true, kubeconfig: a.yaml}", "either `kubeconfig` or `in_cluster: true`"),
    ("kubernetes: {namespace: Bad_Name}", "kubernetes.namespace"),
    ("kubernetes: {runtime_classes: {kata: kata}}", "must map one of"),
    ("kubernetes: {runtime_classes: {runsc: 'Not Valid'}}", "must map one of"),
    ("kubernetes: {registry: 'http://x'}", "kubernetes.registry"),
    ("kubernetes: {api_timeout_s: 0}", "kubernetes.api_timeout_s"),
    ("kubernetes: {namespase: x}", "namespase"),
])
def test_bad_kubernetes_settings_are_refused_naming_the_field(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said.replace("(", r"\(").replace(")", r"\)")):
        load_settings(write(tmp_path, "bad.yaml", text + "\n"))


def test_a_document_that_is_not_a_regular_file_or_is_huge_is_refused_unread(tmp_path: Path) -> None:
    import os

    from runner.config_document import MAX_DOCUMENT_BYTES

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # with no writer: a blocking open or read would never return
    with pytest.raises(ConfigError, match="not a regular file"):
        read_document(fifo, "settings file")
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"a: " + b"x" * MAX_DOCUMENT_BYTES + b"\n")
    with pytest.raises(ConfigError, match="is larger than 4 MiB"):
        read_document(huge, "settings file")
    huge.write_bytes(b"a: " + b"x" * (MAX_DOCUMENT_BYTES - 4) + b"\n")
    assert len(read_document(huge, "settings file")["a"]) == MAX_DOCUMENT_BYTES - 4
