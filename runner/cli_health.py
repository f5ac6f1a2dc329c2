"""``mcp-runner health``: the standard gRPC health check, as an exit status.

For Kubernetes exec probes (1.20 has no gRPC probes) and scripts: 0 when the service answers SERVING, 1 when it
answers anything else or does not answer in time. With ``--live`` (liveness probes) any answer is 0: a service
that says NOT_SERVING (its sandbox backend unreachable, or stopping) is alive, and restarting it would not help.

The health service needs no caller credentials; over TLS the connection still does (``--ca``, and
``--cert``/``--key`` under mutual TLS), taken from the common options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runner.client import tls_credentials


def health(args: argparse.Namespace) -> int:
    if args.ca or args.cert or args.key:
        credentials = tls_credentials(*(Path(f) if f else None for f in (args.ca, args.cert, args.key)))
        channel = grpc.secure_channel(args.address, credentials)
    else:
        channel = grpc.insecure_channel(args.address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            why = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.Call) else str(exc)
            print(f"{args.address}: no answer ({why})", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if args.live or reply.status == health_pb2.HealthCheckResponse.SERVING else 1
