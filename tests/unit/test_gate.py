"""Gate: access decisions for tools, resources and prompts, approval requests under the caller's rate, refusals."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest

from runner.config import Limits, Settings
from runner.errors import InvalidArgument, PermissionDenied, RateLimited
from runner.policy import LimitCeilings, PolicyStore
from runner.sessions import gate as gate_module
from runner.sessions.gate import Gate, apply_limits
from runner.sessions.models import LimitsRequest

POLICY = """
    callers:
      ann:
        profiles: ["*"]
        rates: {calls_per_s: 0.001, call_burst: 1, refusals_per_min: 6, refusal_burst: 3}
        tools: {approval: ["deploy"]}
        resources: {allow: ["mem:///public/*"]}
        prompts: {deny: ["secret*"]}
      ben:
        profiles: ["*"]
"""


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(gate_module.time, "monotonic", clock)
    return clock


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY), encoding="utf-8")
    return Gate(PolicyStore(path), Settings(profiles=MappingProxyType({})))


def test_resource_and_prompt_denials_name_what_and_the_rule(gate: Gate) -> None:
    assert gate.decide_access("resources", "ann", "files", "MEM:///Public/a").verdict == "allow"
    with pytest.raises(PermissionDenied) as caught:
        gate.decide_access("resources", "ann", "files", "mem://public/../private/a")
    assert caught.value.message == (
        "caller ann may not read resource 'mem://public/../private/a' on profile 'files' "
        '(policy.yaml: no allow rule of callers.ann.resources matches "mem://public/../private/a")'
    )
    with pytest.raises(PermissionDenied, match=r"may not get prompt 'Secret_plan' .*callers\.ann\.prompts\.deny"):
        gate.decide_access("prompts", "ann", "files", "Secret_plan")
    assert gate.decide_tool("ann", "files", "DEPLOY").verdict == "approval"


def test_an_approval_request_is_a_call_against_the_rate(gate: Gate, clock: Clock) -> None:
    def ask() -> None:
        gate.request_approval(session_id="s1", caller="ann", profile="files", tool="deploy", arguments={}, rule="r")

    ask()
    with pytest.raises(RateLimited, match=r"callers\.ann\.rates"):
        ask()
    assert len(gate.approvals.list_approvals(include_decided=True)) == 1  # the refused one asked nobody


def test_refusals_past_the_rate_are_throttled_with_one_note_per_run(gate: Gate, clock: Clock) -> None:
    assert [gate.throttle_refusal("ann") for _ in range(3)] == [None, None, None]
    first = gate.throttle_refusal("ann")
    assert first is not None and first[1] is True
    assert 9.9 < first[0].retry_after_s < 10.1 and "callers.ann.rates.refusals_per_min" in first[0].message
    again = gate.throttle_refusal("ann")
    assert again is not None and again[1] is False  # the run's note was written already
    assert gate.throttle_refusal("ben") is None  # counted per caller
    clock.now += 10.1
    assert gate.throttle_refusal("ann") is None  # refilled: the run is over
    later = gate.throttle_refusal("ann")
    assert later is not None and later[1] is True  # a new run gets its note


@pytest.mark.parametrize(("name", "value"), [("cpus", 1e-10), ("cpus", 0.009), ("pids", 1), ("pids", 7)])
def test_asking_below_what_the_sandbox_can_hold_is_refused(name: str, value: float) -> None:
    # 1e-10 CPUs would reach Docker as NanoCpus 0: no CPU limit at all.
    with pytest.raises(InvalidArgument, match=f"limit {name}="):
        apply_limits(Limits(), LimitCeilings(), LimitsRequest(**{name: value}), "rule")


def test_the_floors_themselves_may_be_asked_for() -> None:
    limits = apply_limits(Limits(), LimitCeilings(), LimitsRequest(cpus=0.01, pids=8), "rule")
    assert (limits.cpus, limits.pids) == (0.01, 8)


def test_an_approval_holds_only_arguments_a_person_can_read(gate: Gate) -> None:
    # At 1 MiB each, four approvals of one caller made every approver's ListApprovals pass gRPC's 4 MiB default.
    def ask(text: str) -> None:
        gate.request_approval(session_id="s1", caller="ben", profile="p", tool="t", arguments={"t": text}, rule="r")

    with pytest.raises(InvalidArgument, match="at most 32768 bytes"):
        ask("x" * 1024 * 1024)
    ask("x" * 32_000)
    assert [len(a.arguments["t"]) for a in gate.approvals.list_approvals()] == [32_000]
