"""The service's log: one line per session opened and closed and per refused or failed request, from the journal's
events (so nothing the audit record leaves out, a secret say, reaches a line); text and JSON formats; settings."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.audit import records
from runner.audit.records import AuditEvent
from runner.config import ConfigError, LogConfig
from runner.observe import logs
from runner.observe.logs import ConsoleHandler, EventLog, JsonFormatter, TextFormatter, configure
from runner.settings_file import load_settings
from runner.settings_log import LogModel
from tests.unit.test_metrics import exercise, running


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """What ``runner.events`` writes, in JSON format."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("runner.events")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def parsed(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_open_close_and_refusals_each_get_one_json_line(tmp_path: Path, lines: io.StringIO) -> None:
    async with running(tmp_path, EventLog()) as run:
        session = await exercise(run)
        await run.manager.close(session, caller="alice")
    found = parsed(lines)
    (opened,) = [line for line in found if line["event"] == "session.open"]
    assert opened["session_id"] == session and opened["caller"] == "alice" and opened["profile"] == "good"
    assert opened["start"] == "cold" and isinstance(opened["ms"], float) and opened["level"] == "info"
    assert opened["logger"] == "runner.events" and opened["ts"].endswith("Z") and session in opened["message"]
    (closed,) = [line for line in found if line["event"] == "session.close"]
    assert closed["state"] == "closed" and closed["calls"] == 1 and closed["session_id"] == session  # calls sent
    failed = [line for line in found if line["event"] == "request"]
    assert [(line["method"], line["status"]) for line in failed] == [
        ("tools/call", "INVALID_ARGUMENT"), ("tools/call", "PERMISSION_DENIED"), ("tools/call", "NOT_FOUND"),
    ]  # the OK call has no line of its own; the refused open is the manager's own warning
    assert all(line["error"] and line["audit_id"].startswith("aud_") for line in failed)


def event_line(event: AuditEvent, formatter: logging.Formatter) -> str:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(formatter)
    logger = logging.Logger("runner.events.test")
    logger.addHandler(handler)
    EventLog(logger)(event)
    return buffer.getvalue()


HOSTILE = AuditEvent(records.REQUEST, "s1", "alice", {
    "method": "tools/call", "params": {}, "outcome": "error", "duration_ms": 2.5,
    "error": {"status": "INVALID_ARGUMENT", "message": "bad\nFAKE 2099 INFO forged line\x1b[31m\u202e"},
})  # fmt: skip


def test_a_text_line_stays_one_line_with_controls_shown() -> None:
    text = event_line(HOSTILE, TextFormatter())
    assert text.count("\n") == 1 and "\\n" in text and "\x1b" not in text and "\\u202e" in text
    assert "tools/call of session s1 by caller alice: INVALID_ARGUMENT: bad" in text


def test_a_json_line_parses_and_keeps_the_message_exactly() -> None:
    (line,) = event_line(HOSTILE, JsonFormatter()).splitlines()
    data = json.loads(line)
    assert data["error"] == HOSTILE.data["error"]["message"] and data["status"] == "INVALID_ARGUMENT"
    assert data["ms"] == 2.5 and data["session_id"] == "s1"


def test_capped_and_long_messages_are_cut() -> None:
    capped = {"sha256": "0" * 64, "bytes": 10_000, "prefix": "p" * 256}
    event = AuditEvent(records.REQUEST, "", "alice", {
        "method": "tools/call", "outcome": "error", "error": {"status": "NOT_FOUND", "message": capped},
    })  # fmt: skip
    (line,) = event_line(event, JsonFormatter()).splitlines()
    assert json.loads(line)["error"] == "p" * 256
    long = AuditEvent(records.REQUEST, "", "alice", {
        "method": "m", "outcome": "error", "error": {"status": "INTERNAL", "message": "word " * 500},
    })  # fmt: skip
    (line,) = event_line(long, JsonFormatter()).splitlines()
    assert len(json.loads(line)["error"]) <= 300


def test_configure_replaces_only_the_console_handler() -> None:
    root = logging.getLogger()
    kept = logging.StreamHandler(io.StringIO())
    console = logging.StreamHandler(sys.stderr)
    saved_level, saved = root.level, list(root.handlers)
    root.addHandler(kept)
    root.addHandler(console)
    try:
        configure(LogConfig(level="warning", format="json"))
        configure(LogConfig(level="warning", format="json"))  # again: still one console handler
        ours = [h for h in root.handlers if isinstance(h, ConsoleHandler)]
        assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
        assert kept in root.handlers and console not in root.handlers and root.level == logging.WARNING
    finally:
        for handler in list(root.handlers):
            if handler not in saved:
                root.removeHandler(handler)
        root.setLevel(saved_level)


def test_log_settings_come_from_the_environment_then_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("log: {level: warning, format: json}\nmetrics: {public: true}\n", encoding="utf-8")
    monkeypatch.delenv("MCP_RUNNER_LOG_LEVEL", raising=False)
    monkeypatch.delenv("MCP_RUNNER_LOG_FORMAT", raising=False)
    loaded = load_settings(settings)
    assert loaded.log == LogConfig(level="warning", format="json") and loaded.metrics.public
    monkeypatch.setenv("MCP_RUNNER_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("MCP_RUNNER_LOG_FORMAT", "")  # empty: unset
    assert load_settings(settings).log == LogConfig(level="debug", format="json")
    assert load_settings().log == LogConfig(level="debug", format="text")


def test_bad_log_settings_are_refused_with_the_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_RUNNER_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="MCP_RUNNER_LOG_FORMAT='xml': the log format is one of text, json"):
        LogModel().config()
    monkeypatch.delenv("MCP_RUNNER_LOG_FORMAT")
    settings = tmp_path / "settings.yaml"
    settings.write_text("log: {level: loud}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"log\.level"):
        load_settings(settings)


def test_serve_options_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from runner import cli

    seen: dict[str, str | None] = {}

    def load_settings(*args: Any, **kwargs: Any) -> object:
        seen.update(level=os.environ.get("MCP_RUNNER_LOG_LEVEL"), format=os.environ.get("MCP_RUNNER_LOG_FORMAT"))
        return types.SimpleNamespace(log=None)

    async def run_service(settings: object) -> None:
        pass

    monkeypatch.setattr(logs, "configure", lambda config: None)

    monkeypatch.setitem(sys.modules, "runner.settings_file", types.SimpleNamespace(load_settings=load_settings))
    monkeypatch.setitem(sys.modules, "runner.service", types.SimpleNamespace(run_service=run_service))
    monkeypatch.setenv("MCP_RUNNER_LOG_LEVEL", "error")
    monkeypatch.setenv("MCP_RUNNER_LOG_FORMAT", "text")
    assert cli.main(["serve", "--log-format", "json"]) == 0
    assert seen == {"level": "error", "format": "json"}
    with pytest.raises(SystemExit):
        cli.main(["serve", "--log-format", "xml"])


def test_a_json_line_is_ascii_so_no_reader_splits_it() -> None:
    breaks = "\u2028\u2029\x85\x1c\x1d\x1e\x0b\x0c\r\u202e"
    event = AuditEvent(records.REQUEST, "", "mallory", {
        "method": f"tools/call{breaks}", "outcome": "error", "error": {"status": "NOT_FOUND", "message": breaks},
    })  # fmt: skip
    written = event_line(event, JsonFormatter())
    assert written.isascii() and len(written.splitlines()) == 1
    assert json.loads(written)["method"] == f"tools/call{breaks}"  # exact once parsed


def test_log_level_and_format_are_read_alike_in_any_case_from_the_file_the_environment_and_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    from runner import cli

    monkeypatch.delenv("MCP_RUNNER_LOG_LEVEL", raising=False)
    monkeypatch.delenv("MCP_RUNNER_LOG_FORMAT", raising=False)
    settings = tmp_path / "settings.yaml"
    settings.write_text("log: {level: WARNING, format: ' Json'}\n", encoding="utf-8")
    assert load_settings(settings).log == LogConfig(level="warning", format="json")
    monkeypatch.setenv("MCP_RUNNER_LOG_LEVEL", " Error ")
    assert load_settings(settings).log == LogConfig(level="error", format="json")
    monkeypatch.delenv("MCP_RUNNER_LOG_LEVEL")
    seen: dict[str, str | None] = {}

    def loaded(*args: Any, **kwargs: Any) -> object:
        seen.update(level=os.environ.get("MCP_RUNNER_LOG_LEVEL"), format=os.environ.get("MCP_RUNNER_LOG_FORMAT"))
        return types.SimpleNamespace(log=None)

    async def run_service(settings: object) -> None:
        pass

    monkeypatch.setattr(logs, "configure", lambda config: None)

    monkeypatch.setitem(sys.modules, "runner.settings_file", types.SimpleNamespace(load_settings=loaded))
    monkeypatch.setitem(sys.modules, "runner.service", types.SimpleNamespace(run_service=run_service))
    assert cli.main(["serve", "--log-level", "DEBUG", "--log-format", "TEXT"]) == 0
    assert seen == {"level": "debug", "format": "text"}
