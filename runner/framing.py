"""Cutting a sandbox's byte stream into lines, and weighing each line before it is parsed (runner/channel.py).

Apart from the channel because these are the bounds every line meets whatever frame it turns out to be: its
length (``LineFramer``), its count of JSON values (``count_values``) and its cost to the event loop
(``line_cost``), each measured at C speed before ``json.loads`` may hold the GIL for it.
"""

from __future__ import annotations

from runner.errors import MessageTooLarge

MAX_TEXT = 4096
"""Characters of a sandbox's message the channel keeps (a progress or fatal message)."""

#: The most separators and containers (``,``, ``[``, ``{`` outside strings) a frame may hold, counted before it is
#: parsed. ``json.loads`` holds the GIL whatever thread runs it, so a 4 MiB line of ``[],`` stalled every session
#: for 0.3 s, and a 64 MiB one for seconds. A frame past this holds more values than the sanitizer's work budget
#: (runner/guard/results.py, the same number) walks in any result; here it is refused for a few counts at C speed.
MAX_FRAME_VALUES = 200_000

# What a line costs to parse and dispatch, roughly (CPython 3.11): a fixed part, per byte, per value, and the
# sanitizing of the text the reader's callbacks sanitize on the loop (a progress message: at most MAX_TEXT
# characters, up to 6 bytes each once escaped), measured at 18 µs for a bare progress line, 290 µs with 4 KiB.
_LINE_COST_S = 20e-6
_BYTE_COST_S = 1e-9
_VALUE_COST_S = 0.2e-6
_TEXT_BYTES = 6 * MAX_TEXT
_TEXT_COST_S = 70e-9


def describe_cap(max_bytes: int) -> str:
    """``4 MiB`` for a cap in whole MiB, else ``1000 byte``: what a person reads in the error."""
    return f"{max_bytes // 1024**2} MiB" if max_bytes % 1024**2 == 0 else f"{max_bytes} byte"


class LineFramer:
    """Cuts a byte stream into lines of at most ``max_bytes``, in time linear in the bytes fed.

    Each byte is searched for a newline once: the search resumes where the last
    one stopped, so a long line that arrives in tiny pieces (a hostile sandbox's
    choice) costs no more than one that arrives whole. Consumed lines are dropped
    from the buffer once per chunk, and a partial line past the cap is refused
    before it is kept, so the buffer never holds more than the cap plus one chunk.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already known to hold no newline

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` completes, without their newlines; MessageTooLarge for a line past the cap."""
        buffer = self._buffer
        buffer += chunk
        lines: list[bytes] = []
        start = 0
        while (newline := buffer.find(b"\n", self._scanned)) >= 0:
            if newline - start > self._max:
                raise self._too_large()
            lines.append(bytes(buffer[start:newline]))
            start = self._scanned = newline + 1
        if len(buffer) - start > self._max:
            raise self._too_large()
        del buffer[:start]
        self._scanned = len(buffer)
        return lines

    def _too_large(self) -> MessageTooLarge:
        return MessageTooLarge(f"the sandbox sent a message larger than the {describe_cap(self._max)} cap")


def line_cost(size: int, values: int) -> float:
    """Seconds of event loop a line of ``size`` bytes and ``values`` values costs, by the estimate above."""
    return _LINE_COST_S + size * _BYTE_COST_S + min(size, _TEXT_BYTES) * _TEXT_COST_S + values * _VALUE_COST_S


def count_values(line: bytes) -> int:
    """The separators and containers outside the line's strings (at most, when few); MessageTooLarge past the cap.

    Linear in the line and cheap: the counts run at C speed, and the text is split only when at most
    MAX_FRAME_VALUES strings are in it. A line that is not JSON may be miscounted past the point where it
    stops being JSON, but the parser stops there too.
    """
    upper = _structure(line)  # some may sit inside strings; when few, that is close enough
    if upper <= MAX_FRAME_VALUES:
        return upper
    plain = line.replace(b"\\\\", b"").replace(b'\\"', b"")  # escapes gone, every quote left opens or closes
    if plain.count(b'"') // 2 <= MAX_FRAME_VALUES:
        outside = _structure(b"".join(plain.split(b'"')[::2]))
        if outside <= MAX_FRAME_VALUES:
            return outside
    raise MessageTooLarge(f"the sandbox sent a message of more than {MAX_FRAME_VALUES} JSON values, the cap")


def _structure(text: bytes) -> int:
    return text.count(b",") + text.count(b"[") + text.count(b"{")
