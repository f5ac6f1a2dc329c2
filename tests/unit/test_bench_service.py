"""The settings the bench's services start from: the user's file changed by a section, and the bench's own policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner.bench.service import capacity, derived_settings, settings_file
from runner.policy import load_policy
from runner.settings_file import load_settings


def test_replaced_keys_replace_and_audit_keys_merge() -> None:
    document = {"pool": {"fetch": 1, "time": 2}, "audit": {"path": "a.db"}, "max_sessions": 4}
    changed = derived_settings(document, replace={"pool": {}}, audit={"fsync_intents": True})
    assert changed == {"pool": {}, "audit": {"path": "a.db", "fsync_intents": True}, "max_sessions": 4}
    assert document["pool"] == {"fetch": 1, "time": 2}  # the user's document is not changed
    assert derived_settings({}, audit={"enabled": False}) == {"audit": {"enabled": False}}


def test_without_a_users_file_the_changes_are_the_whole_file_and_it_is_removed() -> None:
    with settings_file(None, replace={"pool": {"time": 1}}) as name:
        path = Path(name)
        assert yaml.safe_load(path.read_text(encoding="utf-8")) == {"pool": {"time": 1}}
        assert dict(load_settings(path).pool) == {"time": 1}
    assert not path.exists() and not path.parent.exists()


def test_a_capacity_service_lets_one_caller_hold_every_session(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_RUNNER_CONFIG", raising=False)
    (tmp_path / "strict-policy.yaml").write_text(
        yaml.safe_dump({"default_caller": {"profiles": ["time"], "max_sessions": 2,
                                           "rates": {"sessions_per_min": 1}}}), encoding="utf-8")
    source = tmp_path / "settings.yaml"
    source.write_text(yaml.safe_dump({"policy": "strict-policy.yaml", "max_sessions": 3}), encoding="utf-8")
    with settings_file(str(source), replace={**capacity(250, tmp_path), "pool": {}}) as name:
        settings = load_settings(name)
    assert settings.max_sessions == 250 and dict(settings.pool) == {}
    assert settings.policy is not None and settings.policy.parent == tmp_path
    policy = load_policy(settings.policy)
    anonymous = policy.caller("anonymous")
    assert anonymous.max_sessions is None and anonymous.rates.sessions_per_min is None
    policy.check_open("anonymous", "time")
    policy.check_open("anonymous", "everything")
