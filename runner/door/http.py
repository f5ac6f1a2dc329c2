"""The Streamable HTTP door: ``/mcp/<profile>`` beside gRPC, in the service's event loop, on uvicorn.

In front of the SDK's ``StreamableHTTPSessionManager`` (one per profile, so a session id of one profile means
nothing at another), every request passes, in this order: Content-Type and the DNS-rebinding check on a loopback
listener (Host and Origin must name this machine: 421 / 403), the caller's identity (401 with a Bearer challenge
when tokens are configured and none or a wrong one came), the profile (404), the body cap (413), the message's shape
and the protocol version header (400: ``runner.door.refusals``). Every refusal is a JSON-RPC error. An unknown
profile or session id is the caller's refusal as on gRPC: the SessionManager counts it against the caller's
``refusals_per_min`` (past it: 429 with ``Retry-After``) and records it. Then:

* ``initialize`` without a session: the sandbox is opened here, before the SDK sees the request, so a refusal
  (policy, quota, a server that would not start) is a JSON-RPC error with its HTTP status and no
  session is made; once the SDK answers with its ``Mcp-Session-Id`` the session is bound to the sandbox.
* any other request without a session: 400 from the door (the SDK's refusal would name a session it discarded).
* a request naming a session: it must be the caller's own, with its sandbox alive, else 404 as for an unknown id
  (never saying it exists). A DELETE closes the sandbox (a request it leaves unanswered is told so); so does
  ``session_idle_timeout_s`` without a request in flight (an open GET stream counts), and the service's stop.
* a 2026-07-28 request (``MCP-Protocol-Version`` of that era, no session): the SDK checks headers against the body
  and serves it statelessly; its handler uses the caller's lease (``runner.door.leases``), whose refused open is
  answered with its HTTP status as an ``initialize``'s is.

Beside ``/mcp/<profile>``, ``/metrics`` answers Prometheus scrapes (``runner.observe.scrape``, its own rules).

A client that leaves mid-request cancels it, and so its request in the sandbox: the SDK does so for the stateless
era; for a session the door watches the POST's connection and cancels that request's handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runner.api.auth import is_loopback
from runner.config import McpHttpConfig, TlsConfig
from runner.door.bodies import NO_BODY, Body, read_body, replaying
from runner.door.calls import DOOR, DoorManager
from runner.door.draining import Draining
from runner.door.errors import http_status
from runner.door.handlers import REQUEST_SCOPE, SCOPE_BINDING, SCOPE_CALLER, SCOPE_LEASE_REFUSED, DoorServer, Note
from runner.door.identity import HttpAuthenticator
from runner.door.leases import Binding, DoorSessions, Leases, close_binding
from runner.door.refusals import (
    MANAGED,
    SESSION_NOT_FOUND,
    answers,
    content_type,
    counting_refusals,
    era_refusal,
    message_refusal,
    no_session_refusal,
    refusal,
    retry_after,
    runner_error,
    session_not_found,
    transport_refusal,
    unanswered_event,
)
from runner.door.seal import StateSeal
from runner.door.tls_peer import PeerCertificateProtocol, peer_certificate
from runner.errors import (
    RunnerError,
    SessionNotFound,
    Status,
    Unauthenticated,
    Unavailable,
)
from runner.observe import tracing
from runner.sessions.models import DOORS

log = logging.getLogger(__name__)

PATH_PREFIX = "/mcp/"
METRICS_PATH = "/metrics"
DOOR_HEADER = "x-mcp-runner-door"
MCP_DOORS = frozenset(door for door in DOORS if door.startswith("mcp-"))
REAP_INTERVAL_S = 5.0


def claimed_door(headers: Mapping[str, str]) -> str:
    """The MCP door a session's client says it came through (``mcp-runner mcp`` says ``mcp-stdio`` in
    ``DOOR_HEADER``), else this one. The caller's own claim: it names the door in the session's audit records and
    grants nothing, so only the MCP doors' names are taken (a client cannot pass for the gRPC API)."""
    claimed = headers.get(DOOR_HEADER, DOOR)
    return claimed if claimed in MCP_DOORS else DOOR


class DoorApp:
    """The ASGI application: the checks above, then the profile's SDK session manager."""

    def __init__(
        self,
        manager: DoorManager,
        config: McpHttpConfig,
        profiles: Iterable[str],
        authenticator: HttpAuthenticator,
        note: Note,
        metrics: ASGIApp | None = None,
        refused: Callable[[int], None] | None = None,
    ) -> None:
        """``metrics``: what answers ``/metrics`` (``runner.observe.scrape``); None: 404 there as anywhere else.
        ``refused``: told the status of every 4xx the door answers itself, without the SessionManager."""
        self._manager = manager
        self._metrics = metrics
        self._refused_hook = refused
        self._config = config
        self._auth = authenticator
        self.sessions = DoorSessions(manager, config.session_idle_timeout_s)
        self.leases = Leases(manager, config.lease_idle_timeout_s)
        self.draining = Draining()
        seal = StateSeal()
        self._loopback = is_loopback(config.listen)
        self._doors = {
            profile: StreamableHTTPSessionManager(
                app=DoorServer(profile, manager, self.leases, seal, note).server,
                security_settings=None,  # the door's own checks (refusals.py) come first and are stricter
                session_idle_timeout=config.session_idle_timeout_s,
                max_request_body_size=config.max_body_bytes,
                max_sessions=None,  # the SessionManager's quotas decide, per caller and for the service
            )
            for profile in profiles
        }

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The SDK's session managers and the reaper; on the way out, every door sandbox closed."""
        async with contextlib.AsyncExitStack() as stack:
            for door in self._doors.values():
                await stack.enter_async_context(door.run())
            reaper = asyncio.create_task(self._reap_forever(), name="door-reaper")
            try:
                yield
            finally:
                reaper.cancel()
                await asyncio.gather(self.sessions.close_all(), self.leases.close_all())

    async def _reap_forever(self) -> None:
        interval = min(REAP_INTERVAL_S, self._config.session_idle_timeout_s / 4, self._config.lease_idle_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            try:
                await asyncio.gather(self.sessions.reap(now), self.leases.reap(now))
            except Exception:  # a pass that failed must not end the reaping: idle sandboxes would stay for good
                log.exception("reaping the door's idle sessions and leases failed; trying again in %g s", interval)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        stream = scope["method"] == "GET"
        if self._refused_hook is not None:
            send = counting_refusals(scope, send, self._refused_hook)
        await self.draining.serve(stream, lambda watched: self._serve(scope, receive, watched), send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path == METRICS_PATH and self._metrics is not None:
            await self._metrics(scope, receive, send)
            return
        profile = path[len(PATH_PREFIX):].rstrip("/") if path.startswith(PATH_PREFIX) else ""
        if not profile or "/" in profile:
            await refusal(404, f"no MCP endpoint at {path[:200]!r}: use /mcp/<profile>", grpc=Status.NOT_FOUND)(
                scope, receive, send
            )
            return
        request = Request(scope, receive)
        refused = transport_refusal(request, loopback=self._loopback)
        if refused is not None:
            await refused(scope, receive, send)
            return
        try:
            caller = self._auth.identify(request.headers, peer_certificate(scope))
        except Unauthenticated as exc:
            challenge = {"WWW-Authenticate": 'Bearer realm="mcp-runner"'} if self._auth.challenges else None
            await runner_error(exc, headers=challenge)(scope, receive, send)
            return
        door = self._doors.get(profile)
        if door is None:
            unknown = self._manager.catalog().unknown_profile(profile, caller)
            answer = await self._refused(unknown, runner_error(unknown), caller, request, NO_BODY, profile)
            await answer(scope, receive, send)
            return
        scope[SCOPE_CALLER] = caller
        posted = request.method == "POST"
        body = await read_body(self._config.max_body_bytes, scope, receive, send) if posted else NO_BODY
        if body is None:
            return
        replay = replaying(body.raw, receive) if posted else receive
        era = request.headers.get(MCP_PROTOCOL_VERSION_HEADER)
        session_id = request.headers.get(MCP_SESSION_ID_HEADER)
        refused = message_refusal(body.message) or era_refusal(era, session_id, body.request_id)
        if refused is not None:
            await refused(scope, receive, send)
        elif era in MODERN_PROTOCOL_VERSIONS:
            await self._serve_stateless(door, scope, replay, send)
        elif session_id is None and body.method == "initialize" and body.request_id is not None:
            await self._initialize(door, profile, caller, body, scope, replay, send)
        elif session_id is None:
            await no_session_refusal(request.method, body.request_id, parsed=body.parsed)(scope, receive, send)
        else:
            await self._serve_named(door, session_id, caller, body, scope, replay, send)

    async def _serve_named(
        self, door: StreamableHTTPSessionManager, session_id: str, caller: str, body: Body, scope: Scope,
        receive: Receive, send: Send,
    ) -> None:  # fmt: skip
        """A request naming a session: the caller's own live one, else the caller's refusal (404)."""
        request = Request(scope)
        binding = self.sessions.find(session_id, caller)
        if binding is None:
            missing = SessionNotFound(SESSION_NOT_FOUND)
            answer = await self._refused(missing, session_not_found(body.request_id), caller, request, body)
            await answer(scope, receive, send)
            return
        scope[SCOPE_BINDING] = binding
        deleting = request.method == "DELETE"
        if deleting:  # said to requests in flight that the end of the session leaves unanswered
            binding.ending = "the session was deleted (DELETE)"
        status = await self._serve_session(door, binding, body, scope, receive, send)
        if deleting and status is not None and status < 300:
            await self.sessions.end(session_id, "the client ended its session (DELETE)")
        elif deleting:
            binding.ending = ""

    async def _refused(
        self, error: RunnerError, answer: Response, caller: str, request: Request, body: Body, profile: str = ""
    ) -> Response:
        """``answer`` to a miss (an unknown profile or session) once the SessionManager has counted and recorded it
        as the caller's refusal, as on gRPC; past the caller's refusal rate, that error (429) instead."""
        method = body.method[:100] if isinstance(body.method, str) else request.method
        request.scope[MANAGED] = True
        try:
            await self._manager.refuse(error, caller=caller, method=method, door=claimed_door(request.headers),
                                       profile=profile)  # fmt: skip
        except RunnerError as exc:
            if exc is not error:
                return runner_error(exc, body.request_id)
        return answer

    async def _serve_stateless(self, door: StreamableHTTPSessionManager, scope: Scope, receive: Receive,
                               send: Send) -> None:  # fmt: skip
        """The SDK serves it statelessly; an answer saying the caller's lease could not open gets that refusal's HTTP
        status (the SDK's would be 200), as a refused ``initialize`` does."""

        async def status_send(message: Message) -> None:
            refused = scope.get(SCOPE_LEASE_REFUSED)
            started = message["type"] == "http.response.start"
            if started and isinstance(refused, RunnerError) and content_type(message).startswith(b"application/json"):
                scope[MANAGED] = True
                extra = [(key.lower().encode(), value.encode()) for key, value in retry_after(refused).items()]
                message = {**message, "status": http_status(refused), "headers": [*message["headers"], *extra]}
            await send(message)

        token = REQUEST_SCOPE.set(scope)
        try:
            await door.handle_request(scope, receive, status_send)
        finally:
            REQUEST_SCOPE.reset(token)

    async def _initialize(
        self, door: StreamableHTTPSessionManager, profile: str, caller: str, body: Body,
        scope: Scope, receive: Receive, send: Send,
    ) -> None:  # fmt: skip
        door_name = claimed_door(Request(scope).headers)
        params = body.message.get("params")  # message_refusal passed it: a JSON-RPC request object
        meta = params.get("_meta") if isinstance(params, dict) else None
        # The client's trace context in params._meta is the parent of the open's span, as of any later request's.
        entry: tracing.Attributes = {"jsonrpc.request.id": tracing.cut(str(body.request_id))}
        try:
            with tracing.Entering(meta if isinstance(meta, dict) else None, entry):
                opened = await self._manager.open(profile, caller=caller, door=door_name)
        except RunnerError as exc:
            scope[MANAGED] = True
            await runner_error(exc, body.request_id)(scope, receive, send)
            return
        binding = Binding(caller=caller, profile=profile, opened=opened, door=door_name)
        scope[SCOPE_BINDING] = binding
        bound = False

        async def binding_send(message: Message) -> None:
            nonlocal bound
            if message["type"] == "http.response.start" and message["status"] < 400:
                headers = dict(message.get("headers", ()))
                session_id = headers.get(MCP_SESSION_ID_HEADER.lower().encode())
                if session_id:  # bound before the client can read the answer and use the id
                    self.sessions.add(session_id.decode("latin-1"), binding)
                    bound = True
            await send(message)

        try:
            with binding.busy():
                await door.handle_request(scope, receive, binding_send)
        finally:
            if not bound:  # shielded: a stop cancelling this request must not leave its sandbox open, unbound
                with anyio.CancelScope(shield=True):
                    await close_binding(self._manager, binding, "its initialize was not answered with a session")

    async def _serve_session(
        self, door: StreamableHTTPSessionManager, binding: Binding, body: Body, scope: Scope, receive: Receive,
        send: Send,
    ) -> int | None:  # fmt: skip
        """Serves one request of a session; its client leaving cancels its handler, its session's end leaves it
        answered (the SDK would just end the stream). Returns the HTTP status."""
        status: int | None = None
        request_id = body.request_id
        streaming = answered = False

        async def watching_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and request_id is not None:
                running = binding.running.get(str(request_id))
                if running is not None:
                    log.info("the client of session %s left during request %r: cancelling it", binding.session_id,
                             request_id)  # fmt: skip
                    running.cancel()
            return message

        async def watching_send(message: Message) -> None:
            nonlocal status, streaming, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                streaming = request_id is not None and content_type(message).startswith(b"text/event-stream")
            elif streaming and not answered:
                answered = answers(message.get("body", b""), request_id)
                if not answered and not message.get("more_body", False) and binding.ending:
                    # Only an ending session's requests are told so: a request its client cancelled
                    # (notifications/cancelled) gets no answer (MCP), and one its client left has no one to tell.
                    ended = unanswered_event(request_id, binding.ending)
                    await send({"type": "http.response.body", "body": ended, "more_body": True})
            await send(message)

        with binding.busy():
            await door.handle_request(scope, watching_receive, watching_send)
        return status


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the service owns SIGINT and SIGTERM and stops the door itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@dataclass
class RunningDoor:
    app: DoorApp
    port: int
    _server: _Server
    _serving: asyncio.Task[None]
    _lifetime: asyncio.Task[None]
    _stopping: asyncio.Event
    grace: float

    async def stop(self) -> None:
        """Stop accepting, end GET streams, let requests in flight finish within the grace, close every sandbox."""
        self._server.should_exit = True
        self.app.sessions.ending("the service is stopping")
        await self.app.draining.stop(self.grace)
        await self._serving
        self._stopping.set()
        await self._lifetime


def _bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, int(port)), family=family)
    except (OSError, ValueError) as exc:
        raise Unavailable(
            f"cannot listen on {listen} for the MCP door: {exc}; choose another address (`mcp_http.listen`, "
            "MCP_RUNNER_MCP_LISTEN or --mcp-listen) or '' to turn the door off"
        ) from None
    # asyncio sets TCP_NODELAY only on sockets whose protocol number says TCP, and create_server's is 0: without
    # it a small answer on a kept-alive connection waits out the client's delayed ACK (40 ms). Accepted sockets
    # inherit the option from the listener.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listener


async def _live(app: DoorApp, ready: asyncio.Event, stopping: asyncio.Event) -> None:
    """Holds the app's running context in a task of its own: the SDK's task groups end in the task they began."""
    async with app.running():
        ready.set()
        await stopping.wait()


async def start_door(app: DoorApp, listen: str, *, tls: TlsConfig | None, grace: float) -> RunningDoor:
    """Bind ``listen`` (port 0 picks one), start the SDK's managers and uvicorn in this event loop."""
    sock = _bind(listen)
    ready, stopping = asyncio.Event(), asyncio.Event()
    lifetime = asyncio.create_task(_live(app, ready, stopping), name="mcp-http-door-sessions")
    waiting = asyncio.ensure_future(ready.wait())
    await asyncio.wait([lifetime, waiting], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if lifetime.done():
        sock.close()
        lifetime.result()
    # The h11 protocol, pinned, so each request carries its connection's verified client certificate (tls_peer).
    config = uvicorn.Config(
        app, http=PeerCertificateProtocol, lifespan="off", log_config=None, access_log=False,
        timeout_graceful_shutdown=round(grace) + 5,
        ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None,
        ssl_ca_certs=str(tls.client_ca) if tls and tls.client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca else ssl.CERT_NONE,
    )  # fmt: skip
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="mcp-http-door")
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    if serving.done():
        sock.close()
        stopping.set()
        await lifetime
        failure = serving.exception()
        why = failure or "uvicorn stopped at once"
        raise Unavailable(f"the MCP door on {listen} did not start: {why}") from failure
    return RunningDoor(app, sock.getsockname()[1], server, serving, lifetime, stopping, grace)
