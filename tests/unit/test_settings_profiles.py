"""runner.settings_profiles: a file's ``profiles:`` made into ``Profile`` records, apart from the rest of the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import settings_file
from runner.config import Limits
from runner.settings_profiles import LimitsModel, ProfileModel, profiles_from


def test_profiles_are_made_from_their_models_relative_to_the_files_directory(tmp_path: Path) -> None:
    models = {"calc": ProfileModel.model_validate({
        "package": "pypi:calc==1.0", "mounts": [{"source": "data", "target": "/data"}], "limits": {"memory": "64m"},
    })}  # fmt: skip
    defaults = LimitsModel.model_validate({"pids": 64}).apply(Limits())
    (profile,) = profiles_from(models, tmp_path, defaults).values()
    assert profile.name == "calc" and profile.image == "pypi:calc==1.0"
    assert profile.mounts[0].source == str(tmp_path / "data")
    assert profile.limits.memory_bytes == 64 * 1024**2 and profile.limits.pids == 64


def test_a_secret_also_in_env_is_refused_naming_the_profile() -> None:
    both = {"image": "i", "command": ["c"], "env": {"A": "1"}, "secrets": {"A": {"env": "X"}}}
    model = ProfileModel.model_validate(both)
    with pytest.raises(ValueError, match=r"profiles\.p: \['A'\] named both in env and in secrets"):
        profiles_from({"p": model}, Path("."), Limits())


def test_the_settings_files_public_api_stays() -> None:
    assert {"load_settings", "file_problems", "SETTINGS_KEYS", "BUILTIN_PROFILES"} <= set(vars(settings_file))
    assert {"profiles", "defaults"} <= settings_file.SETTINGS_KEYS
