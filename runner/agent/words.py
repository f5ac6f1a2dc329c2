"""Quoting a server's words in the agent's messages: cut short, never inside a word. Stdlib only."""

from __future__ import annotations

_BETWEEN_WORDS = " \n\t\r\"'"
"""What ends a word for ``whole_words``: white space and quotes (no credential format holds them)."""


def whole_words(text: str, limit: int) -> str:
    """At most the first ``limit`` characters of ``text``, never part of a word (what ``runner.text.whole_words``
    does on the host, which this image does not hold). What the agent quotes of the server goes through the host's
    sanitizer, and part of a secret left at a cut (``ghp_`` and some of its characters) is one it does not know."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    if text[limit] not in _BETWEEN_WORDS:
        head = head[: max(head.rfind(ch) for ch in _BETWEEN_WORDS) + 1]
    return head + "…"


def describe_exception(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            return whole_words(str(first.get("msg", exc)), 200)
        except Exception:
            pass
    return whole_words((str(exc).splitlines() or [type(exc).__name__])[0], 200)
