"""The door: size, depth and validity checks of every caller-controlled request field.

Everything a caller sends is checked here, before the layer below sees it, so
a mistake is INVALID_ARGUMENT naming the field and the spot (``arguments_json:
$.a[3].b: number is not finite``), never a failure deep inside (INTERNAL, a
traceback in the log, or a call that ran and then could not be recorded).
What the door accepts is a subset of what the audit log's canonical JSON can
hold: the rule is ``runner.guard.validate.json_problem``, the same one a
server's results pass. Messages never echo caller text unescaped.

The caps are generous for honest callers and bound the work and the records
one request can cause: every accepted field is copied into at least one
audit record, and some (arguments, reasons) into approvals that approvers read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from itertools import accumulate
from typing import Any

from runner.audit.records import canonical_json
from runner.errors import InvalidArgument
from runner.guard.validate import MAX_JSON_DEPTH, MAX_JSON_INTEGER, json_problem

MAX_ARGUMENTS_BYTES = 1024 * 1024
"""Tool arguments are instructions for a tool, not bulk data; 1 MiB bounds the door's parse and every record
and approval that copies them, and stays well below the host ⇄ agent frame cap (4 MiB by default)."""
MAX_ID = 128
"""Session, approval and audit record ids are short generated tokens; 128 leaves room for any format."""
MAX_NAME = 256
"""Profile, tool and prompt names (MCP suggests at most 128 characters for tool names)."""
MAX_URI = 8192
MAX_TEXT = 4096
"""Free text a person writes: an approval's reason, an audit query's caller."""
MAX_PROMPT_ARGUMENTS = 64
MAX_PROMPT_VALUE = 64 * 1024
MAX_LABEL_VALUE = 256
MAX_LIST = 64
"""Repeated fields (audit record kinds)."""

# Timestamp's own valid range (0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z); beyond it no date exists.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
_LINE_BREAKS = "\n\r\t"


def _escaped(text: str, limit: int = 40) -> str:
    """Caller text safe to quote in a message: JSON-escaped ASCII, cut to ``limit`` characters."""
    shown = json.dumps(text[:limit])
    return shown if len(text) <= limit else shown[:-1] + '…"'


def text(value: str, field: str, limit: int, *, required: bool = False, multiline: bool = False) -> str:
    """``value`` if it is at most ``limit`` characters with no control characters (tab and newlines when
    ``multiline``); a required field must not be empty."""
    if not value:
        if required:
            raise InvalidArgument(f"{field} is required")
        return value
    if len(value) > limit:
        raise InvalidArgument(f"{field} is {len(value)} characters long, more than the cap of {limit}")
    if not value.isprintable():
        for index, char in enumerate(value):
            if _is_control(char) and not (multiline and char in _LINE_BREAKS):
                raise InvalidArgument(f"{field} holds control character U+{ord(char):04X} at index {index}")
    return value


def _is_control(char: str) -> bool:
    # Cc only: format characters (zero-width and the like) are legitimate text, and the guard's name
    # normalization, not the door, decides what look-alike names mean.
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F


def identifier(value: str, field: str, *, required: bool = True) -> str:
    """A session, approval or record id."""
    return text(value, field, MAX_ID, required=required)


def name(value: str, field: str) -> str:
    """A profile, tool or prompt name (required)."""
    return text(value, field, MAX_NAME, required=True)


def uri(value: str) -> str:
    return text(value, "uri", MAX_URI, required=True)


def reason(value: str) -> str:
    return text(value, "reason", MAX_TEXT, multiline=True)


def arguments(arguments_json: str, field: str = "arguments_json") -> dict[str, Any]:
    """The tool arguments of a CallToolRequest (or another JSON object ``field``); empty text means none ({}).

    Accepted are exactly the objects ``json_problem`` accepts. The common case is decided at C speed (the
    nesting read off the text, then the audit log's own canonical encoding); only refused input is walked,
    to name the spot. Large input is still CPU work: the servicer runs this off the event loop.
    """
    if len(arguments_json) > MAX_ARGUMENTS_BYTES or len(arguments_json.encode("utf-8")) > MAX_ARGUMENTS_BYTES:
        raise InvalidArgument(f"{field} is larger than the cap of {MAX_ARGUMENTS_BYTES} bytes")
    if not arguments_json.strip():
        return {}
    try:
        # NaN, Infinity and 1e999 parse as floats here, so json_problem can name where they are.
        value = json.loads(arguments_json)
    except RecursionError:
        # The C decoder stops cleanly at Python's recursion limit; nothing that deep could be accepted anyway.
        raise InvalidArgument(f"{field}: $: nesting is deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidArgument(f"{field} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be a JSON object, got {type(value).__name__}")
    bare = _STRING.sub("", arguments_json)
    if _nesting(bare) <= MAX_JSON_DEPTH and not _LONG_DIGITS.search(bare):
        try:
            canonical_json(value).encode("utf-8")  # refuses non-finite numbers and lone surrogates
            return value
        except ValueError:
            pass
    problem = json_problem(value)
    if problem is None:  # only long digits sent it here, and they were a float's (0.000…1)
        try:
            canonical_json(value).encode("utf-8")
            return value
        except ValueError:
            problem = "cannot be held by the audit log"
    raise InvalidArgument(f"{field}: {problem}")


# A JSON string literal (the unrolled form, fast on long strings), and everything but brackets.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_LONG_DIGITS = re.compile(rf"\d{{{len(str(MAX_JSON_INTEGER))},}}")
"""Digits outside strings enough for an integer past ``MAX_JSON_INTEGER``: such text is checked value by value."""


def _nesting(bare: str) -> int:
    """How deep the containers of valid JSON nest, without walking them in Python (``bare``: strings removed)."""
    brackets = _NOT_BRACKETS.sub("", bare)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def prompt_arguments(values: Mapping[str, str]) -> dict[str, str]:
    if len(values) > MAX_PROMPT_ARGUMENTS:
        raise InvalidArgument(f"at most {MAX_PROMPT_ARGUMENTS} prompt arguments are allowed, got {len(values)}")
    checked: dict[str, str] = {}
    for key, value in values.items():
        name(key, "arguments key")
        checked[key] = text(value, f"arguments[{_escaped(key)}]", MAX_PROMPT_VALUE, multiline=True)
    return checked


def labels(values: Mapping[str, str]) -> dict[str, str]:
    """Labels' counts and key syntax are the session layer's rule; the door refuses only what no label holds."""
    if len(values) > MAX_LIST:
        raise InvalidArgument(f"at most {MAX_LIST} labels are allowed, got {len(values)}")
    for key, value in values.items():
        text(key, "labels key", MAX_NAME)
        text(value, f"labels[{_escaped(key)}]", MAX_LABEL_VALUE)
    return dict(values)


def kinds(values: list[str]) -> list[str]:
    if len(values) > MAX_LIST:
        raise InvalidArgument(f"at most {MAX_LIST} kinds are allowed, got {len(values)}")
    for value in values:
        text(value, "kinds", MAX_NAME)
    return values


def timestamp(value: Any, field: str) -> Any:
    """A google.protobuf.Timestamp inside its own valid range (an out-of-range one names no instant)."""
    if not _MIN_SECONDS <= value.seconds <= _MAX_SECONDS or not 0 <= value.nanos <= 999_999_999:
        raise InvalidArgument(f"{field} is not a valid timestamp (years 1 to 9999, nanos 0 to 999999999)")
    return value
