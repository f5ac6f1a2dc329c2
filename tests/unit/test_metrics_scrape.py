"""``/metrics``: GET only, the door's Host check on loopback, and the callers' credentials where callers need them,
of a caller who reads everything (the auditor or admin role), unless ``metrics.public``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner.api.auth import hash_token
from runner.config import AuthConfig
from runner.door.identity import HttpAuthenticator
from runner.observe.metrics import RunnerMetrics
from runner.observe.scrape import MetricsEndpoint
from runner.policy import PolicyStore

TOKEN = "mcpr_" + "a" * 40
ADMIN_TOKEN = "mcpr_" + "b" * 40
TENANT_TOKEN = "mcpr_" + "c" * 40
OWNERS = {hash_token(TOKEN): "prometheus", hash_token(ADMIN_TOKEN): "root", hash_token(TENANT_TOKEN): "tenant"}
ROLES = """\
callers:
  prometheus: {profiles: [], roles: [auditor]}
  root: {profiles: [], roles: [admin]}
  tenant: {profiles: ["*"], roles: [approver]}
"""
"""Prometheus's caller audits, root administers; a tenant opens sessions, and approves, but reads only its own."""


def endpoint(*, tokens: bool = False, public: bool = False, loopback: bool = True,
             policy: PolicyStore | None = None) -> MetricsEndpoint:  # fmt: skip
    """Without ``policy``: the embedded default, which gives every caller every role (a developer's machine)."""
    authenticator = HttpAuthenticator(AuthConfig(tokens=tokens), OWNERS.get)
    return MetricsEndpoint(RunnerMetrics(["time"]), authenticator, policy or PolicyStore(None), loopback=loopback,
                           public=public)  # fmt: skip


async def scrape(app: MetricsEndpoint, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], str]:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http", "method": method, "path": "/metrics", "query_string": b"", "scheme": "http",
        "headers": [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in
                    {"host": "127.0.0.1:50052", **headers}.items()],
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


async def test_a_loopback_service_without_authentication_answers_any_local_scrape() -> None:
    status, headers, body = await scrape(endpoint())
    assert status == 200 and headers["content-type"].startswith("text/plain; version=")
    assert "mcp_runner_build_info" in {f.name for f in text_string_to_metric_families(body)}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD"])
async def test_only_get_is_answered(method: str) -> None:
    status, headers, body = await scrape(endpoint(), method)
    assert status == 405 and headers["allow"] == "GET" and "GET only" in body


async def test_a_foreign_host_is_refused_on_loopback_as_by_the_door() -> None:
    status, _, body = await scrape(endpoint(), host="evil.example:50052")
    assert status == 421 and "not this machine" in body
    status, _, _ = await scrape(endpoint(), origin="http://evil.example")
    assert status == 403
    status, _, _ = await scrape(endpoint(loopback=False), host="metrics.internal:50052")
    assert status == 200


async def test_where_callers_authenticate_a_scrape_must_too() -> None:
    guarded = endpoint(tokens=True)
    status, headers, body = await scrape(guarded)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer") and "Authorization: Bearer" in body
    status, _, body = await scrape(guarded, authorization="Bearer mcpr_wrong")
    assert status == 401 and "not known" in body
    status, _, _ = await scrape(guarded, authorization=f"Bearer {TOKEN}")
    assert status == 200


async def test_public_metrics_need_no_token() -> None:
    status, _, _ = await scrape(endpoint(tokens=True, public=True))
    assert status == 200


async def test_a_caller_without_a_reading_role_may_not_scrape_other_tenants_activity(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(ROLES, encoding="utf-8")
    policy = PolicyStore(tmp_path / "policy.yaml")
    guarded = endpoint(tokens=True, policy=policy)
    status, _, body = await scrape(guarded, authorization=f"Bearer {TENANT_TOKEN}")
    assert status == 403
    assert "caller tenant" in body and "auditor or admin role" in body and "callers.tenant.roles" in body
    assert "metrics: {public: true}" in body
    assert (await scrape(guarded, authorization=f"Bearer {TOKEN}"))[0] == 200
    assert (await scrape(guarded, authorization=f"Bearer {ADMIN_TOKEN}"))[0] == 200
    public = endpoint(tokens=True, public=True, policy=policy)
    assert (await scrape(public, authorization=f"Bearer {TENANT_TOKEN}"))[0] == 200
