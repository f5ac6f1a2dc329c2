"""A server that pages a listing without end costs its own call a bounded amount, whatever the page size: the
cap on what a listing holds applies over all its pages, counted page by page. A neighbour session is unharmed."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runner import errors
from runner.audit.store import AuditStore
from runner.config import Limits, Profile, Settings
from runner.guard.validate import MAX_RESULT_ITEMS, MAX_TOOLS
from runner.policy import PolicyStore
from runner.sandbox.base import SandboxSpec
from runner.sandbox.fake import FakeBackend, FakeIO, Handler
from runner.sessions.journal import Journal
from runner.sessions.listing import MAX_PAGES
from runner.sessions.manager import SessionManager
from tests.unit.fake_agent import TOOLS, FakeAgent, frame

LIMITS = Limits(memory_bytes=256 * 1024**2, call_timeout_s=5.0, idle_timeout_s=60, max_lifetime_s=600)
PER_PAGE = 1000
SERVED: dict[str, int] = {}
"""Pages each endless listing was asked for: the work the service took on for one call."""


class EndlessAgent(FakeAgent):
    """'endless_<method>': every page of that listing holds PER_PAGE items and names a next one; 'heavy_pages':
    every resources page holds one resource and 600 KB of _meta."""

    async def _answer(self, io: FakeIO, msg: dict[str, Any]) -> None:
        rid, method = msg["id"], msg["method"]
        if self.behaviour == "heavy_pages" and method == "resources/list":
            SERVED[method] = SERVED.get(method, 0) + 1
            page = {"resources": [{"uri": "mem://r", "name": "r"}], "_meta": {"pad": "x" * 600_000}, "nextCursor": "c"}
            await io.write(frame(type="result", id=rid, result=page))
            return
        if self.behaviour != f"endless_{method}" or (method == "tools/list" and self.listings == 0):
            await super()._answer(io, msg)  # the first tools listing (at open) is an honest one
            return
        SERVED[method] = SERVED.get(method, 0) + 1
        n = SERVED[method]
        items: Any = {
            "tools/list": ("tools", [{**TOOLS[0], "name": f"t{n}_{i}"} for i in range(PER_PAGE)]),
            "resources/list": ("resources", [{"uri": f"mem://{n}/{i}", "name": "r"} for i in range(PER_PAGE)]),
            "prompts/list": ("prompts", [{"name": f"p{n}_{i}"} for i in range(PER_PAGE)]),
        }[method]
        await io.write(frame(type="result", id=rid, result={items[0]: items[1], "nextCursor": f"c{n}"}))


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[SessionManager]:
    store = AuditStore(tmp_path / "audit.db")
    store.open()

    def factory(spec: SandboxSpec) -> Handler:
        return EndlessAgent(spec.command[0])

    names = ("good", "endless_resources/list", "endless_prompts/list", "endless_tools/list", "heavy_pages")
    profiles = {n: Profile(name=n.replace("/", "_"), image="fake", command=(n,), limits=LIMITS) for n in names}
    policy = tmp_path / "policy.yaml"
    policy.write_text(textwrap.dedent("callers:\n  alice:\n    profiles: ['*']\n"), encoding="utf-8")
    settings = Settings(
        profiles={p.name: p for p in profiles.values()}, reap_interval_s=3600, max_message_bytes=1024**2
    )
    manager = SessionManager(FakeBackend(factory), settings, PolicyStore(policy), Journal(store))
    await manager.start()
    SERVED.clear()
    try:
        yield manager
    finally:
        await manager.shutdown()
        store.close()


@pytest.mark.parametrize("method", ["resources/list", "prompts/list"])
async def test_an_endless_listing_stops_at_the_cap_over_its_pages(manager: SessionManager, method: str) -> None:
    neighbour = await manager.open("good", caller="alice")
    hostile = await manager.open(f"endless_{method}".replace("/", "_"), caller="alice")
    listing = manager.list_resources if method == "resources/list" else manager.list_prompts
    with pytest.raises(errors.ResultRejected, match=f"lists more than {MAX_RESULT_ITEMS} "):
        await listing(hostile.info.session_id, caller="alice")
    # Refused at the page that passed the cap, not after MAX_PAGES pages (100 000 items held and sanitized).
    assert SERVED[method] == MAX_RESULT_ITEMS // PER_PAGE + 1 < MAX_PAGES
    said = await manager.call_tool(neighbour.info.session_id, "echo", {"text": "hi"}, caller="alice")
    assert said.result is not None


async def test_tools_paged_past_their_cap_stop_at_the_page_that_passes_it(manager: SessionManager) -> None:
    hostile = await manager.open("endless_tools_list", caller="alice")
    with pytest.raises(errors.ResultRejected, match=f"lists more than {MAX_TOOLS} tools"):
        await manager.call_tool(hostile.info.session_id, "unknown", {}, caller="alice")  # an unknown name lists again
    assert SERVED["tools/list"] == MAX_TOOLS // PER_PAGE + 1 < MAX_PAGES


async def test_pages_heavy_with_few_items_stop_at_the_listings_weight(manager: SessionManager) -> None:
    """One resource and 600 KB of _meta a page passed the item cap for MAX_PAGES pages: 60 MB held for one call."""
    neighbour = await manager.open("good", caller="alice")
    hostile = await manager.open("heavy_pages", caller="alice")
    with pytest.raises(errors.ResultRejected, match="weigh more than 4 messages of the 1 MiB cap"):
        await manager.list_resources(hostile.info.session_id, caller="alice")
    assert SERVED["resources/list"] == 4 * 1024**2 // 600_000 + 1 < MAX_PAGES
    said = await manager.call_tool(neighbour.info.session_id, "echo", {"text": "hi"}, caller="alice")
    assert said.result is not None
