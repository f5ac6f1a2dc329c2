"""What changed between two JSON values, as a bounded list of entries a replay verdict can carry.

Each entry is ``{"op": "replace", "path", "old", "new"}``, ``{"op": "add", "path", "new"}`` or
``{"op": "remove", "path", "old"}`` with ``path`` an RFC 6901 JSON Pointer. Equality is JSON's, not
Python's: ``true`` is not ``1``, while ``1`` and ``1.0`` are the same number. The output is bounded (at most
``max_entries`` entries, each value at most ``MAX_VALUE_BYTES`` of JSON or a short stand-in), because it is
stored in the audit log next to the results it compares and must never outgrow them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.audit.records import canonical_json

MAX_ENTRIES = 100
MAX_VALUE_BYTES = 2048
"""A value whose canonical JSON is longer is replaced by ``"<N bytes of JSON>"``."""
_SHOWN_CHARS = 80


def pointer_token(key: str) -> str:
    """One RFC 6901 reference token: ``~`` first, so the ``~1`` made for ``/`` is not escaped again."""
    return key.replace("~", "~0").replace("/", "~1")


def _kind(value: Any) -> str:
    # bool before number: bool is an int in Python, but true and 1 differ in JSON.
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return "null" if value is None else "string"


def _bounded(value: Any) -> Any:
    size = len(canonical_json(value).encode("utf-8"))
    return value if size <= MAX_VALUE_BYTES else f"<{size} bytes of JSON>"


class _Collector:
    """Walks both values depth first and stops as soon as the entry budget is spent."""

    def __init__(self, max_entries: int) -> None:
        self.entries: list[dict[str, Any]] = []
        self.max_entries = max_entries

    @property
    def full(self) -> bool:
        return len(self.entries) >= self.max_entries

    def emit(self, op: str, path: str, **values: Any) -> None:
        if not self.full:
            self.entries.append({"op": op, "path": path, **{name: _bounded(v) for name, v in values.items()}})

    def walk(self, old: Any, new: Any, path: str) -> None:
        kind = _kind(old)
        if kind != _kind(new):
            self.emit("replace", path, old=old, new=new)
        elif kind == "object":
            self._objects(old, new, path)
        elif kind == "array":
            self._arrays(old, new, path)
        elif old != new:
            self.emit("replace", path, old=old, new=new)

    def _objects(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        for key in sorted(old.keys() | new.keys()):
            if self.full:
                return
            child = f"{path}/{pointer_token(key)}"
            if key not in new:
                self.emit("remove", child, old=old[key])
            elif key not in old:
                self.emit("add", child, new=new[key])
            else:
                self.walk(old[key], new[key], child)

    def _arrays(self, old: list[Any] | tuple[Any, ...], new: list[Any] | tuple[Any, ...], path: str) -> None:
        for index in range(max(len(old), len(new))):
            if self.full:
                return
            child = f"{path}/{index}"
            if index >= len(new):
                self.emit("remove", child, old=old[index])
            elif index >= len(old):
                self.emit("add", child, new=new[index])
            else:
                self.walk(old[index], new[index], child)


def json_diff(old: Any, new: Any, *, max_entries: int = MAX_ENTRIES) -> list[dict[str, Any]]:
    """The differences from ``old`` to ``new`` (JSON values), objects key by key in sorted order, arrays index
    by index; ``[]`` when they are equal. Exactly ``max_entries`` entries means the list may have been cut short.
    """
    collector = _Collector(max_entries)
    collector.walk(old, new, "")
    return collector.entries


def _shown(value: Any) -> str:
    text = canonical_json(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def describe(entry: Mapping[str, Any]) -> str:
    """One entry for people, e.g. ``replace /content/0/text: "a" → "b"``; values cut to about 80 characters."""
    op, path = entry["op"], entry["path"] or "(root)"
    if op == "replace":
        return f"{op} {path}: {_shown(entry['old'])} → {_shown(entry['new'])}"
    return f"{op} {path}: {_shown(entry['new'] if op == 'add' else entry['old'])}"
