"""Cutting a server's stdout into lines, each at most the cap, in time linear in what it writes. Stdlib only."""

from __future__ import annotations


class BoundedLines:
    """Feed it chunks; it hands back the whole lines they complete, or None once a line passes ``max_bytes``.

    The search for a newline resumes where the last one stopped, so a line that
    arrives in tiny pieces costs no more than one that arrives whole (the SDK's
    ``buffer + chunk`` join was quadratic). A partial line past the cap is refused
    before it is kept, so the buffer never holds more than the cap plus one
    chunk. Once over, it stays over: the agent reports the cap and kills the
    server, so nothing after it matters.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already known to hold no newline
        self.over = False

    def feed(self, chunk: bytes) -> list[bytes] | None:
        """The lines ``chunk`` completes, without their newlines; None when one passed the cap."""
        if self.over:
            return None
        buffer = self._buffer
        buffer += chunk
        lines: list[bytes] = []
        start = 0
        while (newline := buffer.find(b"\n", self._scanned)) >= 0:
            if newline - start > self._max:
                self._refuse()
                return None
            lines.append(bytes(buffer[start:newline]))
            start = self._scanned = newline + 1
        if len(buffer) - start > self._max:
            self._refuse()
            return None
        del buffer[:start]
        self._scanned = len(buffer)
        return lines

    def _refuse(self) -> None:
        self.over = True
        self._buffer = bytearray()
