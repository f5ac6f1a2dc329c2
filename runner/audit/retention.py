"""Retention: records older than the configured period are exported to JSON Lines, then deleted.

The store deletes only a prefix of the chain and appends a retention record
naming the export and the hash the kept records continue from, so ``verify``
still passes afterwards and the export can be checked on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from runner.audit.store import AuditStore
from runner.config import AuditConfig
from runner.errors import AuditError

log = logging.getLogger(__name__)

MAX_INTERVAL_S = 3600.0


def interval(retention_s: float) -> float:
    """How often to look: a tenth of the period, between a second and an hour."""
    return min(MAX_INTERVAL_S, max(1.0, retention_s / 10))


async def keep_retention(store: AuditStore, config: AuditConfig, clock: Callable[[], float] = time.time) -> None:
    """Prune now and then every ``interval``, for as long as the service runs; failures are logged and retried."""
    assert config.retention_s is not None
    while True:
        try:
            pruned = await store.aprune(clock() - config.retention_s, config.exports)
        except AuditError as exc:
            log.error("audit retention: %s; nothing was deleted, trying again later", exc.message)
        else:
            if pruned.deleted:
                log.info(
                    "audit retention: exported %d records to %s, then deleted them; the log now starts at seq %d",
                    pruned.deleted, pruned.export, pruned.first_kept_seq,
                )
        await asyncio.sleep(interval(config.retention_s))
