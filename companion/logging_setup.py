"""Structured logging for the daemon, on the standard library alone.

Subsystems log with ordinary ``log.info("...", extra={"mission_id": ..., "phase": ...})``; the
``extra`` fields become data rather than prose, so a log shipper can filter on them:

- ``text``: ``2025-10-01T12:00:00.123Z INFO companion.mission: entered cruise mission_id=m1``
- ``json``: one object per line, ``{"time": ..., "level": ..., "logger": ..., "message": ...,
  "mission_id": "m1", ...}``, the shape journald/Loki/Vector ingest without parsing rules.

Times are UTC with milliseconds: the drone crosses no time zones, but its logs are read next to
ground-station and server logs that do.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_installed: list[logging.Handler] = []


def _utc(record: logging.LogRecord) -> str:
    stamp = datetime.fromtimestamp(record.created, tz=timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a call passed with ``extra=``, in the order given."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `extra` fields sit beside the standard ones.

    An extra field named like a standard one (``time``, ``level``, ``logger``, ``message``) is
    kept under its name with a trailing underscore, so it can never overwrite them.
    """

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "time": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            obj[f"{key}_" if key in obj else key] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        return json.dumps(obj, default=str, ensure_ascii=False)


def _text_value(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '="' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...``; values with spaces are quoted."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record)} {record.levelname} {record.name}: {record.getMessage()}"
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in extra_fields(record).items())
        if pairs:
            line = f"{line} {pairs}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


def setup_logging(
    level: str = "INFO",
    fmt: str = "text",
    file: Path | str | None = None,
    *,
    stream: TextIO | None = None,
) -> None:
    """Send the root logger to `stream` (stderr by default) and, if given, append to `file`.

    Calling it again replaces the handlers it installed before (and only those), so the CLI
    can set up early defaults and reconfigure once the config file is read.
    """
    level_name = level.upper()
    if level_name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if file is not None:
        path = Path(file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(path, encoding="utf-8"))
        except OSError as exc:
            raise OSError(f"cannot open log file {path}: {exc.strerror or exc}") from exc
    root = logging.getLogger()
    for old in _installed:
        root.removeHandler(old)
        old.close()
    _installed.clear()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
        _installed.append(handler)
    root.setLevel(level_name)
    logging.captureWarnings(True)
