"""The audit log against the real service: SIGKILL under load, tampering on disk, replay of a real server, retention.

Each test runs its own service (own instance, own audit file in tmp_path) and
the built-in ``time`` profile (mcp-server-time from PyPI in the python-servers
image), driven through the gRPC client and the ``mcp-runner`` CLI.
"""

from __future__ import annotations

import json
import secrets
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from runner.audit import records
from runner.client import Progress
from tests.integration.conftest import Service, start_service, stop_service
from tests.kubernetes_cluster import ensure_images_loaded

pytestmark = [pytest.mark.integration, pytest.mark.backends("docker", "kubernetes")]

CONVERT = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}  # no DST: same every day
NOW = {"timezone": "UTC"}


@pytest.fixture
def sandbox_images(images: dict[str, str], backend: str) -> dict[str, str]:
    """The sandbox images, in the cluster's runtime too when the services run on Kubernetes."""
    if backend == "kubernetes":
        ensure_images_loaded()
    return images


def cli(service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", "--address", service.address, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def offline_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], capture_output=True, text=True, timeout=120)


def request_ids(service: Service) -> set[str]:
    with service.client() as client:
        return {r.id for r in client.query_audit(kinds=[records.REQUEST])}


def _wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_sigkill_under_load_loses_no_answered_call(
    sandbox_images: dict[str, str], backend: str, tmp_path: Path
) -> None:
    """Every call that got an answer is in the log after a SIGKILL mid-load, and the chain verifies."""
    instance = f"it-audit-kill-{secrets.token_hex(3)}"
    service = start_service(tmp_path, instance, backend=backend)
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        with service.client() as client:
            sessions = [client.open_session("time").session_id for _ in range(3)]

        def load(session_id: str) -> None:
            with service.client() as own:
                while not stop.is_set():
                    try:
                        result = own.call_tool(session_id, "get_current_time", NOW, timeout=20)
                    except grpc.RpcError:
                        return  # the service is gone: this call got no answer
                    with lock:
                        answered.append(result.audit_id)

        workers = [threading.Thread(target=load, args=(s,), daemon=True) for s in sessions for _ in range(2)]
        for worker in workers:
            worker.start()
        _wait_for(lambda: len(answered) >= 60, seconds=120)
        service.process.send_signal(signal.SIGKILL)
        service.process.wait(10)
        stop.set()
        for worker in workers:
            worker.join(30)
    finally:
        stop.set()
        stop_service(service)
    assert all(answered), "every answer names its audit record"
    restarted = start_service(tmp_path, instance, backend=backend)
    try:
        with restarted.client() as client:
            verdict = client.verify_audit()
        assert verdict.intact, verdict.problem
        assert verdict.checked >= len(answered)
        assert set(answered) <= request_ids(restarted)
        # Each answered call's outcome names the intent written before it was sent.
        with restarted.client() as client:
            intents = {r.id for r in client.query_audit(kinds=[records.REQUEST_INTENT])}
            outcomes = [json.loads(r.data_json) for r in client.query_audit(kinds=[records.REQUEST])]
        assert all(set(o["intents"]) <= intents for o in outcomes if o["outcome"] == "ok")
        offline = offline_cli("audit", "verify", "--db", str(restarted.audit_db))
        assert offline.returncode == 0 and "intact" in offline.stdout, offline.stdout + offline.stderr
    finally:
        stop_service(restarted)


def test_sigkill_mid_call_leaves_the_intent_of_every_call_the_server_received(
    sandbox_images: dict[str, str], backend: str, tmp_path: Path
) -> None:
    """Calls the server is working on (it reported progress) when the service dies are on record: write-ahead."""
    instance = f"it-audit-intent-{secrets.token_hex(3)}"
    service = start_service(tmp_path, instance, backend=backend)
    markers = [f"call-{i}-{secrets.token_hex(4)}" for i in range(4)]
    received: set[str] = set()
    lock = threading.Lock()
    try:
        with service.client() as client:
            sessions = [client.open_session("scripted").session_id for _ in range(2)]

        def slow(session_id: str, marker: str) -> None:
            arguments = {"steps": 30, "delay_ms": 1000, "marker": marker}
            with service.client() as own:
                try:
                    for item in own.call_tool_stream(session_id, "slow", arguments, timeout=120):
                        if isinstance(item, Progress):
                            with lock:
                                received.add(marker)  # the server has the call: it is reporting progress
                except grpc.RpcError:
                    return

        workers = [
            threading.Thread(target=slow, args=(sessions[i % 2], marker), daemon=True)
            for i, marker in enumerate(markers)
        ]
        for worker in workers:
            worker.start()
        _wait_for(lambda: received == set(markers), seconds=60)
        service.process.send_signal(signal.SIGKILL)
        service.process.wait(10)
        for worker in workers:
            worker.join(30)
    finally:
        stop_service(service)
    restarted = start_service(tmp_path, instance, backend=backend)
    try:
        with restarted.client() as client:
            intents = [json.loads(r.data_json) for r in client.query_audit(kinds=[records.REQUEST_INTENT])]
            outcomes = [json.loads(r.data_json) for r in client.query_audit(kinds=[records.REQUEST])]
            verdict = client.verify_audit()
        assert verdict.intact, verdict.problem
        sent = [i["params"]["arguments"].get("marker") for i in intents if i["method"] == "tools/call"]
        assert sorted(sent) == sorted(markers)
        # None of them was answered, so no outcome was written; without the intent they would leave no trace.
        assert not [o for o in outcomes if o["method"] == "tools/call"]
    finally:
        stop_service(restarted)


def test_an_altered_row_is_named_by_verify(sandbox_images: dict[str, str], backend: str, tmp_path: Path) -> None:
    service = start_service(tmp_path, f"it-audit-tamper-{secrets.token_hex(3)}", backend=backend)
    try:
        with service.client() as client, client.session("time") as opened:
            client.call_tool(opened.session_id, "convert_time", CONVERT)
            target = client.call_tool(opened.session_id, "get_current_time", NOW).audit_id
            client.call_tool(opened.session_id, "convert_time", CONVERT)
        with sqlite3.connect(service.audit_db) as db:
            seq, body = db.execute("SELECT seq, body FROM records WHERE id = ?", (target,)).fetchone()
            # An attacker with the file: drop the guard triggers, then make the answer say something else.
            for (trigger,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
                db.execute(f"DROP TRIGGER {trigger}")
            db.execute("UPDATE records SET body = ? WHERE id = ?", (body.replace("UTC", "CET", 1), target))
        with service.client() as client:
            verdict = client.verify_audit()
        assert not verdict.intact
        assert (verdict.broken_seq, verdict.broken_id) == (seq, target)
        shown = cli(service, "audit", "verify")
        assert shown.returncode == 1
        assert str(seq) in shown.stdout and target in shown.stdout, shown.stdout
    finally:
        stop_service(service)


def test_replay_of_a_real_server_reports_same_different_and_refused(
    sandbox_images: dict[str, str], backend: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("default_caller: {profiles: [time], roles: [auditor]}\n", encoding="utf-8")
    config = tmp_path / "settings.yaml"
    config.write_text("policy: policy.yaml\npool: {}\n", encoding="utf-8")
    service = start_service(tmp_path, f"it-audit-replay-{secrets.token_hex(3)}", config=config, backend=backend)
    try:
        with service.client() as client:
            with client.session("time") as opened:
                recorded = opened.session_id
                converted = client.call_tool(recorded, "convert_time", CONVERT)
                client.call_tool(recorded, "get_current_time", NOW)
            time.sleep(1.1)  # the clock the server reports moves on, so get_current_time must differ
            verdicts = list(client.replay_session(recorded, timeout=120))
            assert [(v.tool, v.verdict) for v in verdicts] == [
                ("convert_time", records.SAME), ("get_current_time", records.DIFFERENT),
            ]  # fmt: skip
            assert verdicts[0].original_audit_id == converted.audit_id and verdicts[0].replay_audit_id
            diff = json.loads(verdicts[1].diff_json)
            assert any(entry["op"] == "replace" and "/result/" in entry["path"] for entry in diff), diff
            replayed = verdicts[0].replay_session_id
            opened_again = list(client.query_audit(session_id=replayed, kinds=[records.SESSION_OPEN]))
            original = list(client.query_audit(session_id=recorded, kinds=[records.SESSION_OPEN]))
            opened_data, original_data = json.loads(opened_again[0].data_json), json.loads(original[0].data_json)
            assert opened_data["image_id"] == original_data["image_id"]
            assert opened_data["image_id"].startswith("sha256:")
            assert opened_data["labels"] == {"replay-of": recorded}

        policy.write_text(
            "default_caller: {profiles: [time], roles: [auditor], tools: {deny: [convert_time]}}\n", encoding="utf-8"
        )
        service.process.send_signal(signal.SIGHUP)
        _wait_for(lambda: service.log().count("policy reloaded") >= 1)
        shown = cli(service, "replay", recorded)
        assert shown.returncode == 1, shown.stdout + shown.stderr
        assert "convert_time: refused" in shown.stdout and "default_caller.tools.deny" in shown.stdout, shown.stdout
        assert "get_current_time: different" in shown.stdout
        assert "2 calls: 0 same, 1 different, 1 refused" in shown.stdout

        listed = cli(service, "audit", "list", "--session", recorded, "--since", "1h")
        assert listed.returncode == 0, listed.stderr
        kinds = [line.split()[3] for line in listed.stdout.splitlines() if line.strip()]
        assert kinds[:2] == [records.POLICY, records.SESSION_OPEN] and kinds[-1] == records.SESSION_CLOSE
        # The open and two calls were decided by the policy; the tools listed at open are in session.open.
        assert kinds.count(records.REQUEST) == 2 and kinds.count(records.POLICY) == 3
        exported = tmp_path / "session.jsonl"
        assert cli(service, "audit", "export", recorded, "-o", str(exported)).returncode == 0
        lines = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()]
        assert {line["session_id"] for line in lines} == {recorded} and len(lines) == len(kinds)
        checked = offline_cli("audit", "verify", "--export", str(exported))
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        stop_service(service)


def test_retention_exports_then_deletes_and_the_chain_still_verifies(
    sandbox_images: dict[str, str], backend: str, tmp_path: Path
) -> None:
    exports = tmp_path / "exports"
    config = tmp_path / "settings.yaml"
    config.write_text(textwrap.dedent(f"""
        audit: {{retention: 3s, export_dir: {exports}}}
        pool: {{}}
    """), encoding="utf-8")  # fmt: skip
    service = start_service(tmp_path, f"it-audit-keep-{secrets.token_hex(3)}", config=config, backend=backend)
    try:
        with service.client() as client, client.session("time") as opened:
            first = client.call_tool(opened.session_id, "get_current_time", NOW).audit_id
        _wait_for(lambda: exports.exists() and any(exports.glob("audit-*.jsonl")), seconds=30)
        _wait_for(lambda: first not in request_ids(service), seconds=30)
        with service.client() as client:
            verdict = client.verify_audit()
            retained = list(client.query_audit(kinds=[records.RETENTION]))
        assert verdict.intact, verdict.problem
        assert verdict.first_seq > 1 and retained
        exported_ids = {
            json.loads(line)["id"] for path in exports.glob("audit-*.jsonl") for line in path.read_text().splitlines()
        }
        assert first in exported_ids
        for path in exports.glob("audit-*.jsonl"):
            checked = offline_cli("audit", "verify", "--export", str(path))
            assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        stop_service(service)
