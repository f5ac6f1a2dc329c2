"""The runner's seal on requestState: each refusal says why, and a good token is honoured once."""

from __future__ import annotations

import pytest

from runner.door import seal as seal_module
from runner.door.seal import StateRefused, StateSeal
from runner.errors import ResourceExhausted

CALL = {"name": "book", "arguments": {"seat": "12A"}}


def _sealed(seal: StateSeal, **overrides: object) -> str:
    given: dict[str, object] = {"caller": "alice", "lease": "s1", "method": "tools/call", "params": CALL,
                                "server_state": "theirs"}
    given.update(overrides)
    return seal.seal(**given)  # type: ignore[arg-type]


def _open(seal: StateSeal, token: object, **overrides: object) -> object:
    given: dict[str, object] = {"caller": "alice", "lease": "s1", "method": "tools/call", "params": CALL}
    given.update(overrides)
    return seal.open(token, **given)  # type: ignore[arg-type]


def test_a_token_is_honoured_once() -> None:
    seal = StateSeal()
    token = _sealed(seal, approval_id="apr_1")
    opened = _open(seal, token)
    assert opened.server_state == "theirs" and opened.approval_id == "apr_1"  # type: ignore[attr-defined]
    with pytest.raises(StateRefused) as again:
        _open(seal, token)
    assert again.value.reason == "replayed"


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"caller": "bob"}, "caller"),
    ({"lease": "s2"}, "lease"),
    ({"method": "prompts/get"}, "request"),
    ({"params": {"name": "book", "arguments": {"seat": "1A"}}}, "request"),
])
def test_a_token_is_bound_to_its_caller_lease_and_request(overrides: dict[str, object], reason: str) -> None:
    seal = StateSeal()
    with pytest.raises(StateRefused) as refused:
        _open(seal, _sealed(seal), **overrides)
    assert refused.value.reason == reason
    assert "without requestState" in refused.value.message


def test_tampered_foreign_and_expired_tokens_are_refused() -> None:
    now = [1000.0]
    seal = StateSeal(ttl_s=60, clock=lambda: now[0])
    token = _sealed(seal)
    for bad in (token[:-3] + "AAA", _sealed(StateSeal()), "v1.nonsense", 42):
        with pytest.raises(StateRefused) as refused:
            _open(seal, bad)
        assert refused.value.reason in ("tampered", "malformed")
    now[0] += 61
    with pytest.raises(StateRefused) as late:
        _open(seal, token)
    assert late.value.reason == "expired" and "60 s" in late.value.message


def test_with_too_many_retries_pending_no_token_is_minted_and_none_is_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the bound the door refuses to mint, where it used to forget used nonces (a replay then succeeded)."""
    monkeypatch.setattr(seal_module, "MAX_OUTSTANDING", 2)
    now = [1000.0]
    seal = StateSeal(ttl_s=60, clock=lambda: now[0])
    first = _sealed(seal)
    now[0] += 30
    second = _sealed(seal)
    with pytest.raises(ResourceExhausted, match="too many pending retries"):
        _sealed(seal)
    _open(seal, second)  # used: it no longer counts, and it stays used
    third = _sealed(seal)
    with pytest.raises(ResourceExhausted):
        _sealed(seal)
    now[0] += 31  # the first expired: forgotten, so room for one more
    fourth = _sealed(seal)
    with pytest.raises(ResourceExhausted):
        _sealed(seal)
    for used in (third, fourth):
        _open(seal, used)
    for token, reason in ((second, "replayed"), (third, "replayed"), (fourth, "replayed"), (first, "expired")):
        with pytest.raises(StateRefused) as refused:
            _open(seal, token)
        assert refused.value.reason == reason
