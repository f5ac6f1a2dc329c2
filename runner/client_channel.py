"""Where the Python client and the CLI connect, and the gRPC channel they connect with.

Apart from ``runner.client`` so the address rule and the channel options are written once for the blocking
client, the asyncio client and the CLI (``runner.client`` re-exports these names).
"""

from __future__ import annotations

import os

import grpc

from runner.host_port import grpc_target

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "MCP_RUNNER_ADDRESS"
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
"""Results may be large (a resource blob, a long export chunk): well above gRPC's 4 MiB default."""


def service_address(address: str | None = None) -> str:
    """``address`` if given, else ``MCP_RUNNER_ADDRESS`` (unless empty), else the default: the CLI's rule, so a
    script and the CLI reach the same service. An empty ``address`` is a ValueError, not "not given": a script's
    unset variable must not reach a service nobody named."""
    if address is not None:
        return grpc_target(address, "the address")
    return os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def blocking_channel(address: str | None, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A channel to ``service_address(address)``: TLS with ``credentials``, plaintext without."""
    target = service_address(address)
    if credentials is None:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


def async_channel(address: str | None, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    """As ``blocking_channel``, for asyncio."""
    target = service_address(address)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
