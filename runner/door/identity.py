"""Who is calling the HTTP door: the same identities as gRPC (``runner.api.auth``), read from HTTP.

* **mTLS**: the listener requires a client certificate signed by ``client_ca`` and verifies it at the handshake;
  ``runner.door.tls_peer`` hands it to the door, and the caller's name is its subject CN, else its first SAN,
  exactly as gRPC reads it.
* **bearer tokens** (``Authorization: Bearer mcpr_…``) are looked up by their hash in the policy, read on every
  request so a reload revokes at once.

With both, a request may carry both, and then both must name the same caller, else 401 (as UNAUTHENTICATED on
gRPC). Without either everyone is ``anonymous``, which the listen rule allows on loopback only.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers

from runner.api.auth import ANONYMOUS, BEARER, hash_token
from runner.config import AuthConfig
from runner.door.tls_peer import PeerCertificate
from runner.errors import Unauthenticated
from runner.policy import CALLER_NAME

EXPECTED = "send `Authorization: Bearer <token>` (a token of the runner's policy file, mcpr_…)"


class HttpAuthenticator:
    """Names the caller of an HTTP request; ``token_owner`` maps a token hash to a caller (None: unknown)."""

    def __init__(self, config: AuthConfig, token_owner: Callable[[str], str | None]) -> None:
        self.config = config
        self._token_owner = token_owner

    @property
    def challenges(self) -> bool:
        """Whether a refusal is a 401 with a Bearer challenge (tokens are what would be accepted)."""
        return self.config.tokens

    def identify(self, headers: Headers, certificate: PeerCertificate | None) -> str:
        """The caller's name, or ``Unauthenticated`` saying what would have been accepted."""
        config = self.config
        if config.anonymous:
            return ANONYMOUS
        by_token = self._token_caller(headers) if config.tokens else None
        by_certificate = certificate_name(certificate) if config.mtls and certificate else None
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
        raise Unauthenticated(f"authentication required: {EXPECTED}")

    def _token_caller(self, headers: Headers) -> str | None:
        """The owner of the presented token; None without one; ``Unauthenticated`` for a malformed or unknown one."""
        values = headers.getlist("authorization")
        if not values:
            return None
        if len(values) > 1:
            raise Unauthenticated(f"more than one Authorization header: {EXPECTED}")
        parts = values[0].split()
        if len(parts) != 2 or parts[0].lower() != BEARER:
            raise Unauthenticated(f"malformed Authorization header: {EXPECTED}")
        owner = self._token_owner(hash_token(parts[1]))
        if owner is None:
            raise Unauthenticated("the bearer token is not known (revoked or mistyped)")
        return owner


def certificate_name(certificate: PeerCertificate) -> str | None:
    """The verified certificate's subject CN, else its first SAN (gRPC's ``x509_common_name`` then
    ``x509_subject_alternative_name``); None when it has neither.

    Taken exactly as certified and checked as a caller name, as on gRPC: trimming would make a certificate for
    ``"alice "`` act as alice, and control characters would be carried into logs and audit records.
    """
    common_names = [value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"]
    alternative_names = [value for _kind, value in certificate.get("subjectAltName", ())]
    for name in (*common_names, *alternative_names):
        if not isinstance(name, str) or not name:
            continue
        if not CALLER_NAME.fullmatch(name):
            raise Unauthenticated(
                f"the client certificate names {name[:80]!r}, which is not a caller name "
                "(1-64 letters, digits, '.', '_', '-' or '@')"
            )
        return name
    return None
