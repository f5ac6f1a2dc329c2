"""Object names and label values from any instance name the settings allow, any session id and profile name:
valid for the API server, and different for different inputs (a collision would let one session's removal,
or one instance's sweep, take another's objects)."""

from __future__ import annotations

import itertools
import re
import secrets
import string

from runner.sandbox.base import SandboxSpec
from runner.sandbox.kube_objects import instance_selector, label_value, object_name

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
INSTANCE_CHARS = string.ascii_letters + string.digits + "_.-"  # settings_file: [a-zA-Z0-9_.-]{1,64}


def instances() -> list[str]:
    rng = secrets.SystemRandom()
    edge = ["a", "A", "-", ".", "_", "a-", "-a", "a_", "a.b", "a-b", "A-b", "a" * 63, "a" * 64, "A" * 64, "-" * 64,
            "x" * 40 + "_", "x" * 40 + ".", "x" * 40 + "-", "mcp-runner", "default", "Default"]
    return edge + ["".join(rng.choice(INSTANCE_CHARS) for _ in range(rng.randint(1, 64))) for _ in range(300)]


def test_names_and_labels_are_valid_and_tell_inputs_apart() -> None:
    session_ids = [secrets.token_hex(8) for _ in range(3)]
    names: dict[str, tuple[str, str, str]] = {}
    labels: dict[str, str] = {}
    for instance, session_id in itertools.product(instances(), session_ids):
        spec = SandboxSpec(session_id=session_id, instance=instance, image="i", command=())
        for suffix in ("", "-egress", "-sandbox"):
            name = object_name(spec, suffix)
            assert DNS_LABEL.fullmatch(name), (instance, name)
            assert names.setdefault(name, (instance, session_id, suffix)) == (instance, session_id, suffix)
        value = label_value(instance)
        assert LABEL_VALUE.fullmatch(value), (instance, value)
        assert labels.setdefault(value, instance) == instance
        assert instance_selector(instance).endswith(f"={value}")


def test_profile_names_become_valid_label_values() -> None:
    for profile in ("time", "my profile", "ünïcode", "x" * 200, "", "-lead", "trail.", "a/b", "a=b,c"):
        assert LABEL_VALUE.fullmatch(label_value(profile)), profile
