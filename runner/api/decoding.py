"""Requests whose bytes are not a valid protobuf message answer INVALID_ARGUMENT, for every RPC.

grpc.aio deserializes a request before any servicer code runs; when the
deserializer raises (protobuf's ``DecodeError``: invalid UTF-8 in a string
field, a truncated field, a wrong wire type) the server answers UNKNOWN with
the exception's text and no servicer can intervene. ``DecodeErrors`` is a
server interceptor that wraps each unary-request handler: its deserializer
turns a failure into a ``Undecodable`` marker instead of raising, and its
behaviour answers INVALID_ARGUMENT (naming the message type) when handed that
marker, before the servicer sees anything. The caller's bytes are never
logged: they are the caller's mistake, not the runner's.

Stream-request handlers (only server reflection has one) are left as they are.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:  # generic only in the type stubs
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


@dataclass(frozen=True)
class Undecodable:
    """What the wrapped deserializer returns for bytes that are not a valid request."""

    problem: str


def _deserializer(original: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return original(data)
        except DecodeError as exc:
            # protobuf's message already names the type ("Error parsing message with type 'x.Y': ...").
            return Undecodable(str(exc)[:300] or type(exc).__name__)

    return deserialize


async def _refuse(context: Context, request: Undecodable) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid message: {request.problem}")


def _unary_behaviour(original: Callable[[Any, Context], Awaitable[Any]]) -> Callable[[Any, Context], Awaitable[Any]]:
    async def behaviour(request: Any, context: Context) -> Any:
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        return await original(request, context)

    return behaviour


def _streaming_behaviour(
    original: Callable[[Any, Context], AsyncIterator[Any]],
) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def behaviour(request: Any, context: Context) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        async for response in original(request, context):
            yield response

    return behaviour


def _coroutine_streaming_behaviour(
    original: Callable[[Any, Context], Awaitable[None]],
) -> Callable[[Any, Context], Awaitable[None]]:
    """For a unary-stream handler written as a coroutine that writes with ``context.write``."""

    async def behaviour(request: Any, context: Context) -> None:
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        await original(request, context)

    return behaviour


def guard_handler(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` answering INVALID_ARGUMENT for undecodable requests (stream-request handlers unchanged)."""
    if handler.request_streaming or handler.request_deserializer is None:
        return handler
    deserializer = _deserializer(handler.request_deserializer)
    if not handler.response_streaming:
        unary = handler.unary_unary
        if not inspect.iscoroutinefunction(unary):
            return handler  # a synchronous handler: not one this server registers
        return handler._replace(  # type: ignore[attr-defined,no-any-return]
            request_deserializer=deserializer, unary_unary=_unary_behaviour(unary)
        )
    stream = handler.unary_stream
    if inspect.isasyncgenfunction(stream):
        wrapped: Callable[..., Any] = _streaming_behaviour(stream)
    elif inspect.iscoroutinefunction(stream):
        wrapped = _coroutine_streaming_behaviour(stream)
    else:
        return handler
    return handler._replace(  # type: ignore[attr-defined,no-any-return]
        request_deserializer=deserializer, unary_stream=wrapped
    )


class DecodeErrors(_Interceptor):
    """Registered first, so no RPC's handler sees (or fails on) bytes that do not decode."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        return handler if handler is None else guard_handler(handler)
