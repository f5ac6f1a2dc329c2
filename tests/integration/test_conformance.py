"""The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned by `make mcp-tools`) judges the
HTTP door: its server scenarios run against ``/mcp/conformance``, the suite's fixture server sandboxed like any
other profile, once per requirement set (2026-07-28: stateless, 2025-11-25: sessions). Every scenario the set
requires must pass, except those listed in ``conformance/expected-failures-<revision>.yml``, each with the
guard feature it conflicts with; an entry that passes is stale and fails the test too.

An expected-failures file (absent: none expected) reads::

    server:
      - scenario: <required scenario>
        check: <check id>      # optional: only this check may fail; without it, the whole scenario may
        reason: <the guard feature this scenario conflicts with, and why the runner keeps the feature>

The same suite first runs against the fixture served directly (its own Streamable HTTP, no runner), where
every required scenario must pass: a failure through the door is then the door's, never the fixture's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import listening
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

REVISIONS = ("2026-07-28", "2025-11-25")
FIXTURE = Path(__file__).resolve().parent.parent / "servers" / "conformance_server.py"
EXPECTED_FAILURES = Path(__file__).resolve().parent / "conformance"
SUITE_TIMEOUT_S = 900  # a hung suite fails the test instead of the CI job; a full run takes well under it
# The suite saves each scenario's checks as <out>/server-<scenario>-<ISO time with - for : and .>/checks.json.
RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")


@dataclass(frozen=True)
class ExpectedFailure:
    scenario: str
    check: str | None  # None: the whole scenario may fail
    reason: str


@dataclass(frozen=True)
class Verdict:
    report: list[str]
    problems: list[str]


def required_scenarios(tools: Path, revision: str) -> list[str]:
    """The server scenarios ``revision`` requires, from the requirement set shipped in the pinned suite."""
    sets = tools.parent / "node_modules" / "@modelcontextprotocol" / "conformance" / "requirements"
    names: list[str] = yaml.safe_load((sets / f"{revision}.yaml").read_text())["server"]
    return names


def expected_failures(revision: str) -> list[ExpectedFailure]:
    path = EXPECTED_FAILURES / f"expected-failures-{revision}.yml"
    if not path.exists():
        return []
    entries = (yaml.safe_load(path.read_text()) or {}).get("server") or []
    loaded = [ExpectedFailure(e["scenario"], e.get("check"), str(e.get("reason") or "").strip()) for e in entries]
    for entry in loaded:
        assert entry.reason, f"{path.name}: {entry.scenario} has no reason; every expected failure needs one"
    return loaded


def run_suite(tools: Path, url: str, revision: str, out: Path) -> dict[str, list[dict[str, Any]]]:
    """Run the suite's server scenarios of ``revision`` against ``url``; each scenario's checks, by scenario.

    A scenario the suite could not run at all has no checks file, so it is absent here.
    """
    log = out / "suite.log"
    command = [str(tools / "conformance"), "server", "--url", url, "--requirements", revision]
    with log.open("wb") as sink:
        done = subprocess.run(
            [*command, "-o", str(out / "results")],
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=SUITE_TIMEOUT_S,
        )
    results: dict[str, list[dict[str, Any]]] = {}
    for checks in sorted((out / "results").glob("*/checks.json")):
        match = RESULT_DIR.match(checks.parent.name)
        assert match, f"unexpected result directory {checks.parent}"
        results[match["scenario"]] = json.loads(checks.read_text())
    # Exit 1 is "a required scenario failed", which the caller judges; anything else is the suite breaking.
    assert done.returncode in (0, 1) and results, f"the suite exited {done.returncode}:\n{log.read_text()[-4000:]}"
    return results


def judge(required: list[str], results: dict[str, list[dict[str, Any]]], expected: list[ExpectedFailure]) -> Verdict:
    """One report line per scenario, and what is wrong: a required failure not expected, or a stale expectation."""
    lines: list[str] = []
    problems = [
        f"expected failure of {e.scenario}, which this requirement set does not hold (stale)"
        for e in expected
        if e.scenario not in required
    ]
    tally = {"pass": 0, "expected": 0, "FAIL": 0}
    for scenario in required:
        checks = results.get(scenario)
        if checks is None:
            failing = {"(not run)": "the suite could not run this scenario: see suite.log"}
        else:
            failing = {c["id"]: c.get("errorMessage") or c["description"] for c in checks if c["status"] == "FAILURE"}
        passed = sum(c["status"] == "SUCCESS" for c in checks or [])
        listed = {e.check: e.reason for e in expected if e.scenario == scenario}
        if None in listed:  # the whole scenario may fail
            unexpected: dict[str, str] = {}
            stale = [] if failing else [f"{scenario} passes but is listed as an expected failure (stale)"]
        else:
            unexpected = {c: why for c, why in failing.items() if c not in listed}
            stale = [
                f"{scenario}: {c} passes but is listed as an expected failure (stale)"
                for c in listed
                if c not in failing
            ]
        problems += stale + [f"{scenario}: {c} failed: {why}" for c, why in unexpected.items()]
        verdict = "FAIL" if unexpected else "expected" if failing else "pass"
        tally[verdict] += 1
        lines.append(f"  {verdict} {scenario}: {passed} checks passed, {len(failing)} failed")
        lines += [
            f"      {c}: {why}" + (f" [expected: {listed[c]}]" if c in listed else "") for c, why in failing.items()
        ]
        if None in listed:
            lines.append(f"      [expected: {listed[None]}]")
    unscored = sorted(set(results) - set(required))
    unscored_failing = [s for s in unscored if any(c["status"] == "FAILURE" for c in results[s])]
    summary = (
        f"{len(required)} required scenarios: {tally['pass']} passed, {tally['expected']} expected failures,"
        f" {tally['FAIL']} failed; not scored (extensions, pending): {len(unscored)} run,"
        f" {len(unscored_failing)} failing ({', '.join(unscored_failing) or '-'})"
    )
    return Verdict([summary, *lines], problems)


def show(capsys: pytest.CaptureFixture[str], title: str, verdict: Verdict) -> None:
    """The per-scenario table on the terminal even when the test passes, so a CI log holds the counts."""
    with capsys.disabled():
        print(f"\n[conformance] {title}: " + "\n".join(verdict.report))


@pytest.fixture(scope="module")
def fixture_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fixture server on its own Streamable HTTP (the SDK's transport, this virtualenv's mcp)."""
    port = free_port()
    log = tmp_path_factory.mktemp("fixture") / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen([sys.executable, str(FIXTURE), "--http", str(port)], stdout=sink, stderr=sink)
    try:
        if not listening(port, server):
            raise RuntimeError(f"the fixture did not listen:\n{log.read_text()}")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.parametrize("revision", REVISIONS)
def test_fixture_passes_every_required_scenario_directly(
    revision: str, fixture_url: str, mcp_tools: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    required = required_scenarios(mcp_tools, revision)
    verdict = judge(required, run_suite(mcp_tools, fixture_url, revision, tmp_path), [])
    show(capsys, f"{revision}, the fixture served directly", verdict)
    assert not verdict.problems, "\n".join([*verdict.problems, f"the suite's log: {tmp_path / 'suite.log'}"])


@pytest.mark.parametrize("revision", REVISIONS)
def test_door_passes_every_required_scenario(
    revision: str, mcp_door: str, mcp_tools: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    required = required_scenarios(mcp_tools, revision)
    url = f"{mcp_door}/conformance"
    verdict = judge(required, run_suite(mcp_tools, url, revision, tmp_path), expected_failures(revision))
    show(capsys, f"{revision}, through the HTTP door ({url})", verdict)
    assert not verdict.problems, "\n".join([*verdict.problems, f"the suite's log: {tmp_path / 'suite.log'}"])
