"""Authentication: tokens, listen-address safety, TLS files, and ``Authenticator`` behind a real TLS gRPC server."""

from __future__ import annotations

import datetime
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from runner.api.auth import (
    ANONYMOUS,
    TOKEN_PREFIX,
    Authenticator,
    channel_credentials,
    check_listen_safety,
    check_policy_required,
    hash_token,
    is_loopback,
    new_token,
    server_credentials,
)
from runner.certs import DevCerts, make_dev_certs
from runner.config import AuthConfig, ConfigError, TlsConfig
from runner.errors import InvalidArgument, RunnerError, Unauthenticated

METHOD = "/test.Auth/WhoAmI"
ALICE_TOKEN = new_token()
CERT_ALICE_TOKEN = new_token()
"""Owned by "alice", the name the dev client certificate of alice carries."""
OWNERS = {hash_token(ALICE_TOKEN): "alice-token", hash_token(CERT_ALICE_TOKEN): "alice"}

# ------------------------------------------------------------------------------------------------ tokens


def test_new_token_is_prefixed_urlsafe_and_random() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert token.startswith(TOKEN_PREFIX)
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token[len(TOKEN_PREFIX) :])


def test_hash_token_is_prefixed_sha256() -> None:
    assert hash_token("abc") == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    token = new_token()
    assert hash_token(token) == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert token not in hash_token(token)


# ------------------------------------------------------------------------------------------------ listen safety


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.1.2.3:1", True),
        ("[::1]:0", True),
        ("localhost:1234", True),
        ("LOCALHOST:1", True),
        ("localhost", True),
        ("[::ffff:127.0.0.1]:1", True),
        ("unix:/run/mcp-runner.sock", True),
        ("0.0.0.0:1", False),
        ("[::]:1", False),
        ("10.0.0.1:1", False),
        ("192.168.1.10:50051", False),
        ("example.com:1", False),
        ("localhost.example.com:1", False),
        ("127.0.0.1.example.com:1", False),
        (":50051", False),
        ("[::ffff:10.0.0.1]:1", False),
    ],
)
def test_is_loopback(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


TLS = TlsConfig(cert=Path("server.pem"), key=Path("server-key.pem"))
MTLS = TlsConfig(cert=Path("server.pem"), key=Path("server-key.pem"), client_ca=Path("ca.pem"))
ANON = AuthConfig()
TOKENS = AuthConfig(tokens=True)
CERTS = AuthConfig(mtls=True)


@pytest.mark.parametrize(
    ("listen", "tls", "auth", "error"),
    [
        ("127.0.0.1:50051", None, ANON, None),
        ("[::1]:0", TLS, ANON, None),
        ("localhost:1", None, TOKENS, None),
        ("0.0.0.0:50051", None, ANON, "without authentication"),
        ("0.0.0.0:50051", TLS, ANON, "without authentication"),
        ("0.0.0.0:50051", MTLS, ANON, "without authentication"),
        ("[::]:1", None, ANON, "127.0.0.1"),
        ("0.0.0.0:50051", MTLS, CERTS, None),
        ("0.0.0.0:50051", TLS, TOKENS, None),
        ("0.0.0.0:50051", MTLS, AuthConfig(mtls=True, tokens=True), None),
        ("0.0.0.0:50051", None, TOKENS, None),  # allowed, with a warning (next test)
        ("0.0.0.0:50051", TLS, CERTS, "client_ca"),
        ("0.0.0.0:50051", None, CERTS, "client_ca"),
        ("127.0.0.1:1", TLS, CERTS, "client_ca"),
    ],
)
def test_check_listen_safety(listen: str, tls: TlsConfig | None, auth: AuthConfig, error: str | None) -> None:
    if error is None:
        check_listen_safety(listen, tls, auth)
    else:
        with pytest.raises(InvalidArgument, match=re.escape(error)):
            check_listen_safety(listen, tls, auth)


@pytest.mark.parametrize(
    ("listen", "auth", "policy", "error"),
    [
        ("127.0.0.1:50051", ANON, None, None),  # the one case the embedded default is for
        ("unix:/run/mcp-runner.sock", ANON, None, None),
        ("127.0.0.1:50051", CERTS, None, "callers authenticate with client certificates"),
        ("127.0.0.1:50051", TOKENS, None, "callers authenticate with bearer tokens"),
        ("[::1]:1", AuthConfig(mtls=True, tokens=True), None, "client certificates and bearer tokens"),
        ("0.0.0.0:50051", CERTS, None, "callers authenticate with client certificates"),
        ("0.0.0.0:50051", ANON, None, "0.0.0.0:50051 is not a loopback address"),
        ("127.0.0.1:50051", CERTS, Path("policy.yaml"), None),
        ("0.0.0.0:50051", TOKENS, Path("policy.yaml"), None),
    ],
)
def test_the_embedded_default_policy_serves_only_an_anonymous_loopback_listener(
    listen: str, auth: AuthConfig, policy: Path | None, error: str | None
) -> None:
    if error is None:
        check_policy_required(listen, auth, policy)
        return
    with pytest.raises(ConfigError, match=re.escape(error)) as info:
        check_policy_required(listen, auth, policy)
    assert info.value.message.startswith("refusing to start without a policy file")
    assert "admin, approver and auditor" in info.value.message


def test_tokens_without_tls_off_loopback_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="runner.api.auth"):
        check_listen_safety("127.0.0.1:1", None, TOKENS)
        check_listen_safety("0.0.0.0:1", TLS, TOKENS)
        assert not caplog.records
        check_listen_safety("0.0.0.0:1", None, TOKENS)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "clear text" in record.getMessage()


def test_anonymous_property() -> None:
    assert ANON.anonymous
    assert not TOKENS.anonymous
    assert not CERTS.anonymous


# ------------------------------------------------------------------------------------------------ TLS files


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("ca1"), clients=("alice",))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    """A second, unrelated development CA: its client certificates must not be accepted."""
    return make_dev_certs(tmp_path_factory.mktemp("ca2"), clients=("mallory",))


def test_credentials_from_good_files(certs: DevCerts) -> None:
    cert, key = certs.clients["alice"]
    assert isinstance(server_credentials(TlsConfig(certs.server_cert, certs.server_key)), grpc.ServerCredentials)
    mtls = TlsConfig(certs.server_cert, certs.server_key, certs.ca_cert)
    assert isinstance(server_credentials(mtls), grpc.ServerCredentials)
    assert isinstance(channel_credentials(None), grpc.ChannelCredentials)
    assert isinstance(channel_credentials(certs.ca_cert, cert, key), grpc.ChannelCredentials)


def test_bad_tls_files_fail_naming_the_file(certs: DevCerts, other_certs: DevCerts, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    encrypted = tmp_path / "encrypted-key.pem"
    private = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases: list[tuple[TlsConfig, str]] = [
        (TlsConfig(missing, certs.server_key), f"cannot read the TLS certificate {missing}"),
        (TlsConfig(garbage, certs.server_key), f"{garbage} is not a PEM certificate"),
        (TlsConfig(certs.server_key, certs.server_key), "is not a PEM certificate"),
        (TlsConfig(certs.server_cert, missing), f"cannot read the TLS private key {missing}"),
        (TlsConfig(certs.server_cert, garbage), f"{garbage} is not a PEM private key"),
        (TlsConfig(certs.server_cert, encrypted), f"{encrypted} is encrypted"),
        (TlsConfig(certs.server_cert, other_certs.server_key), "does not belong to the certificate"),
        (TlsConfig(certs.server_cert, certs.server_key, missing), f"client CA certificate {missing}"),
        (TlsConfig(certs.server_cert, certs.server_key, garbage), f"{garbage} is not a PEM certificate"),
    ]
    for tls, message in cases:
        with pytest.raises(InvalidArgument, match=re.escape(message)):
            server_credentials(tls)


def test_expired_certificate_fails_at_start(certs: DevCerts, tmp_path: Path) -> None:
    ca_key = serialization.load_pem_private_key((certs.ca_cert.parent / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(server.subject)
        .issuer_name(server.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    path = tmp_path / "expired.pem"
    path.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(InvalidArgument, match="has expired"):
        server_credentials(TlsConfig(path, certs.server_key))


def test_channel_credentials_need_cert_and_key_together(certs: DevCerts, tmp_path: Path) -> None:
    cert, key = certs.clients["alice"]
    with pytest.raises(InvalidArgument, match="both or neither"):
        channel_credentials(certs.ca_cert, cert=cert)
    with pytest.raises(InvalidArgument, match="both or neither"):
        channel_credentials(certs.ca_cert, key=key)
    with pytest.raises(InvalidArgument, match="cannot read the TLS CA certificate"):
        channel_credentials(tmp_path / "nope.pem")


# ---------------------------------------------------------------------------------------- Authenticator, real server


def _whoami_handler(authenticator: Authenticator) -> grpc.GenericRpcHandler:
    async def whoami(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        try:
            return authenticator.identify(context).encode()
        except RunnerError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
            raise  # abort raises; this only satisfies the type checker

    # No (de)serializers: requests and responses travel as raw bytes.
    return grpc.method_handlers_generic_handler("test.Auth", {"WhoAmI": grpc.unary_unary_rpc_method_handler(whoami)})


@asynccontextmanager
async def serve(auth: AuthConfig, tls: TlsConfig | None) -> AsyncIterator[int]:
    """A grpc.aio server on 127.0.0.1:0 answering WhoAmI with the caller's name; yields its port."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_whoami_handler(Authenticator(auth, OWNERS.get)),))
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
    assert port
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def whoami(
    port: int,
    credentials: grpc.ChannelCredentials | None,
    metadata: Sequence[tuple[str, str]] = (),
) -> str:
    target = f"127.0.0.1:{port}"  # the dev server certificate carries an IP SAN for 127.0.0.1
    channel = grpc.aio.insecure_channel(target) if credentials is None else grpc.aio.secure_channel(target, credentials)
    async with channel:
        answer = await channel.unary_unary(METHOD)(b"", metadata=tuple(metadata), timeout=10)
        return cast(bytes, answer).decode()


async def rejected(
    port: int, credentials: grpc.ChannelCredentials | None, *metadata: tuple[str, str]
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await whoami(port, credentials, metadata)
    return info.value


async def test_mtls_identifies_the_client_certificate(certs: DevCerts) -> None:
    cert, key = certs.clients["alice"]
    async with serve(CERTS, TlsConfig(certs.server_cert, certs.server_key, certs.ca_cert)) as port:
        assert await whoami(port, channel_credentials(certs.ca_cert, cert, key)) == "alice"


async def test_mtls_rejects_a_certificate_from_another_ca_at_the_handshake(
    certs: DevCerts, other_certs: DevCerts
) -> None:
    cert, key = other_certs.clients["mallory"]
    async with serve(CERTS, TlsConfig(certs.server_cert, certs.server_key, certs.ca_cert)) as port:
        error = await rejected(port, channel_credentials(certs.ca_cert, cert, key))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "mallory" not in (error.details() or "")


async def test_mtls_rejects_a_client_without_certificate(certs: DevCerts) -> None:
    async with serve(CERTS, TlsConfig(certs.server_cert, certs.server_key, certs.ca_cert)) as port:
        error = await rejected(port, channel_credentials(certs.ca_cert))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_falls_back_to_the_first_san_without_a_cn(certs: DevCerts, tmp_path: Path) -> None:
    ca_key = serialization.load_pem_private_key((certs.ca_cert.parent / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bot.clients.internal")]), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "bot.pem", tmp_path / "bot-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    async with serve(CERTS, TlsConfig(certs.server_cert, certs.server_key, certs.ca_cert)) as port:
        assert await whoami(port, channel_credentials(certs.ca_cert, cert_path, key_path)) == "bot.clients.internal"


async def test_tokens_over_tls(certs: DevCerts, caplog: pytest.LogCaptureFixture) -> None:
    credentials = channel_credentials(certs.ca_cert)
    unknown = new_token()
    with caplog.at_level(logging.DEBUG):
        async with serve(TOKENS, TlsConfig(certs.server_cert, certs.server_key)) as port:
            assert await whoami(port, credentials, [("authorization", f"Bearer {ALICE_TOKEN}")]) == "alice-token"
            assert await whoami(port, credentials, [("authorization", f"bearer {ALICE_TOKEN}")]) == "alice-token"

            error = await rejected(port, credentials, ("authorization", f"Bearer {unknown}"))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error.details() == "the bearer token is not known (revoked or mistyped)"

            error = await rejected(port, credentials)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer <token>" in (error.details() or "")

            error = await rejected(port, credentials, ("authorization", ALICE_TOKEN))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "Bearer <token>" in (error.details() or "")
            assert ALICE_TOKEN not in (error.details() or "")

            error = await rejected(port, credentials, ("authorization", f"Basic {unknown}"))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert unknown not in (error.details() or "")
    assert not [r for r in caplog.records if ALICE_TOKEN in r.getMessage() or unknown in r.getMessage()]


async def test_token_and_certificate_together_must_name_the_same_caller(certs: DevCerts) -> None:
    cert, key = certs.clients["alice"]
    credentials = channel_credentials(certs.ca_cert, cert, key)
    both = AuthConfig(mtls=True, tokens=True)
    async with serve(both, TlsConfig(certs.server_cert, certs.server_key, certs.ca_cert)) as port:
        assert await whoami(port, credentials) == "alice"
        assert await whoami(port, credentials, [("authorization", f"Bearer {CERT_ALICE_TOKEN}")]) == "alice"
        # Another caller's token cannot ride on alice's certificate (nor alice become that caller by it).
        error = await rejected(port, credentials, ("authorization", f"Bearer {ALICE_TOKEN}"))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        details = error.details() or ""
        assert "belongs to another caller than the client certificate ('alice')" in details
        assert "alice-token" not in details and ALICE_TOKEN not in details  # the token's owner is not revealed
        # A token that is presented must be right: no silent fallback to the certificate.
        error = await rejected(port, credentials, ("authorization", f"Bearer {new_token()}"))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_anonymous_config_names_everyone_anonymous(certs: DevCerts) -> None:
    async with serve(ANON, None) as port:
        assert await whoami(port, None) == ANONYMOUS
        assert await whoami(port, None, [("authorization", "garbage")]) == ANONYMOUS
    cert, key = certs.clients["alice"]
    async with serve(ANON, TlsConfig(certs.server_cert, certs.server_key, certs.ca_cert)) as port:
        assert await whoami(port, channel_credentials(certs.ca_cert, cert, key)) == ANONYMOUS


# ---------------------------------------------------------------------------------------- Authenticator, edge cases


class FakeContext:
    """Just the two ServicerContext methods ``identify`` reads."""

    def __init__(self, metadata: Sequence[tuple[str, str | bytes]] = (), auth: dict[str, list[bytes]] | None = None):
        self._metadata = tuple(metadata)
        self._auth = auth or {}

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


def identify(config: AuthConfig, context: FakeContext) -> str:
    return Authenticator(config, OWNERS.get).identify(cast(Any, context))


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", f"Bearer {ALICE_TOKEN} extra", f"Token {ALICE_TOKEN}", ALICE_TOKEN, ""],
)
def test_malformed_authorization_is_refused_without_echoing_it(header: str) -> None:
    with pytest.raises(Unauthenticated, match="Bearer <token>") as info:
        identify(TOKENS, FakeContext([("authorization", header)]))
    assert ALICE_TOKEN not in info.value.message


def test_more_than_one_authorization_entry_is_refused() -> None:
    twice = [("authorization", f"Bearer {ALICE_TOKEN}"), ("authorization", f"Bearer {ALICE_TOKEN}")]
    with pytest.raises(Unauthenticated, match="exactly one"):
        identify(TOKENS, FakeContext(twice))


def test_token_lookup_uses_the_hash_only() -> None:
    seen: list[str] = []

    def owner(token_hash: str) -> str | None:
        seen.append(token_hash)
        return "carol"

    assert Authenticator(TOKENS, owner).identify(cast(Any, FakeContext([("authorization", "Bearer xyz")]))) == "carol"
    assert seen == [hash_token("xyz")]


def test_authorization_header_is_ignored_when_tokens_are_off() -> None:
    context = FakeContext([("authorization", "not even bearer")], {"x509_common_name": [b"alice"]})
    assert identify(CERTS, context) == "alice"


def test_certificate_name_prefers_cn_then_san() -> None:
    both = {"x509_common_name": [b"alice"], "x509_subject_alternative_name": [b"a.example", b"b.example"]}
    assert identify(CERTS, FakeContext(auth=both)) == "alice"
    assert identify(CERTS, FakeContext(auth={"x509_subject_alternative_name": [b"a.example"]})) == "a.example"
    with pytest.raises(Unauthenticated, match="client certificate"):
        identify(CERTS, FakeContext(auth={"transport_security_type": [b"ssl"]}))


def test_missing_credentials_message_says_what_is_accepted() -> None:
    with pytest.raises(Unauthenticated, match=re.escape("send `authorization: Bearer <token>` metadata")) as info:
        identify(TOKENS, FakeContext())
    assert "certificate" not in info.value.message


@pytest.mark.parametrize(
    "name", [b"alice ", b" alice", b"alice\n", b"ali\x1bce", b"al\x00ice", b"Alice Smith", b"x" * 65]
)
def test_certificate_name_outside_caller_names_is_refused_not_trimmed(name: bytes) -> None:
    # A CN "alice " trimmed to "alice" would act as alice; control characters would reach logs as a caller.
    with pytest.raises(Unauthenticated, match="not a caller name"):
        identify(CERTS, FakeContext(auth={"x509_common_name": [name]}))


def test_empty_certificate_cn_falls_back_to_its_san() -> None:
    auth = {"x509_common_name": [b""], "x509_subject_alternative_name": [b"a.example"]}
    assert identify(CERTS, FakeContext(auth=auth)) == "a.example"
