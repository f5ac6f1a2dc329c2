"""Policy files: loading (YAML and TOML), refusals that name the field, decisions, and live reloading."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import textwrap
from pathlib import Path

import pytest

from runner.config import ConfigError
from runner.errors import PermissionDenied
from runner.policy import (
    ADMIN,
    APPROVER,
    EMBEDDED_DEFAULT,
    AccessRules,
    LimitCeilings,
    PolicyStore,
    Rates,
    load_policy,
)


def token_hash(token: str) -> str:
    """What `mcp-runner token` prints for ``token``."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


ALICE_HASH = token_hash("alice-secret")
BOB_HASH = token_hash("bob-secret")

FULL_YAML = f"""
approvals:
  timeout_s: 300
  allow_self_approval: false
anomaly:
  max_events: 5
  window_s: 60
default_caller:
  profiles: []
callers:
  alice:
    tokens: ["{ALICE_HASH}"]
    roles: [approver]
    profiles: ["time", "every*"]
    limits: {{memory: 256m, cpus: 0.5, pids: 64, call_timeout_s: 30, idle_timeout_s: 300, max_lifetime_s: 1800}}
    max_sessions: 4
    rates:
      calls_per_s: 5
      call_burst: 20
      concurrent_calls: 4
      sessions_per_min: 10
      session_burst: 5
    session_rates:
      calls_per_s: 2
      call_burst: 10
      concurrent_calls: 2
    tools:
      allow: ["*"]
      deny: ["*delete*"]
      approval: []
    profile_tools:
      everything: {{deny: ["printEnv"]}}
  bob:
    tokens: ["{BOB_HASH}"]
    roles: [admin]
    profiles: ["time"]
profiles:
  everything:
    tools:
      allow: ["echo", "add", "get*", "printEnv", "delete_all"]
      deny: []
      approval: ["longRunningOperation", "get*Secret"]
"""

# The example the README documents, verbatim apart from a real hash.
README_YAML = f"""
approvals:
  timeout_s: 300                # undecided approvals expire
  allow_self_approval: false    # an approver may not approve their own call
anomaly:                        # quarantine rule
  max_events: 5                 # denied, blocked or invalid events ...
  window_s: 60                  # ... within this window end the session
default_caller:                 # rules for authenticated callers not listed below (and for "anonymous")
  profiles: []                  # fnmatch patterns of profiles it may open; [] = none
callers:
  alice:
    tokens: ["{ALICE_HASH}"]   # hashes of bearer tokens
    roles: [approver]              # "approver", "admin"
    profiles: ["time", "every*"]
    limits: {{memory: 256m, cpus: 0.5, pids: 64, call_timeout_s: 30, idle_timeout_s: 300, max_lifetime_s: 1800}}
    max_sessions: 4                # open at once
    rates:                         # token buckets for this caller over all its sessions
      calls_per_s: 5
      call_burst: 20
      concurrent_calls: 4
      sessions_per_min: 10
      session_burst: 5
    session_rates:                 # token buckets for each one of its sessions
      calls_per_s: 2
      call_burst: 10
      concurrent_calls: 2
    tools:                         # rules for every profile this caller uses
      allow: ["*"]
      deny: ["*delete*"]
      approval: []
    profile_tools:                 # rules for this caller on one profile
      everything: {{deny: ["printEnv"]}}
profiles:                          # rules for everyone on a profile
  everything:
    tools:
      allow: ["echo", "add", "get*"]
      deny: []
      approval: ["longRunningOperation"]
"""

FULL_TOML = f"""
[approvals]
timeout_s = 120
allow_self_approval = true

[default_caller]
profiles = ["time"]

[callers.alice]
tokens = ["{ALICE_HASH}"]
roles = ["approver", "admin"]
profiles = ["*"]
limits = {{ memory = "1g", pids = 32 }}
rates = {{ calls_per_s = 5 }}

[callers.alice.profile_tools.git]
deny = ["git_push"]

[profiles.everything.tools]
allow = ["echo"]
"""


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def refusal(tmp_path: Path, text: str, name: str = "policy.yaml") -> str:
    path = write(tmp_path, text, name)
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    assert str(path) in caught.value.message, "the message must name the file"
    return caught.value.message.replace(str(path), "<file>")


# ---- loading -------------------------------------------------------------------------------------------------------


def test_full_yaml_example_loads_into_the_domain(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, FULL_YAML))
    assert policy.source == str(tmp_path / "policy.yaml")
    assert (policy.approval_timeout_s, policy.allow_self_approval) == (300, False)
    assert (policy.anomaly_max_events, policy.anomaly_window_s) == (5, 60)
    alice = policy.caller("alice")
    assert alice.roles == frozenset({APPROVER})
    assert alice.profiles == ("time", "every*")
    assert alice.limits == LimitCeilings(256 * 1024**2, 0.5, 64, 30, 300, 1800)
    assert alice.max_sessions == 4
    assert alice.rates == Rates(5, 20, 4, 10, 5, entry="callers.alice.rates")
    assert alice.session_rates == Rates(2, 10, 2, entry="callers.alice.session_rates")
    assert alice.tools == AccessRules(("*",), ("*delete*",), ())
    assert dict(alice.profile_tools) == {"everything": AccessRules(None, ("printEnv",), ())}
    assert policy.profile_tools["everything"].approval == ("longRunningOperation", "get*Secret")
    assert policy.token_owner(ALICE_HASH) == "alice"
    assert policy.token_owner(BOB_HASH) == "bob"
    assert policy.token_owner(token_hash("nobody")) is None


def test_the_readme_example_loads(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, README_YAML))
    alice = policy.caller("alice")
    assert alice.limits == LimitCeilings(256 * 1024**2, 0.5, 64, 30, 300, 1800)
    assert alice.rates == Rates(5, 20, 4, 10, 5, entry="callers.alice.rates")
    assert policy.profile_tools["everything"] == AccessRules(("echo", "add", "get*"), (), ("longRunningOperation",))
    assert policy.tool_decision("alice", "everything", "echo").verdict == "allow"
    # Every allow list must allow a tool before an approval rule can apply: as written, the example's
    # approval rule never fires, because the profile's allow list leaves longRunningOperation out.
    assert policy.tool_decision("alice", "everything", "longRunningOperation").verdict == "deny"


def test_toml_loads_the_same_model(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, FULL_TOML, "policy.toml"))
    assert (policy.approval_timeout_s, policy.allow_self_approval) == (120, True)
    alice = policy.caller("alice")
    assert alice.roles == frozenset({APPROVER, ADMIN})
    assert alice.limits == LimitCeilings(memory_bytes=1024**3, pids=32)
    assert alice.rates.calls_per_s == 5
    assert alice.rates.effective_call_burst == 5, "an unset burst is one second's worth"
    assert alice.profile_tools["git"].deny == ("git_push",)
    assert policy.profile_tools["everything"].allow == ("echo",)
    assert policy.caller("stranger").profiles == ("time",)


def test_an_empty_file_is_a_closed_policy(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, ""))
    assert policy.caller("anyone").profiles == ()
    assert policy.caller("anyone").roles == frozenset()
    assert (policy.approval_timeout_s, policy.allow_self_approval) == (300, False)
    with pytest.raises(PermissionDenied):
        policy.check_open("anyone", "time")


def test_uppercase_hash_is_normalised(tmp_path: Path) -> None:
    upper = "sha256:" + ALICE_HASH.removeprefix("sha256:").upper()
    policy = load_policy(write(tmp_path, f'callers:\n  a:\n    tokens: ["{upper}"]\n'))
    assert policy.token_owner(ALICE_HASH) == "a"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("approvals:\n  timeout: 3\n", "approvals.timeout: Extra inputs are not permitted"),
        ("callers:\n  alice:\n    limits: {memry: 1g}\n", "callers.alice.limits.memry: Extra inputs are not permitted"),
        ("callers:\n  alice:\n    roles: [root]\n",
         "callers.alice.roles.0: Input should be 'approver', 'admin' or 'auditor'"),
        ("callers:\n  alice:\n    session_rates: {sessions_per_min: 3}\n",
         "callers.alice.session_rates.sessions_per_min: Extra inputs are not permitted"),
        ("profiles:\n  p:\n    tools: {allowed: [x]}\n", "profiles.p.tools.allowed: Extra inputs are not permitted"),
        ("callers:\n  alice:\n    limits: {memory: 1k}\n",
         "callers.alice.limits.memory: Value error, must be at least 4m"),
        ("callers:\n  alice:\n    rates: {calls_per_s: 0}\n",
         "callers.alice.rates.calls_per_s: Input should be greater than 0"),
        ("callers:\n  'bad name':\n    profiles: []\n", "callers: Value error, caller name 'bad name': use 1-64"),
        ("callers:\n  \"alice\\n\":\n    profiles: []\n", "callers: Value error, caller name 'alice\\n': use 1-64"),
        ("nonsense: 1\n", "nonsense: Extra inputs are not permitted"),
    ],
)
def test_refusals_name_the_field_path(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in refusal(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("approval: {timeout_s: 3}\n",
         "approval: Extra inputs are not permitted (unknown key); did you mean `approvals`?"),
        ("callers:\n  alice: {profile: [time]}\n",
         "callers.alice.profile: Extra inputs are not permitted (unknown key); did you mean `profiles`?"),
        ("callers:\n  alice:\n    rates: {calls_per_sec: 3}\n", "did you mean `calls_per_s`?"),
        ("profiles:\n  p:\n    tools: {denied: [x]}\n", "profiles.p.tools.denied: Extra inputs are not permitted "
         "(unknown key); did you mean `deny`?"),
    ],
)  # fmt: skip
def test_an_unknown_key_names_the_key_meant(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in refusal(tmp_path, text)


def test_a_pasted_token_is_refused_without_echoing_it(tmp_path: Path) -> None:
    message = refusal(tmp_path, "callers:\n  alice:\n    tokens: [hunter2-very-secret]\n")
    assert "callers.alice.tokens" in message
    assert "mcp-runner token" in message
    assert "hunter2" not in message


def test_a_short_hash_is_refused(tmp_path: Path) -> None:
    assert "not a token hash" in refusal(tmp_path, 'callers:\n  a:\n    tokens: ["sha256:9f86d0"]\n')
    # A hash with a final newline (a YAML block scalar) passed the $ anchor and could never match a token.
    assert "not a token hash" in refusal(tmp_path, f'callers:\n  a:\n    tokens: ["{ALICE_HASH}\\n"]\n')


def test_the_same_hash_under_two_callers_is_refused(tmp_path: Path) -> None:
    text = f'callers:\n  a:\n    tokens: ["{ALICE_HASH}"]\n  b:\n    tokens: ["{ALICE_HASH}"]\n'
    message = refusal(tmp_path, text)
    assert "callers.b.tokens" in message and "callers.a" in message


def test_broken_yaml_toml_and_missing_file(tmp_path: Path) -> None:
    assert "is not valid YAML" in refusal(tmp_path, "callers: [unclosed\n")
    assert "is not valid TOML" in refusal(tmp_path, "[callers\n", "policy.toml")
    assert "top level must be a mapping" in refusal(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="cannot read policy file"):
        load_policy(tmp_path / "absent.yaml")


# ---- decisions -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "tool", "verdict", "rule"),
    [
        ("alice", "echo", "allow", 'policy.yaml: callers.alice.tools.allow "*"'),
        # deny wins over every allow: the caller's deny, the caller's per-profile deny
        ("alice", "delete_all", "deny", 'policy.yaml: callers.alice.tools.deny "*delete*"'),
        ("alice", "printEnv", "deny", 'policy.yaml: callers.alice.profile_tools.everything.deny "printEnv"'),
        # the profile's allow list binds even though alice allows "*"
        ("alice", "sampleLLM", "deny", 'policy.yaml: no allow rule of profiles.everything.tools matches "sampleLLM"'),
        ("alice", "longRunningOperation", "deny",
         'policy.yaml: no allow rule of profiles.everything.tools matches "longRunningOperation"'),
        ("alice", "getTinyImage", "allow", 'policy.yaml: callers.alice.tools.allow "*"'),
        ("alice", "getTopSecret", "approval", 'policy.yaml: profiles.everything.tools.approval "get*Secret"'),
        # bob has no tool rules of his own: the profile's rules alone decide
        ("bob", "echo", "allow", 'policy.yaml: profiles.everything.tools.allow "echo"'),
        ("bob", "printEnv", "allow", 'policy.yaml: profiles.everything.tools.allow "printEnv"'),
        ("bob", "sampleLLM", "deny", 'policy.yaml: no allow rule of profiles.everything.tools matches "sampleLLM"'),
        # patterns match case-folded: a look-alike of a name is that name, for allow rules as for deny rules
        ("bob", "Echo", "allow", 'policy.yaml: profiles.everything.tools.allow "echo"'),
        ("alice", "Delete_All", "deny", 'policy.yaml: callers.alice.tools.deny "*delete*"'),
    ],
)
def test_tool_decisions(tmp_path: Path, caller: str, tool: str, verdict: str, rule: str) -> None:
    decision = load_policy(write(tmp_path, FULL_YAML)).tool_decision(caller, "everything", tool)
    assert (decision.verdict, decision.rule) == (verdict, rule)


def test_caller_allow_list_and_approval_levels(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, """
        default_caller:
          profiles: ["*"]
          tools: {allow: ["read*"], approval: ["read_secret*"]}
          profile_tools:
            git: {allow: ["read_log"]}
        """))
    decide = policy.tool_decision
    assert decide("anon", "time", "read_x").verdict == "allow"
    assert decide("anon", "time", "write_x").rule == (
        'policy.yaml: no allow rule of default_caller.tools matches "write_x"'
    )
    assert decide("anon", "time", "read_secret_key").verdict == "approval"
    assert decide("anon", "git", "read_log").verdict == "allow"
    assert decide("anon", "git", "read_diff").rule == (
        'policy.yaml: no allow rule of default_caller.profile_tools.git matches "read_diff"'
    )
    # An empty allow list allows nothing; a missing one allows everything.
    empty = load_policy(write(tmp_path, "profiles:\n  p:\n    tools: {allow: []}\n"))
    assert empty.tool_decision("x", "p", "any").verdict == "deny"
    assert empty.tool_decision("x", "q", "any").verdict == "allow"


def test_check_open_and_roles(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, FULL_YAML))
    policy.check_open("alice", "time")
    policy.check_open("alice", "everything")
    with pytest.raises(PermissionDenied) as caught:
        policy.check_open("bob", "git")
    assert caught.value.message == (
        "caller bob may not open profile 'git' (policy.yaml: callers.bob.profiles [\"time\"] does not include \"git\")"
    )
    with pytest.raises(PermissionDenied, match=r"default_caller.profiles \[\] does not include"):
        policy.check_open("mallory", "time")
    assert policy.has_role("alice", APPROVER) and not policy.has_role("alice", ADMIN)
    assert policy.has_role("bob", ADMIN) and not policy.has_role("bob", APPROVER)
    assert not policy.has_role("anonymous", APPROVER)
    policy.check_role("alice", APPROVER)
    with pytest.raises(PermissionDenied) as caught:
        policy.check_role("bob", APPROVER)
    assert caught.value.message == "caller bob lacks the approver role (policy.yaml: callers.bob.roles)"
    with pytest.raises(PermissionDenied, match=r"\(policy.yaml: default_caller.roles\)"):
        policy.check_role("anonymous", ADMIN)


def test_unlisted_callers_get_the_default_under_their_own_name(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "default_caller:\n  profiles: [time]\n  max_sessions: 2\n"))
    carol = policy.caller("carol")
    assert (carol.name, carol.entry, carol.max_sessions) == ("carol", "default_caller", 2)
    assert carol.rates.entry == "default_caller.rates"


def test_embedded_default_lets_a_local_developer_do_everything() -> None:
    policy = EMBEDDED_DEFAULT
    policy.check_open("anonymous", "everything")
    policy.check_role("anonymous", APPROVER)
    policy.check_role("dev", ADMIN)
    assert policy.allow_self_approval
    assert policy.tool_decision("anonymous", "everything", "printEnv").verdict == "allow"
    assert policy.caller("anonymous").rates.calls_per_s is None
    assert policy.token_owner(ALICE_HASH) is None


# ---- the store -----------------------------------------------------------------------------------------------------


def test_store_without_a_path_keeps_the_embedded_default() -> None:
    store = PolicyStore(None)
    assert store.current is EMBEDDED_DEFAULT
    assert store.reload() is None
    assert store.current is EMBEDDED_DEFAULT


def test_store_refuses_to_start_on_a_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Extra inputs"):
        PolicyStore(write(tmp_path, "bogus: 1\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        PolicyStore(tmp_path / "missing.yaml")


def test_reload_good_then_broken_keeps_the_good_policy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "default_caller:\n  profiles: [time]\n")
    store = PolicyStore(path)
    first = store.current
    write(tmp_path, "default_caller:\n  profiles: [time, git]\n")
    with caplog.at_level(logging.INFO, logger="runner.policy"):
        assert store.reload() is None
    assert store.current.caller("x").profiles == ("time", "git")
    assert any(r.levelno == logging.INFO and "reloaded" in r.getMessage() for r in caplog.records)
    good = store.current
    assert good is not first
    write(tmp_path, "default_caller:\n  profile: [everything]\n")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="runner.policy"):
        error = store.reload()
    assert error is not None and "default_caller.profile: Extra inputs are not permitted" in error
    assert store.current is good
    assert any(r.levelno == logging.ERROR and "default_caller.profile" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["policy.yaml", "policy.toml"])
def test_reload_to_a_too_deeply_nested_file_keeps_the_policy(tmp_path: Path, name: str) -> None:
    # The parsers recurse per level: a RecursionError escaped reload() (a traceback on SIGHUP) and start-up.
    path = write(tmp_path, "default_caller:\n  profiles: [time]\n" if name.endswith("yaml") else "", name)
    store = PolicyStore(path)
    good = store.current
    write(tmp_path, "a = " + "[" * 5000 + "]" * 5000 + "\n" if name.endswith("toml") else "a: " + "[" * 5000, name)
    error = store.reload()
    assert error is not None and "nested too deeply" in error
    assert store.current is good
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_policy(path)


async def _wait_for(condition: object, timeout_s: float = 5.0) -> None:
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "the watch did not pick up the change"
        await asyncio.sleep(0.005)


async def test_watch_picks_up_changes_and_survives_breakage_and_deletion(tmp_path: Path) -> None:
    path = write(tmp_path, "default_caller:\n  profiles: [time]\n")
    store = PolicyStore(path)
    task = asyncio.create_task(store.watch(interval_s=0.01))
    try:
        stamp = os.stat(path).st_mtime_ns

        def rewrite(text: str) -> None:
            nonlocal stamp
            write(tmp_path, text)
            stamp += 10**9  # coarse file-system clocks: move mtime on explicitly
            os.utime(path, ns=(stamp, stamp))

        rewrite("default_caller:\n  profiles: [git]\n")
        await _wait_for(lambda: store.current.caller("x").profiles == ("git",))
        good = store.current
        rewrite("default_caller: [broken\n")
        await asyncio.sleep(0.1)
        assert store.current is good
        path.unlink()
        await asyncio.sleep(0.1)
        assert store.current is good, "a deleted file keeps the policy in force"
        rewrite("default_caller:\n  profiles: [fetch]\n")
        await _wait_for(lambda: store.current.caller("x").profiles == ("fetch",))
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


LOOK_ALIKES = """
default_caller:
  profiles: ["*"]
  tools: {deny: ["*delete*"], approval: ["move_file"]}
"""


@pytest.mark.parametrize(
    "tool",
    [
        "Delete_file",
        "DELETE_FILE",
        "d\u0435lete_file",  # Cyrillic ie
        "del\u200bete_file",  # zero-width space
        "\uff44\uff45\uff4c\uff45\uff54\uff45_file",  # fullwidth
        "\U0001d41d\U0001d41e\U0001d425\U0001d41e\U0001d42d\U0001d41e_file",  # mathematical bold
        "de\u0301lete_file",  # a combining accent
        "dele\ufe0fte_file",  # a variation selector
        "DEL\u0395TE_FILE",  # Greek capital epsilon
        "del\u00adete\u2060_file",  # soft hyphen, word joiner
    ],
)
def test_look_alikes_of_a_denied_name_are_denied(tmp_path: Path, tool: str) -> None:
    decision = load_policy(write(tmp_path, LOOK_ALIKES)).tool_decision("anyone", "files", tool)
    assert (decision.verdict, decision.rule) == ("deny", 'policy.yaml: default_caller.tools.deny "*delete*"')


@pytest.mark.parametrize("tool", ["move_file", "move_file\u200b", "Move_File", "m\u043eve_file", "move_\u200dfile"])
def test_look_alikes_of_an_approval_gated_name_need_approval(tmp_path: Path, tool: str) -> None:
    decision = load_policy(write(tmp_path, LOOK_ALIKES)).tool_decision("anyone", "files", tool)
    assert decision.verdict == "approval"


def test_patterns_are_normalized_too(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, 'default_caller:\n  tools: {deny: ["DROP_\u200b*"]}\n'))
    assert policy.tool_decision("x", "p", "drop_table").verdict == "deny"
    assert policy.tool_decision("x", "p", "dropped").verdict == "allow"


RESOURCE_AND_PROMPT_RULES = """
default_caller:
  profiles: ["*"]
  resources: {deny: ["file:///etc/*", "*secret*"]}
  prompts: {allow: ["summarize*", "greet"]}
  profile_resources:
    files: {allow: ["file:///public/*"]}
profiles:
  files:
    prompts: {deny: ["greet"]}
callers:
  admin:
    profiles: ["*"]
    profile_prompts:
      files: {deny: ["summarize_*"]}
"""


@pytest.mark.parametrize(
    ("profile", "uri", "verdict", "rule"),
    [
        ("time", "file:///etc/passwd", "deny", 'default_caller.resources.deny "file:///etc/*"'),
        ("time", "FILE:///ETC/passwd", "deny", 'default_caller.resources.deny "file:///etc/*"'),
        ("time", "file:///tmp/../etc/passwd", "deny", 'default_caller.resources.deny "file:///etc/*"'),
        ("time", "file:///tmp/%2e%2e/etc/passwd", "deny", 'default_caller.resources.deny "file:///etc/*"'),
        ("time", "mem://my-S\u0435cret", "deny", 'default_caller.resources.deny "*secret*"'),
        ("time", "mem://greeting", "allow", "no allow list restricts"),
        ("files", "file:///public/a.txt", "allow", 'default_caller.profile_resources.files.allow "file:///public/*"'),
        ("files", "file:///public/%252e%252e/home/x", "deny",
         'no allow rule of default_caller.profile_resources.files matches'),
        ("files", "file:///home/x", "deny", "no allow rule of default_caller.profile_resources.files matches"),
    ],
)
def test_resource_rules(tmp_path: Path, profile: str, uri: str, verdict: str, rule: str) -> None:
    decision = load_policy(write(tmp_path, RESOURCE_AND_PROMPT_RULES)).decision("resources", "anyone", profile, uri)
    assert decision.verdict == verdict and rule in decision.rule


def test_prompt_rules_at_every_level(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, RESOURCE_AND_PROMPT_RULES))
    assert policy.decision("prompts", "anyone", "time", "Summarize_Day").verdict == "allow"
    assert policy.decision("prompts", "anyone", "time", "greet").verdict == "allow"
    assert policy.decision("prompts", "anyone", "time", "leak").rule == (
        'policy.yaml: no allow rule of default_caller.prompts matches "leak"'
    )
    greet = policy.decision("prompts", "anyone", "files", "gr\u0435et")  # Cyrillic ie
    assert greet.rule == 'policy.yaml: profiles.files.prompts.deny "greet"'
    assert policy.decision("prompts", "admin", "files", "summarize_x").rule == (
        'policy.yaml: callers.admin.profile_prompts.files.deny "summarize_*"'
    )
    assert policy.decision("prompts", "admin", "time", "anything").verdict == "allow"  # admin has no prompt rules


def test_resource_and_prompt_rules_have_no_approval(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="approval"):
        load_policy(write(tmp_path, "default_caller:\n  resources: {approval: ['*']}\n"))


def test_refusal_rate_has_a_default_and_can_be_set(tmp_path: Path) -> None:
    assert EMBEDDED_DEFAULT.caller("anyone").rates.refusals_per_min == 60
    policy = load_policy(write(tmp_path, "default_caller:\n  rates: {refusals_per_min: 6, refusal_burst: 2}\n"))
    assert (policy.caller("x").rates.refusals_per_min, policy.caller("x").rates.refusal_burst) == (6, 2)


@pytest.mark.parametrize(
    "uri",
    [
        "file:///public/" + "a" * 4100 + "/../../etc/passwd",  # past the old 4096-character cut
        "file:///public/x%3F/../../etc/passwd",  # an escaped ? is path: the traversal is in it
        "file:///public/x%23/../../etc/passwd",
        "file:///public/x?/../../etc/passwd",  # read as a path by a server that opens what follows file://
        "file:///public/%25252525252e%25252525252e/etc/passwd",  # encoded five times
        "file:///public/.\u200b./etc/passwd",
        "file:///public/" + "a" * 17000,  # longer than the policy decides
        "file:///public/" + "\ufdfa" * 1000,  # 18 000 characters once decomposed
    ],
)
def test_no_reading_of_a_uri_escapes_an_allow_rule(tmp_path: Path, uri: str) -> None:
    decision = load_policy(write(tmp_path, RESOURCE_AND_PROMPT_RULES)).decision("resources", "anyone", "files", uri)
    assert decision.verdict == "deny"


@pytest.mark.parametrize(
    "uri",
    [
        "file://localhost/etc/passwd",
        "file://any/etc/passwd",
        "file://h/a/../../etc/shadow",
        "file:///%65tc/passwd?x=/../..",
        "file:///x/..%2f..%2fetc/shadow",
    ],
)
def test_any_reading_of_a_uri_hits_a_deny_rule(tmp_path: Path, uri: str) -> None:
    decision = load_policy(write(tmp_path, RESOURCE_AND_PROMPT_RULES)).decision("resources", "anyone", "time", uri)
    assert decision.rule.endswith('default_caller.resources.deny "file:///etc/*"')


def test_long_uris_within_the_cap_are_decided_whole(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, RESOURCE_AND_PROMPT_RULES))
    assert policy.decision("resources", "anyone", "files", "file:///public/" + "a" * 8000).verdict == "allow"
    assert policy.decision("resources", "anyone", "files", "file:///public/a?v=2#top").verdict == "allow"


def test_a_uri_that_never_settles_is_denied_without_decoding_it_to_the_end(tmp_path: Path) -> None:
    # Decoded to the end, 4000 nested %25 took 0.1 s of the event loop per request.
    policy = load_policy(write(tmp_path, RESOURCE_AND_PROMPT_RULES))
    for profile in ("time", "files"):  # a deny list only, and an allow list
        decision = policy.decision("resources", "anyone", profile, "file:///public/%" + "25" * 4000 + "2e")
        assert decision.verdict == "deny" and "still percent-encoded after 12 rounds" in decision.rule
    assert policy.decision("resources", "anyone", "files", "file:///public/%252E%252Ex").verdict == "allow"


def test_a_caller_written_twice_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "callers:\n  alice: {profiles: []}\n  bob: {profiles: []}\n  alice: {profiles: [git]}\n")
    with pytest.raises(ConfigError, match="found key 'alice' twice"):
        load_policy(path)


@pytest.mark.parametrize(
    "text",
    ["callers: [unclosed\n", "callers:\n  alice: {profiles: []}\n  alice: {}\n", "a: !!python/name:os.system x\n"],
)
def test_a_refused_reload_is_one_log_line_with_the_place(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    # PyYAML's message spans lines and quotes the offending line: the reload's log entry broke across lines.
    store = PolicyStore(write(tmp_path, ""))
    write(tmp_path, text)
    with caplog.at_level(logging.ERROR, logger="runner.policy"):
        error = store.reload()
    assert error is not None and "\n" not in error and "(line " in error
    assert [r.getMessage().count("\n") for r in caplog.records] == [0]
