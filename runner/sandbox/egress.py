"""Docker plumbing for a networked sandbox: its internal network and the egress proxy container on it.

The sandbox joins only an internal bridge network that has no route out and no
address on the host (``inhibit_ipv4``), so the only peer it can reach is the
proxy, which also sits on the upstream network. The proxy is our own code but
it handles hostile traffic, so what it prints is parsed like any other
container output: bounded lines, checked types, printable strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import docker.errors
from docker.types import LogConfig

from runner.egress.rules import ProxyConfig
from runner.errors import FailedPrecondition, Unavailable
from runner.pace import Pace
from runner.sandbox.base import SANDBOX_USER, EgressCallback, EgressDecision, SandboxHandle, SandboxNetwork, SandboxSpec
from runner.text import printable, whole_words

log = logging.getLogger(__name__)

PROXY_PORT = ProxyConfig.listen_port
ROLE_LABEL = "mcp-runner.role"
UPSTREAM_ROLE = "egress-upstream"
PROXY_MEMORY_BYTES = 64 * 1024**2
PROXY_PIDS = 64
PROXY_NANO_CPUS = 500_000_000
READY_TIMEOUT_S = 10.0
MAX_LINE_BYTES = 16 * 1024
DECISIONS_PER_S = 200.0
"""A session's sustained egress decisions a second (one per request the sandbox makes through its proxy)."""
DECISION_BURST = 1000
DRAIN_TIMEOUT_S = 2.0
_TEXT_CAP = 255


def network_name(spec: SandboxSpec) -> str:
    return f"mcp-runner-{spec.instance}-{spec.session_id}"


def create_internal_network(api: Any, spec: SandboxSpec, labels: Mapping[str, str]) -> str:
    """A bridge with no way out and no host address: the sandbox's peers are the containers on it, nothing else."""
    name = network_name(spec)
    api.create_network(
        name,
        driver="bridge",
        internal=True,
        options={"com.docker.network.bridge.inhibit_ipv4": "true"},
        labels=dict(labels),
    )
    return name


def ensure_upstream_network(api: Any, name: str, default: str) -> None:
    """The default upstream network is made on first use; any other must already exist (the operator's)."""
    if api.networks(names=[name]):
        return
    if name != default:
        raise FailedPrecondition(
            f"the egress upstream network {name!r} named by the profile does not exist; create it with "
            f"`docker network create {name}` or leave `network.upstream` unset"
        )
    # Proxies of different sessions share it; with inter-container traffic off they cannot reach each other.
    try:
        api.create_network(
            name,
            driver="bridge",
            options={"com.docker.network.bridge.enable_icc": "false"},
            labels={ROLE_LABEL: UPSTREAM_ROLE},
            check_duplicate=True,
        )
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # another session's first use made it a moment ago
            raise


def proxy_container_args(api: Any, image: str, spec: SandboxSpec, labels: Mapping[str, str]) -> dict[str, Any]:
    """``create_container`` arguments for the proxy: hardened like a sandbox, on the upstream network."""
    assert spec.network is not None
    host_config = api.create_host_config(
        network_mode=spec.network.upstream,
        read_only=True,
        tmpfs={"/tmp": "rw,nosuid,nodev,size=8m,mode=1777"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mem_limit=PROXY_MEMORY_BYTES,
        memswap_limit=PROXY_MEMORY_BYTES,
        nano_cpus=PROXY_NANO_CPUS,
        pids_limit=PROXY_PIDS,
        log_config=LogConfig(type=LogConfig.types.NONE),  # its decisions come over the attach stream, logged by us
    )
    return {
        "image": image,
        "stdin_open": True,
        "tty": False,
        "user": SANDBOX_USER,
        "labels": {**labels, ROLE_LABEL: "egress-proxy"},
        "host_config": host_config,
        "name": f"{network_name(spec)}-egress",
    }


def proxy_config(network: SandboxNetwork, listen_host: str) -> bytes:
    config = ProxyConfig(rules=network.rules, listen_host=listen_host, listen_port=PROXY_PORT)
    return json.dumps(config.to_wire()).encode() + b"\n"


def proxy_env(address: str) -> dict[str, str]:
    """What points the sandbox's HTTP clients at the proxy (both spellings: tools read either)."""
    url = f"http://{address}:{PROXY_PORT}"
    env = {"NO_PROXY": "", "no_proxy": ""}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = url
    return env


def parse_decision(obj: object) -> EgressDecision | None:
    """A decision line from the proxy, type-checked and made printable; None for anything else."""
    if not isinstance(obj, dict) or obj.get("type") != "decision":
        return None

    def text(key: str) -> str:
        # One line: these go into single-line log records and error messages. Cut in whole words: part of a
        # secret left at the cut is one the session's sanitizer no longer recognizes.
        value = obj.get(key)
        return " ".join(printable(whole_words(value, _TEXT_CAP)).split()) if isinstance(value, str) else ""

    moment, port, allowed = obj.get("time"), obj.get("port"), obj.get("allowed")
    if not isinstance(moment, (int, float)) or isinstance(moment, bool) or not isinstance(allowed, bool):
        return None
    return EgressDecision(
        time=float(moment),
        method=text("method"),
        host=text("host"),
        port=port if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536 else 0,
        address=text("address"),
        rule=text("rule"),
        allowed=allowed and obj.get("code") == "allowed",
        code=text("code"),
        reason=text("reason"),
    )


@dataclass
class _Lines:
    """Splits a byte stream into bounded lines; an over-long line is dropped, never buffered whole.

    Linear in the bytes fed: each byte is searched for a newline once (``scanned``), however small the
    pieces a line arrives in.
    """

    buffer: bytearray
    skipping: bool = False
    scanned: int = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        out: list[bytes] = []
        buffer = self.buffer
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", self.scanned)) >= 0:
            if not self.skipping and end - start <= MAX_LINE_BYTES:
                out.append(bytes(buffer[start:end]))
            self.skipping = False
            start = self.scanned = end + 1
        del buffer[:start]
        if len(buffer) > MAX_LINE_BYTES:
            buffer.clear()
            self.skipping = True
        self.scanned = len(buffer)
        return out


class EgressProxy:
    """A session's running egress proxy: configured over its stdin, reporting decisions on its stdout."""

    def __init__(self, handle: SandboxHandle, network: str, address: str, on_egress: EgressCallback | None) -> None:
        self.handle = handle
        self.network = network
        self.address = address
        self._on_egress = on_egress
        self._lines = _Lines(bytearray())
        # Every decision becomes an audit record, and the audit log's queue is shared by the whole service: a
        # sandbox opening connections as fast as it can must not fill it. Past the pace the pump leaves the
        # proxy's output unread, so the proxy blocks on its next decision: nothing goes unrecorded or piles up.
        self._pace = Pace(DECISIONS_PER_S, DECISION_BURST)
        self._stopping = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    async def configure(self, network: SandboxNetwork) -> None:
        """Send the rules and wait for the proxy to listen; Unavailable with its stderr if it does not."""
        await self.handle.write_stdin(proxy_config(network, self.address))
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                while True:
                    chunk = await self.handle.read_stdout()
                    if not chunk:
                        raise Unavailable(f"the egress proxy exited before listening: {self.handle.stderr_tail()}")
                    lines = self._lines.feed(chunk)
                    for index, message in enumerate(map(_json, lines)):
                        if isinstance(message, dict) and message.get("type") == "error":
                            said = printable(str(message.get("message")), _TEXT_CAP)
                            raise Unavailable(f"the egress proxy refused its configuration: {said}")
                        if isinstance(message, dict) and message.get("type") == "ready":
                            self._deliver(lines[index + 1 :])
                            self._pump = asyncio.create_task(self._read_decisions(), name=f"egress-{self.network}")
                            return
        except TimeoutError:
            raise Unavailable(f"the egress proxy did not start within {READY_TIMEOUT_S:g} s") from None

    async def _read_decisions(self) -> None:
        while chunk := await self.handle.read_stdout():
            lines = self._lines.feed(chunk)
            self._deliver(lines)
            wait = self._pace.take(len(lines))
            if wait > 0 and not self._stopping.is_set():
                # Cut short by stop(): the last decisions are then drained at full speed, none left unread.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), wait)

    def _deliver(self, lines: list[bytes]) -> None:
        for line in lines:
            decision = parse_decision(_json(line))
            if decision is None:
                log.warning("egress proxy of %s printed an unexpected line", self.network)
            elif self._on_egress is not None:
                self._on_egress(decision)

    async def stop(
        self,
        kill: Callable[[], Awaitable[None]],
        remove_network: Callable[[str], Awaitable[None]],
        alongside: Awaitable[None] | None = None,
    ) -> None:
        """Kill and remove the proxy while ``alongside`` (the sandbox's removal) runs, then the network they shared.

        Killed rather than removed outright, so its last decisions still arrive as its stream ends.
        """
        await asyncio.gather(self._shutdown(kill), *([alongside] if alongside is not None else []))
        await remove_network(self.network)

    async def _shutdown(self, kill: Callable[[], Awaitable[None]]) -> None:
        self._stopping.set()
        if self._pump is not None:
            await kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pump), DRAIN_TIMEOUT_S)
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        await self.handle.destroy()


def _json(line: bytes) -> object:
    try:
        return json.loads(line)
    except ValueError:
        return None
