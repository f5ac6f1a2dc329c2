#!/usr/bin/env python3
"""A plain HTTP server for the network tests, stdlib only: it answers every GET with what it received.

Usage: http_echo.py NAME PORT. The body is JSON: this server's NAME, the request
path and Host header, the header names, the SHA-256 of the Authorization header
(so a test can check a credential arrived without the value passing through the
sandbox) and the raw Authorization value (so a test can check the host redacts
a credential an upstream reflects).
"""

from __future__ import annotations

import hashlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    server_version = "http-echo/1"

    def do_GET(self) -> None:
        authorization = self.headers.get("Authorization")
        body = json.dumps({
            "server": sys.argv[1],
            "path": self.path,
            "host": self.headers.get("Host"),
            "headers": sorted(self.headers.keys()),
            "authorization_sha256": hashlib.sha256(authorization.encode()).hexdigest() if authorization else None,
            "authorization": authorization,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"http-echo: {format % args}\n")


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), Echo).serve_forever()
