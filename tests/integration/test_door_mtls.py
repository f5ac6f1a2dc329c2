"""The MCP HTTP door of a service that authenticates by client certificate alone (no tokens): the real service, a
real sandbox, the SDK's client over HTTPS. The caller is the certificate's CN, as on gRPC."""

from __future__ import annotations

import secrets
import ssl
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from runner.certs import DevCerts, make_dev_certs
from tests.integration.conftest import Service, start_service, stop_service

pytestmark = [pytest.mark.integration, pytest.mark.backends("docker")]

JSON_SSE = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[DevCerts, DevCerts]:
    """Our CA with clients alice and carol, and an unrelated CA with its own alice."""
    ours = make_dev_certs(tmp_path_factory.mktemp("ca"), clients=["alice", "carol"])
    theirs = make_dev_certs(tmp_path_factory.mktemp("other-ca"), clients=["alice"])
    return ours, theirs


@pytest.fixture(scope="module")
def mtls_door(
    images: dict[str, str], backend: str, certs: tuple[DevCerts, DevCerts], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    ours, _ = certs
    tmp = tmp_path_factory.mktemp("mtls-door")
    (tmp / "policy.yaml").write_text("callers:\n  alice: {profiles: [time]}\n", encoding="utf-8")
    config = tmp / "settings.yaml"
    config.write_text(
        textwrap.dedent(f"""
            tls: {{cert: {ours.server_cert}, key: {ours.server_key}, client_ca: {ours.ca_cert}}}
            policy: policy.yaml
            pool: {{}}
        """),
        encoding="utf-8",
    )
    service = start_service(
        tmp, f"it-mtls-door-{secrets.token_hex(4)}", config=config, ca=ours.ca_cert, probe_cert=ours.clients["carol"],
        backend=backend,
    )  # fmt: skip
    assert service.mcp_listen, "the service serves its MCP door with mTLS alone"
    yield service
    stop_service(service)


def _client(ca: Path, cert: tuple[Path, Path] | None = None) -> httpx2.AsyncClient:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(*map(str, cert))
    return httpx2.AsyncClient(verify=context, timeout=60)


async def test_mtls_door_names_the_caller_by_certificate(mtls_door: Service, certs: tuple[DevCerts, DevCerts]) -> None:
    ours, _ = certs
    url = f"https://{mtls_door.mcp_listen}/mcp/time"
    async with (
        _client(ours.ca_cert, ours.clients["alice"]) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        result = await client.call_tool("get_current_time", {"timezone": "UTC"})
    assert not result.is_error
    async with _client(ours.ca_cert, ours.clients["carol"]) as http:
        denied = await http.post(url, json=INIT, headers=JSON_SSE)
    assert denied.status_code == 403  # carol is authenticated, and the policy gives her no profiles
    assert "caller carol" in denied.json()["error"]["message"]


async def test_mtls_door_refuses_no_certificate_and_another_cas(
    mtls_door: Service, certs: tuple[DevCerts, DevCerts]
) -> None:
    ours, theirs = certs
    url = f"https://{mtls_door.mcp_listen}/mcp/time"
    for client in (_client(ours.ca_cert), _client(ours.ca_cert, theirs.clients["alice"])):
        async with client as http:
            with pytest.raises(httpx2.TransportError):
                await http.post(url, json=INIT, headers=JSON_SSE)
