"""The orphan sweep at start: removing the sandboxes and networks a previous service of this instance left.

Apart from ``runner.sandbox.docker`` because it owns a different question: not how one session's container
runs, but which labelled leftovers belong to no running service (the owner-lock checks) and how thousands of
them go quickly. It runs in the backend's thread pool, on the backend's docker-py client.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker.errors

from runner.sandbox.base import INSTANCE_LABEL, OWNER_LABEL, SESSION_LABEL

log = logging.getLogger(__name__)

SWEEP_THREADS = 8
"""Orphans removed at a time at start: Docker takes tens of ms for each, and nothing else runs yet."""


def sweep_orphans(api: Any, instance: str, abandoned_owner: Callable[[str | None], bool]) -> int:
    """Remove the instance's sandboxes and networks whose owner label ``abandoned_owner`` says no service holds."""
    found = api.containers(all=True, filters={"label": [SESSION_LABEL, f"{INSTANCE_LABEL}={instance}"]})
    orphaned = functools.cache(abandoned_owner)  # one lock probe per owner, not per sandbox
    orphans = [container for container in found if orphaned(_owner(container))]

    def remove(container: dict[str, Any]) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(container["Id"], force=True)

    # Side by side: one by one, the thousands a crashed busy service leaves took minutes before it served.
    with ThreadPoolExecutor(max_workers=SWEEP_THREADS, thread_name_prefix="sweep") as pool:
        list(pool.map(remove, orphans))
    for network in api.networks(filters={"label": [f"{INSTANCE_LABEL}={instance}"]}):
        if orphaned(_owner(network)):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_network(network["Id"])
    if len(orphans) < len(found):
        swept = {id(c) for c in orphans}
        owners = {str(_owner(c)) for c in found if id(c) not in swept}
        log.warning(
            "kept %d sandbox(es) of instance %r: another running service of that name owns them (%s)",
            len(found) - len(orphans), instance, "; ".join(sorted(owners)),
        )
    return len(orphans)


def _owner(listed: dict[str, Any]) -> str | None:
    owner: str | None = (listed.get("Labels") or {}).get(OWNER_LABEL)
    return owner
