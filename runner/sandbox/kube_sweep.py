"""The orphan sweep at start on Kubernetes: the pods, Secrets and NetworkPolicies an earlier service left.

Same semantics as ``runner.sandbox.sweep`` (Docker): only the instance's labelled objects, and of those only
the ones whose owner (the ``mcp-runner.owner`` annotation, the instance lock's label in full) ``abandoned_owner``
says no running service holds. Runs in the backend's thread pool, on its client.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes.client.exceptions import ApiException

from runner.sandbox.kube_client import KubeApi
from runner.sandbox.kube_objects import OWNER_ANNOTATION, instance_selector
from runner.sandbox.sweep import SWEEP_THREADS

log = logging.getLogger(__name__)


def sweep_orphans(api: KubeApi, instance: str, abandoned_owner: Callable[[str | None], bool]) -> int:
    """Remove the instance's abandoned objects; return how many sandbox pods (proxies included) went."""
    selector = instance_selector(instance)
    orphaned = functools.cache(abandoned_owner)  # one lock probe per owner, not per object
    ns, timeout = api.namespace, api.timeout
    pods = api.core.list_namespaced_pod(ns, label_selector=selector, _request_timeout=timeout).items
    secrets = api.core.list_namespaced_secret(ns, label_selector=selector, _request_timeout=timeout).items
    policies = api.networking.list_namespaced_network_policy(ns, label_selector=selector,
                                                             _request_timeout=timeout).items
    doomed_pods = [pod.metadata.name for pod in pods if orphaned(_owner(pod))]
    removals: list[Callable[[], object]] = [
        *(functools.partial(api.core.delete_namespaced_pod, name, ns, grace_period_seconds=0,
                            _request_timeout=timeout) for name in doomed_pods),
        *(functools.partial(api.core.delete_namespaced_secret, s.metadata.name, ns, _request_timeout=timeout)
          for s in secrets if orphaned(_owner(s))),
        *(functools.partial(api.networking.delete_namespaced_network_policy, p.metadata.name, ns,
                            _request_timeout=timeout) for p in policies if orphaned(_owner(p))),
    ]

    def remove(removal: Callable[[], object]) -> None:
        try:
            removal()
        except ApiException as exc:
            if exc.status != 404:  # gone already: what the sweep wanted
                raise

    with ThreadPoolExecutor(max_workers=SWEEP_THREADS, thread_name_prefix="kube-sweep") as pool:
        list(pool.map(remove, removals))
    if len(doomed_pods) < len(pods):
        doomed = set(doomed_pods)
        owners = {str(_owner(pod)) for pod in pods if pod.metadata.name not in doomed}
        log.warning("kept %d pod(s) of instance %r: another running service of that name owns them (%s)",
                    len(pods) - len(doomed_pods), instance, "; ".join(sorted(owners)))
    return len(doomed_pods)


def _owner(listed: Any) -> str | None:
    owner: str | None = (listed.metadata.annotations or {}).get(OWNER_ANNOTATION)
    return owner
