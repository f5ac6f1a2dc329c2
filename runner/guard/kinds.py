"""Finding kinds the sanitizer reports besides the detector names.

They live apart from ``sanitize`` so that the stage modules (``strip``, ``injection``) can name the kinds they
report without importing ``sanitize``, which imports them; ``sanitize`` re-exports every one of them.
"""

from __future__ import annotations

SECRET = "secret"
TERMINAL_ESCAPE = "terminal_escape"
CONTROL_CHARS = "control_chars"
BIDI_CONTROL = "bidi_control"
INVISIBLE_CHARS = "invisible_chars"
UNICODE_TAGS = "unicode_tags"
INJECTION_INSTRUCTION = "injection_instruction"
INJECTION_ROLE_MARKER = "injection_role_marker"
INJECTION_HIDDEN_TEXT = "injection_hidden_text"
INJECTION_EXFIL_LINK = "injection_exfil_link"
UNSAFE_IDENTIFIER = "unsafe_identifier"
"""A tool's name or schema key that sanitizing would change: the tool is held back, never silently renamed."""

STRIP_KINDS: frozenset[str] = frozenset({TERMINAL_ESCAPE, CONTROL_CHARS, BIDI_CONTROL, INVISIBLE_CHARS, UNICODE_TAGS})
INJECTION_KINDS: frozenset[str] = frozenset(
    {INJECTION_INSTRUCTION, INJECTION_ROLE_MARKER, INJECTION_HIDDEN_TEXT, INJECTION_EXFIL_LINK}
)
