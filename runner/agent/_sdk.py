"""Loading the MCP SDK quickly, and handing it a server process the agent already spawned.

Two start-up tricks, both bounded to the agent's own process:

* ``import mcp.client.session`` runs ``mcp/__init__.py`` and
  ``mcp/client/__init__.py``, which import the whole SDK (server side, HTTP
  clients, ...): about 0.3 s the agent never uses. `load()` registers plain
  namespace-like stand-ins for those two packages first, so only the modules
  the agent needs are executed. If that ever fails (an SDK upgrade), it falls
  back to the normal import.
* The agent spawns the server *before* importing the SDK, so the server's own
  start-up overlaps the agent's imports. `adopt_process()` makes
  ``stdio_client`` use that process instead of spawning a second one, and
  keeps the handle the SDK hides, so the agent can report the exit status.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any, TextIO

from anyio.abc import Process

_STUBBED = ("mcp", "mcp.client")


def _stub_packages() -> bool:
    if any(name in sys.modules for name in _STUBBED):
        return False
    spec = importlib.util.find_spec("mcp")
    if spec is None or spec.origin is None:
        return False
    root = os.path.dirname(spec.origin)
    for name, path in (("mcp", root), ("mcp.client", os.path.join(root, "client"))):
        module = types.ModuleType(name)
        module.__path__ = [path]
        module.__file__ = os.path.join(path, "__init__.py")
        sys.modules[name] = module
    sys.modules["mcp"].client = sys.modules["mcp.client"]  # type: ignore[attr-defined]
    return True


def load(fast: bool = True, *, remote: bool = False) -> None:
    """Import the SDK modules the agent uses: the session, and the stdio or the Streamable HTTP transport."""
    modules = ("mcp.client.session", "mcp.client.streamable_http" if remote else "mcp.client.stdio")
    if fast and _stub_packages():
        try:
            for module in modules:
                importlib.import_module(module)
            return
        except ImportError:
            for name in [n for n in sys.modules if n == "mcp" or n.startswith("mcp.")]:
                del sys.modules[name]
    for module in modules:
        importlib.import_module(module)


def adopt_process(process: Process) -> bool:
    """Make the next ``stdio_client`` use `process` instead of spawning; False if this SDK has no hook."""
    from mcp.client import stdio

    original = getattr(stdio, "_create_platform_compatible_process", None)
    if original is None or sys.platform == "win32":
        return False

    async def use_existing(
        command: str,
        args: list[str],
        env: dict[str, str] | None = None,
        errlog: TextIO = sys.stderr,
        cwd: Path | str | None = None,
    ) -> Any:
        stdio._create_platform_compatible_process = original
        return process

    stdio._create_platform_compatible_process = use_existing
    return True
