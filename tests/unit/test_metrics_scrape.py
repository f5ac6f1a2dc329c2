"""``/metrics``: GET only, the door's Host check on loopback, and the callers' credentials where callers need them
(unless ``metrics.public``)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner.api.auth import hash_token
from runner.config import AuthConfig
from runner.door.identity import HttpAuthenticator
from runner.observe.metrics import RunnerMetrics
from runner.observe.scrape import MetricsEndpoint

TOKEN = "mcpr_" + "a" * 40


def endpoint(*, tokens: bool = False, public: bool = False, loopback: bool = True) -> MetricsEndpoint:
    owners = {hash_token(TOKEN): "prometheus"}
    authenticator = HttpAuthenticator(AuthConfig(tokens=tokens), owners.get)
    return MetricsEndpoint(RunnerMetrics(["time"]), authenticator, loopback=loopback, public=public)


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
