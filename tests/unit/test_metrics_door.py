"""``mcp_runner_http_refusals_total``: the MCP door's own refusals (before the SessionManager) counted by status,
over uvicorn on loopback with a fake SessionManager; the manager's refusals (an unknown session, a refused open,
a refusal rate spent) are left to its records and not counted twice."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import pytest

from runner.api.auth import hash_token
from runner.config import AuthConfig, McpHttpConfig
from runner.door.http import DoorApp, RunningDoor, start_door
from runner.door.identity import HttpAuthenticator
from runner.errors import PermissionDenied
from runner.observe.metrics import RunnerMetrics
from runner.observe.scrape import MetricsEndpoint
from runner.policy import PolicyStore
from tests.unit.door_fakes import FakeManager

TOKEN = "mcpr_" + "a" * 40
JSON_SSE = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip


@pytest.fixture
def manager() -> FakeManager:
    return FakeManager()


@pytest.fixture
def metrics() -> RunnerMetrics:
    return RunnerMetrics(["time"])


@pytest.fixture
async def base(manager: FakeManager, metrics: RunnerMetrics) -> AsyncIterator[str]:
    authenticator = HttpAuthenticator(AuthConfig(tokens=True), {hash_token(TOKEN): "alice"}.get)
    config = McpHttpConfig(listen="127.0.0.1:0", max_body_bytes=4096)
    scrape = MetricsEndpoint(metrics, authenticator, PolicyStore(None), loopback=True, public=False)
    app = DoorApp(manager, config, ["time"], authenticator, lambda *note: None, scrape, refused=metrics.http_refused)
    door: RunningDoor = await start_door(app, "127.0.0.1:0", tls=None, grace=1)
    try:
        yield f"http://127.0.0.1:{door.port}"
    finally:
        await door.stop()


def counted(metrics: RunnerMetrics) -> dict[str, float]:
    return {
        sample.labels["status"]: sample.value
        for family in metrics.registry.collect() if family.name == "mcp_runner_http_refusals"
        for sample in family.samples if sample.name.endswith("_total")
    }  # fmt: skip


async def test_each_refusal_of_the_door_counts_once_under_its_status(base: str, metrics: RunnerMetrics) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    async with httpx2.AsyncClient(timeout=30) as http:
        answers = [
            await http.post(f"{base}/mcp/time", headers=JSON_SSE, json=INIT),  # no token: 401
            await http.post(f"{base}/mcp/time", headers={**JSON_SSE, **auth, "host": "evil.example"}, json=INIT),
            await http.post(f"{base}/mcp/time", headers={**JSON_SSE, **auth, "origin": "http://x.example"}, json=INIT),
            await http.post(f"{base}/elsewhere", headers={**JSON_SSE, **auth}, json=INIT),
            await http.post(f"{base}/mcp/time", headers={**auth, "content-type": "text/plain"}, content=b"{}"),
            await http.post(f"{base}/mcp/time", headers={**JSON_SSE, **auth}, content=b"[" * 5000),
            await http.put(f"{base}/mcp/time", headers={**JSON_SSE, **auth}, json=INIT),
            await http.post(f"{base}/metrics", headers=auth),
            await http.get(f"{base}/metrics"),
        ]
        assert (await http.get(f"{base}/metrics", headers=auth)).status_code == 200
    statuses = [answer.status_code for answer in answers]
    assert statuses == [401, 421, 403, 404, 400, 413, 405, 405, 401]
    assert counted(metrics) == {"401": 2, "421": 1, "403": 1, "404": 1, "400": 1, "413": 1, "405": 2}


async def test_the_managers_refusals_are_not_counted_as_the_doors(
    base: str, manager: FakeManager, metrics: RunnerMetrics
) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    async with httpx2.AsyncClient(timeout=30) as http:
        unknown = await http.post(f"{base}/mcp/time", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                                  headers={**JSON_SSE, **auth, "mcp-session-id": "gone"})  # fmt: skip
        missing = await http.post(f"{base}/mcp/nope", headers={**JSON_SSE, **auth}, json=INIT)
        manager.open_error = PermissionDenied("caller alice may not open profile 'time'")
        denied = await http.post(f"{base}/mcp/time", headers={**JSON_SSE, **auth}, json=INIT)
        manager.refusal_limit = 0
        throttled = await http.post(f"{base}/mcp/nope", headers={**JSON_SSE, **auth}, json=INIT)
    assert [unknown.status_code, missing.status_code, denied.status_code, throttled.status_code] == [404, 404, 403,
                                                                                                    429]  # fmt: skip
    assert len(manager.refusals) == 2 and counted(metrics) == {}


def test_an_unexpected_status_shares_one_label() -> None:
    metrics = RunnerMetrics(["time"])
    for status in (406, 415, 418, 431, 451, 499, 400):
        metrics.http_refused(status)
    assert counted(metrics) == {"other": 6, "400": 1}
