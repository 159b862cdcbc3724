"""Pushing SkyCourier's parameter files to a flight controller and proving they took.

The files are the ones shipped in `autopilot/params/` (delivery-copter.parm, then one airframe
overlay from airframes/), the same the built-in vehicle and SITL load. The format is
ArduPilot's (AP_Param::parse_param_line): `NAME VALUE` (spaces, tabs, `,` or `=` between),
`#` starts a comment. ArduPilot skips lines it cannot read; here they are errors naming the
file and line, so a typo cannot silently leave a safety limit at its default. (The built-in
vehicle reads the same files with its own reader: the emulator shares no code with the
bridge it tests.)

Each parameter is read, set with PARAM_SET when it differs, and read again on its own.
ArduPilot stores REAL32 parameters as float32 and integer ones as integers (the float it is
sent converted to the type, `AP_Param::set_value`), so "equal" is float32 equality of the
value read back and the value in the file: 0.1 in a file is 0.1 as a float32, and 5.5 for
an integer parameter is stored as 5 and reported as mismatched.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from firmware_bridge.errors import BridgeError, ParamError
from firmware_bridge.vehicle import Vehicle

PARAMS_DIR = Path(__file__).resolve().parent / "autopilot" / "params"
BASE_FILE = PARAMS_DIR / "delivery-copter.parm"
AIRFRAMES_DIR = PARAMS_DIR / "airframes"

_SEPARATORS = re.compile(r"[,= \t]+")
_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,15}")  # AP_MAX_NAME_SIZE 16

#: Parameters ArduPilot reads only at boot (@RebootRequired, or AP_PARAM_FLAG_ENABLE on a
#: group's enable): setting them changes nothing until the flight controller restarts.
REBOOT_REQUIRED = re.compile(
    r"OA_TYPE|GRIP_ENABLE|GRIP_TYPE|SCR_ENABLE|BATT\d?_MONITOR|SERIAL\d_(PROTOCOL|BAUD)"
)

#: Outcomes, in the order the report lists them.
SET, UNCHANGED, REFUSED, MISMATCHED = "set", "unchanged", "refused", "mismatched"


class ParmFileError(ValueError):
    """A parameter file could not be read; the message names the file and line."""


@dataclass(frozen=True)
class ParmEntry:
    """One parameter wanted: its value and where it came from (file:line)."""

    name: str
    value: float
    source: str


@dataclass(frozen=True)
class ParamOutcome:
    """What happened to one parameter: `status` is SET, UNCHANGED, REFUSED or MISMATCHED;
    `before`/`after` are the flight controller's values (None when it gave none)."""

    entry: ParmEntry
    status: str
    before: float | None
    after: float | None
    reason: str = ""


def read_parm_file(path: Path | str) -> list[ParmEntry]:
    """Every parameter in `path`, in file order; ParmFileError names the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ParmFileError(f"{path}: cannot read parameter file: {exc}") from exc
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = _SEPARATORS.split(line)
        if len(fields) != 2 or not _NAME.fullmatch(fields[0]):
            raise ParmFileError(f"{path}:{number}: expected 'NAME VALUE', got {raw.strip()!r}")
        try:
            value = float(fields[1])
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or abs(value) > 3.4028234663852886e38:
            raise ParmFileError(f"{path}:{number}: {fields[0]} has no float32 value: {fields[1]!r}")
        entries.append(ParmEntry(fields[0], value, f"{path.name}:{number}"))
    return entries


def airframes() -> list[str]:
    """The names of the shipped airframe overlays."""
    return sorted(p.stem for p in AIRFRAMES_DIR.glob("*.parm"))


def shipped_files(airframe: str | None) -> list[Path]:
    """delivery-copter.parm and, when named, the airframe's overlay; ParmFileError for an
    airframe that is not shipped (listing those that are)."""
    files = [BASE_FILE]
    if airframe is not None:
        if airframe not in airframes():
            known = ", ".join(airframes())
            raise ParmFileError(f"unknown airframe {airframe!r} (shipped: {known})")
        files.append(AIRFRAMES_DIR / f"{airframe}.parm")
    return files


def merged(files: list[Path]) -> list[ParmEntry]:
    """The parameters of `files` loaded in order: a later file's value replaces an earlier
    one (an overlay), at the place the name first appeared."""
    out: dict[str, ParmEntry] = {}
    for path in files:
        for entry in read_parm_file(path):
            out[entry.name] = entry
    return list(out.values())


def float32(value: float) -> float:
    """`value` as a float32, the way ArduPilot keeps a parameter."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def apply_params(vehicle: Vehicle, entries: list[ParmEntry]) -> list[ParamOutcome]:
    """Set every entry that differs and read every one back (see module doc). Never raises
    for one parameter: each outcome says what happened to it."""
    return [_apply_one(vehicle, entry) for entry in entries]


def _apply_one(vehicle: Vehicle, entry: ParmEntry) -> ParamOutcome:
    wanted = float32(entry.value)
    try:
        before = vehicle.get_param(entry.name)
    except BridgeError as exc:
        return ParamOutcome(entry, REFUSED, None, None, str(exc))
    if float32(before) == wanted:
        return ParamOutcome(entry, UNCHANGED, before, before)
    refusal = ""
    try:
        vehicle.set_param(entry.name, entry.value)
    except ParamError as exc:
        refusal = str(exc)  # the autopilot kept another value: read what it holds
    except BridgeError as exc:
        return ParamOutcome(entry, REFUSED, before, None, str(exc))
    try:
        after = vehicle.get_param(entry.name)
    except BridgeError as exc:
        return ParamOutcome(entry, MISMATCHED, before, None, f"not read back: {exc}")
    if float32(after) != wanted:
        reason = refusal or f"read back {after:g}"
        return ParamOutcome(entry, MISMATCHED, before, after, reason)
    return ParamOutcome(entry, SET, before, after)


def format_table(outcomes: list[ParamOutcome]) -> str:
    """The report: one row per parameter, then a count per outcome."""
    rows = [("PARAMETER", "FILE", "WANTED", "BEFORE", "AFTER", "STATUS", "REASON")]
    for o in outcomes:
        rows.append(
            (
                o.entry.name,
                o.entry.source,
                f"{o.entry.value:g}",
                "-" if o.before is None else f"{o.before:g}",
                "-" if o.after is None else f"{o.after:g}",
                o.status,
                o.reason,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:6], widths, strict=True)) + "  " + r[6]
        for r in rows
    ]
    counts = ", ".join(
        f"{sum(o.status == s for o in outcomes)} {s}" for s in (SET, UNCHANGED, REFUSED, MISMATCHED)
    )
    table = "\n".join(line.rstrip() for line in lines) + f"\n{counts}"
    reboot = reboot_needed(outcomes)
    if reboot:
        table += (
            f"\nreboot the flight controller: {', '.join(reboot)} take effect only after a "
            "restart (ArduPilot reads them at boot)"
        )
    return table


def reboot_needed(outcomes: list[ParamOutcome]) -> list[str]:
    """The parameters just set that ArduPilot applies only after a reboot."""
    names = [o.entry.name for o in outcomes if o.status == SET]
    return [name for name in names if REBOOT_REQUIRED.fullmatch(name)]
