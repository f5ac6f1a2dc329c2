"""KubernetesBackend: one hardened pod per session on a cluster, its stdio over the pod's ``attach`` websocket.

The official client is blocking: every call runs in the backend's own thread pool with the configured API
timeout, and ``runner.sandbox.kube_client.map_kube_errors`` converts its errors, once, into the runner's tree.
A start makes, in order: the session's NetworkPolicies (before any pod, so none runs unconfined), its env
Secret, its pod (``runner.sandbox.kube_objects``); waits for the pod to run (``kube_status``: unschedulable,
image missing, cannot start); attaches (``kube_attach``); and opens the pod's start gate with one newline, so
nothing the agent writes is lost before the attach. What a start given up midway made is removed by a clean-up
the backend holds (``later``; ``settle`` waits for them).

Usage figures come from the metrics API (``metrics.k8s.io``) where the cluster serves it: the memory in use at
the end (a peak is not kept there) and no CPU seconds (it gives a rate). The project's test cluster has no
metrics-server, so its sessions report zero usage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import kubernetes.utils
from kubernetes.client.exceptions import ApiException

from runner.config import KubernetesConfig
from runner.errors import FailedPrecondition, RunnerError
from runner.package_spec import uninjected
from runner.sandbox import egress, kube_objects, kube_status, kube_sweep
from runner.sandbox.base import SESSION_LABEL, EgressCallback, SandboxExit, SandboxSpec, SandboxStats
from runner.sandbox.kube_attach import STDIN, KubeSandbox, close_attach, open_attach
from runner.sandbox.kube_client import KubeApi, connect, map_kube_errors, without_body
from runner.sandbox.kube_objects import PROXY_CONTAINER, SANDBOX_CONTAINER, label_value, object_name

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_FIRST_S = 0.05
POLL_MAX_S = 0.5
UNSCHEDULABLE_GRACE_S = 5.0
"""How long a pod the scheduler cannot place yet is given before the open fails RESOURCE_EXHAUSTED: the node may be
full only for the moment (the CPU of a pod just deleted is counted until its kubelet confirms), and the scheduler
says the same ("Insufficient cpu") either way."""
METRICS_GROUP = "metrics.k8s.io"
_QUANTITY: Callable[[str], Any] = kubernetes.utils.parse_quantity  # untyped: "12Mi" -> Decimal


class KubernetesBackend:
    """Starts sessions' pods with the sandbox defaults of DESIGN.md; implements ``SandboxBackend``."""

    def __init__(
        self,
        config: KubernetesConfig,
        *,
        stderr_tail_bytes: int = 8 * 1024,
        max_threads: int = 32,
        owner: str | None = None,
        abandoned: Callable[[str | None], bool] | None = None,
    ) -> None:
        """``owner`` marks every object this backend makes (a label hash and the full text in an annotation);
        ``abandoned`` tells the orphan sweep which owners belong to no running service (None: all are swept)."""
        self._config = config
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="kube")
        self._max_threads = max_threads
        self._owner = owner
        self._abandoned = abandoned
        self._stderr_tail_bytes = stderr_tail_bytes
        self._client: KubeApi | None = None
        self._connecting = threading.Lock()
        self._runtime_classes: set[str] = set()
        """RuntimeClasses seen to exist: a positive answer is kept, a missing one is asked again next time."""
        self._metrics: bool | None = None
        self._cleanups: set[asyncio.Future[None]] = set()

    def _api(self) -> KubeApi:
        with self._connecting:
            if self._client is None:
                self._client = connect(self._config, self._max_threads)
            return self._client

    async def _run(self, action: str, fn: Callable[[KubeApi], T]) -> T:
        def call() -> T:
            with map_kube_errors(action, None):
                api = self._api()
            # The client as connected: on the first call ``self._client`` was still None, and the API server's
            # answers (a missing namespace, RBAC) would have read as "unreachable".
            with map_kube_errors(action, api):
                return fn(api)

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    @functools.cache  # noqa: B019 - one backend per process; image inputs do not change while it runs
    def _image(self, name: str) -> tuple[str, str]:
        """The reference a pod names for a profile's image, and its pull policy."""
        from runner.image_profiles import check_local_agent, resolve_sandbox_image, runner_built

        if not runner_built(name):
            check_local_agent(name)  # where this host's engine holds it too: no pod made to wait for a greeting
            return name, "IfNotPresent"
        ref = resolve_sandbox_image(name)  # a package's image: found by its labels on this engine
        if self._config.registry is None:
            return ref, "Never"  # loaded into the nodes' runtime; the runtime names it docker.io/<ref>
        return f"{self._config.registry.rstrip('/')}/{ref.split('/', 1)[1]}", "IfNotPresent"

    @functools.cache  # noqa: B019 - one backend per process; a package's image keeps its executable
    def _default_command(self, name: str) -> tuple[str, ...]:
        from runner.image_profiles import default_command

        return default_command(name)

    def _load_hint(self) -> str:
        if self._config.registry is None:
            return "load the images into the cluster's nodes with `mcp-runner images load --kubernetes`"
        return f"push the images to {self._config.registry} with `mcp-runner images push`"

    async def check(self) -> None:
        await self._run("checking the Kubernetes API server",
                        lambda api: api.core.read_namespace(api.namespace, _request_timeout=api.timeout))

    # -- start -------------------------------------------------------------------------------------

    def _runtime_class(self, api: KubeApi, runtime: str) -> str | None:
        if runtime == "runc":
            return None
        name = self._config.runtime_classes.get(runtime)
        if name is None:
            raise FailedPrecondition(
                f"no RuntimeClass is configured for runtime {runtime!r}; name one in kubernetes.runtime_classes"
            )
        if name not in self._runtime_classes:
            try:
                api.node.read_runtime_class(name, _request_timeout=api.timeout)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                raise FailedPrecondition(
                    f"the cluster has no RuntimeClass {name!r} for runtime {runtime!r}: install gVisor's containerd "
                    f"shim (containerd-shim-runsc-v1) on the nodes and create a node.k8s.io/v1 RuntimeClass {name!r} "
                    "with handler runsc (the project's test cluster cannot run gVisor)"
                ) from exc
            self._runtime_classes.add(name)
        return name

    def _create_sandbox(self, api: KubeApi, spec: SandboxSpec, proxy_address: str | None) -> None:
        runtime_class = self._runtime_class(api, spec.runtime)
        ns, timeout = api.namespace, api.timeout
        if spec.network is None:  # a networked session's policies came with its proxy
            for policy in kube_objects.network_policies(spec, owner=self._owner):
                api.networking.create_namespaced_network_policy(ns, policy, _request_timeout=timeout)
        secret = object_name(spec) if spec.env else None
        if secret is not None:
            manifest = kube_objects.env_secret(spec, name=secret, owner=self._owner)
            try:
                api.core.create_namespaced_secret(ns, manifest, _request_timeout=timeout)
            except ApiException as exc:
                raise without_body(exc) from None
        image, pull_policy = self._image(spec.image)
        if not spec.command:  # a package's executable is its image's CMD, which the pod's command would drop
            spec = dataclasses.replace(spec, command=self._default_command(spec.image))
        pod = kube_objects.sandbox_pod(
            spec, name=object_name(spec), image=image, pull_policy=pull_policy, owner=self._owner,
            runtime_class=runtime_class, env_secret=secret,
            proxy_env=egress.proxy_env(proxy_address) if proxy_address is not None else {},
            entrypoint=_entrypoint(spec.image),
        )
        api.core.create_namespaced_pod(ns, pod, _request_timeout=timeout)

    async def _wait_running(self, pod: str, what: str, image: str) -> Any:
        """The pod once its container runs (polled: a start given up stops polling at once)."""
        loop = asyncio.get_running_loop()
        delay, unplaced_until = POLL_FIRST_S, None
        while True:
            read = await self._run(f"starting {what}", functools.partial(_read_pod, pod))
            try:
                if kube_status.started(read, what, image, self._load_hint()) is not None:
                    return read
            except kube_status.Unschedulable:
                unplaced_until = unplaced_until or loop.time() + UNSCHEDULABLE_GRACE_S
                if loop.time() >= unplaced_until:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX_S)

    async def start(self, spec: SandboxSpec, on_egress: EgressCallback | None = None) -> KubeSandbox:
        proxy = await self._start_egress(spec, on_egress) if spec.network is not None else None
        what = f"the sandbox of session {spec.session_id}"
        address = proxy.address if proxy is not None else None
        creating = asyncio.ensure_future(
            self._run(f"creating {what}", lambda api: self._create_sandbox(api, spec, address))
        )
        name, image = object_name(spec), self._image(spec.image)[0]
        sockets: list[Any] = []
        try:
            # Shielded: the thread creates the objects whether or not the caller still waits for them.
            await asyncio.shield(creating)
            running = await self._wait_running(name, what, image)
            sockets.append(await open_attach(self._api_now(), name, SANDBOX_CONTAINER))
            with map_kube_errors(f"opening {what}", self._client):
                await sockets[0].send(bytes((STDIN,)) + b"\n")  # the start gate: the agent starts now
        except asyncio.CancelledError:
            self.later(self._discard(creating, sockets, spec, proxy))
            raise
        except BaseException:
            await asyncio.shield(self.later(self._discard(creating, sockets, spec, proxy)))
            raise
        return KubeSandbox(self, name, sockets[0], self._stderr_tail_bytes, _image_id(running, image),
                           teardown=functools.partial(self._remove_sandbox, spec), egress_proxy=proxy)

    def _api_now(self) -> KubeApi:
        assert self._client is not None, "connected by the calls before"
        return self._client

    async def _discard(self, creating: asyncio.Future[None], sockets: list[Any], spec: SandboxSpec,
                       proxy: egress.EgressProxy | None) -> None:
        """A start given up (an error, a deadline, a cancel): whatever it made goes, once its creation is over."""
        await asyncio.wait([creating])
        for socket in sockets:
            await close_attach(socket)
        removal = self._remove_sandbox(spec)
        if proxy is not None:
            await self.stop_egress(proxy, alongside=removal)
        else:
            await removal

    # -- egress ------------------------------------------------------------------------------------

    def _create_proxy(self, api: KubeApi, spec: SandboxSpec) -> None:
        ns, timeout = api.namespace, api.timeout
        for policy in kube_objects.network_policies(spec, owner=self._owner):
            api.networking.create_namespaced_network_policy(ns, policy, _request_timeout=timeout)
        image, pull_policy = self._image("egress")
        pod = kube_objects.proxy_pod(spec, name=object_name(spec, "-egress"), image=image, pull_policy=pull_policy,
                                     owner=self._owner)
        api.core.create_namespaced_pod(ns, pod, _request_timeout=timeout)

    async def _start_egress(self, spec: SandboxSpec, on_egress: EgressCallback | None) -> egress.EgressProxy:
        assert spec.network is not None
        name, image = object_name(spec, "-egress"), self._image("egress")[0]
        creating = asyncio.ensure_future(self._run("starting the egress proxy",
                                                   lambda api: self._create_proxy(api, spec)))
        sockets: list[Any] = []

        async def discard() -> None:
            await asyncio.wait([creating])
            for socket in sockets:
                await close_attach(socket)
            await asyncio.gather(self._delete_pod(name), self.remove_policies(spec.session_id))

        try:
            await asyncio.shield(creating)
            running = await self._wait_running(name, "the egress proxy", image)
            sockets.append(await open_attach(self._api_now(), name, PROXY_CONTAINER))
        except asyncio.CancelledError:
            self.later(discard())
            raise
        except BaseException:
            await asyncio.shield(self.later(discard()))
            raise
        handle = KubeSandbox(self, name, sockets[0], self._stderr_tail_bytes, image,
                             teardown=functools.partial(self._delete_pod, name))
        # It listens on its pod's address, which the sandbox reaches (and no one else, where policies hold).
        proxy = egress.EgressProxy(handle, spec.session_id, running.status.pod_ip, on_egress)
        try:
            await proxy.configure(spec.network)
        except BaseException:
            self.later(self.stop_egress(proxy))
            raise
        return proxy

    async def stop_egress(self, proxy: egress.EgressProxy, alongside: Coroutine[Any, Any, None] | None = None
                          ) -> None:
        """Kill the proxy pod while ``alongside`` (the sandbox's removal) runs, then the session's policies."""
        await proxy.stop(functools.partial(self._delete_pod, proxy.handle.id), self.remove_policies, alongside)

    # -- the end -----------------------------------------------------------------------------------

    async def _delete(self, what: str, delete: Callable[[KubeApi], object]) -> None:
        def call(api: KubeApi) -> None:
            try:
                delete(api)
            except ApiException as exc:
                if exc.status != 404:  # gone already: what the removal wanted
                    raise

        try:
            await self._run(f"removing {what}", call)
        except RunnerError as exc:
            log.warning("could not remove %s: %s", what, exc)

    async def _delete_pod(self, name: str) -> None:
        await self._delete(f"pod {name}", lambda api: api.core.delete_namespaced_pod(
            name, api.namespace, grace_period_seconds=0, _request_timeout=api.timeout))

    async def remove_policies(self, session_id: str) -> None:
        selector = f"{SESSION_LABEL}={label_value(session_id)}"
        await self._delete(f"the network policies of session {session_id}",
                           lambda api: api.networking.delete_collection_namespaced_network_policy(
                               api.namespace, label_selector=selector, _request_timeout=api.timeout))

    async def _remove_sandbox(self, spec: SandboxSpec) -> None:
        """The session's pod and Secret (and its deny-all policy; a networked session's go with its proxy)."""
        name = object_name(spec)
        removals = [self._delete_pod(name)]
        if spec.env:
            removals.append(self._delete(f"secret {name}", lambda api: api.core.delete_namespaced_secret(
                name, api.namespace, _request_timeout=api.timeout)))
        if spec.network is None:
            removals.append(self.remove_policies(spec.session_id))
        await asyncio.gather(*removals)

    def later(self, cleanup: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run a clean-up that must not be lost to the caller's cancellation; the backend holds it till done."""
        task = asyncio.ensure_future(cleanup)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    async def wait_exit(self, pod: str, timeout: float, *, removed_by_us: bool) -> SandboxExit:
        """How the pod's sandbox ended, polled for up to ``timeout`` s (exit status None if not by then)."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + timeout, POLL_FIRST_S
        while True:
            try:
                read = await self._run("waiting for the sandbox", functools.partial(_read_pod, pod))
            except RunnerError:
                return SandboxExit(exit_code=None)
            ended = kube_status.exit_of(read, removed_by_us)
            left = deadline - loop.time()
            if ended is not None or left <= 0:
                return ended or SandboxExit(exit_code=None)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, POLL_MAX_S)

    async def stats(self, pod: str) -> SandboxStats:
        def read(api: KubeApi) -> SandboxStats:
            if self._metrics is None:
                groups = api.apis.get_api_versions(_request_timeout=api.timeout).groups or []
                self._metrics = any(group.name == METRICS_GROUP for group in groups)
            if not self._metrics:
                return SandboxStats()
            usage = api.custom.get_namespaced_custom_object(
                METRICS_GROUP, "v1beta1", api.namespace, "pods", pod, _request_timeout=api.timeout)
            return SandboxStats(peak_memory_bytes=_memory_in_use(usage))

        try:
            return await self._run("reading sandbox usage", read)
        except RunnerError:
            return SandboxStats()

    async def sweep_orphans(self, instance: str) -> int:
        return await self._run("sweeping orphaned sandboxes",
                               lambda api: kube_sweep.sweep_orphans(api, instance, self._abandoned_owner))

    def _abandoned_owner(self, owner: str | None) -> bool:
        return self._abandoned is None or self._abandoned(owner)

    async def settle(self) -> None:
        """Wait for every clean-up still running: what a start given up midway made is removed by then."""
        while self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _entrypoint(image: str) -> tuple[str, ...]:
    """What a pod of ``image`` runs before the server's command. The agent injected into a user's image is not at the
    runner images' entrypoint, and the image may have no shell for the gate: its own launcher takes the gate's place."""
    if uninjected(image) is None:
        return kube_objects.GATED_AGENT
    from runner.image_inject import pod_command

    return pod_command(())


def _read_pod(name: str, api: KubeApi) -> Any:
    """The pod, or None once it is gone."""
    try:
        return api.core.read_namespaced_pod(name, api.namespace, _request_timeout=api.timeout)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _memory_in_use(usage: object) -> int:
    """The containers' memory in a metrics API ``PodMetrics``; 0 for an answer of another shape (a pod just
    started has no usage yet): the figure is informative, never worth failing a session's end."""
    memory = 0
    try:
        for container in usage.get("containers") or [] if isinstance(usage, dict) else []:
            memory += int(_QUANTITY(str(container["usage"]["memory"])))
    except (KeyError, TypeError, ValueError, ArithmeticError):
        return 0
    return max(memory, 0)


def _image_id(pod: Any, image: str) -> str:
    """The running container's image as its node names it (``sha256:…`` where it can), else the reference."""
    container = (pod.status.container_statuses or [None])[0]
    said: str = (container.image_id if container is not None else "") or image
    return said[said.index("sha256:"):] if "sha256:" in said else said
