"""A profile's own roots: what the runner answers a sandboxed server's ``roots/list`` with, never asking the caller.

A caller's client knows its own machine's directories, not the sandbox's: a filesystem server told the caller's
roots replaces its allowed directories with paths that do not exist in its container. A profile that sets
``roots:`` answers for the sandbox instead (``runner/sessions/inbox.py``); ``roots: []`` answers with none.

Each entry is a ``file://`` URI or an absolute path in the sandbox (made a URI here, percent-encoded where a URI
must be), named plainly: no ``.`` or ``..`` segments, no query or fragment, no host but ``localhost``.
"""

from __future__ import annotations

import urllib.parse
from pathlib import PurePosixPath

MAX_ROOTS = 64
"""Roots a profile may name: a server gets them in one answer, and a few directories are what a sandbox mounts."""
MAX_ROOT_CHARS = 1024


def root_uri(entry: str) -> str:
    """The ``file://`` URI ``entry`` names (a URI as written, or a sandbox path made one); ValueError saying why
    it is not one."""
    if not entry or len(entry) > MAX_ROOT_CHARS:
        raise ValueError(f"a root is a file:// URI or an absolute sandbox path of 1 to {MAX_ROOT_CHARS} characters")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in entry):
        raise ValueError(f"root {entry!r} holds a control character")
    if entry.startswith("/"):
        path = entry
    else:
        parts = urllib.parse.urlsplit(entry)
        if parts.scheme != "file":
            raise ValueError(f"root {entry!r} is neither a file:// URI nor an absolute sandbox path")
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment or "#" in entry:
            raise ValueError(f"root {entry!r}: a file:// URI with a path only (no host, query or fragment)")
        path = urllib.parse.unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"root {entry!r}: its path must be absolute")
    if any(segment in (".", "..") for segment in path.split("/")) or "\x00" in path:
        raise ValueError(f"root {entry!r}: name the directory plainly, without '.' or '..'")
    return PurePosixPath("/" + "/".join(segment for segment in path.split("/") if segment)).as_uri()


def profile_roots(entries: list[str]) -> tuple[str, ...]:
    """The URIs of a profile's ``roots:`` list, in order, each once; ValueError naming the entry at fault."""
    if len(entries) > MAX_ROOTS:
        raise ValueError(f"at most {MAX_ROOTS} roots")
    uris: list[str] = []
    for index, entry in enumerate(entries):
        try:
            uri = root_uri(entry)
        except ValueError as exc:
            raise ValueError(f"entry {index}: {exc}") from None
        if uri not in uris:
            uris.append(uri)
    return tuple(uris)


def roots_result(uris: tuple[str, ...]) -> dict[str, list[dict[str, str]]]:
    """A ``ListRootsResult`` (wire JSON) naming ``uris``."""
    return {"roots": [{"uri": uri} for uri in uris]}
