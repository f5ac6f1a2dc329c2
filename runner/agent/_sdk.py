"""Loading the MCP SDK quickly, for remote (Streamable HTTP) servers: the stdio path never loads it.

``import mcp.client.session`` runs ``mcp/__init__.py`` and
``mcp/client/__init__.py``, which import the whole SDK (server side, stdio
and other clients, ...): about 0.3 s the agent never uses. `load()` registers
plain namespace-like stand-ins for those two packages first, so only the
modules the agent needs are executed. If that ever fails (an SDK upgrade), it
falls back to the normal import.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

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


def load(fast: bool = True) -> None:
    """Import the SDK modules the agent uses: the session and the Streamable HTTP transport."""
    modules = ("mcp.client.session", "mcp.client.streamable_http")
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
