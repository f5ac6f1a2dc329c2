"""What flows out of a session's sandbox on its way to the caller and the audit log, through its sanitizer.

Results, the initialize answer, progress messages, error messages that quote the server, and the cursors the
server hands back: each passes the session's ``Sanitizer`` here. A large result goes to a thread (a hostile one
may cost the sanitizer its whole work budget); a small one (``small``: known from its line, at no cost) is
parsed, validated and sanitized on the event loop, where it costs less than the hop would; what else is
sanitized on the event loop is capped first, so it stays cheap.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar, TypeVarTuple

from runner.audit import records
from runner.channel import Reply
from runner.errors import ResultBlocked, RunnerError
from runner.guard import results
from runner.guard.findings import BLOCKED, FindingLog
from runner.guard.sanitize import Sanitizer
from runner.guard.schema import NotQuick, on_the_loop
from runner.observe import tracing
from runner.sessions.models import ProgressCallback, ProgressEvent, Sanitized
from runner.sessions.session import LiveSession
from runner.text import unescaped, whole_words

V = TypeVar("V")
Ts = TypeVarTuple("Ts")

INLINE_BYTES = 8 * 1024
INLINE_VALUES = 64
"""A reply whose line is at most INLINE_BYTES and holds at most INLINE_VALUES separators and containers is
parsed, validated and sanitized on the event loop: ~0.1 ms for an honest small answer (the ``time`` server's),
under ~1 ms for the costliest such line measured (prose the injection rules read closely, content blocks at
64 values). A thread hop costs ~90 µs of submit and wake-up, and the work in the thread holds the GIL all the
same; what it buys is only that long work is interrupted for the loop, so a larger reply still goes to one."""

MAX_ERROR_MESSAGE = 8192
"""Characters of an error message kept: it is sanitized on the event loop, so it must stay cheap."""
MAX_ON_LOOP_PROGRESS = 4096
"""A progress message up to this many characters is sanitized on the event loop; a longer one in a thread."""
_BLOCKED_SHOWN = 5


def small(reply: Reply) -> bool:
    """Whether the work on ``reply`` is small enough for the event loop (``INLINE_BYTES``, ``INLINE_VALUES``)."""
    return small_line(reply.size, reply.values)


def small_line(size: int, values: int) -> bool:
    """Whether the work on a line of ``size`` bytes and ``values`` values is small enough for the event loop."""
    return size <= INLINE_BYTES and values <= INLINE_VALUES


async def run_guard_work(inline: bool, work: Callable[[*Ts], V], *args: *Ts) -> V:
    """``work(*args)`` on the event loop when ``inline`` (small work, cheaper than a thread hop), else in a thread.

    Small input against a plain schema is not always small work (``runner.guard.schema.QUICK_BUDGET_S``): a
    schema validation on the loop that runs past its short budget is dropped and the work is done again in a
    thread, with the full budget. The work is pure (it checks, parses, sanitizes), so running it twice is safe."""
    if inline:
        try:
            with on_the_loop():
                return work(*args)
        except NotQuick:
            pass
    return await asyncio.to_thread(work, *args)


async def sanitize(
    session: LiveSession,
    clean: Callable[[Sanitizer, V, FindingLog], V],
    value: V,
    what: str,
    *,
    inline: bool = False,
) -> Sanitized[V]:
    """``value`` cleaned by the session's sanitizer (on the event loop with ``inline``, for a small value), or
    ResultBlocked if its policy blocks what it found."""
    found = FindingLog()
    with tracing.step("sanitize", {"mcp_runner.inline": inline}) as span:
        cleaned = await run_guard_work(inline, clean, session.sanitizer, value, found)
        findings = found.findings()
        if span is not None:
            span.set_attribute("mcp_runner.findings", len(findings))
    if found.blocked:
        places = [f"{f.kind} in {f.where}" for f in findings if f.action == BLOCKED]
        more = f" and {len(places) - _BLOCKED_SHOWN} more" if len(places) > _BLOCKED_SHOWN else ""
        raise ResultBlocked(
            f"{what} was blocked by profile {session.profile.name!r}'s sanitizer policy: "
            f"{', '.join(places[:_BLOCKED_SHOWN])}{more}"
        )
    return Sanitized(cleaned, findings)


def sanitizing_progress(
    session: LiveSession, on_progress: ProgressCallback | None, found: FindingLog
) -> ProgressCallback | None:
    """``on_progress`` fed sanitized messages; what they held goes to ``found``, the call's findings. A message
    whose injection the profile blocks is not passed on: the progress numbers are.

    The channel's reader waits for each event, so a flood of short status lines is sanitized on the loop
    (microseconds each, less than a thread hop); a long message goes to a thread, like any result.
    """
    if on_progress is None:
        return None
    forward = on_progress

    async def sanitized(event: ProgressEvent) -> None:
        if event.message:
            own = FindingLog()
            if len(event.message) <= MAX_ON_LOOP_PROGRESS:
                message = results.sanitize_progress(session.sanitizer, event.message, own)
            else:
                message = await asyncio.to_thread(results.sanitize_progress, session.sanitizer, event.message, own)
            found.extend(own.findings())
            event = replace(event, message=None if own.blocked else message)
        await forward(event)

    return sanitized


def cursor_record(session: LiveSession, cursor: str) -> dict[str, Any]:
    """A server's next cursor as the record of the request that sends it back keeps it: the server's text, so
    never as it was (a secret or an escape in it would reach the audit log), but its digest and a short prefix
    that passed the sanitizer."""
    data = cursor.encode("utf-8", "surrogatepass")
    prefix = whole_words(cursor, records.PREFIX_CHARS)
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "prefix": session.sanitizer.locator(prefix, "nextCursor", FindingLog()),
    }


def sanitize_message(session: LiveSession, error: RunnerError) -> None:
    """An error's message through the session's sanitizer: it may quote the server's words or the caller's.

    On the event loop, so capped first (in whole words, so no half of a secret is left behind the cut). What it
    quotes through ``repr`` or JSON (a validation error quoting a value, a bad line) is read unescaped, as a
    person reads it: an escaped invisible character must not keep a secret in two harmless-looking halves.
    """
    message = error.message
    if len(message) > MAX_ERROR_MESSAGE:
        message = whole_words(message, MAX_ERROR_MESSAGE).rstrip() + " … (cut)"
    error.message = session.sanitizer.text(unescaped(message), "error message", FindingLog())
