"""Paged listings: walking a server's tools/list, resources/list or prompts/list cursor by cursor.

Apart from the manager because the bounds on a listing are their own concern: how many pages, how many items
and how much weight all its pages together may hold before the listing is refused, whatever the server sends.
The manager hands in its ``_request`` so every page goes through the same deadline and dead-channel handling.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from runner.errors import ResultRejected
from runner.framing import describe_cap
from runner.guard.validate import MAX_RESULT_ITEMS, MAX_TOOLS, parse_result
from runner.sessions import outflow
from runner.sessions.models import ProgressCallback
from runner.sessions.session import LiveSession

P = TypeVar("P", bound=BaseModel)

Request = Callable[
    [LiveSession, str, dict[str, Any], float | None, ProgressCallback | None, dict[str, Any] | None],
    Awaitable[dict[str, Any]],
]
"""The manager's ``_request``: session, method, params, timeout, on_progress, recorded."""

MAX_PAGES = 100
_LISTED = {"tools/list": ("tools", MAX_TOOLS), "resources/list": ("resources", MAX_RESULT_ITEMS),
           "resources/templates/list": ("resource_templates", MAX_RESULT_ITEMS),
           "prompts/list": ("prompts", MAX_RESULT_ITEMS)}
"""What each listing holds and how many of it all its pages together may hold. Counted page by page: a server
paging 4096 resources a time for MAX_PAGES pages had the service hold, sanitize and record 409 600 of them for one
call before any cap applied (tools: 1024, but only after all pages)."""
LISTING_MESSAGES = 4
"""A listing's pages together may weigh this many of the largest message a sandbox may send: pages holding few
items each but near the cap (descriptions, _meta) made 100 pages of 4 MiB, 400 MiB held for one call."""


async def pages(
    request: Request,
    session: LiveSession,
    method: str,
    model: type[P],
    timeout: float | None,
    max_message_bytes: int,
) -> list[P]:
    pages: list[P] = []
    cursor: str | None = None
    listed = weight = 0
    heaviest = LISTING_MESSAGES * max_message_bytes
    for _ in range(MAX_PAGES):
        params: dict[str, Any] = {"cursor": cursor} if cursor else {}
        recorded = {"cursor": outflow.cursor_record(session, cursor)} if cursor else {}
        raw = await request(session, method, params, timeout, None, recorded)
        page, size = await asyncio.to_thread(_parse_page, model, raw, f"{method} result")
        pages.append(page)
        field, cap = _LISTED[method]
        listed += len(getattr(page, field))
        weight += size
        if listed > cap:
            raise ResultRejected(f"the server's {method} lists more than {cap} {field} over {len(pages)} pages")
        if weight > heaviest:
            raise ResultRejected(
                f"the server's {method} pages weigh more than {LISTING_MESSAGES} messages of the "
                f"{describe_cap(max_message_bytes)} cap over {len(pages)} pages"
            )
        cursor = getattr(page, "next_cursor", None)
        if not cursor:
            return pages
    raise ResultRejected(f"the server's {method} did not end after {MAX_PAGES} pages")


def _parse_page(model: type[P], raw: dict[str, Any], what: str) -> tuple[P, int]:
    """A page of a listing and its size as sent (near enough: compact JSON of what the channel parsed)."""
    return parse_result(model, raw, what), len(json.dumps(raw, separators=(",", ":"), ensure_ascii=False))
