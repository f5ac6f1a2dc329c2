"""``python -m runner.agent -- CMD ARGS... | --url URL``: which agent runs.

A stdio server gets the standard-library agent (stdio.py, a ``selectors``
loop); a remote server the SDK-backed one (remote_agent.py, on anyio),
imported only then. Frames and their meaning are specified in
``docs/agent-protocol.md``.
"""

from __future__ import annotations

import sys

from .frames import FrameWriter, diag

USAGE = "no MCP server given (usage: python -m runner.agent -- CMD ARGS... | --url URL)"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    url = None
    if args[:1] == ["--url"]:
        if len(args) != 2:
            args = []
        else:
            url = args[1]
    if not args:
        diag(USAGE)
        FrameWriter().send({"type": "fatal", "message": USAGE})
        return 2
    if url is not None:
        return _run_remote(url)
    from .stdio import StdioAgent

    return StdioAgent(args).run()


def _run_remote(url: str) -> int:
    import logging

    import anyio

    from .remote_agent import RemoteAgent

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="mcp-agent: %(name)s: %(message)s")
    return anyio.run(RemoteAgent(url).run)
