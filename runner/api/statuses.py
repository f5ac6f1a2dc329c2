"""Domain errors as gRPC statuses, and the time an RPC leaves the layers below: shared by every servicer module.

``RunnerError`` becomes a gRPC status in exactly one place (``translate_errors``) through the ``Status`` table;
anything else is a bug, logged with its traceback and reported as INTERNAL without details (they may carry
sandbox output).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from runner.errors import InvalidArgument, RateLimited, RunnerError, Status
from runner.observe import tracing

log = logging.getLogger("runner.api.servicer")

Context = grpc.aio.ServicerContext[Any, Any]

# The manager's budget ends this much before the caller's deadline, so it can stop the call and
# answer DEADLINE_EXCEEDED itself (the wire deadline is also rounded, and may read slightly long).
DEADLINE_MARGIN_S = 0.02
DEADLINE_ROUNDING = 1.01
"""gRPC rounds a timeout up by as much as ~1% when it encodes it (10 s arrives as 10.099 s)."""

CODES: dict[Status, grpc.StatusCode] = {status: grpc.StatusCode[status.value] for status in Status}


def deadline_of(context: Context, timeout_ms: int = 0) -> float | None:
    """Seconds the manager may spend: the shorter of the gRPC deadline and ``timeout_ms`` (0 = none).

    None means no limit from the caller (the profile's own limits still apply).
    """
    if timeout_ms < 0:
        raise InvalidArgument("timeout_ms must not be negative")
    candidates: list[float] = []
    remaining: float | None = context.time_remaining()
    if remaining is not None:
        candidates.append(max(remaining / DEADLINE_ROUNDING - DEADLINE_MARGIN_S, 0.0))
    if timeout_ms:
        candidates.append(timeout_ms / 1000)
    return min(candidates) if candidates else None


@asynccontextmanager
async def translate_errors(context: Context, rpc: str) -> AsyncIterator[None]:
    """The one place domain errors become gRPC statuses."""
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except RunnerError as exc:
        if isinstance(exc, RateLimited):
            context.set_trailing_metadata((("retry-after-ms", str(max(1, round(exc.retry_after_s * 1000)))),))
        await context.abort(CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
    except Exception:
        log.exception("%s failed unexpectedly", rpc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the runner's log)")


def entering(context: Context, rpc: str) -> tracing.Entering:
    """The caller's trace context (``traceparent`` metadata) as the parent of the runner's spans for ``rpc``."""
    carrier = {k: v for k, v in context.invocation_metadata() or () if k in (tracing.TRACEPARENT, tracing.TRACESTATE)}
    return tracing.Entering(carrier, {"rpc.system": "grpc", "rpc.service": "mcp_runner.v1.Runner", "rpc.method": rpc})
