"""``GET /metrics`` on the MCP door's listener: the Prometheus text format of ``RunnerMetrics``.

Who may scrape follows the door (and common practice for exporters): where callers need no credentials (a loopback
listener without tokens or mTLS) neither does a scrape; where they must authenticate, a scrape must too (the same
bearer tokens or client certificates), and the metrics tell of every caller's activity, so the caller must be one
the policy lets read everything, as the audit log does: the auditor or admin role (403 otherwise). The settings'
``metrics: {public: true}`` lifts both. With mTLS the TLS handshake itself asks every client for a certificate, so
``public`` opens nothing to a client without one. On a loopback listener the door's DNS-rebinding check (Host,
Origin) applies as to every request. Only GET: anything else is 405.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from runner.door.http import METRICS_PATH
from runner.door.identity import HttpAuthenticator
from runner.door.refusals import transport_refusal
from runner.door.tls_peer import peer_certificate
from runner.errors import Unauthenticated
from runner.observe.metrics import RunnerMetrics
from runner.policy import ADMIN, AUDITOR, PolicyStore

READER_ROLES = (AUDITOR, ADMIN)
"""The roles that read every caller's audit records (``runner.audit.service``): the same read every caller's counts."""


class MetricsEndpoint:
    """The ASGI answer to a request for ``METRICS_PATH``."""

    def __init__(
        self, metrics: RunnerMetrics, authenticator: HttpAuthenticator, policy: PolicyStore, *, loopback: bool,
        public: bool,
    ) -> None:  # fmt: skip
        self._metrics = metrics
        self._auth = authenticator
        self._policy = policy
        self._loopback = loopback
        self._public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._answer(Request(scope))(scope, receive, send)

    def _answer(self, request: Request) -> Response:
        if request.method != "GET":
            return PlainTextResponse(f"{METRICS_PATH} answers GET only, not {request.method[:20]}\n", status_code=405,
                                     headers={"Allow": "GET"})  # fmt: skip
        refused = transport_refusal(request, loopback=self._loopback)
        if refused is not None:
            return refused
        if not self._public:
            try:
                caller = self._auth.identify(request.headers, peer_certificate(request.scope))
            except Unauthenticated as exc:
                challenge = {"WWW-Authenticate": 'Bearer realm="mcp-runner"'} if self._auth.challenges else None
                return PlainTextResponse(f"{exc.message}\n", status_code=401, headers=challenge)
            if not self._auth.config.anonymous and not self._reads_all(caller):
                return PlainTextResponse(f"{self._refusal(caller)}\n", status_code=403)
        return Response(self._metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def _reads_all(self, caller: str) -> bool:
        policy = self._policy.current
        return any(policy.has_role(caller, role) for role in READER_ROLES)

    def _refusal(self, caller: str) -> str:
        policy = self._policy.current
        return (
            f"caller {caller} may not read {METRICS_PATH}: it counts every caller's activity, so it needs the "
            f"auditor or admin role ({policy.label}: {policy.caller(caller).entry}.roles), or the settings' "
            "metrics: {public: true} to answer any scrape"
        )
