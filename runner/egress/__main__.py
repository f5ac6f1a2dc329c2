"""``python3 -m runner.egress``: the proxy container's entry point (config on stdin, events on stdout)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading

from runner.egress.proxy import EgressProxy
from runner.egress.rules import ProxyConfig, config_from_wire

_MAX_CONFIG_BYTES = 1 << 20
_CHUNK = 65536


def _write_event(event: dict[str, object]) -> bool:
    try:
        sys.stdout.buffer.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
        sys.stdout.buffer.flush()
    except (OSError, ValueError):
        return False
    return True


def _watch_stdin(loop: asyncio.AbstractEventLoop, finished: asyncio.Event) -> None:
    """Wait in a thread for stdin's EOF: the host closing it is the signal to stop."""
    try:
        while sys.stdin.buffer.read(_CHUNK):
            pass
    except (OSError, ValueError):
        pass
    with contextlib.suppress(RuntimeError):  # the loop has already ended
        loop.call_soon_threadsafe(finished.set)


async def _run(config: ProxyConfig) -> int:
    finished = asyncio.Event()
    stdout_broken = False

    def emit(event: dict[str, object]) -> None:
        nonlocal stdout_broken
        # Without stdout no decision can be recorded: stop serving rather than forward unaudited.
        if not stdout_broken and not _write_event(event):
            stdout_broken = True
            print("mcp-runner egress: stdout is gone, stopping", file=sys.stderr)
            finished.set()

    proxy = EgressProxy(config.rules, emit=emit, limits=config.limits)
    try:
        server = await proxy.serve(config.listen_host, config.listen_port)
    except OSError as exc:
        _write_event({"type": "error", "message": f"cannot listen on {config.listen_host}:{config.listen_port}: {exc}"})
        return 1
    emit({"type": "ready", "port": int(server.sockets[0].getsockname()[1])})
    threading.Thread(target=_watch_stdin, args=(asyncio.get_running_loop(), finished), daemon=True).start()
    await finished.wait()
    await proxy.close()
    return 1 if stdout_broken else 0


def main() -> int:
    """Read one JSON config line from stdin, serve until stdin ends; 2 for a bad config."""
    line = sys.stdin.buffer.readline(_MAX_CONFIG_BYTES)
    try:
        if len(line) >= _MAX_CONFIG_BYTES and not line.endswith(b"\n"):
            raise ValueError("the config line is longer than 1 MiB")
        if not line.strip():
            raise ValueError("no config line on stdin")
        try:
            wire = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"the config line is not valid JSON: {exc}") from None
        config = config_from_wire(wire)
    except ValueError as exc:
        _write_event({"type": "error", "message": str(exc)})
        return 2
    return asyncio.run(_run(config))


if __name__ == "__main__":
    raise SystemExit(main())
