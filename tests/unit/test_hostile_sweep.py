"""The orphan sweep at start over thousands of sandboxes: removed side by side, each owner's lock probed once."""

from __future__ import annotations

import threading
from pathlib import Path

from runner.sandbox.docker import DockerBackend
from runner.sandbox.sweep import SWEEP_THREADS
from runner.service import InstanceLock
from tests.unit.test_service import FakeEngine


class SlowEngine(FakeEngine):
    """Removal returns only once a second removal is under way: one by one, the sweep would never pass it."""

    def __init__(self, owners: dict[str, str | None]) -> None:
        super().__init__(owners)
        self.together = threading.Barrier(2, timeout=20)  # a guard against hanging, not a measure of time
        self.lock = threading.Lock()

    def remove_container(self, container_id: str, **_: object) -> None:
        if container_id in ("c0", "c1"):
            self.together.wait()
        with self.lock:
            self.removed.append(container_id)


async def test_thousands_of_orphans_are_removed_side_by_side_probing_each_owner_once(tmp_path: Path) -> None:
    mine = InstanceLock.acquire(tmp_path / "mine", "blue", "127.0.0.1:1")
    theirs = InstanceLock.acquire(tmp_path / "theirs", "blue", "127.0.0.1:2")
    owners = [mine.label, None, theirs.label]
    engine = SlowEngine({f"c{i}": owners[i % 3] for i in range(3000)})
    probed: list[str | None] = []

    def abandoned(label: str | None) -> bool:
        probed.append(label)
        return mine.abandoned(label)

    backend = DockerBackend(owner=mine.label, abandoned=abandoned)
    backend._client = engine
    try:
        assert await backend.sweep_orphans("blue") == 2000
        assert len(probed) == 3  # once per owner label, not once per sandbox and network
        assert len(engine.removed) == 2000 + 2000 and SWEEP_THREADS > 1
    finally:
        backend.close()
        theirs.release()
        mine.release()
