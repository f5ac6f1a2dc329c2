"""``mcp-runner bench`` reads its sections and counts from the command line, and refuses what it cannot run."""

from __future__ import annotations

import grpc
import pytest

import runner.bench.main
from runner.bench.options import MAX_AT_ONCE, SECTIONS, BenchOptions, options_from
from runner.cli import build_parser, main
from runner.cli_exit import Exit


def _options(*argv: str) -> BenchOptions:
    return options_from(build_parser().parse_args(["bench", *argv]))


def test_defaults_run_every_section_with_the_issues_counts() -> None:
    assert _options() == BenchOptions()
    assert BenchOptions().sections == ("open", "calls", "throughput", "at-once", "guard", "sandbox", "audit", "door")
    assert (BenchOptions().at_once, BenchOptions().at_once_calls, BenchOptions().concurrency) == (200, 100, (1, 10, 50))


def test_every_option_is_read() -> None:
    options = _options("--config", "s.yaml", "--profile", "everything", "--sections", "audit, open", "--opens", "3",
                       "--calls", "40", "--at-once", "12", "--at-once-calls", "20", "--concurrency", "50,1,10,10")
    assert options == BenchOptions(config="s.yaml", profile="everything", sections=("open", "audit"), opens=3,
                                   calls=40, at_once=12, at_once_calls=20, concurrency=(1, 10, 50))


def test_sections_run_in_their_own_order_whatever_the_command_line_says() -> None:
    assert _options("--sections", ",".join(reversed(SECTIONS))).sections == SECTIONS


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sections", "open,warp"], "unknown section 'warp'"),
        (["--sections", ""], "unknown section ''"),
        (["--concurrency", "1,ten"], "not a comma-separated list"),
        (["--concurrency", "0,10"], "at least 1"),
        (["--at-once", str(MAX_AT_ONCE + 1)], f"must be 1 to {MAX_AT_ONCE}"),
        (["--at-once-calls", "1441"], "must be 1 to 1440"),
        (["--opens", "0"], "must be 1 to"),
        (["--calls", "many"], "not a whole number"),
    ],
)
def test_bad_values_are_refused_by_name(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["bench", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_refusal_from_the_service_is_one_line_and_its_exit_code(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    def refused(options: BenchOptions) -> None:
        raise grpc.aio.AioRpcError(grpc.StatusCode.FAILED_PRECONDITION, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                   "image not found; build it with `make images`", None)

    monkeypatch.setattr(runner.bench.main, "bench_main", refused)
    assert main(["bench", "--sections", "sandbox"]) == Exit.PRECONDITION  # the CLI's one status table
    assert capsys.readouterr().err == "error: FAILED_PRECONDITION: image not found; build it with `make images`\n"
