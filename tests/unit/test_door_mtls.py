"""The HTTP door names callers by their verified client certificate, as gRPC does: a real TLS listener on loopback."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.datastructures import Headers

from runner.api.auth import hash_token
from runner.certs import DevCerts, make_dev_certs
from runner.config import AuthConfig, McpHttpConfig, TlsConfig
from runner.door.http import DoorApp, RunningDoor, start_door
from runner.door.identity import HttpAuthenticator, certificate_name
from runner.errors import Unauthenticated
from tests.unit.door_fakes import FakeManager

OWNERS = {hash_token("mcpr_alice"): "alice", hash_token("mcpr_bob"): "bob"}
JSON_SSE = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[DevCerts, DevCerts]:
    """Our CA with clients alice and carol, and an unrelated CA with its own alice."""
    ours = make_dev_certs(tmp_path_factory.mktemp("ca"), clients=["alice", "carol"])
    theirs = make_dev_certs(tmp_path_factory.mktemp("other-ca"), clients=["alice"])
    return ours, theirs


async def _door(manager: FakeManager, certs: DevCerts, auth: AuthConfig) -> RunningDoor:
    tls = TlsConfig(cert=certs.server_cert, key=certs.server_key, client_ca=certs.ca_cert)
    app = DoorApp(manager, McpHttpConfig(listen="127.0.0.1:0"), ["time"], HttpAuthenticator(auth, OWNERS.get),
                  lambda *note: None)  # fmt: skip
    return await start_door(app, "127.0.0.1:0", tls=tls, grace=1)


@pytest.fixture
async def mtls_door(certs: tuple[DevCerts, DevCerts]) -> AsyncIterator[tuple[RunningDoor, FakeManager]]:
    manager = FakeManager()
    running = await _door(manager, certs[0], AuthConfig(mtls=True))
    yield running, manager
    await running.stop()


def _client(ca: Path, cert: tuple[Path, Path] | None = None) -> httpx2.AsyncClient:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(*map(str, cert))
    return httpx2.AsyncClient(verify=context, timeout=10)


def _url(door: RunningDoor, profile: str = "time") -> str:
    return f"https://127.0.0.1:{door.port}/mcp/{profile}"


async def test_a_certificate_of_the_ca_names_its_caller(
    mtls_door: tuple[RunningDoor, FakeManager], certs: tuple[DevCerts, DevCerts]
) -> None:
    door, manager = mtls_door
    ours, _ = certs
    async with _client(ours.ca_cert, ours.clients["alice"]) as http:
        reply = await http.post(_url(door), json=INIT, headers=JSON_SSE)
    assert reply.status_code == 200
    assert [(opened.caller, opened.door) for opened in manager.opens] == [("alice", "mcp-http")]


async def test_each_connection_is_named_by_its_own_certificate(
    mtls_door: tuple[RunningDoor, FakeManager], certs: tuple[DevCerts, DevCerts]
) -> None:
    """Kept-alive connections of two callers, requests interleaved: an unknown profile is each caller's refusal,
    recorded under the name of the certificate of the connection it came on."""
    door, manager = mtls_door
    ours, _ = certs
    async with _client(ours.ca_cert, ours.clients["alice"]) as alice, \
            _client(ours.ca_cert, ours.clients["carol"]) as carol:  # fmt: skip
        for _ in range(3):
            for http in (alice, carol):
                assert (await http.post(_url(door, "nope"), json=PING, headers=JSON_SSE)).status_code == 404
    assert [refusal["caller"] for refusal in manager.refusals] == ["alice", "carol"] * 3


async def test_no_certificate_or_another_cas_is_refused_at_the_handshake(
    mtls_door: tuple[RunningDoor, FakeManager], certs: tuple[DevCerts, DevCerts]
) -> None:
    door, manager = mtls_door
    ours, theirs = certs
    for client in (_client(ours.ca_cert), _client(ours.ca_cert, theirs.clients["alice"])):
        async with client as http:
            with pytest.raises(httpx2.TransportError):
                await http.post(_url(door), json=INIT, headers=JSON_SSE)
    async with httpx2.AsyncClient(timeout=10) as plaintext:
        with pytest.raises(httpx2.TransportError):
            await plaintext.post(f"http://127.0.0.1:{door.port}/mcp/time", json=INIT, headers=JSON_SSE)
    assert manager.opens == [] and manager.refusals == []


async def test_with_tokens_too_both_must_name_the_same_caller(certs: tuple[DevCerts, DevCerts]) -> None:
    manager = FakeManager()
    ours, _ = certs
    door = await _door(manager, ours, AuthConfig(mtls=True, tokens=True))
    try:
        async with _client(ours.ca_cert, ours.clients["alice"]) as http:
            other = await http.post(_url(door), json=INIT, headers={**JSON_SSE, "authorization": "Bearer mcpr_bob"})
            own = await http.post(_url(door), json=INIT, headers={**JSON_SSE, "authorization": "Bearer mcpr_alice"})
            alone = await http.post(_url(door), json=INIT, headers=JSON_SSE)
    finally:
        await door.stop()
    assert other.status_code == 401
    error: dict[str, Any] = other.json()["error"]
    assert error["data"]["status"] == "UNAUTHENTICATED" and "another caller" in error["message"]
    assert "bob" not in error["message"]  # the refusal does not name the token's owner
    assert (own.status_code, alone.status_code) == (200, 200)
    assert [opened.caller for opened in manager.opens] == ["alice", "alice"]


def test_the_name_is_the_subject_cn_else_the_first_san() -> None:
    """``ssl.SSLObject.getpeercert()``'s shape, as gRPC reads its auth context: CN first, then SANs in order."""
    subject = ((("organizationName", "mcp-runner"),), (("commonName", "alice"),))
    sans = (("DNS", "svc-b.example"), ("URI", "spiffe://x/y"))
    assert certificate_name({"subject": subject, "subjectAltName": sans}) == "alice"
    assert certificate_name({"subject": ((("organizationName", "o"),),), "subjectAltName": sans}) == "svc-b.example"
    assert certificate_name({"subject": ((("commonName", ""),),), "subjectAltName": sans}) == "svc-b.example"
    assert certificate_name({"subject": ()}) is None
    with pytest.raises(Unauthenticated, match="not a caller name"):
        certificate_name({"subject": ((("commonName", "alice "),),)})


def test_without_a_certificate_name_mtls_refuses() -> None:
    authenticator = HttpAuthenticator(AuthConfig(mtls=True), OWNERS.get)
    with pytest.raises(Unauthenticated, match="client certificate"):
        authenticator.identify(Headers(), {"subject": ((("organizationName", "o"),),)})
    with pytest.raises(Unauthenticated, match="client certificate"):
        authenticator.identify(Headers(), None)
