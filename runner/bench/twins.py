"""The measured profile's twins: the same profile with one change each, for the sections that compare them.

``-unguarded`` has its sanitizer off (``calls``), ``-runsc`` runs under gVisor and ``-egress`` has a network and
an egress proxy (``sandbox``). ``profile_document`` spells every other field out so nothing else drifts.

The egress twin's one rule, ``bench.invalid:443``, is never used: the time server makes no requests,
``.invalid`` is a reserved name that never resolves, and the proxy resolves names only when a request asks.
What it measures is the price of the session's own internal network plus its proxy container; no traffic
leaves the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from runner.config import EgressRule, NetworkPolicy, Profile, SecretSource

UNGUARDED, RUNSC, EGRESS = "-unguarded", "-runsc", "-egress"
"""Suffixes of the generated twins' profile names."""
BENCH_EGRESS = EgressRule(host="bench.invalid", port=443)
"""Never contacted (see the module docstring); it exists so the session gets a network and a proxy."""


def variants(profile: Profile) -> dict[str, Profile]:
    """The twins the bench compares ``profile`` with, by name; each differs from it in one respect only."""
    twins: dict[str, dict[str, Any]] = {
        UNGUARDED: {"sanitize": dataclasses.replace(profile.sanitize, enabled=False)},
        RUNSC: {"runtime": "runsc"},
        EGRESS: {"network": NetworkPolicy(egress=(BENCH_EGRESS,))},
    }
    return {
        profile.name + suffix: dataclasses.replace(profile, name=profile.name + suffix, **change)
        for suffix, change in twins.items()
    }


def _source(source: SecretSource) -> dict[str, str]:
    return {"env": source.env} if source.env else {"file": source.file or ""}


def profile_document(profile: Profile) -> dict[str, Any]:
    """A loaded profile in settings-file form, every field spelled out, so it loads back as the same profile.

    Paths are already absolute in a loaded profile, so the document may live in any directory.
    """
    limits = profile.limits
    document: dict[str, Any] = {
        "image": profile.image,
        "runtime": profile.runtime,
        "description": profile.description,
        "env": dict(profile.env),
        "mounts": [{"source": mount.source, "target": mount.target} for mount in profile.mounts],
        "limits": {
            "memory": limits.memory_bytes,
            "cpus": limits.cpus,
            "pids": limits.pids,
            "tmpfs": limits.tmpfs_bytes,
            "call_timeout_s": limits.call_timeout_s,
            "idle_timeout_s": limits.idle_timeout_s,
            "max_lifetime_s": limits.max_lifetime_s,
        },
        "secrets": {name: _source(source) for name, source in profile.secrets.items()},
        "sanitize": {
            "enabled": profile.sanitize.enabled,
            "redact": sorted(profile.sanitize.redact),
            "injection": profile.sanitize.injection_action,
        },
        "pins": dict(profile.pins),
    }
    if profile.command:
        document["command"] = list(profile.command)
    if profile.remote_url:
        document["remote"] = {"url": profile.remote_url}
    if profile.roots is not None:
        document["roots"] = list(profile.roots)
    if profile.network is not None:
        rules = [
            {
                "host": rule.host,
                "port": rule.port,
                "private": rule.private,
                "headers": {c.header: {**_source(c.source), "template": c.template} for c in rule.credentials},
            }
            for rule in profile.network.egress
        ]
        document["network"] = {"egress": rules, "upstream": profile.network.upstream}
    return document


def variants_settings(profile: Profile) -> dict[str, Any]:
    """A settings document adding ``profile``'s twins (next to the built-in profiles, which stay on)."""
    return {"profiles": {name: profile_document(twin) for name, twin in variants(profile).items()}}


def twin_settings(profile: Profile) -> dict[str, Any]:
    """Top-level settings for a service of ``profile`` and its twins (next to the built-in profiles, which stay
    on), without warm sandboxes, so every open measured is a cold one and no refill competes with it."""
    return {**variants_settings(profile), "pool": {}}
