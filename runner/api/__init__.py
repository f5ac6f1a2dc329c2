"""The public gRPC API: conversion (``convert``), the servicer and the server.

Generated stubs live in ``runner.api._proto`` (regenerate with ``scripts/gen-proto.sh``).
"""

from runner.api.server import RUNNER_SERVICE, RunningServer, start_server
from runner.api.servicer import RunnerServicer, SessionService

__all__ = [
    "RUNNER_SERVICE",
    "RunnerServicer",
    "RunningServer",
    "SessionService",
    "start_server",
]
