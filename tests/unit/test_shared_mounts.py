"""A writable mount is the same host path in every session of its profile: config check notes it, start-up warns."""

from __future__ import annotations

import logging
from pathlib import Path
from types import MappingProxyType

import pytest

from runner.config import Mount, Profile, Settings
from runner.config_check import refuse_problems, settings_problems
from runner.shared_mounts import shared_mount_notes


def _settings(tmp_path: Path) -> Settings:
    (tmp_path / "out").mkdir(mode=0o777)
    (tmp_path / "out").chmod(0o777)
    mounts = (Mount(str(tmp_path), "/in"), Mount(str(tmp_path / "out"), "/out", writable=True))
    profile = Profile(name="writer", image="python-servers", command=("x",), mounts=mounts)
    return Settings(profiles=MappingProxyType({"writer": profile}))


def test_each_writable_mount_is_one_line_naming_its_profile(tmp_path: Path) -> None:
    assert shared_mount_notes(_settings(tmp_path)) == [
        f"profiles.writer.mounts.1: {tmp_path / 'out'} is mounted writable at /out, shared by every session of "
        "profile writer, whichever caller: one session's server can leave files another reads"
    ]


def test_config_check_notes_it_and_start_up_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tmp_path)
    problems, notes = settings_problems(settings, None)
    assert problems == [] and notes == shared_mount_notes(settings)
    with caplog.at_level(logging.WARNING, logger="runner.shared_mounts"):
        refuse_problems(settings)
    assert [r.getMessage() for r in caplog.records] == shared_mount_notes(settings)


def test_read_only_mounts_say_nothing(tmp_path: Path) -> None:
    profile = Profile(name="reader", image="fake", command=("x",), mounts=(Mount(str(tmp_path), "/in"),))
    assert shared_mount_notes(Settings(profiles=MappingProxyType({"reader": profile}))) == []
