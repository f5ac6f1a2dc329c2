"""Secrets a profile names, read by the service when a session starts (never stored in settings or logs).

Read at each start rather than once at load, so a rotated file or variable is
picked up by the next session. The values go into the container's environment
and into that session's sanitizer, which redacts them wherever a server
echoes one back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from runner.config import NetworkPolicy, SecretSource
from runner.egress.rules import Rule, check_header
from runner.errors import FailedPrecondition

MAX_SECRET_BYTES = 64 * 1024
MIN_SECRET_CHARS = 4


class SecretUnavailable(FailedPrecondition):
    """A profile's secret cannot be read; the message names its source, never a value."""


def _read(name: str, source: SecretSource) -> str:
    where = source.describe()
    if source.env is not None:
        value = os.environ.get(source.env)
        if value is None:
            raise SecretUnavailable(f"secret {name} comes from {where}, which is not set in the service's environment")
    else:
        assert source.file is not None
        try:
            with Path(source.file).open("rb") as handle:
                data = handle.read(MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise SecretUnavailable(f"secret {name} comes from {where}, which cannot be read: {exc.strerror}") from None
        if len(data) > MAX_SECRET_BYTES:
            raise SecretUnavailable(f"secret {name} from {where} is larger than {MAX_SECRET_BYTES} bytes")
        try:
            value = data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise SecretUnavailable(f"secret {name} from {where} is not UTF-8 text") from None
    if len(value) < MIN_SECRET_CHARS:
        # Shorter values cannot be redacted without redacting ordinary text too.
        raise SecretUnavailable(f"secret {name} from {where} is shorter than {MIN_SECRET_CHARS} characters")
    if "\x00" in value:
        raise SecretUnavailable(f"secret {name} from {where} contains a NUL character")
    return value


def resolve_secrets(secrets: Mapping[str, SecretSource]) -> dict[str, str]:
    """Container variable -> value, for every secret a profile names."""
    return {name: _read(name, source) for name, source in secrets.items()}


def egress_rules(network: NetworkPolicy) -> tuple[tuple[Rule, ...], tuple[str, ...]]:
    """The proxy's rules with credential headers filled in, and the secret values used (for redaction)."""
    rules: list[Rule] = []
    used: list[str] = []
    for rule in network.egress:
        headers: list[tuple[str, str]] = []
        for credential in rule.credentials:
            what = f"{credential.header} for {rule.host}:{rule.port}"
            value = _read(what, credential.source)
            header = credential.template.replace("{}", value)
            try:
                check_header(credential.header, header)
            except ValueError as exc:
                raise SecretUnavailable(f"secret {what} from {credential.source.describe()}: {exc}") from None
            headers.append((credential.header, header))
            used.append(value)
        rules.append(rule.proxy_rule(tuple(headers)))
    return tuple(rules), tuple(used)
