"""Who is calling: TLS credentials, bearer tokens, and the rule that decides when anonymity is allowed.

Two ways to authenticate, either or both:

* **mTLS** — the server requires a client certificate signed by ``TlsConfig.client_ca``; the handshake
  does the verification, and the caller's name is the certificate's subject CN (else its first SAN).
* **bearer tokens** — ``authorization: Bearer <token>`` metadata. The policy file stores only
  ``hash_token(token)``, so a leaked policy file leaks no credentials, and looking the hash up in a
  dict compares nothing secret byte by byte (no timing oracle).

With both configured, a caller may present both, and then both must name the same caller (the token's
owner in the policy file is the certificate's name), else UNAUTHENTICATED: a stolen token cannot ride on
another caller's certificate, and a certificate cannot be "upgraded" to another identity by a token.
The certificate is mandatory then (the handshake demands it); the token is optional.

Without either the runner is anonymous, which ``check_listen_safety`` allows on loopback only. The embedded
default policy (everyone admin, approver and auditor) is meant for exactly that case: ``check_policy_required``
refuses to start any authenticated or non-loopback service without a policy file.
TLS files are parsed with ``cryptography`` at start-up, so a wrong path or a garbled PEM is reported
naming the file, instead of surfacing later as an opaque handshake failure on every call.
Presented tokens never appear in a message or a log line.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from runner.config import AuthConfig, ConfigError, TlsConfig
from runner.errors import InvalidArgument, Unauthenticated
from runner.host_port import capped
from runner.policy import CALLER_NAME

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

TOKEN_PREFIX = "mcpr_"
TOKEN_HASH_PREFIX = "sha256:"
ANONYMOUS = "anonymous"

AUTHORIZATION = "authorization"
BEARER = "bearer"

# Keys gRPC's SSL transport puts in the auth context of a call whose client presented a verified certificate.
X509_COMMON_NAME = "x509_common_name"
X509_SAN = "x509_subject_alternative_name"


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port``; every file is read and parsed now, so mistakes fail start-up."""
    chain, key = _load_pair(tls.cert, tls.key)
    if tls.client_ca is None:
        return grpc.ssl_server_credentials([(key, chain)])
    client_ca = _load_certificates(tls.client_ca, "client CA certificate")
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca, require_client_auth=True)


def channel_credentials(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    """Client-side TLS: trust ``ca`` (None = the system roots) and present ``cert``/``key`` for mTLS."""
    if (cert is None) != (key is None):
        raise InvalidArgument("a client certificate needs its private key and vice versa: give both or neither")
    roots = None if ca is None else _load_certificates(ca, "CA certificate")
    if cert is None or key is None:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    chain, private = _load_pair(cert, key)
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=private, certificate_chain=chain)


def new_token() -> str:
    """A fresh bearer token: 256 random bits, with a prefix that secret scanners can recognise."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What the policy file stores for ``token`` (a token is random, so a plain hash suffices; no salt needed)."""
    return TOKEN_HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def is_loopback(listen: str) -> bool:
    """Whether a gRPC listen address is reachable from this machine only.

    Loopback IPs (127.0.0.0/8, ::1), ``localhost``, and Unix sockets count; wildcard and other addresses do
    not, and neither does any other host name (it is not resolved: what it resolves to can change).
    """
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    host = _listen_host(listen).lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _listen_host(listen: str) -> str:
    """The host part of ``host:port``, ``[v6]:port``, or a bare host."""
    if listen.startswith("["):
        end = listen.find("]")
        return listen[1:end] if end > 0 else listen
    if listen.count(":") == 1:
        return listen.rsplit(":", 1)[0]
    return listen  # a bare host, or an unbracketed IPv6 address


def check_listen_safety(listen: str, tls: TlsConfig | None, auth: AuthConfig) -> None:
    """Refuse configurations that would expose the runner; warn about tokens sent in clear text.

    The default configuration runs unauthenticated, which is safe only while nothing but this machine can
    connect; anywhere else a caller must be identified before it may start containers.
    """
    if auth.mtls and (tls is None or tls.client_ca is None):
        raise InvalidArgument(
            "mTLS authentication needs a TLS configuration with client_ca (the CA that signs client certificates)"
        )
    if is_loopback(listen):
        return
    if auth.anonymous:
        raise InvalidArgument(
            f"refusing to listen on {capped(listen)} without authentication: anyone who can reach it could start "
            "containers. Configure TLS with client_ca and enable mTLS authentication, or enable bearer tokens, "
            "or listen on 127.0.0.1"
        )
    if auth.tokens and tls is None:
        log.warning(
            "bearer tokens are accepted on %s without TLS: tokens travel in clear text; configure TLS", capped(listen)
        )


def check_policy_required(listen: str, auth: AuthConfig, policy: Path | None) -> None:
    """Refuse to start an authenticated or non-loopback service on the embedded default policy.

    That default makes every caller admin, approver and auditor, which is right for the one developer an
    anonymous loopback listener serves; once callers are told apart (certificates, tokens), or others can
    connect, who may do what must be written down.
    """
    if policy is not None or (auth.anonymous and is_loopback(listen)):
        return
    methods = [name for name, on in (("client certificates", auth.mtls), ("bearer tokens", auth.tokens)) if on]
    why = f"callers authenticate with {' and '.join(methods)}" if methods else f"{listen} is not a loopback address"
    raise ConfigError(
        f"refusing to start without a policy file: {why}, and the embedded default policy would make every "
        "caller admin, approver and auditor. Write a policy file giving each caller its profiles and roles, "
        "and name it in the settings file (`policy: policy.yaml`)"
    )


class Authenticator:
    """Names the caller of an RPC from its metadata and TLS peer, according to an ``AuthConfig``.

    ``token_owner`` maps a token hash (``hash_token``) to a caller name, or None when it is not known;
    it is read on every call, so a reloaded policy file takes effect (and revokes tokens) at once.
    """

    def __init__(self, config: AuthConfig, token_owner: Callable[[str], str | None]) -> None:
        self.config = config
        self._token_owner = token_owner

    def identify(self, context: Context) -> str:
        """The caller's name, or ``Unauthenticated`` saying what would have been accepted."""
        config = self.config
        if config.anonymous:
            return ANONYMOUS
        by_token = self._token_caller(context) if config.tokens else None
        by_certificate = _certificate_name(context) if config.mtls else None
        if by_token is not None and by_certificate is not None and by_token != by_certificate:
            # The token's owner is not named: whoever holds a stolen token learns nothing from the refusal.
            raise Unauthenticated(
                f"the bearer token belongs to another caller than the client certificate ({by_certificate!r}): "
                "a token is accepted only together with its own caller's certificate"
            )
        caller = by_token or by_certificate
        if caller is not None:
            return caller
        if config.mtls:
            raise Unauthenticated("present a client certificate (with a subject CN) signed by the runner's client CA")
        raise Unauthenticated("authentication required: send `authorization: Bearer <token>` metadata")

    def _token_caller(self, context: Context) -> str | None:
        """The owner of the presented token; None without one; ``Unauthenticated`` for an unknown token."""
        token = _bearer_token(context)
        if token is None:
            return None
        owner = self._token_owner(hash_token(token))
        if owner is None:
            raise Unauthenticated("the bearer token is not known (revoked or mistyped)")
        return owner


def _bearer_token(context: Context) -> str | None:
    """The token of the ``authorization`` header, None without one; a malformed header is an error."""
    values = [value for key, value in (context.invocation_metadata() or ()) if key.lower() == AUTHORIZATION]
    if not values:
        return None
    expected = "expected exactly one `authorization: Bearer <token>` metadata entry"
    if len(values) > 1:
        raise Unauthenticated(expected)
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    parts = value.split()
    if len(parts) != 2 or parts[0].lower() != BEARER:
        raise Unauthenticated(f"malformed authorization metadata: {expected}")
    return parts[1]


def _certificate_name(context: Context) -> str | None:
    """The verified client certificate's CN, else its first SAN; None without a client certificate.

    The name is taken exactly as certified and must be a caller name the policy could give rules to: trimming
    it would make a certificate for ``"alice "`` act as alice, and control characters or stray bytes would be
    carried into logs and audit records as the caller.
    """
    auth = context.auth_context()
    for key in (X509_COMMON_NAME, X509_SAN):
        for raw in auth.get(key, ()):
            name = raw.decode("utf-8", "replace")
            if not name:
                continue
            if not CALLER_NAME.fullmatch(name):
                raise Unauthenticated(
                    f"the client certificate names {name[:80]!r}, which is not a caller name "
                    "(1-64 letters, digits, '.', '_', '-' or '@')"
                )
            return name
    return None


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None


def _load_certificates(path: Path, what: str) -> bytes:
    """Read a PEM certificate (chain) and check that it parses and has not expired; returns the file's bytes."""
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise InvalidArgument(f"the TLS {what} {path} is not a PEM certificate: {exc}") from None
    now = datetime.datetime.now(datetime.UTC)
    for certificate in certificates:
        if certificate.not_valid_after_utc < now:
            raise InvalidArgument(
                f"the TLS {what} {path} has expired ({certificate.subject.rfc4514_string()}, "
                f"not valid after {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
            )
    return data


def _load_pair(cert: Path, key: Path) -> tuple[bytes, bytes]:
    """Read a certificate chain and its private key; check the key is unencrypted and belongs to the leaf."""
    chain = _load_certificates(cert, "certificate")
    data = _read(key, "private key")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InvalidArgument(f"the TLS private key {key} is encrypted; the runner needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidArgument(f"the TLS private key {key} is not a PEM private key: {exc}") from None
    leaf = x509.load_pem_x509_certificates(chain)[0]
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise InvalidArgument(f"the TLS private key {key} does not belong to the certificate {cert}")
    return chain, data
