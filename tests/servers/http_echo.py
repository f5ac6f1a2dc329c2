#!/usr/bin/env python3
"""A plain HTTP server for the network tests, stdlib only: it answers every GET with what it received.

Usage: http_echo.py NAME PORT. The body is JSON: this server's NAME, the request
path and Host header, the header names, the SHA-256 of the Authorization header
(so a test can check a credential arrived without the value passing through the
sandbox) and the raw Authorization value (so a test can check the host redacts
a credential an upstream reflects). TRACE is answered as RFC 9110 says, with
the request itself, as an echoing upstream would. Each connection ends with a
log line counting the bytes that followed the answered request (a pipelined
request a proxy let through).
"""

from __future__ import annotations

import hashlib
import json
import socket
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

    def do_TRACE(self) -> None:
        fields = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
        body = f"{self.requestline}\r\n{fields}".encode("latin-1")
        self.send_response(200)
        self.send_header("Content-Type", "message/http")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle(self) -> None:
        super().handle()  # one request: this server speaks HTTP/1.0
        after = 0
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(2)
            while after < 1 << 20 and (chunk := self.rfile.read1(65536)):
                after += len(chunk)
        except OSError:
            pass
        self.log_message("done with %s: %d bytes after it", getattr(self, "path", "-"), after)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"http-echo: {format % args}\n")


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), Echo).serve_forever()
