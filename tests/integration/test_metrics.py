"""``/metrics`` of the real service: real calls on the real `time` server move the counters by exactly what was done,
scraped over HTTP from the MCP door's listener and parsed as Prometheus text."""

from __future__ import annotations

import secrets
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner.api.auth import hash_token, new_token
from tests.integration.conftest import Service, start_service, stop_service

pytestmark = pytest.mark.integration

NOW = {"timezone": "UTC"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def watched(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service of its own (no other test's calls in its counters) whose policy denies the `time` server's
    convert_time."""
    tmp = tmp_path_factory.mktemp("metrics")
    (tmp / "policy.yaml").write_text(
        "default_caller: {profiles: [time], tools: {deny: [convert_time]}}\n", encoding="utf-8"
    )
    config = tmp / "settings.yaml"
    config.write_text(textwrap.dedent("""
        policy: policy.yaml
        pool: {}
    """), encoding="utf-8")  # fmt: skip
    service = start_service(tmp, f"it-metrics-{secrets.token_hex(4)}", config=config)
    yield service
    stop_service(service)


def scrape(service: Service) -> Samples:
    with urllib.request.urlopen(f"http://{service.mcp_listen}/metrics", timeout=10) as answer:
        assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain; version=")
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_real_calls_move_the_counters_by_exactly_what_was_done(watched: Service) -> None:
    before = scrape(watched)
    with watched.client() as client, client.session("time") as opened:
        assert client.call_tool(opened.session_id, "get_current_time", NOW).text
        with pytest.raises(grpc.RpcError) as invalid:
            client.call_tool(opened.session_id, "get_current_time", {"timezone": 5})
        assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as denied:
            client.call_tool(opened.session_id, "convert_time", {})
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        during = scrape(watched)
    after = scrape(watched)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(during, "mcp_runner_sessions_open", profile="time") == 1
    assert value(after, "mcp_runner_sessions_open", profile="time") == 0
    assert moved("mcp_runner_sessions_opened_total", profile="time", outcome="ok") == 1
    assert moved("mcp_runner_sessions_closed_total", profile="time", state="closed") == 1
    assert moved("mcp_runner_session_open_seconds_count", profile="time", start="cold") == 1
    assert moved("mcp_runner_tool_calls_total", profile="time", tool="get_current_time", outcome="ok") == 1
    assert moved("mcp_runner_tool_calls_total", profile="time", tool="get_current_time",
                 outcome="invalid_argument") == 1  # fmt: skip
    assert moved("mcp_runner_tool_calls_total", profile="time", tool="convert_time", outcome="permission_denied") == 1
    assert moved("mcp_runner_tool_call_seconds_count", profile="time", tool="get_current_time") == 2
    assert moved("mcp_runner_validation_failures_total", profile="time", method="tools/call") == 1
    assert moved("mcp_runner_policy_decisions_total", action="tools/call", verdict="deny") == 1
    assert moved("mcp_runner_policy_decisions_total", action="open", verdict="allow") == 1
    assert moved("mcp_runner_audit_commit_seconds_count") >= 4  # open, three requests, close: each durable
    assert value(after, "mcp_runner_audit_queue_depth") >= 0
    (build,) = [labels for name, labels in after if name == "mcp_runner_build_info"]
    assert dict(build)["backend"] == "docker"


def test_a_refused_open_counts_without_its_profile_name_as_a_label(watched: Service) -> None:
    before = scrape(watched)
    with watched.client() as client, pytest.raises(grpc.RpcError) as refused:
        client.open_session("no-such-profile-" + "x" * 200)
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    after = scrape(watched)
    assert value(after, "mcp_runner_sessions_opened_total", profile="unknown", outcome="refused") - value(
        before, "mcp_runner_sessions_opened_total", profile="unknown", outcome="refused") == 1  # fmt: skip
    assert not any("no-such-profile" in v for _, labels in after for _, v in labels)


def test_metrics_answer_get_only_and_only_for_this_machine(watched: Service) -> None:
    before = scrape(watched)
    url = f"http://{watched.mcp_listen}/metrics"
    with pytest.raises(urllib.error.HTTPError) as posted:
        urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=10)
    assert posted.value.code == 405 and posted.value.headers["Allow"] == "GET"
    rebound = urllib.request.Request(url, headers={"Host": "attacker.example"})
    with pytest.raises(urllib.error.HTTPError) as foreign:
        urllib.request.urlopen(rebound, timeout=10)
    assert foreign.value.code == 421
    after = scrape(watched)  # the door's own refusals, by status
    for status in ("405", "421"):
        refused = "mcp_runner_http_refusals_total"
        assert value(after, refused, status=status) - value(before, refused, status=status) == 1, status


def test_the_service_log_names_where_metrics_are(watched: Service) -> None:
    assert f"http://{watched.mcp_listen}/metrics (open)" in watched.log()



def test_where_callers_need_a_token_so_does_a_scrape_of_a_caller_who_reads_everything(
    images: dict[str, str], tmp_path: Path
) -> None:
    token, tenant = new_token(), new_token()
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(f"""\
        callers:
          prometheus: {{tokens: ["{hash_token(token)}"], profiles: [], roles: [auditor]}}
          tenant: {{tokens: ["{hash_token(tenant)}"], profiles: [time]}}
        """), encoding="utf-8")  # fmt: skip
    config = tmp_path / "settings.yaml"
    config.write_text("auth: {tokens: true}\npolicy: policy.yaml\npool: {}\n", encoding="utf-8")
    service = start_service(tmp_path, f"it-metrics-auth-{secrets.token_hex(4)}", config=config)
    try:
        url = f"http://{service.mcp_listen}/metrics"
        for presented in (None, new_token()):
            headers = {"Authorization": f"Bearer {presented}"} if presented else {}
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
            assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"].startswith("Bearer")
        nosy = urllib.request.Request(url, headers={"Authorization": f"Bearer {tenant}"})
        with pytest.raises(urllib.error.HTTPError) as forbidden:
            urllib.request.urlopen(nosy, timeout=10)
        said = forbidden.value.read().decode()
        assert forbidden.value.code == 403 and "caller tenant" in said and "auditor or admin role" in said
        scraped = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(scraped, timeout=10) as answer:
            text = answer.read().decode()
        assert answer.status == 200 and "mcp_runner_build_info" in text
        samples = {(s.name, s.labels.get("status")): s.value for f in text_string_to_metric_families(text)
                   for s in f.samples}  # fmt: skip
        assert samples[("mcp_runner_http_refusals_total", "401")] == 2
        assert samples[("mcp_runner_http_refusals_total", "403")] == 1
        assert f"{url} (an auditor's or admin's credentials)" in service.log() and token not in service.log()
    finally:
        stop_service(service)


def test_the_warm_pool_shows_its_sandboxes_and_claims(images: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("pool: {time: 1}\n", encoding="utf-8")
    service = start_service(tmp_path, f"it-metrics-pool-{secrets.token_hex(4)}", config=config)
    try:
        deadline = time.monotonic() + 120
        while value(scrape(service), "mcp_runner_pool_ready", profile="time") < 1:
            assert time.monotonic() < deadline, "the pool never filled:\n" + service.log()
            time.sleep(0.2)
        assert value(scrape(service), "mcp_runner_pool_target", profile="time") == 1
        with service.client() as client, client.session("time") as opened:
            assert client.call_tool(opened.session_id, "get_current_time", NOW).text
        after = scrape(service)
        assert value(after, "mcp_runner_pool_claims_total", profile="time", result="hit") == 1
        assert value(after, "mcp_runner_session_open_seconds_count", profile="time", start="warm") == 1
        assert value(after, "mcp_runner_tool_calls_total", profile="time", tool="get_current_time", outcome="ok") == 1
    finally:
        stop_service(service)
