"""The runner's seal on a 2026-07-28 ``requestState``: integrity, binding, single use, TTL.

An input-required result hands the client a ``requestState`` to echo on its retry. What the server put there is
the server's own, but the client holding it is not to be trusted with it: the door wraps it (with the runner's own
note: an approval id, or the call the door holds for the client's answers, ``runner.door.translate``) in a token
encrypted and authenticated under a key made when this process started (the SDK's AES-256-GCM codec), bound to
the caller, the lease's sandbox session, the method and its target (tool or prompt name, resource URI) and a
digest of the arguments, good for ``ttl_s`` and for one retry: the door remembers every token it minted that is
neither used nor expired (in minting order, which is expiry order since every token has the same TTL), and a
token not among them has been used. The SDK's own ``RequestStateBoundary`` was not
used: it answers every failure with one fixed message and keeps no record of use, where a caller here is told
what went wrong (and the refusal is audited by the door).

A restart forgets the key: tokens minted before it are refused, and the client starts the request again.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp.server.request_state import AESGCMRequestStateCodec, InvalidRequestState

from runner.errors import InvalidArgument, ResourceExhausted

DEFAULT_TTL_S = 600.0
MAX_OUTSTANDING = 100_000
"""Tokens minted and neither used nor expired; with this many the door mints no more (``ResourceExhausted``) rather
than forget one, which would make a used token look unused or an unused one look used."""
AGAIN = "send the request again without requestState"


class StateRefused(InvalidArgument):
    """A ``requestState`` the door will not honour; ``reason`` is a word for the audit record."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Opened:
    """What a valid token carried: the server's own state (None: the runner's round alone) and the runner's note."""

    server_state: str | None
    approval_id: str = ""
    held_call: str = ""
    """The door's call waiting for the client's answers (a 2025 server's requests), ``runner.door.translate``."""


def target_of(method: str, params: Mapping[str, Any]) -> tuple[str, str]:
    """(target, arguments digest) of a request: what a token is bound to."""
    if method == "resources/read":
        return str(params.get("uri", "")), ""
    arguments = params.get("arguments") or {}
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return str(params.get("name", "")), hashlib.sha256(canonical.encode()).hexdigest()[:32]


class StateSeal:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._codec = AESGCMRequestStateCodec([os.urandom(32)])
        self._outstanding: OrderedDict[str, float] = OrderedDict()
        """Nonce -> expiry of every token minted and neither used nor expired, in minting (so expiry) order."""

    def seal(
        self,
        *,
        caller: str,
        lease: str,
        method: str,
        params: Mapping[str, Any],
        server_state: str | None,
        approval_id: str = "",
        held_call: str = "",
    ) -> str:
        now = self._clock()
        self._forget_expired(now)
        if len(self._outstanding) >= MAX_OUTSTANDING:
            raise ResourceExhausted(
                f"too many pending retries: {MAX_OUTSTANDING} requestStates wait for their retry; send the request "
                f"again later (each is good for {self.ttl_s:g} s)"
            )
        nonce, expiry = secrets.token_urlsafe(12), now + self.ttl_s
        target, digest = target_of(method, params)
        claims = {
            "c": caller, "l": lease, "m": method, "t": target, "a": digest, "s": server_state, "p": approval_id,
            "h": held_call, "n": nonce, "exp": expiry,
        }  # fmt: skip
        token = self._codec.seal(json.dumps(claims, separators=(",", ":")).encode())
        self._outstanding[nonce] = expiry
        return token

    def open(
        self,
        token: object,
        *,
        caller: str,
        lease: str,
        method: str,
        params: Mapping[str, Any],
        check: Callable[[Opened], None] | None = None,
    ) -> Opened:
        """The token's content, used up; ``StateRefused`` saying why it cannot be honoured.

        ``check`` runs before the token is used up: what it raises leaves the token good for another try (a
        client's answer that does not fit its request is refused, and the client may answer again).
        """
        if not isinstance(token, str):
            raise StateRefused("malformed", f"requestState must be the string this runner handed out; {AGAIN}")
        try:
            claims = json.loads(self._codec.unseal(token))
            nonce, expiry = str(claims["n"]), float(claims["exp"])
        except (InvalidRequestState, ValueError, KeyError, TypeError):
            raise StateRefused(
                "tampered", f"requestState was not issued by this runner, was altered, or predates its restart; {AGAIN}"
            ) from None
        now = self._clock()
        self._forget_expired(now)
        if not now < expiry:
            raise StateRefused("expired", f"requestState expired (it is good for {self.ttl_s:g} s); {AGAIN}")
        if nonce not in self._outstanding:
            raise StateRefused("replayed", f"requestState was already used (each is good for one retry); {AGAIN}")
        target, digest = target_of(method, params)
        if claims.get("c") != caller:
            raise StateRefused("caller", f"requestState was issued to another caller; {AGAIN}")
        if (claims.get("m"), claims.get("t"), claims.get("a")) != (method, target, digest):
            raise StateRefused(
                "request", f"requestState was issued for another request (method, name or arguments differ); {AGAIN}"
            )
        if claims.get("l") != lease:
            raise StateRefused("lease", f"requestState belongs to a sandbox lease that has ended; {AGAIN}")
        server_state = claims.get("s")
        opened = Opened(
            server_state=server_state if isinstance(server_state, str) else None,
            approval_id=str(claims.get("p", "")),
            held_call=str(claims.get("h") or ""),
        )
        if check is not None:
            check(opened)
        del self._outstanding[nonce]
        return opened

    def _forget_expired(self, now: float) -> None:
        """Expired tokens are refused for their expiry: they need not be remembered (oldest first, so stop at the
        first one still good)."""
        while self._outstanding:
            nonce, expiry = next(iter(self._outstanding.items()))
            if expiry > now:
                return
            del self._outstanding[nonce]
