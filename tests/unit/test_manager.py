"""SessionManager against FakeBackend: lifecycle, validation, timeouts and every way a sandbox can fail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from types import MappingProxyType

import pytest

from runner import errors
from runner.config import Limits, Profile, Settings
from runner.sandbox.base import SandboxSpec
from runner.sandbox.fake import FakeBackend, Handler
from runner.sessions.manager import SessionManager
from runner.sessions.models import LimitsRequest, SessionState
from tests.unit.fake_agent import FakeAgent

LIMITS = Limits(call_timeout_s=2.0, idle_timeout_s=60, max_lifetime_s=600)
PROFILES = {
    name: Profile(name=name, image="fake", command=(name,), limits=LIMITS)
    for name in (
        "good",
        "bad_output",
        "no_structured",
        "hang_hard",
        "crash_on_call",
        "oom_on_call",
        "garbage_on_call",
        "huge_on_call",
        "forge_on_call",
        "fatal_at_start",
        "tools_only",
    )
}
SETTINGS = Settings(
    profiles=MappingProxyType(PROFILES), max_sessions=3, max_message_bytes=1_000_000, reap_interval_s=3600
)


def by_command(spec: SandboxSpec) -> Handler:
    return FakeAgent(spec.command[0])


@pytest.fixture
async def make_manager() -> AsyncIterator[Callable[..., SessionManager]]:
    made: list[SessionManager] = []

    def make(settings: Settings = SETTINGS) -> SessionManager:
        manager = SessionManager(FakeBackend(by_command), settings)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.shutdown()


@pytest.fixture
async def manager(make_manager: Callable[..., SessionManager]) -> SessionManager:
    m = make_manager()
    await m.start()
    return m


async def test_open_call_close(manager: SessionManager) -> None:
    opened = await manager.open("good", caller="a", labels={"team": "x"})
    assert opened.server.name == "fake"
    assert [t.name for t in opened.tools] == ["echo", "sleep", "say"]
    outcome = await manager.call_tool(opened.info.session_id, "echo", {"text": "hi"}, caller="a")
    assert outcome.result.structured_content == {"text": "hi"}
    info = await manager.close(opened.info.session_id, caller="a")
    assert info.state is SessionState.CLOSED
    assert info.usage.calls == 1
    with pytest.raises(errors.SessionClosed):
        await manager.call_tool(opened.info.session_id, "echo", {"text": "hi"}, caller="a")


async def test_unknown_profile_session_tool(manager: SessionManager) -> None:
    with pytest.raises(errors.ProfileNotFound, match="profiles you may open"):
        await manager.open("nope", caller="a")
    with pytest.raises(errors.SessionNotFound):
        manager.get("missing", caller="a")
    opened = await manager.open("good", caller="a")
    with pytest.raises(errors.ToolNotFound, match="echo, say, sleep"):
        await manager.call_tool(opened.info.session_id, "nope", {}, caller="a")


async def test_input_schema_names_path(manager: SessionManager) -> None:
    sid = (await manager.open("good", caller="a")).info.session_id
    with pytest.raises(errors.SchemaViolation) as caught:
        await manager.call_tool(sid, "echo", {"text": "x" * 50}, caller="a")
    assert caught.value.path == "$.text"
    with pytest.raises(errors.SchemaViolation, match="required"):
        await manager.call_tool(sid, "echo", {}, caller="a")


@pytest.mark.parametrize(
    ("profile", "match"),
    [("bad_output", r"breaks its outputSchema at \$\.text"), ("no_structured", "no structuredContent")],
)
async def test_output_rejected_session_survives(manager: SessionManager, profile: str, match: str) -> None:
    sid = (await manager.open(profile, caller="a")).info.session_id
    with pytest.raises(errors.ResultRejected, match=match):
        await manager.call_tool(sid, "echo", {"text": "hi"}, caller="a")
    assert manager.get(sid, caller="a").state is SessionState.READY


async def test_progress_relayed(manager: SessionManager) -> None:
    sid = (await manager.open("good", caller="a")).info.session_id
    seen = []

    async def on_progress(event: object) -> None:
        seen.append(event)

    await manager.call_tool(sid, "sleep", {"seconds": 0}, on_progress=on_progress, caller="a")
    assert [e.progress for e in seen] == [0, 1, 2]


async def test_timeout_keeps_responsive_session(manager: SessionManager) -> None:
    sid = (await manager.open("good", caller="a")).info.session_id
    with pytest.raises(errors.DeadlineExceeded, match="still usable"):
        await manager.call_tool(sid, "sleep", {"seconds": 5}, timeout=0.2, caller="a")
    assert (await manager.call_tool(sid, "echo", {"text": "after"}, caller="a")).result.structured_content == {
        "text": "after"
    }


async def test_timeout_ends_unresponsive_session(manager: SessionManager) -> None:
    sid = (await manager.open("hang_hard", caller="a")).info.session_id
    with pytest.raises(errors.DeadlineExceeded, match="stopped answering"):
        await manager.call_tool(sid, "echo", {"text": "x"}, timeout=0.2, caller="a")
    assert manager.get(sid, caller="a").state is SessionState.FAILED
    with pytest.raises(errors.SessionClosed):
        await manager.call_tool(sid, "echo", {"text": "x"}, caller="a")


async def test_crash_reports_stderr_tail(manager: SessionManager) -> None:
    sid = (await manager.open("crash_on_call", caller="a")).info.session_id
    with pytest.raises(errors.SandboxCrashed, match="boom: segfault") as caught:
        await manager.call_tool(sid, "echo", {"text": "x"}, caller="a")
    assert "status 7" in caught.value.message
    assert manager.get(sid, caller="a").state is SessionState.FAILED


async def test_crash_at_start(manager: SessionManager) -> None:
    with pytest.raises(errors.SandboxCrashed, match="cannot load config"):
        await manager.open("fatal_at_start", caller="a")
    assert [s.state for s in manager.list_sessions(caller="a")] == [SessionState.FAILED]


async def test_oom_is_resource_exhausted(manager: SessionManager) -> None:
    sid = (await manager.open("oom_on_call", caller="a")).info.session_id
    with pytest.raises(errors.OutOfMemory, match="memory limit of 512 MiB"):
        await manager.call_tool(sid, "echo", {"text": "x"}, caller="a")


@pytest.mark.parametrize(
    ("profile", "error", "match"),
    [
        ("garbage_on_call", errors.ProtocolViolation, "not JSON"),
        ("huge_on_call", errors.MessageTooLarge, "was ended: the sandbox sent a message larger than the 1000000 byte"),
        ("forge_on_call", errors.ProtocolViolation, "not pending"),
    ],
)
async def test_protocol_violations_end_session(
    manager: SessionManager, profile: str, error: type[errors.RunnerError], match: str
) -> None:
    sid = (await manager.open(profile, caller="a")).info.session_id
    other = (await manager.open("good", caller="b")).info.session_id
    with pytest.raises(error, match=match):
        await manager.call_tool(sid, "echo", {"text": "x"}, caller="a")
    assert manager.get(sid, caller="a").state is SessionState.FAILED
    assert (await manager.call_tool(other, "echo", {"text": "ok"}, caller="a")).result.structured_content == {
        "text": "ok"
    }


async def test_server_error_keeps_code(manager: SessionManager) -> None:
    sid = (await manager.open("good", caller="a")).info.session_id
    with pytest.raises(errors.ServerError) as caught:
        await manager.read_resource(sid, "mem://nothing", caller="a")
    assert caught.value.status is errors.Status.NOT_FOUND
    contents = (await manager.read_resource(sid, "mem://greeting", caller="a")).value
    assert contents[0].text == "hello"  # type: ignore[union-attr]


async def test_quota(manager: SessionManager) -> None:
    for _ in range(3):
        await manager.open("good", caller="a")
    with pytest.raises(errors.QuotaExceeded, match="limit is 3"):
        await manager.open("good", caller="a")


async def test_limits_may_only_go_down(manager: SessionManager) -> None:
    with pytest.raises(errors.InvalidArgument, match="memory_bytes"):
        await manager.open("good", caller="a", limits=LimitsRequest(memory_bytes=10 * 1024**3))
    opened = await manager.open("good", caller="a", limits=LimitsRequest(memory_bytes=64 * 1024**2))
    assert opened.info.state is SessionState.READY


@pytest.mark.parametrize("key", ["bad key!", "team\n", "", "x" * 64])
async def test_bad_labels(manager: SessionManager, key: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="label key"):
        await manager.open("good", caller="a", labels={key: "v"})


async def test_idle_reaping(make_manager: Callable[..., SessionManager]) -> None:
    quick = replace(LIMITS, idle_timeout_s=0.05)
    settings = replace(SETTINGS, profiles=MappingProxyType({"good": replace(PROFILES["good"], limits=quick)}))
    manager = make_manager(settings)
    await manager.start()
    sid = (await manager.open("good", caller="a")).info.session_id
    await asyncio.sleep(0.1)
    await manager.reap()
    info = manager.get(sid, caller="a")
    assert info.state is SessionState.CLOSED
    assert "idle" in (info.failure or "")
    with pytest.raises(errors.SessionClosed, match="idle"):
        await manager.call_tool(sid, "echo", {"text": "x"}, caller="a")


async def test_shutdown_closes_everything(manager: SessionManager) -> None:
    ids = [(await manager.open("good", caller="a")).info.session_id for _ in range(2)]
    await manager.shutdown()
    assert all(manager.get(i, caller="a").state is SessionState.CLOSED for i in ids)


async def test_max_lifetime_reaping_even_when_busy(make_manager: Callable[..., SessionManager]) -> None:
    short = replace(LIMITS, max_lifetime_s=0.05)
    settings = replace(SETTINGS, profiles=MappingProxyType({"good": replace(PROFILES["good"], limits=short)}))
    manager = make_manager(settings)
    await manager.start()
    sid = (await manager.open("good", caller="a")).info.session_id
    await asyncio.sleep(0.1)
    await manager.call_tool(sid, "echo", {"text": "keeps it from idling"}, caller="a")
    await manager.reap()
    info = manager.get(sid, caller="a")
    assert info.state is SessionState.CLOSED
    assert "maximum lifetime" in (info.failure or "")


async def test_capability_the_server_lacks_is_unimplemented(manager: SessionManager) -> None:
    sid = (await manager.open("tools_only", caller="a")).info.session_id
    with pytest.raises(errors.Unimplemented, match="does not offer prompts"):
        await manager.list_prompts(sid, caller="a")
    with pytest.raises(errors.Unimplemented, match="does not offer resources"):
        await manager.read_resource(sid, "mem://greeting", caller="a")
