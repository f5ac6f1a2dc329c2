"""A lean MCP client over newline-delimited JSON-RPC: standard library only, results relayed raw.

The host parses, validates and sanitizes every result itself (runner/guard/), so
the agent does not build models of them: it checks each line is a JSON-RPC
message, keeps the protocol's bookkeeping, and hands results on as the JSON
objects the server sent. That is what makes the agent cheap (the SDK's import
and its pydantic round trip cost more CPU and memory than many servers do).

It is still a client in its own right, and holds the server to the protocol:

* a line that is not a JSON-RPC message, an answer to an id it never sent (or
  already had answered), a request from the server reusing the id of one still
  being answered, or more than ``MAX_SERVER_REQUESTS`` of them unanswered, is a
  violation: ``on_violation`` hears of it and nothing more is read;
* requests the server sends the client: ``ping`` is answered; roots, sampling
  and elicitation are handed to ``on_server_request`` under a positive integer
  id of the client's own (the server's may be a string, or reused once
  answered) and answered with what `answer` is given; every other is refused
  with "method not found";
* the notifications a caller can use (``RELAYED_NOTIFICATIONS``) go to
  ``on_notification``; progress to its request's sink; the rest are dropped;
* a late answer to a request it cancelled is dropped quietly, as the spec allows.

It speaks the era the agent was asked for (era.py): `connect` either initializes
(2025-11-25) or discovers (2026-07-28, falling back to initialize for a server
that cannot), and in the 2026-07-28 era every request carries the envelope.

No event loop of its own: the agent's loop (stdio.py) feeds it lines and
carries what it sends; answers come back through callbacks.
"""

from __future__ import annotations

import json
import sys

from .era import CLIENT_CAPABILITIES, CLIENT_INFO, HANDSHAKE, MODERN, as_initialize_result, stamped
from .words import whole_words

TYPE_CHECKING = False  # typing costs the agent's start-up; mypy reads the names below all the same
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    JSON = dict[str, Any]
    #: An answer: the result object, or the server's error.
    Done = Callable[[JSON | "RemoteError"], None]
    ProgressSink = Callable[[float, float | None, str | None], None]
    #: Writes one message to the server; the callback, if any, runs once it has left the agent.
    Send = Callable[[bytes, Callable[[], None] | None], None]
    #: (the era the client speaks, the InitializeResult-shaped answer or the server's refusal).
    Connected = Callable[[str, JSON | "RemoteError"], None]
    #: (the client's id for it, method, params) of a request from the server that the host is to answer.
    ServerRequestSink = Callable[[int, str, JSON], None]
    NotificationSink = Callable[[str, JSON], None]

PROTOCOL_VERSION = HANDSHAKE
#: The revisions reached by the initialize handshake that a server may answer with (as the SDK's client accepts):
#: the host parses each one's results. Any other (a stateless revision, a future or unknown one) is not spoken here.
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
#: Requests from the server that the host's caller may answer (the client declares their capabilities).
RELAYED_REQUESTS = frozenset({"sampling/createMessage", "elicitation/create", "roots/list"})
RELAYED_NOTIFICATIONS = frozenset(
    {
        "notifications/message",
        "notifications/tools/list_changed",
        "notifications/resources/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/updated",
    }
)
#: Requests from the server the agent may be answering at once; honest servers send a few (they wait for each).
MAX_SERVER_REQUESTS = 64
_MAX_FLOAT = int(sys.float_info.max)
_BROKE = "MCP server broke the protocol: "
_NOT_JSON_RPC = "it wrote a line to stdout that is not a JSON-RPC message"


#: The most JSON of an error's ``data`` passed on to the host: the host keeps only small data of known meaning (a
#: -32021's required capabilities), so more is dropped here rather than made a frame past the host's cap.
MAX_ERROR_DATA = 64 * 1024


class RemoteError(Exception):
    """The server answered a request with a JSON-RPC error; ``data`` is its ``data`` member (None when absent)."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def error_object(code: int, message: str, data: object = None) -> JSON:
    """A server's error as an error frame carries it: ``data`` only when a frame can hold it (no ``1e999``, no
    nesting past the encoder's depth) within ``MAX_ERROR_DATA``; else without it, the error itself still told."""
    error: JSON = {"code": code, "message": message}
    if data is not None:
        try:
            size = len(json.dumps(data, separators=(",", ":"), allow_nan=False))
        except (ValueError, TypeError, RecursionError):
            size = MAX_ERROR_DATA + 1
        if size <= MAX_ERROR_DATA:
            error["data"] = data
    return error


class _Pending:
    __slots__ = ("on_done", "on_progress")

    def __init__(self, on_done: Done, on_progress: ProgressSink | None) -> None:
        self.on_done = on_done
        self.on_progress = on_progress


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def id_key(request_id: object) -> object:
    """Correlate "7" and 7, as the SDK's dispatcher did: servers that echo ids as strings keep working."""
    if isinstance(request_id, str):
        try:
            return int(request_id)
        except ValueError:
            return request_id
    return request_id


def _is_id(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _is_number(value: object) -> bool:
    """A number the host can be sent: JSON reads ``1e999`` as infinity, which no frame can carry."""
    if isinstance(value, float):
        return value - value == 0.0  # not inf, nan (math.isfinite, without importing math)
    return isinstance(value, int) and not isinstance(value, bool) and -_MAX_FLOAT <= value <= _MAX_FLOAT


def _encode(message: JSON) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class McpClient:
    """One MCP session with one server: `received` takes its lines, ``send`` carries what the client says."""

    def __init__(
        self,
        send: Send,
        on_violation: Callable[[str], None],
        on_server_request: ServerRequestSink | None = None,
        on_notification: NotificationSink | None = None,
    ) -> None:
        self._send = send
        self._on_violation = on_violation
        self._on_server_request = on_server_request
        self._on_notification = on_notification
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._cancelled: set[int] = set()  # sent, then cancelled: a late answer is fine
        self._answering: set[object] = set()  # the server's requests whose answers have not left the agent
        self._next_relay = 1
        self._relayed: dict[int, object] = {}  # the client's id for a relayed server request -> the server's id
        self._relay_ids: dict[object, int] = {}  # and back, by `id_key`
        self.protocol: str | None = None  # the era spoken, once connected
        self.broken = False

    # -- what the client sends --------------------------------------------------------

    def connect(self, era: str, on_ready: Connected) -> None:
        """Open the session in ``era``: 2026-07-28 asks ``server/discover`` first and initializes when the server
        refuses it or does not list 2026-07-28. ``on_ready`` hears the era and the InitializeResult (or the
        InitializeResult-shaped object built from the discover result), or the server's refusal."""
        if era != MODERN:
            self.initialize(lambda outcome: on_ready(HANDSHAKE, outcome))
            return

        def discovered(outcome: JSON | RemoteError) -> None:
            shaped = None if isinstance(outcome, RemoteError) else as_initialize_result(outcome)
            if shaped is None:
                self.initialize(lambda outcome: on_ready(HANDSHAKE, outcome))
                return
            self.protocol = MODERN
            on_ready(MODERN, shaped)

        self._request("server/discover", stamped({}, None), discovered, None)

    def initialize(self, on_done: Done) -> None:
        """The handshake: ``on_done`` gets the server's InitializeResult raw (the host validates it) once it is
        acknowledged with ``notifications/initialized``, or the server's error."""

        def answered(outcome: JSON | RemoteError) -> None:
            if not isinstance(outcome, RemoteError):
                version = outcome.get("protocolVersion")
                if version not in HANDSHAKE_VERSIONS:
                    # The spec: a client that does not support the version the server answered with disconnects.
                    self.broken = True
                    self._on_violation(
                        f"MCP server answered initialize with protocol version {self._show(version)}, which the agent "
                        f"does not speak (it offered {PROTOCOL_VERSION}; it speaks {', '.join(HANDSHAKE_VERSIONS)})"
                    )
                    return
                self.protocol = HANDSHAKE
                self.notify("notifications/initialized")
            on_done(outcome)

        params = {"protocolVersion": PROTOCOL_VERSION, "capabilities": CLIENT_CAPABILITIES, "clientInfo": CLIENT_INFO}
        self._request("initialize", params, answered, None)

    def request(
        self,
        method: str,
        params: JSON,
        on_done: Done,
        on_progress: ProgressSink | None = None,
        capabilities: JSON | None = None,
    ) -> int:
        """Send one request; ``on_done`` gets its result object or RemoteError. Returns the request's id.

        With ``on_progress``, the request asks for progress (``_meta.progressToken``, the request's own id). In the
        2026-07-28 era it carries the envelope, declaring ``capabilities`` (None: the client's own).
        """
        if self.protocol == MODERN:
            params = stamped(params, capabilities)
        return self._request(method, params, on_done, on_progress)

    def _request(self, method: str, params: JSON, on_done: Done, on_progress: ProgressSink | None) -> int:
        request_id, self._next_id = self._next_id, self._next_id + 1
        if on_progress is not None:
            meta = params.get("_meta")
            params = {**params, "_meta": {**(meta if isinstance(meta, dict) else {}), "progressToken": request_id}}
        self._pending[request_id] = _Pending(on_done, on_progress)
        self._send(_encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}), None)
        return request_id

    def cancel(self, request_id: int) -> None:
        """Give up on a request: the server is told, ``on_done`` never runs, a late answer is dropped."""
        if self._pending.pop(request_id, None) is not None:
            self._cancelled.add(request_id)
            self.notify("notifications/cancelled", {"requestId": request_id})

    def notify(self, method: str, params: JSON | None = None) -> None:
        message: JSON = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self._send(_encode(message), None)

    def answer(self, relay_id: int, result: JSON | None = None, error: JSON | None = None) -> bool:
        """Answer the server's request relayed as ``relay_id`` with ``result`` or ``error`` (code and message).
        False when there is none such: never relayed, already answered, or cancelled by the server."""
        request_id = self._relayed.pop(relay_id, None)
        if request_id is None:
            return False
        key = id_key(request_id)
        del self._relay_ids[key]
        answer: JSON = {"jsonrpc": "2.0", "id": request_id}
        if error is not None:
            answer["error"] = {"code": error["code"], "message": error["message"]}
        else:
            answer["result"] = result
        self._send(_encode(answer), lambda: self._answering.discard(key))
        return True

    # -- what the server sends ------------------------------------------------------------

    def received(self, line: bytes) -> None:
        """Dispatch one line of the server's stdout (without its newline)."""
        if self.broken or not line.strip():
            return
        try:
            message = json.loads(line, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            self._violation(f"{_NOT_JSON_RPC} ({whole_words(str(exc), 200)})")
            return
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            self._violation(f"{_NOT_JSON_RPC} (not a JSON-RPC 2.0 object)")
            return
        method = message.get("method")
        if method is not None:
            if not isinstance(method, str):
                self._violation(f"{_NOT_JSON_RPC} (its method is no string)")
            elif "id" in message:
                self._server_request(message["id"], method, message.get("params"))
            else:
                self._notification(method, message.get("params"))
        elif "result" in message or "error" in message:
            self._response(message)
        else:
            self._violation(f"{_NOT_JSON_RPC} (no method, result or error)")

    def _response(self, message: JSON) -> None:
        result, error, rid = message.get("result"), message.get("error"), message.get("id")
        if "result" in message and "error" in message:
            self._violation(f"its answer to request id {self._show(rid)} holds both a result and an error")
            return
        if error is not None and not (
            isinstance(error, dict)
            and isinstance(error.get("code"), int)
            and not isinstance(error["code"], bool)
            and isinstance(error.get("message"), str)
        ):
            self._violation(f"its error answer to request id {self._show(rid)} has no integer code and text message")
            return
        if "result" in message and not isinstance(result, dict):
            self._violation(f"its answer to request id {self._show(rid)} is not a result object")
            return
        if rid is None and error is not None:
            # An error about a request it could not read (a parse error): none of ours, since ours are JSON.
            return
        key = id_key(rid) if _is_id(rid) else None
        pending = self._pending.pop(key, None) if isinstance(key, int) else None
        if pending is None:
            if isinstance(key, int) and key in self._cancelled:
                self._cancelled.discard(key)  # a late answer to a cancelled request: fine
                return
            self._violation(
                f"it answered request id {self._show(rid)}, which the agent never sent (or which was already answered)"
            )
            return
        if isinstance(error, dict):
            pending.on_done(RemoteError(error["code"], error["message"], error.get("data")))
        else:
            assert isinstance(result, dict)
            pending.on_done(result)

    def _notification(self, method: str, params: object) -> None:
        if params is None and method in RELAYED_NOTIFICATIONS:
            params = {}  # the list_changed ones come without
        if not isinstance(params, dict):
            return
        if method == "notifications/progress":
            self._progress(params)
        elif method == "notifications/cancelled":
            # The server gave up on one of its requests: it no longer counts as one being answered, and an answer
            # from the host to it is not sent.
            key = id_key(params.get("requestId"))
            self._answering.discard(key)
            relay_id = self._relay_ids.pop(key, None)
            if relay_id is not None:
                del self._relayed[relay_id]
        elif method in RELAYED_NOTIFICATIONS and self._on_notification is not None and self.protocol is not None:
            self._on_notification(method, params)

    def _progress(self, params: JSON) -> None:
        token, progress, total, message = (params.get(k) for k in ("progressToken", "progress", "total", "message"))
        pending = self._pending.get(token) if isinstance(token, int) and not isinstance(token, bool) else None
        if pending is None or pending.on_progress is None:
            return  # progress for a request that is over, or never asked for it: nothing to relay
        if not _is_number(progress) or not (total is None or _is_number(total)):
            return  # not a progress notification the host could relay
        assert isinstance(progress, int | float)
        assert total is None or isinstance(total, int | float)
        text = message if isinstance(message, str) else None
        pending.on_progress(float(progress), None if total is None else float(total), text)

    def _server_request(self, request_id: object, method: str, params: object) -> None:
        if not _is_id(request_id):
            self._violation(f"it sent a request with id {self._show(request_id)}, which is no string or integer")
            return
        key = id_key(request_id)
        if key in self._answering:
            self._violation(f"it sent request id {self._show(request_id)} again while the agent was still answering it")
            return
        if len(self._answering) >= MAX_SERVER_REQUESTS:
            self._violation(f"it sent more than {MAX_SERVER_REQUESTS} requests without reading the answers")
            return
        self._answering.add(key)
        answer: JSON = {"jsonrpc": "2.0", "id": request_id}
        if method in RELAYED_REQUESTS and self._on_server_request is not None and self.protocol is not None:
            if params is None or isinstance(params, dict):
                relay_id, self._next_relay = self._next_relay, self._next_relay + 1
                self._relayed[relay_id] = request_id
                self._relay_ids[key] = relay_id
                self._on_server_request(relay_id, method, {} if params is None else params)
                return
            answer["error"] = {"code": INVALID_PARAMS, "message": "Invalid params: not an object"}
        elif method == "ping":
            answer["result"] = {}
        else:
            # Nothing else a client is asked (and before the session is open, not even those).
            answer["error"] = {"code": METHOD_NOT_FOUND, "message": "Method not found"}
        self._send(_encode(answer), lambda: self._answering.discard(key))

    # -- violations ---------------------------------------------------------------------

    @staticmethod
    def _show(value: object) -> str:
        return whole_words(repr(value), 80)

    def _violation(self, problem: str) -> None:
        if not self.broken:
            self.broken = True
            self._on_violation(_BROKE + problem)
