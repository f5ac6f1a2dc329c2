"""ListProfiles on a real service: another tenant's profile is answered as a missing one (no existence oracle), and
each listing is one of the caller's calls, refused RESOURCE_EXHAUSTED past its rate (a real service on a real
port; nothing starts a sandbox).

alice may open ``time``; carol may open ``time`` at a call rate with a burst of 2.
"""

from __future__ import annotations

import secrets
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from runner.api.auth import hash_token, new_token
from tests.integration.conftest import Service, start_service, stop_service

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Tenants:
    service: Service
    alice: str
    carol: str


@pytest.fixture(scope="module")
def tenants(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    tmp = tmp_path_factory.mktemp("catalog-review")
    alice, carol = new_token(), new_token()
    (tmp / "policy.yaml").write_text(textwrap.dedent(f"""
        callers:
          alice: {{tokens: ["{hash_token(alice)}"], profiles: [time]}}
          carol: {{tokens: ["{hash_token(carol)}"], profiles: [time], rates: {{calls_per_s: 0.001, call_burst: 2}}}}
    """), encoding="utf-8")  # fmt: skip
    config = tmp / "settings.yaml"
    config.write_text("auth: {tokens: true}\npolicy: policy.yaml\npool: {}\n", encoding="utf-8")
    service = start_service(tmp, f"it-catalog-{secrets.token_hex(4)}", config=config)
    try:
        yield Tenants(service, alice, carol)
    finally:
        stop_service(service)


def _refusal(tenants: Tenants, name: str) -> tuple[grpc.StatusCode, str]:
    with tenants.service.client(token=tenants.alice) as client, pytest.raises(grpc.RpcError) as caught:
        client.list_profiles(name)
    error = caught.value
    assert isinstance(error, grpc.Call)
    return error.code(), str(error.details())


def test_another_tenants_profile_is_answered_as_a_missing_one(tenants: Tenants) -> None:
    hidden, missing = _refusal(tenants, "memory"), _refusal(tenants, "memorx")
    assert hidden == (grpc.StatusCode.NOT_FOUND, "no profile named 'memory' (profiles you may open: time)")
    assert missing == (grpc.StatusCode.NOT_FOUND, "no profile named 'memorx' (profiles you may open: time)")


def test_listing_profiles_spends_the_callers_call_rate(tenants: Tenants) -> None:
    with tenants.service.client(token=tenants.carol) as client:
        assert [p.name for p in client.list_profiles()] == ["time"]
        assert [p.name for p in client.list_profiles("time")] == ["time"]
        with pytest.raises(grpc.RpcError) as caught:
            client.list_profiles()
    error = caught.value
    assert isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "caller carol exceeded 0.001 calls/s (burst 2)" in str(error.details())
    with tenants.service.client(token=tenants.alice) as client:  # another caller's rate is its own
        assert [p.name for p in client.list_profiles()] == ["time"]
