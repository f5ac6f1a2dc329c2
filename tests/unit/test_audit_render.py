"""How ``mcp-runner audit list`` sums up write-ahead intents and caller input the log kept as a digest."""

from __future__ import annotations

from typing import Any

import pytest

from runner import cli_audit
from runner.audit import records
from runner.audit.records import capped

BIG = "p" * 10_000
DIGEST = capped(BIG)
MESSAGE = capped("no tool " + repr(BIG))
SHOWN_NAME = "p" * 24 + "… [10000 bytes, sha256 " + DIGEST["sha256"][:12] + "]"
SHOWN_MESSAGE = "no tool '" + "p" * 55 + "… [10010 bytes, sha256 " + MESSAGE["sha256"][:12] + "]"


@pytest.mark.parametrize(
    ("kind", "data", "summary"),
    [
        (records.REQUEST_INTENT, {"method": "tools/call", "params": {"name": "say", "arguments": {"text": "hi"}},
                                  "request_id": "aud_1"},
         "sending tools/call say (for aud_1)"),
        (records.REQUEST_INTENT, {"method": "tools/list", "params": {}}, "sending tools/list"),
        (records.REQUEST, {"method": "tools/call", "params": {"name": DIGEST}, "outcome": "error",
                           "error": {"status": "NOT_FOUND", "message": MESSAGE}},
         f"tools/call {SHOWN_NAME} → NOT_FOUND: {SHOWN_MESSAGE}"),
        (records.SESSION_OPEN, {"profile": DIGEST, "outcome": "refused",
                                "error": {"status": "NOT_FOUND", "message": {"unrecordable": "nested too deeply"}}},
         f"profile {SHOWN_NAME} image ? → refused: NOT_FOUND: [unrecordable: nested too deeply]"),
    ],
)  # fmt: skip
def test_intents_and_digests_read_as_sentences(kind: str, data: dict[str, Any], summary: str) -> None:
    assert cli_audit._audit_summary(kind, data) == summary


def test_a_digest_is_shown_as_its_prefix_size_and_hash_within_the_limit() -> None:
    shown = cli_audit._shown(DIGEST, 60)
    assert len(shown) == 60 and shown.startswith("ppp") and shown.endswith(f"sha256 {DIGEST['sha256'][:12]}]")
