"""Writable mounts, said out loud: a profile's mount is the same host path in every session of that profile.

Unlike the workspace (empty at every open, removed at close), a ``writable: true`` mount keeps what one session's
server wrote for the next session of the profile, whoever opened it: the policy's per-caller profiles do not
separate them. ``config check`` lists it as a note and start-up logs it as a warning, once per mount.
"""

from __future__ import annotations

import logging

from runner.config import Settings

log = logging.getLogger(__name__)


def shared_mount_notes(settings: Settings) -> list[str]:
    """One line for each writable mount: where it is, and that every session of its profile shares it."""
    return [
        f"profiles.{name}.mounts.{index}: {mount.source} is mounted writable at {mount.target}, shared by every "
        f"session of profile {name}, whichever caller: one session's server can leave files another reads"
        for name, profile in sorted(settings.profiles.items())
        for index, mount in enumerate(profile.mounts)
        if mount.writable
    ]


def warn_shared_mounts(settings: Settings) -> None:
    """Log ``shared_mount_notes`` as warnings, for start-up (``config check`` prints them as notes)."""
    for note in shared_mount_notes(settings):
        log.warning("%s", note)
