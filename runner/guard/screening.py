"""Tool listings as callers see them: sanitized, with misnamed, changed (rug-pull) and poisoned tools held back.

A tool whose name is not a valid MCP tool name, whose definition no longer
matches its pin, whose definition carries a prompt injection in any field (name,
title, description, any schema string or key, annotations, ``_meta``) under a
profile that blocks injections, or whose name or schema keys sanitizing would
change (``unsafe_identifier``: a caller must send them back as they are), is
left out of the listing and refused when called; the finding says which and
why, never what the text said.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import mcp_types

from runner.guard.findings import BLOCKED, Finding, FindingLog
from runner.guard.kinds import UNSAFE_IDENTIFIER
from runner.guard.names import TOOL_NAME
from runner.guard.pinning import PinViolation
from runner.guard.results import ToolWalk
from runner.guard.sanitize import Sanitizer

TOOL_CHANGED = "tool_changed"
TOOL_POISONING = "tool_poisoning"
INVALID_TOOL_NAME = "invalid_tool_name"


@dataclass(frozen=True)
class ToolListing:
    tools: tuple[mcp_types.Tool, ...] = ()
    """Sanitized definitions of the tools a caller may use."""
    blocked: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Tool name -> why it is held back."""
    findings: tuple[Finding, ...] = ()


def screen_tools(sanitizer: Sanitizer, tools: list[mcp_types.Tool], violations: list[PinViolation]) -> ToolListing:
    changed = {violation.tool: violation for violation in violations}
    found = FindingLog()
    shown: list[mcp_types.Tool] = []
    blocked: dict[str, str] = {}
    walk = ToolWalk(sanitizer)  # one work budget for the whole listing
    for index, tool in enumerate(tools):
        if not TOOL_NAME.fullmatch(tool.name):
            # Invisible or look-alike characters, escapes or sheer length: such a name can pass for another
            # tool's (and dodge the rules written for it). Its place stands for it, since the name is the problem.
            blocked[tool.name] = "its name is not a valid MCP tool name (1-128 ASCII letters, digits, '_', '-', '.')"
            found.add(INVALID_TOOL_NAME, BLOCKED, f"tools[{index}]")
            continue
        where = walk.where(tool, index)  # a valid name can still be a secret (ghp_…): then its place stands for it
        violation = changed.get(tool.name)
        if violation is not None:
            blocked[tool.name] = violation.message
            found.add(TOOL_CHANGED, BLOCKED, where)
            continue
        own = FindingLog()
        clean = walk.tool(tool, index, own)  # every string of the tool: name, schemas, annotations, _meta…
        found.extend(own.findings())
        if own.blocked:
            if any(f.kind == UNSAFE_IDENTIFIER for f in own.findings()):
                blocked[tool.name] = "its name or a schema property name would change under sanitizing"
                found.add(UNSAFE_IDENTIFIER, BLOCKED, where)
            else:
                blocked[tool.name] = "its definition carries a prompt injection (tool poisoning)"
                found.add(TOOL_POISONING, BLOCKED, where)
            continue
        shown.append(clean)
    return ToolListing(tuple(shown), MappingProxyType(blocked), found.findings())
