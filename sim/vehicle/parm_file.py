"""ArduPilot parameter files (.parm), and the ones SkyCourier ships for its flight controller.

The built-in vehicle flies the same parameter set a SkyCourier drone and SITL fly, read as
data from firmware_bridge/autopilot/params (a path, not an import: the emulated device shares
no code with the bridge). The format is ArduPilot's (AP_Param::parse_param_line): one
parameter a line, `NAME VALUE` or `NAME,VALUE` (spaces, tabs, `,` or `=` between), `#` starts
a comment, blank lines are skipped. ArduPilot skips lines it cannot read and names it does not
know; here both are errors that name the file and line, so a typo in a shipped file cannot
silently leave a safety limit at its default.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

PARAMS_DIR = Path(__file__).resolve().parents[2] / "firmware_bridge" / "autopilot" / "params"
#: What a SkyCourier flight controller on SITL's quad is loaded with, in order.
SHIPPED_PARAM_FILES: tuple[Path, ...] = (
    PARAMS_DIR / "delivery-copter.parm",
    PARAMS_DIR / "airframes" / "sitl-copter.parm",
)
_SEPARATORS = re.compile(r"[,= \t]+")
_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,15}")  # AP_MAX_NAME_SIZE 16


class ParmFileError(ValueError):
    """A parameter file could not be read; the message names the file and line."""


def read_parm_file(path: Path | str) -> list[tuple[str, float, int]]:
    """(name, value, line number) for every parameter in `path`, in file order."""
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
        if not math.isfinite(value):
            raise ParmFileError(f"{path}:{number}: {fields[0]} has no numeric value: {fields[1]!r}")
        entries.append((fields[0], value, number))
    return entries
