"""Structured logging: text and JSON lines carrying the `extra=` fields."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from companion.logging_setup import setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_standard_and_extra_fields() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    log = logging.getLogger("companion.mission")
    log.info("entered %s", "cruise", extra={"mission_id": "m1", "alt_m": 30.0, "time": "x"})
    log.debug("not shown at INFO")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["level"] == "INFO"
    assert obj["logger"] == "companion.mission"
    assert obj["message"] == "entered cruise"
    assert (obj["mission_id"], obj["alt_m"]) == ("m1", 30.0)
    assert obj["time_"] == "x"  # an extra never overwrites a standard field
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["time"])


def test_json_exception_and_unserialisable_extra() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("t").exception("failed", extra={"path": Path("/x")})
    obj = json.loads(out.getvalue())
    assert obj["path"] == "/x"
    assert "ValueError: boom" in obj["exc"]


def test_text_format_with_key_values() -> None:
    out = io.StringIO()
    setup_logging("debug", "text", stream=out)
    logging.getLogger("companion.bus").warning(
        "queue full", extra={"dropped": 4, "reason": "slow reader", "empty": ""}
    )
    line = out.getvalue().rstrip("\n")
    assert re.fullmatch(
        r'\S+Z WARNING companion\.bus: queue full dropped=4 reason="slow reader" empty=""', line
    )


def test_reconfiguring_replaces_handlers_and_writes_the_file(tmp_path: Path) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", "text", stream=first)
    log_file = tmp_path / "logs" / "sky.log"
    setup_logging("INFO", "json", log_file, stream=second)
    logging.getLogger("x").info("once")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["message"] == "once"
    assert json.loads(log_file.read_text(encoding="utf-8"))["message"] == "once"


@pytest.mark.parametrize(
    ("level", "fmt", "match"), [("LOUD", "text", "log level"), ("INFO", "xml", "log format")]
)
def test_bad_settings_are_named(level: str, fmt: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        setup_logging(level, fmt)


def test_unopenable_log_file_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot open log file"):
        setup_logging("INFO", "text", blocker / "sky.log")
