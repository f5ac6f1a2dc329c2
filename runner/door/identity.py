"""Who is calling the HTTP door: the same identities as gRPC (``runner.api.auth``), read from HTTP headers.

Bearer tokens (``Authorization: Bearer mcpr_…``) are looked up by their hash in the policy, read on every request
so a reload revokes at once. Without tokens configured everyone is ``anonymous``, which the listen rule allows on
loopback only. Client certificates cannot name a caller here: uvicorn does not hand the verified peer certificate
to the application, so a TLS listener with ``client_ca`` still verifies certificates at the handshake, and the
caller's name comes from the bearer token; a service that authenticates by certificate alone serves no HTTP door
(``check_door_auth``).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers

from runner.api.auth import ANONYMOUS, BEARER, hash_token
from runner.config import AuthConfig, ConfigError
from runner.errors import Unauthenticated

EXPECTED = "send `Authorization: Bearer <token>` (a token of the runner's policy file, mcpr_…)"


def check_door_auth(auth: AuthConfig) -> None:
    """Refuse a door that could not tell callers apart: certificates only, and no way to read them here."""
    if auth.mtls and not auth.tokens:
        raise ConfigError(
            "the MCP HTTP door cannot read client certificates (uvicorn does not expose the peer certificate), and "
            "bearer tokens are off: enable `auth: {tokens: true}` so HTTP callers present tokens, or turn the door "
            "off with `mcp_http: {listen: \"\"}` (MCP_RUNNER_MCP_LISTEN=)"
        )


class HttpAuthenticator:
    """Names the caller of an HTTP request; ``token_owner`` maps a token hash to a caller (None: unknown)."""

    def __init__(self, config: AuthConfig, token_owner: Callable[[str], str | None]) -> None:
        self.config = config
        self._token_owner = token_owner

    @property
    def challenges(self) -> bool:
        """Whether a refusal is a 401 with a Bearer challenge (tokens are what would be accepted)."""
        return self.config.tokens

    def identify(self, headers: Headers) -> str:
        if not self.config.tokens:
            return ANONYMOUS
        values = headers.getlist("authorization")
        if not values:
            raise Unauthenticated(f"authentication required: {EXPECTED}")
        if len(values) > 1:
            raise Unauthenticated(f"more than one Authorization header: {EXPECTED}")
        parts = values[0].split()
        if len(parts) != 2 or parts[0].lower() != BEARER:
            raise Unauthenticated(f"malformed Authorization header: {EXPECTED}")
        owner = self._token_owner(hash_token(parts[1]))
        if owner is None:
            raise Unauthenticated("the bearer token is not known (revoked or mistyped)")
        return owner
