"""The host side of the egress proxy: its config line, its decision lines and its lifecycle, over a fake handle."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from runner.egress.rules import Rule, config_from_wire
from runner.errors import Unavailable
from runner.sandbox import egress
from runner.sandbox.base import EgressDecision, SandboxExit, SandboxNetwork, SandboxStats
from runner.sandbox.egress import (
    MAX_LINE_BYTES,
    PROXY_PORT,
    EgressProxy,
    _Lines,
    parse_decision,
    proxy_config,
    proxy_env,
)

WAIT_S = 2.0
GOOD: dict[str, Any] = {
    "type": "decision",
    "time": 1_700_000_000.5,
    "method": "CONNECT",
    "host": "api.example.com",
    "port": 443,
    "address": "93.184.216.34",
    "rule": "api.example.com:443",
    "allowed": True,
    "code": "allowed",
    "reason": "",
}
NETWORK = SandboxNetwork(
    rules=(
        Rule("api.example.com", 80, headers=(("Authorization", 'Bearer t0k"en\\x'), ("X-Latin", "caf\u00e9"))),
        Rule("*.example.org", 443),
        Rule("2001:db8::1", 8443, private=True),
        Rule("10.1.2.3", 5432, private=True),
    ),
    upstream="mcp-runner-egress",
)


def decision(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


class FakeHandle:
    """A SandboxHandle whose stdout is a queue the test fills; b"" is end of stream."""

    def __init__(self, stderr: str = "") -> None:
        self.stdout: asyncio.Queue[bytes] = asyncio.Queue()
        self.written: list[bytes] = []
        self.stderr = stderr
        self.destroyed = False
        self.events: list[str] = []

    @property
    def id(self) -> str:
        return "fake-proxy"

    async def read_stdout(self) -> bytes:
        if self.destroyed:
            return b""
        return await self.stdout.get()

    async def write_stdin(self, data: bytes) -> None:
        self.written.append(data)

    def stderr_tail(self) -> str:
        return self.stderr

    async def wait_exit(self, timeout: float) -> SandboxExit:
        return SandboxExit(exit_code=None)

    async def stats(self) -> SandboxStats:
        return SandboxStats()

    async def destroy(self) -> None:
        self.events.append("destroy")
        self.destroyed = True

    def emit(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.stdout.put_nowait(chunk)


class Recorder:
    def __init__(self) -> None:
        self.decisions: list[EgressDecision] = []

    def __call__(self, decision: EgressDecision) -> None:
        self.decisions.append(decision)

    async def until(self, count: int, wait: float = WAIT_S) -> list[EgressDecision]:
        async with asyncio.timeout(wait):
            while len(self.decisions) < count:
                await asyncio.sleep(0.001)
        return self.decisions


# ------------------------------------------------------------------------ parse_decision


def test_parse_decision_accepts_a_well_formed_line() -> None:
    assert parse_decision(GOOD) == EgressDecision(
        time=1_700_000_000.5,
        method="CONNECT",
        host="api.example.com",
        port=443,
        address="93.184.216.34",
        rule="api.example.com:443",
        allowed=True,
        code="allowed",
        reason="",
    )


def test_parse_decision_refusal_and_integer_time() -> None:
    parsed = parse_decision(
        decision(time=1_700_000_001, allowed=False, code="not_allowed", rule="", address="", reason="no rule")
    )
    assert parsed is not None
    assert isinstance(parsed.time, float) and parsed.time == 1_700_000_001.0
    assert (parsed.allowed, parsed.code, parsed.reason, parsed.rule) == (False, "not_allowed", "no rule", "")


@pytest.mark.parametrize(
    "obj",
    [
        None,
        "decision",
        42,
        [GOOD],
        {"type": "ready", "port": 3128},
        {"type": "error", "message": "bad"},
        {k: v for k, v in GOOD.items() if k != "type"},
        decision(type="Decision"),
        decision(time="1700000000"),
        decision(time=True),
        decision(time=None),
        {k: v for k, v in GOOD.items() if k != "time"},
        decision(allowed="true"),
        decision(allowed=1),
        {k: v for k, v in GOOD.items() if k != "allowed"},
    ],
)
def test_parse_decision_rejects(obj: object) -> None:
    assert parse_decision(obj) is None


@pytest.mark.parametrize("port", [True, False, "443", 443.0, 0, -1, 65536, None])
def test_parse_decision_neutralises_a_bad_port(port: object) -> None:
    parsed = parse_decision(decision(port=port))
    assert parsed is not None and parsed.port == 0


@pytest.mark.parametrize("port", [1, 80, 65535])
def test_parse_decision_keeps_valid_ports(port: int) -> None:
    parsed = parse_decision(decision(port=port))
    assert parsed is not None and parsed.port == port


@pytest.mark.parametrize("code", ["not_allowed", "refused_address", "Allowed", "", None, 1])
def test_allowed_true_needs_code_allowed(code: object) -> None:
    parsed = parse_decision(decision(allowed=True, code=code))
    assert parsed is not None and parsed.allowed is False


def test_parse_decision_blanks_non_string_text_fields() -> None:
    parsed = parse_decision(decision(method=1, host=["x"], address=None, rule={"r": 1}, reason=2.5))
    assert parsed is not None
    assert (parsed.method, parsed.host, parsed.address, parsed.rule, parsed.reason) == ("", "", "", "", "")


def test_parse_decision_strips_escapes_and_clips() -> None:
    parsed = parse_decision(
        decision(
            host="\x1b[2J\x1b[31mevil.example\x1b[0m",
            reason="\x1b]0;pwned\x07no rule\x00\x08 for\u009b31m it",
            method="GET\r\n",
            address="x" * 10_000,
        )
    )
    assert parsed is not None
    assert parsed.host == "evil.example"
    assert parsed.reason == "no rule for it"
    assert "\x1b" not in parsed.reason and "\x07" not in parsed.reason and "\x00" not in parsed.reason
    assert parsed.method.strip() == "GET" and "\r" not in parsed.method
    assert parsed.address == ""  # one word past the cap: cut whole, nothing of it is left


def test_parse_decision_cuts_in_whole_words() -> None:
    """Part of a secret left at the cut is one the session's sanitizer no longer recognizes in the record."""
    body = "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    parsed = parse_decision(decision(reason="x " * 120 + "token ghp_" + body + " for it"))
    assert parsed is not None
    assert parsed.reason.endswith("x token") and "ghp_" not in parsed.reason


def test_parse_decision_text_fields_are_single_line() -> None:
    parsed = parse_decision(decision(host="a.example\nINFO forged log line", reason="x\ty"))
    assert parsed is not None
    assert "\n" not in parsed.host and "\t" not in parsed.reason


# --------------------------------------------------------------------------------- _Lines


def test_lines_split_across_chunk_boundaries() -> None:
    lines = _Lines(bytearray())
    assert lines.feed(b'{"a"') == []
    assert lines.feed(b':1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert lines.feed(b":3}") == []
    assert lines.feed(b"\n") == [b'{"c":3}']
    assert lines.feed(b"\n\n") == [b"", b""]
    assert lines.buffer == bytearray()


def test_lines_keep_a_line_of_exactly_the_limit() -> None:
    lines = _Lines(bytearray())
    assert lines.feed(b"x" * MAX_LINE_BYTES) == []
    assert lines.feed(b"\n") == [b"x" * MAX_LINE_BYTES]


def test_over_long_line_is_dropped_without_buffering_it_whole() -> None:
    lines = _Lines(bytearray())
    assert lines.feed(b"ok-1\n" + b"x" * 1000) == [b"ok-1"]
    for _ in range(5 * MAX_LINE_BYTES // 1000):
        assert lines.feed(b"x" * 1000) == []
        assert len(lines.buffer) <= MAX_LINE_BYTES
    assert lines.skipping
    assert lines.feed(b"x-tail\nok-2\npart") == [b"ok-2"]
    assert not lines.skipping
    assert lines.feed(b"ial\n") == [b"partial"]


def test_over_long_line_inside_one_chunk_is_dropped() -> None:
    lines = _Lines(bytearray())
    assert lines.feed(b"a\n" + b"y" * (MAX_LINE_BYTES + 1) + b"\nb\n") == [b"a", b"b"]
    assert lines.buffer == bytearray() and not lines.skipping


def test_line_just_over_the_limit_split_at_its_newline_is_dropped() -> None:
    lines = _Lines(bytearray())
    assert lines.feed(b"z" * (MAX_LINE_BYTES + 1)) == []
    assert lines.feed(b"\nnext\n") == [b"next"]


# ------------------------------------------------------------------- proxy_config / proxy_env


def test_proxy_config_round_trips_through_the_proxys_parser() -> None:
    data = proxy_config(NETWORK, "172.30.0.2")
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    config = config_from_wire(json.loads(data))
    assert config.rules == NETWORK.rules
    assert config.rules[0].headers == (("Authorization", 'Bearer t0k"en\\x'), ("X-Latin", "caf\u00e9"))
    assert (config.listen_host, config.listen_port) == ("172.30.0.2", PROXY_PORT)


def test_proxy_config_with_no_rules() -> None:
    config = config_from_wire(json.loads(proxy_config(SandboxNetwork(rules=(), upstream="u"), "10.0.0.2")))
    assert config.rules == ()


def test_proxy_env_sets_both_spellings_and_empties_no_proxy() -> None:
    url = f"http://172.30.0.2:{PROXY_PORT}"
    assert proxy_env("172.30.0.2") == {
        "HTTP_PROXY": url,
        "http_proxy": url,
        "HTTPS_PROXY": url,
        "https_proxy": url,
        "ALL_PROXY": url,
        "all_proxy": url,
        "NO_PROXY": "",
        "no_proxy": "",
    }


# ------------------------------------------------------------------------------ EgressProxy


async def _stop(proxy: EgressProxy, handle: FakeHandle) -> None:
    async def kill() -> None:
        handle.events.append("kill")
        handle.emit(b"")

    async def remove(network: str) -> None:
        handle.events.append(f"remove {network}")

    await proxy.stop(kill, remove)


async def test_configure_writes_the_config_then_pumps_decisions_in_order(caplog: pytest.LogCaptureFixture) -> None:
    handle = FakeHandle()
    seen = Recorder()
    proxy = EgressProxy(handle, "net-1", "172.30.0.2", seen)
    handle.emit(b"not json at all\n", line({"type": "starting"}), b'{"type":', b'"ready","port":3128}\n')
    await proxy.configure(NETWORK)
    assert handle.written == [proxy_config(NETWORK, "172.30.0.2")]
    with caplog.at_level(logging.WARNING, logger="runner.sandbox.egress"):
        handle.emit(
            line(decision(host="a.example")),
            b"garbage\n",
            line({"type": "decision", "time": "late"}),
            line(decision(host="b.example", allowed=False, code="not_allowed"))[:20],
            line(decision(host="b.example", allowed=False, code="not_allowed"))[20:],
            b"x" * (MAX_LINE_BYTES + 10) + b"\n",
            line([1, 2]) + line(decision(host="c.example")),
        )
        got = await seen.until(3)
    assert [(d.host, d.allowed) for d in got] == [("a.example", True), ("b.example", False), ("c.example", True)]
    assert "unexpected line" in caplog.text
    await _stop(proxy, handle)
    assert len(seen.decisions) == 3


async def test_configure_without_a_callback_drops_decisions() -> None:
    handle = FakeHandle()
    proxy = EgressProxy(handle, "net-1", "172.30.0.2", None)
    handle.emit(line({"type": "ready"}))
    await proxy.configure(NETWORK)
    handle.emit(line(GOOD))
    await _stop(proxy, handle)
    assert handle.events == ["kill", "destroy", "remove net-1"]


async def test_error_line_is_unavailable_with_its_message() -> None:
    handle = FakeHandle()
    proxy = EgressProxy(handle, "net-1", "172.30.0.2", Recorder())
    handle.emit(line({"type": "error", "message": "rules[0]: host 'x y' is not a valid host name"}))
    with pytest.raises(Unavailable) as caught:
        await proxy.configure(NETWORK)
    assert "refused its configuration" in caught.value.message
    assert "rules[0]: host 'x y' is not a valid host name" in caught.value.message


async def test_eof_before_ready_is_unavailable_with_the_stderr_tail() -> None:
    handle = FakeHandle(stderr="Traceback ...\nModuleNotFoundError: runner.egress\n")
    proxy = EgressProxy(handle, "net-1", "172.30.0.2", Recorder())
    handle.emit(b"partial line without end", b"")
    with pytest.raises(Unavailable) as caught:
        await proxy.configure(NETWORK)
    assert "exited before listening" in caught.value.message
    assert "ModuleNotFoundError: runner.egress" in caught.value.message


async def test_no_ready_in_time_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(egress, "READY_TIMEOUT_S", 0.05)
    handle = FakeHandle()
    proxy = EgressProxy(handle, "net-1", "172.30.0.2", Recorder())
    handle.emit(line({"type": "starting"}))
    async with asyncio.timeout(WAIT_S):
        with pytest.raises(Unavailable, match=r"did not start within 0\.05 s"):
            await proxy.configure(NETWORK)


async def test_stop_kills_first_drains_written_decisions_then_cleans_up() -> None:
    handle = FakeHandle()
    seen = Recorder()
    proxy = EgressProxy(handle, "net-7", "172.30.0.2", seen)
    handle.emit(line({"type": "ready"}))
    await proxy.configure(NETWORK)
    # Written before the stop, not yet read by the pump: they must still arrive.
    handle.emit(*(line(decision(host=f"h{i}.example")) for i in range(5)))
    await _stop(proxy, handle)
    assert [d.host for d in seen.decisions] == [f"h{i}.example" for i in range(5)]
    assert handle.events == ["kill", "destroy", "remove net-7"]
    assert handle.destroyed


async def test_stop_removes_the_network_only_after_the_sandbox_removed_alongside() -> None:
    handle = FakeHandle()
    proxy = EgressProxy(handle, "net-2", "172.30.0.2", Recorder())
    handle.emit(line({"type": "ready"}))
    await proxy.configure(NETWORK)
    sandbox_removal_started = asyncio.Event()

    async def remove_sandbox() -> None:
        sandbox_removal_started.set()
        await asyncio.sleep(0.05)  # slower than the proxy's shutdown
        handle.events.append("remove sandbox")

    async def kill() -> None:
        await asyncio.wait_for(sandbox_removal_started.wait(), WAIT_S)  # both run at once
        handle.events.append("kill")
        handle.emit(b"")

    async def remove(network: str) -> None:
        handle.events.append(f"remove {network}")

    await proxy.stop(kill, remove, alongside=remove_sandbox())
    assert handle.events == ["kill", "destroy", "remove sandbox", "remove net-2"]


async def test_stop_gives_up_draining_a_stream_that_does_not_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(egress, "DRAIN_TIMEOUT_S", 0.05)
    handle = FakeHandle()
    proxy = EgressProxy(handle, "net-1", "172.30.0.2", Recorder())
    handle.emit(line({"type": "ready"}))
    await proxy.configure(NETWORK)
    killed: list[bool] = []

    async def kill() -> None:  # the stream never ends
        killed.append(True)

    removed: list[str] = []

    async def remove(network: str) -> None:
        removed.append(network)

    async with asyncio.timeout(WAIT_S):
        await proxy.stop(kill, remove)
    assert killed == [True] and handle.destroyed and removed == ["net-1"]
    assert proxy._pump is not None and proxy._pump.done()


async def test_stop_after_a_failed_configure_still_cleans_up() -> None:
    handle = FakeHandle()
    proxy = EgressProxy(handle, "net-1", "172.30.0.2", Recorder())
    handle.emit(b"")
    with pytest.raises(Unavailable):
        await proxy.configure(NETWORK)
    await _stop(proxy, handle)
    assert handle.events == ["destroy", "remove net-1"]


async def test_decision_in_the_same_chunk_as_ready_is_not_lost() -> None:
    handle = FakeHandle()
    seen = Recorder()
    proxy = EgressProxy(handle, "net-1", "172.30.0.2", seen)
    handle.emit(line({"type": "ready"}) + line(decision(host="early.example")))
    await proxy.configure(NETWORK)
    try:
        assert [d.host for d in await seen.until(1, wait=0.2)] == ["early.example"]
    finally:
        await _stop(proxy, handle)


@pytest.mark.parametrize(("status", "raises"), [(409, False), (500, True)])
def test_the_default_upstream_made_by_a_concurrent_first_use_is_fine(status: int, raises: bool) -> None:
    import docker.errors
    import requests

    class Api:
        def networks(self, names: list[str]) -> list[object]:
            return []

        def create_network(self, name: str, **kwargs: object) -> None:
            response = requests.Response()
            response.status_code = status
            raise docker.errors.APIError("create", response=response, explanation="network exists")

    if raises:
        with pytest.raises(docker.errors.APIError):
            egress.ensure_upstream_network(Api(), "mcp-runner-egress", "mcp-runner-egress")
    else:
        egress.ensure_upstream_network(Api(), "mcp-runner-egress", "mcp-runner-egress")
