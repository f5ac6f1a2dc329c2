"""What ``mcp-runner bench`` runs and how much: section names, counts, and their parsing from the command line.

Standard library only: the CLI builds its parser from this module without loading the sections.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

SECTIONS = ("open", "calls", "throughput", "at-once", "guard", "sandbox", "audit", "door", "backends")
"""Every section, in the order ``main`` runs them (the order on the command line does not matter)."""
DEFAULT_SECTIONS = SECTIONS[:-1]
"""What runs without ``--sections``: all but ``backends``, which needs the test cluster (``--backend kubernetes``)."""
BACKENDS = ("docker", "kubernetes")
MAX_AT_ONCE = 729
"""Sessions the at-once section can tell apart by their arguments (27 source x 27 target time zones)."""
MAX_AT_ONCE_CALLS = 1440
"""Calls per session it can tell apart (one minute of the day each)."""


@dataclass(frozen=True)
class BenchOptions:
    config: str | None = None
    profile: str = "time"
    sections: tuple[str, ...] = DEFAULT_SECTIONS
    opens: int = 10
    calls: int = 200
    at_once: int = 200
    at_once_calls: int = 100
    concurrency: tuple[int, ...] = (1, 10, 50)
    backend: str = "docker"
    """``kubernetes``: the ``backends`` section also runs, measuring pods next to Docker's containers."""


def sections_arg(text: str) -> tuple[str, ...]:
    """``open,calls`` -> the named sections in run order; an unknown or empty name is an argparse error."""
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(map(repr, unknown))}; choose from {','.join(SECTIONS)}"
        )
    return tuple(name for name in SECTIONS if name in names)


def counts_arg(text: str) -> tuple[int, ...]:
    """``1,10,50`` -> (1, 10, 50): positive, without repeats, ascending."""
    try:
        counts = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: {text!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"counts must be at least 1: {text!r}")
    return tuple(counts)


def bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type for a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}: {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's arguments; ``options_from`` reads them back."""
    defaults = BenchOptions()
    parser.add_argument("--config", help="settings file (YAML or TOML) the bench's services start from")
    parser.add_argument("--profile", default=defaults.profile,
                        help="profile for open, calls, throughput, sandbox, audit, door and backends (default: time; "
                             "at-once always uses time)")
    parser.add_argument("--sections", type=sections_arg, default=defaults.sections, metavar="LIST",
                        help=f"comma-separated sections to run (default: {','.join(DEFAULT_SECTIONS)}; "
                             "backends too with --backend kubernetes)")
    parser.add_argument("--backend", choices=BACKENDS, default=defaults.backend,
                        help="kubernetes: also run the backends section (open/call/close on pods of the test "
                             "cluster next to Docker containers); default: docker")
    parser.add_argument("--opens", type=bounded(1, 10_000), default=defaults.opens, metavar="N",
                        help=f"sessions opened per column (default: {defaults.opens})")
    parser.add_argument("--calls", type=bounded(1, 1_000_000), default=defaults.calls, metavar="N",
                        help=f"tool calls timed per column, and per session in throughput (default: {defaults.calls})")
    parser.add_argument("--at-once", type=bounded(1, MAX_AT_ONCE), default=defaults.at_once, metavar="N",
                        help=f"sessions opened at once (default: {defaults.at_once})")
    parser.add_argument("--at-once-calls", type=bounded(1, MAX_AT_ONCE_CALLS), default=defaults.at_once_calls,
                        metavar="N", help=f"calls per session after they opened (default: {defaults.at_once_calls})")
    parser.add_argument("--concurrency", type=counts_arg, default=defaults.concurrency, metavar="LIST",
                        help="concurrent sessions for throughput (default: 1,10,50)")


def with_backend(sections: tuple[str, ...], backend: str) -> tuple[str, ...]:
    """``sections`` plus ``backends`` when the backend to measure beside Docker is Kubernetes, in run order."""
    chosen = {*sections, "backends"} if backend == "kubernetes" else set(sections)
    return tuple(name for name in SECTIONS if name in chosen)


def options_from(args: argparse.Namespace) -> BenchOptions:
    return BenchOptions(
        config=args.config, profile=args.profile, sections=with_backend(args.sections, args.backend),
        opens=args.opens, calls=args.calls, at_once=args.at_once, at_once_calls=args.at_once_calls,
        concurrency=args.concurrency, backend=args.backend,
    )
