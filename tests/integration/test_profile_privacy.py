"""Under a token policy, an unknown profile's NOT_FOUND names only the profiles the caller may open: the others are
other tenants' (a real service on a real port; nothing starts a sandbox).

alice may open ``time``; bob may open ``memory`` and ``fetch``.
"""

from __future__ import annotations

import secrets
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx2
import pytest

from runner.api.auth import hash_token, new_token
from tests.integration.conftest import Service, start_service, stop_service

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Tenants:
    service: Service
    alice: str
    bob: str


@pytest.fixture(scope="module")
def tenants(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    tmp = tmp_path_factory.mktemp("profile-privacy")
    alice, bob = new_token(), new_token()
    (tmp / "policy.yaml").write_text(textwrap.dedent(f"""
        callers:
          alice: {{tokens: ["{hash_token(alice)}"], profiles: [time]}}
          bob: {{tokens: ["{hash_token(bob)}"], profiles: [memory, fetch]}}
    """), encoding="utf-8")  # fmt: skip
    config = tmp / "settings.yaml"
    config.write_text("auth: {tokens: true}\npolicy: policy.yaml\npool: {}\n", encoding="utf-8")
    service = start_service(tmp, f"it-privacy-{secrets.token_hex(4)}", config=config)
    try:
        yield Tenants(service, alice, bob)
    finally:
        stop_service(service)


def _not_found(caught: pytest.ExceptionInfo[grpc.RpcError]) -> str:
    error = caught.value
    assert isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.NOT_FOUND
    return str(error.details())


def test_open_of_an_unknown_profile_names_only_the_callers_profiles(tenants: Tenants) -> None:
    with tenants.service.client(token=tenants.alice) as client, pytest.raises(grpc.RpcError) as caught:
        client.open_session("no-such-profile")
    message = _not_found(caught)
    assert message == "no profile named 'no-such-profile' (profiles you may open: time)"
    with tenants.service.client(token=tenants.bob) as client, pytest.raises(grpc.RpcError) as caught:
        client.open_session("no-such-profile")
    assert _not_found(caught) == "no profile named 'no-such-profile' (profiles you may open: fetch, memory)"


def test_listing_an_unknown_profile_names_only_the_callers_profiles(tenants: Tenants) -> None:
    with tenants.service.client(token=tenants.alice) as client, pytest.raises(grpc.RpcError) as caught:
        client.list_profiles("no-such-profile")
    message = _not_found(caught)
    assert "time" in message and "memory" not in message and "fetch" not in message


def test_the_mcp_doors_unknown_profile_names_only_the_callers_profiles(tenants: Tenants) -> None:
    reply = httpx2.post(
        f"http://{tenants.service.mcp_listen}/mcp/no-such-profile",
        json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "it", "version": "1"}}},
        headers={"authorization": f"Bearer {tenants.alice}", "accept": "application/json, text/event-stream"},
        timeout=30,
    )  # fmt: skip
    assert reply.status_code == 404
    assert reply.json()["error"]["message"] == "no profile named 'no-such-profile' (profiles you may open: time)"
