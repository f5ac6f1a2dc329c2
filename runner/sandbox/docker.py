"""DockerBackend: one hardened container per session, its stdio over Docker's attach stream.

docker-py is blocking and untyped, so it stays behind this module: every call
runs in the backend's own thread pool, and ``map_docker_errors`` converts its
exceptions, once, into the runner's error tree. The attach socket is taken
over by asyncio and handed to a ``DockerSandbox`` (``runner.sandbox.attach``),
which reads the session's stdio from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.types import LogConfig, Ulimit

from runner.config import DEFAULT_UPSTREAM_NETWORK, WORKSPACE_ENV, WORKSPACE_PATH, Limits
from runner.errors import FailedPrecondition, RunnerError, Unavailable
from runner.sandbox import egress, sweep
from runner.sandbox.attach import READ_CHUNK, DockerSandbox
from runner.sandbox.base import (
    INSTANCE_LABEL,
    OWNER_LABEL,
    SANDBOX_USER,
    SESSION_LABEL,
    EgressCallback,
    SandboxExit,
    SandboxSpec,
    SandboxStats,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_NOFILE = 1024
NO_LOG = LogConfig(type=LogConfig.types.NONE)
"""The engine keeps no log of a sandbox's output: every frame (results, secrets before sanitizing) would sit in a
JSON file on the host's disk for the session's life, and encoding each line cost the engine CPU on every call.
The host reads stdout and keeps a bounded stderr tail over the attach stream, which needs no log."""


def sandbox_tmpfs(limits: Limits) -> dict[str, str]:
    """The sandbox's memory-backed writable places: ``/tmp``, and ``/workspace`` when the profile asks for one.

    The workspace is the sandbox user's own (mode 0700), removed with the container. Not ``noexec``: ``/tmp``
    already lets the server run what it writes, and servers that build or check out (git hooks) need it.
    Both are tmpfs, so what is written there counts toward the container's memory limit.
    """
    mounts = {"/tmp": f"rw,nosuid,nodev,size={limits.tmpfs_bytes},mode=1777"}
    if limits.workspace_bytes:
        uid, gid = SANDBOX_USER.split(":")
        mounts[WORKSPACE_PATH] = f"rw,nosuid,nodev,size={limits.workspace_bytes},mode=0700,uid={uid},gid={gid}"
    return mounts


@contextlib.contextmanager
def map_docker_errors(action: str) -> Iterator[None]:
    """The one place docker-py and transport errors become runner errors."""
    try:
        yield
    except RunnerError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise FailedPrecondition(
            f"{action}: image not found ({exc.explanation}); build it with `make images`"
        ) from exc
    except docker.errors.APIError as exc:
        said = str(exc.explanation or "").lower()
        # Docker 20.10: "Unknown runtime specified X"; later: "unknown or invalid runtime name: X".
        if "unknown runtime" in said or "invalid runtime" in said:
            raise FailedPrecondition(
                f"{action}: the Docker engine has no such runtime ({exc.explanation}); for gVisor install the "
                "Debian package runsc and run `make docker`, which registers it"
            ) from exc
        raise Unavailable(f"{action}: Docker engine refused: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise Unavailable(f"{action}: Docker engine unreachable: {exc}") from exc


class DockerBackend:
    """Starts sessions' containers with the sandbox defaults of DESIGN.md; implements ``SandboxBackend``."""

    def __init__(
        self,
        *,
        stderr_tail_bytes: int = 8 * 1024,
        max_threads: int = 32,
        owner: str | None = None,
        abandoned: Callable[[str | None], bool] | None = None,
    ) -> None:
        """``owner`` labels every container and network this backend makes; ``abandoned`` tells the orphan sweep
        which owner labels (None: unlabelled) belong to no running service, so another service of the same
        instance name keeps its sandboxes (see ``runner.service.InstanceLock``). Without it all are swept."""
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="docker")
        self._owner = owner
        self._abandoned = abandoned
        self._stderr_tail_bytes = stderr_tail_bytes
        self._client: Any = None
        self._cleanups: set[asyncio.Future[None]] = set()

    def _api(self) -> Any:
        if self._client is None:
            with map_docker_errors("connecting to Docker"):
                self._client = docker.from_env(max_pool_size=64).api
        return self._client

    async def _run(self, action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def call() -> T:
            with map_docker_errors(action):
                return fn(*args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    @functools.cache  # noqa: B019 - one backend per process; image inputs do not change while it runs
    def _resolve_image(self, image: str) -> str:
        from runner.image_profiles import resolve_sandbox_image

        return resolve_sandbox_image(image)

    async def check(self) -> None:
        await self._run("checking the Docker engine", lambda: self._api().ping())

    @functools.cache  # noqa: B019 - one backend per process; content-hashed tags keep their image
    def _image_id(self, image: str) -> str:
        from runner.image_profiles import check_agent

        if image.startswith("sha256:"):
            return image
        found = self._api().inspect_image(image)
        # Without the agent the server would run in its place and the open wait out its budget for a greeting.
        config = found.get("Config") or {}
        check_agent(image, config.get("Labels"), config.get("Entrypoint") or [])
        image_id: str = found["Id"]
        return image_id

    def _create_and_attach(self, spec: SandboxSpec, proxy: egress.EgressProxy | None) -> tuple[str, str, Any]:
        api = self._api()
        limits = spec.limits
        # Names are the proxy's business; no DNS out. Docker's resolver on an internal network never answers, and
        # a lookup waited 10 s to fail (mcp-server-fetch looks its host up first: every fetch took 10 s more).
        networked = {} if proxy is None else {"dns": ["127.0.0.1"], "dns_opt": ["timeout:1", "attempts:1"]}
        host_config = api.create_host_config(
            network_mode="none" if proxy is None else proxy.network,
            read_only=True,
            tmpfs=sandbox_tmpfs(limits),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit=limits.memory_bytes,
            memswap_limit=limits.memory_bytes,
            nano_cpus=int(limits.cpus * 1e9),
            pids_limit=limits.pids,
            ulimits=[Ulimit(name="nofile", soft=_NOFILE, hard=_NOFILE)],
            binds={m.source: {"bind": m.target, "mode": "rw" if m.writable else "ro"} for m in spec.mounts},
            runtime=None if spec.runtime == "runc" else spec.runtime,
            log_config=NO_LOG,
            **networked,
        )
        env = dict(spec.env) if proxy is None else {**spec.env, **egress.proxy_env(proxy.address)}
        if limits.workspace_bytes:
            env[WORKSPACE_ENV] = WORKSPACE_PATH
        image_id = self._image_id(self._resolve_image(spec.image))
        container = api.create_container(
            image_id,
            command=list(spec.command),
            stdin_open=True,
            tty=False,
            user=SANDBOX_USER,
            environment=env,
            labels=self._labels(spec),
            host_config=host_config,
            name=f"mcp-runner-{spec.instance}-{spec.session_id}",
        )
        container_id: str = container["Id"]
        return container_id, image_id, self._attach_and_start(container_id)

    def _labels(self, spec: SandboxSpec) -> dict[str, str]:
        owner = {OWNER_LABEL: self._owner} if self._owner is not None else {}
        return {**spec.labels, SESSION_LABEL: spec.session_id, INSTANCE_LABEL: spec.instance, **owner}

    def _attach_and_start(self, container_id: str) -> Any:
        api = self._api()
        try:
            # Attach before start, so no output is lost and nothing sits in docker-py's buffers.
            sock = api.attach_socket(container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            api.start(container_id)
        except BaseException:
            with contextlib.suppress(Exception):
                api.remove_container(container_id, force=True)
            raise
        return sock

    async def _open_stream(
        self, container_id: str, image_id: str, sock: Any, proxy: egress.EgressProxy | None
    ) -> DockerSandbox:
        raw: socket.socket = getattr(sock, "_sock", sock)
        try:
            reader, writer = await asyncio.open_connection(sock=raw, limit=READ_CHUNK * 2)
        except OSError:
            await self.remove(container_id)
            raise
        return DockerSandbox(self, container_id, raw, reader, writer, sock, self._stderr_tail_bytes, image_id, proxy)

    async def start(self, spec: SandboxSpec, on_egress: EgressCallback | None = None) -> DockerSandbox:
        proxy = await self._start_egress(spec, on_egress) if spec.network is not None else None
        starting = asyncio.ensure_future(
            self._run(f"starting the sandbox for profile image {spec.image}", self._create_and_attach, spec, proxy)
        )
        try:
            # Shielded: the thread creates the container whether or not the caller still waits for it.
            container_id, image_id, sock = await asyncio.shield(starting)
            return await self._open_stream(container_id, image_id, sock, proxy)
        except asyncio.CancelledError:
            self.later(self._discard_late_start(starting, proxy))
            raise
        except BaseException:
            if proxy is not None:
                self.later(self.stop_egress(proxy))
            raise

    # -- egress --------------------------------------------------------------------------------

    def _create_proxy(self, spec: SandboxSpec) -> tuple[str, str, Any, str]:
        """The session's internal network and its proxy, started: (network, container id, socket, address)."""
        assert spec.network is not None
        api = self._api()
        labels = self._labels(spec)
        egress.ensure_upstream_network(api, spec.network.upstream, DEFAULT_UPSTREAM_NETWORK)
        network = egress.create_internal_network(api, spec, labels)
        try:
            args = egress.proxy_container_args(api, self._resolve_image("egress"), spec, labels)
            container_id: str = api.create_container(**args)["Id"]
            try:
                api.connect_container_to_network(container_id, network)
            except BaseException:
                api.remove_container(container_id, force=True)
                raise
            sock = self._attach_and_start(container_id)
            address: str = api.inspect_container(container_id)["NetworkSettings"]["Networks"][network]["IPAddress"]
        except BaseException:
            with contextlib.suppress(Exception):
                api.remove_network(network)
            raise
        return network, container_id, sock, address

    async def _start_egress(self, spec: SandboxSpec, on_egress: EgressCallback | None) -> egress.EgressProxy:
        assert spec.network is not None
        starting = asyncio.ensure_future(self._run("starting the egress proxy", self._create_proxy, spec))
        try:
            network, container_id, sock, address = await asyncio.shield(starting)
        except asyncio.CancelledError:
            self.later(self._discard_late_proxy(starting))
            raise
        proxy = None
        try:
            handle = await self._open_stream(container_id, self._resolve_image("egress"), sock, None)
            proxy = egress.EgressProxy(handle, network, address, on_egress)
            await proxy.configure(spec.network)
        except BaseException:
            # Held by _later, so a second cancellation (the caller's deadline and the RPC's) cannot drop it.
            self.later(self.stop_egress(proxy) if proxy else self._remove_proxy(container_id, network))
            raise
        return proxy

    async def stop_egress(self, proxy: egress.EgressProxy, alongside: Awaitable[None] | None = None) -> None:
        async def kill() -> None:
            def kill_proxy() -> None:
                with contextlib.suppress(docker.errors.APIError):
                    self._api().kill(proxy.handle.id)

            with contextlib.suppress(RunnerError):
                await self._run("stopping the egress proxy", kill_proxy)

        await proxy.stop(kill, self.remove_network, alongside)

    async def remove_network(self, network: str) -> None:
        def remove() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self._api().remove_network(network)

        try:
            await self._run("removing the session network", remove)
        except RunnerError as exc:
            log.warning("could not remove network %s: %s", network, exc)

    async def _discard_late_proxy(self, starting: asyncio.Future[tuple[str, str, Any, str]]) -> None:
        """The opener gave up while its proxy started: once it exists, it goes, with its network. Held by ``later``
        from the moment of giving up (not only once the thread is done), so ``settle`` waits for it."""
        try:
            network, container_id, sock, _ = await starting
        except Exception:
            return  # the proxy never came up
        with contextlib.suppress(Exception):
            sock.close()
        await self._remove_proxy(container_id, network)

    async def _remove_proxy(self, container_id: str, network: str) -> None:
        await self.remove(container_id)
        await self.remove_network(network)

    def later(self, cleanup: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run a clean-up that must not be lost to the caller's cancellation; the backend holds it till done."""
        task = asyncio.ensure_future(cleanup)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    async def _discard_late_start(
        self, starting: asyncio.Future[tuple[str, str, Any]], proxy: egress.EgressProxy | None
    ) -> None:
        """The opener gave up (deadline, cancel): the sandbox, once it exists, goes, with its proxy and network."""
        removal = None
        try:
            container_id, _, sock = await starting
        except Exception:
            pass  # the sandbox never came up
        else:
            with contextlib.suppress(Exception):
                sock.close()
            removal = self.remove(container_id)
        if proxy is not None:
            await self.stop_egress(proxy, alongside=removal)
        elif removal is not None:
            await removal

    async def wait_exit(self, container_id: str, timeout: float) -> SandboxExit:
        def wait() -> SandboxExit:
            api = self._api()
            try:
                api.wait(container_id, timeout=timeout)
            except requests.exceptions.ConnectionError:
                return SandboxExit(exit_code=None)
            state = api.inspect_container(container_id)["State"]
            return SandboxExit(exit_code=state.get("ExitCode"), oom_killed=bool(state.get("OOMKilled")))

        try:
            return await self._run("waiting for the sandbox", wait)
        except RunnerError:
            return SandboxExit(exit_code=None)

    async def stats(self, container_id: str) -> SandboxStats:
        def read() -> SandboxStats:
            raw = self._api().stats(container_id, stream=False, one_shot=True)
            memory = raw.get("memory_stats") or {}
            cpu = (raw.get("cpu_stats") or {}).get("cpu_usage") or {}
            return SandboxStats(
                cpu_seconds=cpu.get("total_usage", 0) / 1e9,
                peak_memory_bytes=int(memory.get("max_usage") or memory.get("usage") or 0),
            )

        try:
            return await self._run("reading sandbox usage", read)
        except RunnerError:
            return SandboxStats()

    async def remove(self, container_id: str) -> None:
        def remove() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self._api().remove_container(container_id, force=True)

        try:
            await self._run("removing the sandbox", remove)
        except RunnerError as exc:
            log.warning("could not remove container %s: %s", container_id[:12], exc)

    async def sweep_orphans(self, instance: str) -> int:
        return await self._run(
            "sweeping orphaned sandboxes", lambda: sweep.sweep_orphans(self._api(), instance, self._abandoned_owner)
        )

    def _abandoned_owner(self, owner: str | None) -> bool:
        """Whether sandboxes and networks of this owner label belong to no running service: the sweep removes them."""
        return self._abandoned is None or self._abandoned(owner)

    async def settle(self) -> None:
        """Wait for every clean-up still running: what a start given up midway made (a container, a proxy, its
        network) is removed by then. The service awaits it before ``close``, which drops what has not run."""
        while self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
