"""The door section: registered and run by default, paths taking turns, sessions held and left in order, the
tables' shape; no service, no Docker (the figures come from fakes, never the clock)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

import runner.bench.door as door
from runner.bench.common import Figures
from runner.bench.door import (
    BRIDGE,
    GRPC,
    HOST,
    LEASE,
    NOT_ON_HOST,
    STATEFUL,
    DoorFigures,
    alternate,
    bridge_params,
    call_steps,
    door_report,
    door_url,
    sdk_open,
)
from runner.bench.options import DEFAULT_SECTIONS, SECTIONS, BenchOptions, options_from
from runner.cli import build_parser
from runner.config import Limits, Profile
from runner.door.host_configs import bridge_command

PROFILE = Profile(name="time", image="python-servers", command=("mcp-server-time",), limits=Limits(cpus=1.0))
TOOL, ARGUMENTS = "get_current_time", {"timezone": "UTC"}


def test_named_it_runs_alone_and_make_bench_runs_it_before_backends() -> None:
    assert options_from(build_parser().parse_args(["bench", "--sections", "door"])) == BenchOptions(sections=("door",))
    assert "door" in DEFAULT_SECTIONS
    assert SECTIONS.index("door") < SECTIONS.index("backends")


# --------------------------------------------------------------------------------------------- rounds


def _recording(name: str, order: list[str], seconds: float) -> door.Step:
    async def one() -> float:
        order.append(name)
        return seconds

    return one


async def test_paths_take_turns_in_rotating_order_after_an_untimed_first_round() -> None:
    order: list[str] = []
    steps = {name: _recording(name, order, seconds) for name, seconds in ((GRPC, 0.006), (STATEFUL, 0.009),
                                                                          (LEASE, 0.012))}  # fmt: skip
    measured = await alternate(steps, 3)
    warm_up, timed = order[:3], order[3:]
    assert warm_up == [GRPC, STATEFUL, LEASE]
    assert timed == [GRPC, STATEFUL, LEASE, STATEFUL, LEASE, GRPC, LEASE, GRPC, STATEFUL]
    # What a step returns is what counts (an open leaves out its close), not the time around it.
    assert measured == {GRPC: Figures(3, 6.0, 6.0), STATEFUL: Figures(3, 9.0, 9.0), LEASE: Figures(3, 12.0, 12.0)}


class _Session:
    """Stands in for an SDK client: remembers entering, leaving and calls in one shared log."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def __aenter__(self) -> _Session:
        self.log.append(f"enter {self.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.log.append(f"leave {self.name}")

    async def list_tools(self) -> None:
        self.log.append(f"list {self.name}")

    async def call_tool(self, tool: str, arguments: dict[str, Any]) -> None:
        self.log.append(f"call {self.name} {tool}")


async def test_an_open_is_timed_without_its_close_and_every_open_is_left() -> None:
    log: list[str] = []
    step = sdk_open(lambda: _Session("door", log))  # type: ignore[arg-type,return-value]
    for _ in range(2):
        assert await step() >= 0
    assert log == ["enter door", "leave door", "enter door", "leave door"]


class _Runner:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def open_session(self, profile: str) -> Any:
        self.log.append(f"open grpc {profile}")
        return SimpleNamespace(session_id="s1")

    async def call_tool(self, session_id: str, tool: str, arguments: dict[str, Any]) -> None:
        self.log.append(f"call grpc {tool}")

    async def close_session(self, session_id: str) -> None:
        self.log.append(f"close grpc {session_id}")


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The section's clients and the host's server replaced by fakes logging to the list yielded."""
    log: list[str] = []

    class Direct:
        @classmethod
        async def open(cls, command: list[str]) -> SimpleNamespace:
            log.append(f"enter host {' '.join(command)}")

            async def close() -> None:
                log.append("leave host")

            return SimpleNamespace(session=_Session("host", log), close=close)

    monkeypatch.setattr(door, "stateful_client", lambda address, profile: _Session(STATEFUL, log))
    monkeypatch.setattr(door, "lease_client", lambda address, profile: _Session(LEASE, log))
    monkeypatch.setattr(door, "bridge_client", lambda address, profile, errlog: _Session(BRIDGE, log))
    monkeypatch.setattr(door, "DirectSession", Direct)
    yield log


@pytest.mark.parametrize("host", [["/usr/bin/mcp-server-time"], None])
async def test_each_path_holds_one_session_called_once_a_step_and_all_are_left_in_reverse(
    sessions: list[str], host: list[str] | None
) -> None:
    async with call_steps(_Runner(sessions), "127.0.0.1:1", "time", TOOL, ARGUMENTS, None,  # type: ignore[arg-type]
                          host) as steps:  # fmt: skip
        opened = list(sessions)
        for name in steps:
            await steps[name]()
        called = sessions[len(opened):]
    on_host = ["enter host /usr/bin/mcp-server-time"] if host else []
    # The lease is opened by a listing before any call (the SDK would otherwise re-list on the first one).
    assert opened == ["open grpc time", f"enter {STATEFUL}", f"enter {LEASE}", f"list {LEASE}", f"enter {BRIDGE}",
                      *on_host]  # fmt: skip
    assert set(steps) == {GRPC, STATEFUL, LEASE, BRIDGE, *([HOST] if host else [])}
    assert sorted(called) == sorted(f"call {name} {TOOL}" for name in steps)
    left = sessions[len(opened) + len(called):]
    assert left == [*(["leave host"] if host else []), f"leave {BRIDGE}", f"leave {LEASE}", f"leave {STATEFUL}",
                    "close grpc s1"]  # fmt: skip


def test_the_bridge_is_launched_as_a_host_would_at_the_doors_url() -> None:
    params = bridge_params("127.0.0.1:5005", "time")
    assert [params.command, *params.args] == [*bridge_command(), "mcp", "--url", "http://127.0.0.1:5005/mcp", "time"]
    assert door_url("127.0.0.1:5005", "time") == "http://127.0.0.1:5005/mcp/time"


# --------------------------------------------------------------------------------------------- report


def _figures(p50: float) -> Figures:
    return Figures(10, p50, p50 * 2)


def _report(call: dict[str, Figures]) -> list[str]:
    lines: list[str] = []
    opened = {GRPC: _figures(650.0), STATEFUL: _figures(700.0), BRIDGE: _figures(1300.0)}
    door_report(lines.append, PROFILE, TOOL, DoorFigures(opened, call))
    return lines


def test_the_report_puts_every_path_beside_grpc_and_the_host_with_ratios() -> None:
    lines = _report({GRPC: _figures(6.0), STATEFUL: _figures(9.0), LEASE: _figures(12.0), BRIDGE: _figures(10.5),
                     HOST: _figures(2.0)})  # fmt: skip
    text = "\n".join(lines)
    assert lines[0].startswith("\ndoor: the MCP door beside gRPC, profile 'time'")
    open_heading = next(line for line in lines if "session open" in line)
    bridge_open = next(line for line in lines if "stdio bridge: start + initialize" in line)
    assert bridge_open.index("2.00x") == open_heading.index("p50 / gRPC")
    call_heading = next(line for line in lines if "tools/call (get_current_time)" in line)
    lease = next(line for line in lines if "stateless lease (2026-07-28)" in line)
    assert lease.index("2.00x") == call_heading.index("p50 / gRPC")
    assert lease.index("6.00x") == call_heading.index("p50 / host")
    assert "host: the server over stdio, no runner" in text
    assert "stateful session is +3.0 ms (+50 %) against gRPC's, through the lease +6.0 ms (+100 %)" in text
    assert "the bridge adds +1.5 ms (+17 %)" in text and "opening through the door is +50.0 ms (+8 %)" in text


def test_without_the_server_on_the_host_its_row_says_so_and_its_ratios_are_not_applicable() -> None:
    lines = _report({GRPC: _figures(6.0), STATEFUL: _figures(9.0), LEASE: _figures(12.0), BRIDGE: _figures(10.5)})
    host_row = next(line for line in lines if line.strip().startswith("host:"))
    assert NOT_ON_HOST in host_row
    grpc_row = next(line for line in lines if line.strip().startswith("gRPC CallTool"))
    assert grpc_row.endswith("n/a")


async def test_a_failure_shows_the_bridges_stderr_and_is_the_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    @contextlib.asynccontextmanager
    async def served(config: str | None, *, door: bool = False) -> AsyncIterator[SimpleNamespace]:
        assert door
        yield SimpleNamespace(address="127.0.0.1:1", door="127.0.0.1:2")

    class Runner(_Runner):
        def __init__(self, address: str) -> None:
            super().__init__([])

        async def __aenter__(self) -> Runner:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

    async def failing(steps: object, count: int) -> None:
        errlog = door_errlog[0]
        errlog.write("mcp-runner mcp: the door went away")
        raise ConnectionError("the door went away")

    door_errlog: list[Any] = []
    monkeypatch.setattr(door, "served", served)
    monkeypatch.setattr(door, "AsyncRunnerClient", Runner)
    monkeypatch.setattr(door, "open_steps", lambda runner, address, profile, errlog: door_errlog.append(errlog))
    monkeypatch.setattr(door, "alternate", failing)
    lines: list[str] = []
    with pytest.raises(ConnectionError):
        await door.run(lines.append, None, PROFILE, TOOL, ARGUMENTS, 1, 1)
    assert lines == ["  the stdio bridge's stderr: mcp-runner mcp: the door went away"]
