"""The Streamable HTTP door: ``/mcp/<profile>`` beside gRPC, in the service's event loop, on uvicorn.

In front of the SDK's ``StreamableHTTPSessionManager`` (one per profile, so a session id of one profile means
nothing at another), every request passes, in this order: the DNS-rebinding check on a loopback listener (Host
and Origin must name this machine: 421 / 403), the caller's identity (401 with a Bearer challenge when tokens are
configured and none or a wrong one came), the profile (404 with a JSON-RPC error), the body cap (413). Then:

* ``initialize`` without a session: the sandbox is opened here, before the SDK sees the request, so a refusal
  (policy, quota, unknown profile, a server that would not start) is a JSON-RPC error with its HTTP status and no
  session is made; once the SDK answers with its ``Mcp-Session-Id`` the session is bound to the sandbox.
* a request naming a session: it must be the caller's own, with its sandbox alive, else 404 as for an unknown id
  (never saying it exists). A DELETE closes the sandbox; so does ``session_idle_timeout_s`` without a request
  in flight (an open GET stream counts), and the service's stop.
* a 2026-07-28 request (``MCP-Protocol-Version`` of that era): the SDK checks headers against the body and serves
  it statelessly; its handler uses the caller's lease (``runner.door.leases``).

A client that leaves mid-request cancels it, and so its request in the sandbox: the SDK does so for the stateless
era; for a session the door watches the POST's connection and cancels that request's handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from runner.api.auth import is_loopback
from runner.config import McpHttpConfig, TlsConfig
from runner.door.calls import DOOR, DoorManager
from runner.door.draining import Draining
from runner.door.errors import error_code, error_data, http_status
from runner.door.handlers import SCOPE_BINDING, SCOPE_CALLER, DoorServer, Note
from runner.door.identity import HttpAuthenticator
from runner.door.leases import Binding, DoorSessions, Leases
from runner.door.seal import StateSeal
from runner.errors import ProfileNotFound, RunnerError, Unauthenticated, Unavailable
from runner.sessions.models import DOORS

log = logging.getLogger(__name__)

PATH_PREFIX = "/mcp/"
DOOR_HEADER = "x-mcp-runner-door"
MCP_DOORS = frozenset(door for door in DOORS if door.startswith("mcp-"))
REAP_INTERVAL_S = 5.0


def rpc_error(status: int, code: int, message: str, request_id: Any = None, data: Any = None,
              headers: dict[str, str] | None = None) -> Response:  # fmt: skip
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def runner_error(exc: RunnerError, request_id: Any = None, headers: dict[str, str] | None = None) -> Response:
    return rpc_error(http_status(exc), error_code(exc), exc.message, request_id, error_data(exc), headers)


def claimed_door(headers: Mapping[str, str]) -> str:
    """The MCP door a session's client says it came through (``mcp-runner mcp`` says ``mcp-stdio`` in
    ``DOOR_HEADER``), else this one. The caller's own claim: it names the door in the session's audit records and
    grants nothing, so only the MCP doors' names are taken (a client cannot pass for the gRPC API)."""
    claimed = headers.get(DOOR_HEADER, DOOR)
    return claimed if claimed in MCP_DOORS else DOOR


def _security(listen: str) -> TransportSecuritySettings | None:
    """Host and Origin allow lists on a loopback listener (where DNS rebinding reaches); elsewhere tokens guard."""
    if not is_loopback(listen):
        return None
    port = listen.rsplit(":", 1)[-1]
    hosts = ("127.0.0.1", "localhost", "[::1]")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{host}:{port}" for host in hosts] + [f"{host}:*" for host in hosts] + list(hosts),
        allowed_origins=[f"{scheme}://{host}{suffix}" for scheme in ("http", "https") for host in hosts
                         for suffix in (":*", "")],
    )  # fmt: skip


@dataclass
class _Body:
    raw: bytes
    message: Any

    @property
    def request_id(self) -> Any:
        return self.message.get("id") if isinstance(self.message, dict) else None

    @property
    def method(self) -> Any:
        return self.message.get("method") if isinstance(self.message, dict) else None


class DoorApp:
    """The ASGI application: the checks above, then the profile's SDK session manager."""

    def __init__(
        self,
        manager: DoorManager,
        config: McpHttpConfig,
        profiles: Iterable[str],
        authenticator: HttpAuthenticator,
        note: Note,
    ) -> None:
        self._manager = manager
        self._config = config
        self._auth = authenticator
        self.sessions = DoorSessions(manager, config.session_idle_timeout_s)
        self.leases = Leases(manager, config.lease_idle_timeout_s)
        self.draining = Draining()
        seal = StateSeal()
        security = _security(config.listen)
        self._security = TransportSecurityMiddleware(security)
        self._doors = {
            profile: StreamableHTTPSessionManager(
                app=DoorServer(profile, manager, self.leases, seal, note).server,
                security_settings=security,
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
            await asyncio.gather(self.sessions.reap(now), self.leases.reap(now))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        stream = scope["method"] == "GET"
        await self.draining.serve(stream, lambda watched: self._serve(scope, receive, watched), send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        profile = path[len(PATH_PREFIX):].rstrip("/") if path.startswith(PATH_PREFIX) else ""
        if not profile or "/" in profile:
            await rpc_error(404, types.INVALID_REQUEST, f"no MCP endpoint at {path[:200]!r}: use /mcp/<profile>")(
                scope, receive, send
            )
            return
        request = Request(scope, receive)
        refused = await self._security.validate_request(request, is_post=request.method == "POST")
        if refused is not None:
            await refused(scope, receive, send)
            return
        try:
            caller = self._auth.identify(request.headers)
            door = self._doors.get(profile)
            if door is None:
                known = ", ".join(sorted(self._doors)) or "none"
                raise ProfileNotFound(f"no profile named {profile!r} (known profiles: {known})")
        except Unauthenticated as exc:
            challenge = {"WWW-Authenticate": 'Bearer realm="mcp-runner"'} if self._auth.challenges else None
            await runner_error(exc, headers=challenge)(scope, receive, send)
            return
        except RunnerError as exc:
            await runner_error(exc)(scope, receive, send)
            return
        scope[SCOPE_CALLER] = caller
        body = await self._read_body(scope, receive, send) if request.method == "POST" else _Body(b"", None)
        if body is None:
            return
        replay = _replaying(body.raw, receive) if request.method == "POST" else receive
        era = request.headers.get(MCP_PROTOCOL_VERSION_HEADER)
        if era is not None and era not in HANDSHAKE_PROTOCOL_VERSIONS:
            await door.handle_request(scope, replay, send)  # stateless: the SDK checks the rest
            return
        session_id = request.headers.get(MCP_SESSION_ID_HEADER)
        if session_id is None:
            if body.method == "initialize":
                await self._initialize(door, profile, caller, body, scope, replay, send)
            else:  # the SDK answers what is wrong with it (no session, a GET without one…)
                await door.handle_request(scope, replay, send)
            return
        binding = self.sessions.find(session_id, caller)
        if binding is None:
            await rpc_error(404, types.INVALID_REQUEST, "Session not found: initialize a new session",
                            body.request_id)(scope, receive, send)  # fmt: skip
            return
        scope[SCOPE_BINDING] = binding
        status = await self._serve_session(door, binding, body, scope, replay, send)
        if request.method == "DELETE" and status is not None and status < 300:
            await self.sessions.end(session_id, "the client ended its session (DELETE)")

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> _Body | None:
        """The whole body, at most ``max_body_bytes`` (else 413 and None), and its JSON if it parses."""
        cap = self._config.max_body_bytes
        declared = Request(scope).headers.get("content-length", "")
        chunks: list[bytes] = []
        size = int(declared) if declared.isdigit() else 0
        while size <= cap:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size = sum(map(len, chunks))
            if not message.get("more_body", False):
                break
        if size > cap:
            await rpc_error(413, types.INVALID_REQUEST, f"the request body is larger than {cap} bytes")(
                scope, receive, send
            )
            return None
        raw = b"".join(chunks)
        try:
            return _Body(raw, json.loads(raw))
        except (ValueError, RecursionError):
            return _Body(raw, None)  # the SDK answers the parse error

    async def _initialize(
        self, door: StreamableHTTPSessionManager, profile: str, caller: str, body: _Body,
        scope: Scope, receive: Receive, send: Send,
    ) -> None:  # fmt: skip
        try:
            opened = await self._manager.open(profile, caller=caller, door=claimed_door(Request(scope).headers))
        except RunnerError as exc:
            await runner_error(exc, body.request_id)(scope, receive, send)
            return
        binding = Binding(caller=caller, profile=profile, opened=opened)
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
            if not bound:
                await self._manager.close(binding.session_id, caller=caller)

    async def _serve_session(
        self, door: StreamableHTTPSessionManager, binding: Binding, body: _Body, scope: Scope, receive: Receive,
        send: Send,
    ) -> int | None:  # fmt: skip
        """Serves one request of a session; its client leaving cancels its handler. Returns the HTTP status."""
        status: int | None = None
        request_id = body.request_id

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
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with binding.busy():
            await door.handle_request(scope, watching_receive, watching_send)
        return status


def _replaying(raw: bytes, receive: Receive) -> Receive:
    """``receive`` with the body already read handed out again first."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


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
    config = uvicorn.Config(
        app, lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=round(grace) + 5,
        ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None,
        ssl_ca_certs=str(tls.client_ca) if tls and tls.client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca else ssl.CERT_NONE,
    )  # fmt: skip
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="mcp-http-door")
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    if serving.done():
        stopping.set()
        await lifetime
        serving.result()
        raise Unavailable(f"the MCP door on {listen} did not start")
    return RunningDoor(app, sock.getsockname()[1], server, serving, lifetime, stopping, grace)
