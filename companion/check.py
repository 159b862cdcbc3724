"""`skycourier check`: open each configured device, identify it, and say what to fix.

Operators wire a flight controller, a NEO-6M, an A7670, a camera and the models to a Pi or a
Jetson; when something is off (a port that moved, a missing group, a wrong baud rate, a model
never built, a parameter the autopilot lacks) the daemon only finds out when it needs the
part. This command asks every part up front and prints one row per check: the device, what
was checked, pass / FAIL / skip / info, what was seen, and for each failure the exact fix
(the command to run, or the configuration line to change).

Each device's checks run in their own thread, one device after another, bounded by that
device's time limit: a device that stops answering halfway becomes a failing row naming it,
never a hung command. The checks live in `check_serial` (GPS and modem), `check_fc` (the
flight controller) and `check_vision` (camera and models).

Exit status: 0 when every row that was not skipped passes (info rows never fail), 1
otherwise; a configuration that does not load is reported by `skycourier` itself (status 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, TextIO

from companion.config import Config, load_config

log = logging.getLogger(__name__)

Status = Literal["pass", "fail", "skip", "info"]

#: Wall-clock limits of each device's checks, beyond which it counts as not answering. The
#: GPS probe samples five rates for at most 1.2 s each and polls twice; the modem's AT
#: search and questions are each bounded by their command timeouts; loading the models
#: takes seconds on a CPU (a Jetson's first TensorRT engine build takes minutes).
GPS_LIMIT_S = 20.0
MODEM_LIMIT_S = 45.0
CAMERA_LIMIT_S = 20.0
MODELS_LIMIT_S = 120.0
MODELS_TENSORRT_LIMIT_S = 900.0
#: Beyond the configured connect timeout: the version request, the parameter download
#: (ArduCopter has ~1000 parameters; over a 57600 baud link that takes ~10 s) and telemetry.
FC_EXTRA_S = 90.0


@dataclass(frozen=True)
class CheckRow:
    """One check's outcome: which `device`, what was `check`ed, its `status`, what was seen
    (`detail`) and, for a failure, the `fix`: a command to run or a line to change."""

    device: str
    check: str
    status: Status
    detail: str
    fix: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


#: A device's checks: the configuration and where it came from (for fixes) -> rows.
DeviceCheck = Callable[[Config, str], list[CheckRow]]


def device_checks(config: Config) -> list[tuple[str, DeviceCheck, float]]:
    """(device, its checks, their time limit) for every device, in the order printed."""
    from companion.check_fc import check_flight_controller
    from companion.check_serial import check_gps, check_modem
    from companion.check_vision import check_camera, check_models, models_need_tensorrt

    models_limit = MODELS_TENSORRT_LIMIT_S if models_need_tensorrt() else MODELS_LIMIT_S
    return [
        ("gps", check_gps, GPS_LIMIT_S),
        ("modem", check_modem, MODEM_LIMIT_S),
        (
            "flight controller",
            check_flight_controller,
            config.vehicle.connect_timeout_s + FC_EXTRA_S,
        ),
        ("camera", check_camera, CAMERA_LIMIT_S),
        ("models", check_models, models_limit),
    ]


def run_checks(
    config: Config,
    where: str = "the configuration",
    checks: Sequence[tuple[str, DeviceCheck, float]] | None = None,
) -> list[CheckRow]:
    """Every device's rows, in `device_checks` order. One device at a time (loading the
    models would otherwise starve the serial probes' timing), each in its own daemon
    thread: one that overruns its limit becomes one failing row and is left behind (the
    process ends with the command)."""
    rows: list[CheckRow] = []
    for device, check, limit in device_checks(config) if checks is None else checks:
        rows += _bounded(device, check, limit, config, where)
    return rows


def _bounded(
    device: str, check: DeviceCheck, limit: float, config: Config, where: str
) -> list[CheckRow]:
    found: list[list[CheckRow]] = []

    def run() -> None:
        try:
            found.append(check(config, where))
        except Exception as exc:  # one device's bug must not hide the others' results
            log.exception("checking the %s failed", device)
            found.append(
                [
                    CheckRow(
                        device,
                        "check",
                        "fail",
                        f"the check itself failed: {type(exc).__name__}: {exc}",
                        "this is a bug in skycourier check: report it with this output",
                    )
                ]
            )

    thread = threading.Thread(target=run, name=f"check {device}", daemon=True)
    thread.start()
    thread.join(limit)
    if found:
        return found[0]
    return [
        CheckRow(
            device,
            "answer",
            "fail",
            f"no result within {limit:g} s: the {device} stopped answering mid-check",
            f"check the {device}'s power and connection, then run skycourier check again",
        )
    ]


def exit_status(rows: Sequence[CheckRow]) -> int:
    """0 when no row failed, else 1."""
    return 1 if any(row.failed for row in rows) else 0


_SHOWN = {"pass": "pass", "fail": "FAIL", "skip": "skip", "info": "info"}


def format_table(rows: Sequence[CheckRow]) -> str:
    """The rows as a table for people; each failure's fix on the line below it."""
    header = ("DEVICE", "CHECK", "RESULT", "DETAIL")
    cells = [(r.device, r.check, _SHOWN[r.status], r.detail) for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(3)]
    lines = []
    for row, cell in zip([None, *rows], [header, *cells], strict=True):
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(cell[:3], widths, strict=True)) + "  " + cell[3]
        )
        if row is not None and row.fix:
            lines.append(" " * (widths[0] + 2) + f"fix: {row.fix}")
    failed = sum(row.failed for row in rows)
    skipped = sum(row.status == "skip" for row in rows)
    summary = f"{failed} check(s) failed" if failed else "every check passed"
    lines += ["", summary + (f", {skipped} skipped" if skipped else "")]
    return "\n".join(lines)


def run_check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`skycourier check`: run every check, print the table (or JSON), return the status."""
    out = out or sys.stdout
    config = load_config(args.config)
    where = str(args.config) if args.config is not None else "the configuration (--config FILE)"
    rows = run_checks(config, where)
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2), file=out)
    else:
        print(format_table(rows), file=out)
    return exit_status(rows)
