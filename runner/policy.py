"""Who may do what: callers, roles, profiles, tool, resource and prompt rules, ceilings and rates, from one file.

pydantic checks the file (people write it, and a typo must not silently grant
or lift anything: unknown keys and unknown roles are refused); the rest of the
runner sees only the frozen ``Policy`` built from it. Every refusal names the
rule that caused it, so an operator can find the line to change. The policy
can change while the runner serves: ``PolicyStore`` swaps in a new file only
when it loads cleanly, so a broken edit never leaves the runner without rules.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runner.config import ConfigError, parse_size, problems
from runner.config_document import read_document
from runner.errors import PermissionDenied
from runner.guard.names import MAX_MATCHED, Undecidable, matchable, normalize, resource_key, resource_keys

log = logging.getLogger(__name__)

APPROVER = "approver"
ADMIN = "admin"
AUDITOR = "auditor"
"""Reads every caller's audit records and verifies the chain (a caller reads only its own)."""
# What a caller may be called: the policy names callers so, and an identity outside it could never be given rules.
CALLER_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_TOKEN_HASH = re.compile(r"^sha256:[0-9a-fA-F]{64}$")


# ---- domain --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rates:
    """Token-bucket settings; None = unlimited. ``entry`` names the policy section, for messages."""

    calls_per_s: float | None = None
    call_burst: int | None = None
    concurrent_calls: int | None = None
    sessions_per_min: float | None = None
    session_burst: int | None = None
    refusals_per_min: float = 60.0
    """Refused requests (unknown profile or session, another caller's session, a denied open) are limited
    even when nothing else is: each one writes audit records, and they must not let a caller grow the log."""
    refusal_burst: int = 20
    entry: str = ""

    @property
    def effective_call_burst(self) -> int:
        """An unset burst is one second's worth of calls: a rate alone must not mean a burst of one."""
        return self.call_burst or max(1, math.ceil(self.calls_per_s or 1))

    @property
    def effective_session_burst(self) -> int:
        """An unset burst is one minute's worth of opens, matching how the rate is written."""
        return self.session_burst or max(1, math.ceil(self.sessions_per_min or 1))


@dataclass(frozen=True)
class AccessRules:
    """fnmatch patterns on tool names, prompt names or resource URIs. ``allow`` None = everything; ``()`` = none.

    ``approval`` is for tools only: reading a resource or getting a prompt is allowed or denied, never queued.
    """

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()
    approval: tuple[str, ...] = ()


Kind = Literal["tools", "resources", "prompts"]
"""What a rule set is about; also its key in the policy file (``tools:``, ``resources:``, ``prompts:``)."""


@dataclass(frozen=True)
class LimitCeilings:
    """The most a caller may ask for; None = the profile's own limit is the ceiling."""

    memory_bytes: int | None = None
    cpus: float | None = None
    pids: int | None = None
    call_timeout_s: float | None = None
    idle_timeout_s: float | None = None
    max_lifetime_s: float | None = None


@dataclass(frozen=True)
class CallerPolicy:
    name: str
    roles: frozenset[str] = frozenset()
    profiles: tuple[str, ...] = ()
    limits: LimitCeilings = LimitCeilings()
    max_sessions: int | None = None
    rates: Rates = Rates()
    session_rates: Rates = Rates()
    tools: AccessRules = AccessRules()
    profile_tools: Mapping[str, AccessRules] = field(default_factory=lambda: MappingProxyType({}))
    resources: AccessRules = AccessRules()
    profile_resources: Mapping[str, AccessRules] = field(default_factory=lambda: MappingProxyType({}))
    prompts: AccessRules = AccessRules()
    profile_prompts: Mapping[str, AccessRules] = field(default_factory=lambda: MappingProxyType({}))
    entry: str = "default_caller"
    """``callers.<name>`` or ``default_caller``: where this caller's rules are written, for messages."""


@dataclass(frozen=True)
class ToolDecision:
    """The policy's answer about one tool, resource or prompt (only tools are ever ``approval``)."""

    verdict: Literal["allow", "deny", "approval"]
    rule: str
    """The rule that decided, as an operator would look it up: file, section, pattern."""


@dataclass(frozen=True)
class Policy:
    source: str
    """The file path, or "embedded default"."""
    approval_timeout_s: float = 300.0
    allow_self_approval: bool = False
    anomaly_max_events: int = 5
    anomaly_window_s: float = 60.0
    default_caller: CallerPolicy = CallerPolicy(name="")
    callers: Mapping[str, CallerPolicy] = field(default_factory=lambda: MappingProxyType({}))
    profile_tools: Mapping[str, AccessRules] = field(default_factory=lambda: MappingProxyType({}))
    profile_resources: Mapping[str, AccessRules] = field(default_factory=lambda: MappingProxyType({}))
    profile_prompts: Mapping[str, AccessRules] = field(default_factory=lambda: MappingProxyType({}))
    tokens: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Token hash -> caller name."""

    @property
    def label(self) -> str:
        """The file's name only: messages go to callers, who need the rule, not the server's paths."""
        return Path(self.source).name if self.source != EMBEDDED_SOURCE else "embedded default policy"

    def caller(self, name: str) -> CallerPolicy:
        listed = self.callers.get(name)
        return listed if listed is not None else replace(self.default_caller, name=name)

    def token_owner(self, token_hash: str) -> str | None:
        return self.tokens.get(token_hash)

    def has_role(self, caller: str, role: str) -> bool:
        return role in self.caller(caller).roles

    def check_role(self, caller: str, role: str) -> None:
        if not self.has_role(caller, role):
            entry = self.caller(caller).entry
            raise PermissionDenied(f"caller {caller} lacks the {role} role ({self.label}: {entry}.roles)")

    def may_open(self, caller: str, profile: str) -> bool:
        return any(fnmatchcase(profile, pattern) for pattern in self.caller(caller).profiles)

    def check_open(self, caller: str, profile: str) -> None:
        if not self.may_open(caller, profile):
            policy = self.caller(caller)
            raise PermissionDenied(
                f"caller {caller} may not open profile {profile!r} ({self.label}: {policy.entry}.profiles "
                f"{json.dumps(list(policy.profiles))} does not include {json.dumps(profile)})"
            )

    def tool_decision(self, caller: str, profile: str, tool: str) -> ToolDecision:
        return self.decision("tools", caller, profile, tool)

    def decision(self, kind: Kind, caller: str, profile: str, name: str) -> ToolDecision:
        """Deny wins at any level; every level with an allow list must allow; then approval; else allow.

        Patterns match the ``normalize``d name (URIs: each of its ``resource_keys``), each pattern brought to the
        same form, so ``Delete_file`` or a Cyrillic ``dеlete_file`` hits ``deny: ["*delete*"]``. Deny and approval
        rules also match the name as sent, and hit when any reading of a URI does; allow rules match only the
        normalized form, every reading of it, so ``/public/%2e%2e/etc`` is never allowed by ``/public/*``. A name
        too long to decide whole (``matchable``) is denied: it is never cut to a prefix that a rule might allow;
        so is a URI still percent-encoded after many rounds of decoding (``Undecidable``).
        """
        quoted = json.dumps(name)
        if not matchable(name):
            return ToolDecision(
                "deny", f"{self.label}: names and URIs longer than {MAX_MATCHED} characters (decomposed) are refused"
            )
        policy = self.caller(caller)
        levels = [
            (f"profiles.{profile}.{kind}", getattr(self, f"profile_{kind}").get(profile)),
            (f"{policy.entry}.{kind}", getattr(policy, kind)),
            (f"{policy.entry}.profile_{kind}.{profile}", getattr(policy, f"profile_{kind}").get(profile)),
        ]
        present: list[tuple[str, AccessRules]] = [(where, rules) for where, rules in levels if rules is not None]
        if not present:
            return ToolDecision("allow", f"{self.label}: no allow list restricts {quoted}")
        try:
            return self._decide(kind, name, present)
        except Undecidable as exc:  # of the name, or (never written so, but still) of a pattern
            return ToolDecision("deny", f"{self.label}: {quoted} cannot be decided: {exc}")

    def _decide(self, kind: Kind, name: str, present: list[tuple[str, AccessRules]]) -> ToolDecision:
        quoted = json.dumps(name)
        key = resource_key if kind == "resources" else normalize
        readings = resource_keys(name) if kind == "resources" else (normalize(name),)

        def normalized_match(pattern: str) -> bool:
            folded = key(pattern)
            return all(fnmatchcase(reading, folded) for reading in readings)

        def hits(pattern: str) -> bool:
            folded = key(pattern)
            return fnmatchcase(name, pattern) or any(fnmatchcase(reading, folded) for reading in readings)

        for where, rules in present:
            for pattern in rules.deny:
                if hits(pattern):
                    return ToolDecision("deny", f"{self.label}: {where}.deny {json.dumps(pattern)}")
        allowed_by = ""
        for where, rules in present:
            if rules.allow is None:
                continue
            match = next((p for p in rules.allow if normalized_match(p)), None)
            if match is None:
                return ToolDecision("deny", f"{self.label}: no allow rule of {where} matches {quoted}")
            allowed_by = f"{self.label}: {where}.allow {json.dumps(match)}"
        for where, rules in present:
            for pattern in rules.approval:
                if hits(pattern):
                    return ToolDecision("approval", f"{self.label}: {where}.approval {json.dumps(pattern)}")
        return ToolDecision("allow", allowed_by or f"{self.label}: no allow list restricts {quoted}")


EMBEDDED_SOURCE = "embedded default"
EMBEDDED_DEFAULT = Policy(
    source=EMBEDDED_SOURCE,
    allow_self_approval=True,
    default_caller=CallerPolicy(
        name="", roles=frozenset({APPROVER, ADMIN, AUDITOR}), profiles=("*",),
        rates=Rates(entry="default_caller.rates"), session_rates=Rates(entry="default_caller.session_rates"),
    ),
)
"""No policy file: a single developer on loopback may do everything, and approve their own calls."""


# ---- the file (trust boundary) -------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Approvals(_Strict):
    timeout_s: float = Field(default=300.0, gt=0)
    allow_self_approval: bool = False


class _Anomaly(_Strict):
    max_events: int = Field(default=5, ge=1)
    window_s: float = Field(default=60.0, gt=0)


class _Limits(_Strict):
    memory: int | str | None = None
    cpus: float | None = Field(default=None, gt=0, le=64)
    pids: int | None = Field(default=None, ge=8, le=65536)
    call_timeout_s: float | None = Field(default=None, gt=0)
    idle_timeout_s: float | None = Field(default=None, gt=0)
    max_lifetime_s: float | None = Field(default=None, gt=0)

    @field_validator("memory")
    @classmethod
    def _size(cls, value: int | str | None) -> int | str | None:
        if value is not None and parse_size(value) < 4 * 1024**2:
            raise ValueError("must be at least 4m")
        return value

    def build(self) -> LimitCeilings:
        memory = parse_size(self.memory) if self.memory is not None else None
        return LimitCeilings(
            memory, self.cpus, self.pids, self.call_timeout_s, self.idle_timeout_s, self.max_lifetime_s
        )


class _SessionRates(_Strict):
    calls_per_s: float | None = Field(default=None, gt=0)
    call_burst: int | None = Field(default=None, ge=1)
    concurrent_calls: int | None = Field(default=None, ge=1)

    def build(self, entry: str) -> Rates:
        return Rates(self.calls_per_s, self.call_burst, self.concurrent_calls, entry=entry)


class _Rates(_SessionRates):
    sessions_per_min: float | None = Field(default=None, gt=0)
    session_burst: int | None = Field(default=None, ge=1)
    refusals_per_min: float = Field(default=Rates.refusals_per_min, gt=0)
    refusal_burst: int = Field(default=Rates.refusal_burst, ge=1)

    def build(self, entry: str) -> Rates:
        return Rates(
            self.calls_per_s, self.call_burst, self.concurrent_calls, self.sessions_per_min, self.session_burst,
            self.refusals_per_min, self.refusal_burst, entry=entry,
        )


class _AccessRules(_Strict):
    allow: list[str] | None = None
    deny: list[str] = []

    def build(self) -> AccessRules:
        return AccessRules(tuple(self.allow) if self.allow is not None else None, tuple(self.deny))


class _ToolRules(_AccessRules):
    approval: list[str] = []

    def build(self) -> AccessRules:
        return replace(super().build(), approval=tuple(self.approval))


class _DefaultCaller(_Strict):
    roles: list[Literal["approver", "admin", "auditor"]] = []
    profiles: list[str] = []
    limits: _Limits = _Limits()
    max_sessions: int | None = Field(default=None, ge=1)
    rates: _Rates = _Rates()
    session_rates: _SessionRates = _SessionRates()
    tools: _ToolRules = _ToolRules()
    profile_tools: dict[str, _ToolRules] = {}
    resources: _AccessRules = _AccessRules()
    profile_resources: dict[str, _AccessRules] = {}
    prompts: _AccessRules = _AccessRules()
    profile_prompts: dict[str, _AccessRules] = {}

    def build(self, name: str, entry: str) -> CallerPolicy:
        return CallerPolicy(
            name=name,
            roles=frozenset(self.roles),
            profiles=tuple(self.profiles),
            limits=self.limits.build(),
            max_sessions=self.max_sessions,
            rates=self.rates.build(f"{entry}.rates"),
            session_rates=self.session_rates.build(f"{entry}.session_rates"),
            tools=self.tools.build(),
            profile_tools=MappingProxyType({k: v.build() for k, v in self.profile_tools.items()}),
            resources=self.resources.build(),
            profile_resources=MappingProxyType({k: v.build() for k, v in self.profile_resources.items()}),
            prompts=self.prompts.build(),
            profile_prompts=MappingProxyType({k: v.build() for k, v in self.profile_prompts.items()}),
            entry=entry,
        )


class _Caller(_DefaultCaller):
    tokens: list[str] = []

    @field_validator("tokens")
    @classmethod
    def _hashes(cls, value: list[str]) -> list[str]:
        # Never echo the value: if it is a pasted token, it is a secret.
        for index, item in enumerate(value):
            if not _TOKEN_HASH.fullmatch(item):
                raise ValueError(
                    f"entry {index} is not a token hash (sha256:<64 hex>); put the hash that "
                    "`mcp-runner token <caller>` prints here, never the token itself"
                )
        return [item.lower() for item in value]


class _ProfileRules(_Strict):
    tools: _ToolRules = _ToolRules()
    resources: _AccessRules = _AccessRules()
    prompts: _AccessRules = _AccessRules()


class PolicyFile(_Strict):
    approvals: _Approvals = _Approvals()
    anomaly: _Anomaly = _Anomaly()
    default_caller: _DefaultCaller = _DefaultCaller()
    callers: dict[str, _Caller] = {}
    profiles: dict[str, _ProfileRules] = {}

    @field_validator("callers")
    @classmethod
    def _names(cls, value: dict[str, _Caller]) -> dict[str, _Caller]:
        for name in value:
            if not CALLER_NAME.fullmatch(name):
                raise ValueError(f"caller name {name!r}: use 1-64 letters, digits, '.', '_', '-' or '@'")
        return value


def load_policy(path: Path) -> Policy:
    """The policy in ``path`` (``.toml`` is TOML, anything else YAML); ConfigError naming the file otherwise."""
    try:
        parsed = PolicyFile.model_validate(read_document(path, "policy file"))
    except ValidationError as exc:
        raise ConfigError(f"policy file {path}: {problems(exc, PolicyFile)}") from exc
    tokens: dict[str, str] = {}
    for name, caller in parsed.callers.items():
        for digest in caller.tokens:
            owner = tokens.setdefault(digest, name)
            if owner != name:
                raise ConfigError(
                    f"policy file {path}: callers.{name}.tokens: token hash {digest[:15]}... also belongs to "
                    f"callers.{owner}; one token must identify one caller"
                )
    return Policy(
        source=str(path),
        approval_timeout_s=parsed.approvals.timeout_s,
        allow_self_approval=parsed.approvals.allow_self_approval,
        anomaly_max_events=parsed.anomaly.max_events,
        anomaly_window_s=parsed.anomaly.window_s,
        default_caller=parsed.default_caller.build("", "default_caller"),
        callers=MappingProxyType({n: c.build(n, f"callers.{n}") for n, c in parsed.callers.items()}),
        profile_tools=MappingProxyType({n: p.tools.build() for n, p in parsed.profiles.items()}),
        profile_resources=MappingProxyType({n: p.resources.build() for n, p in parsed.profiles.items()}),
        profile_prompts=MappingProxyType({n: p.prompts.build() for n, p in parsed.profiles.items()}),
        tokens=MappingProxyType(tokens),
    )


# ---- live reloading ------------------------------------------------------------------------------------------------

_Stamp = tuple[int, int, int]


class PolicyStore:
    """Holds the current policy; reload() swaps in a new one only if it loads cleanly.

    Wire SIGHUP with ``loop.add_signal_handler(signal.SIGHUP, store.reload)``; ``watch()`` covers edits.
    """

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._stamp = self._stat()
        # A policy that cannot load at start-up must stop the start: serving with no rules, or guessed ones, is worse.
        self._policy = EMBEDDED_DEFAULT if path is None else load_policy(path)

    @property
    def current(self) -> Policy:
        return self._policy

    def _stat(self) -> _Stamp | None:
        if self._path is None:
            return None
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> str | None:
        """Load the file again; on failure keep the policy in force and return (and log) why."""
        if self._path is None:
            return None
        # Stamp before reading, so an edit that lands during the read is seen as a change by watch().
        self._stamp = self._stat()
        try:
            policy = load_policy(self._path)
        except ConfigError as exc:
            log.error("policy not reloaded, the previous one stays in force: %s", exc.message)
            return exc.message
        self._policy = policy
        log.info("policy reloaded from %s: %d caller(s), %d profile rule(s)", policy.source,
                 len(policy.callers), len(policy.profile_tools))
        return None

    async def watch(self, interval_s: float = 1.0) -> None:
        """Forever: reload when the file's (mtime_ns, size, inode) changes. Cancel to stop."""
        if self._path is None:
            await asyncio.Event().wait()  # nothing can change; park until cancelled
        while True:
            await asyncio.sleep(interval_s)
            stamp = self._stat()
            if stamp == self._stamp:
                continue
            if stamp is None:
                self._stamp = None
                log.error("policy file %s is gone; the policy loaded before stays in force", self._path)
                continue
            try:
                self.reload()  # reports a broken file itself
            except Exception:  # a bug in loading must not end the watch: later edits still need picking up
                log.exception("policy reload failed unexpectedly; the previous policy stays in force")
