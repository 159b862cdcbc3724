"""TSPLIB reader for symmetric EUC_2D instances, so the planner can be measured against
instances with proven optima (Reinelt, "TSPLIB 95", sections 1.1 and 2.1).

Only what the planner's benchmark needs is accepted: `TYPE: TSP`, `EDGE_WEIGHT_TYPE: EUC_2D`
and a `NODE_COORD_SECTION`. Everything else is refused with a `TsplibError` that names the
source and the line, never guessed at: a file is outside input like any other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Largest instance read. The planner builds a full distance matrix, so 10 000 cities is
#: already 10^8 entries; anything larger is refused before memory is spent on it.
MAX_DIMENSION = 10_000
#: Largest file read, in bytes (a 10 000-city EUC_2D file is well under 1 MiB).
MAX_BYTES = 8 * 1024 * 1024
#: Coordinates beyond this magnitude are refused: their squared differences would lose the
#: integer precision that TSPLIB's rounding relies on.
MAX_COORD = 1e12

#: Specification keywords accepted with any value (they do not change an EUC_2D tour).
_INFORMATIONAL = {"NAME", "COMMENT"}
#: Keywords whose value must be exactly the one given (TSPLIB 95, section 1.1).
_REQUIRED_VALUES = {
    "TYPE": {"TSP"},
    "EDGE_WEIGHT_TYPE": {"EUC_2D"},
    "NODE_COORD_TYPE": {"TWOD_COORDS"},
    "DISPLAY_DATA_TYPE": {"COORD_DISPLAY", "NO_DISPLAY"},
}


_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_WHOLE = re.compile(r"\d{1,9}", re.ASCII)


class TsplibError(ValueError):
    """A TSPLIB file that cannot be read as an EUC_2D instance; the message names the source,
    the line (1-based) and the reason."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class TsplibInstance:
    """A Euclidean instance: city i of the file (1-based) is `coords[i - 1]`."""

    name: str
    coords: tuple[tuple[float, float], ...]
    comment: str = ""

    @property
    def dimension(self) -> int:
        return len(self.coords)

    def distance_matrix(self) -> list[list[int]]:
        """TSPLIB's EUC_2D distances: nint of the Euclidean distance (section 2.1)."""
        return euc_2d_matrix(self.coords)


def nint(value: float) -> int:
    """TSPLIB's nint: round half up, `(int)(x + 0.5)` in the reference C code (distances are
    never negative, so this is the same as rounding half away from zero)."""
    return int(value + 0.5)


def euc_2d_matrix(coords: Sequence[tuple[float, float]]) -> list[list[int]]:
    """The full EUC_2D distance matrix of `coords`."""
    return [[nint(math.hypot(xi - xj, yi - yj)) for (xj, yj) in coords] for (xi, yi) in coords]


def tour_length(matrix: Sequence[Sequence[float]], tour: Sequence[int]) -> float:
    """Length of the closed tour visiting `tour` (0-based city indices) in order."""
    return sum(matrix[tour[k - 1]][tour[k]] for k in range(len(tour)))


def read_tsplib(path: Path | str) -> TsplibInstance:
    """Read a TSPLIB file; a file that is missing, too large or not text is a TsplibError."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise TsplibError(str(path), None, f"cannot read: {exc.strerror or exc}") from exc
    if len(data) > MAX_BYTES:
        raise TsplibError(str(path), None, f"larger than {MAX_BYTES} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TsplibError(str(path), line, "not ASCII text") from exc
    return parse_tsplib(text, str(path))


def parse_tsplib(text: str, source: str = "<tsplib>") -> TsplibInstance:
    """Parse the text of a TSPLIB EUC_2D file (see the module docstring for what is read)."""
    lines = text.splitlines()
    header: dict[str, str] = {}
    number = 0
    section_line = None
    while number < len(lines):
        raw = lines[number]
        number += 1
        line = raw.strip()
        if not line:
            continue
        if line == "EOF":
            break
        if line.startswith("NODE_COORD_SECTION"):
            if line.rstrip(":").strip() != "NODE_COORD_SECTION":
                raise TsplibError(source, number, "unexpected text after NODE_COORD_SECTION")
            section_line = number
            break
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep:
            raise TsplibError(source, number, f"expected 'KEYWORD: value', got {_show(line)}")
        if key in header:
            raise TsplibError(source, number, f"{key} given twice")
        if key in _REQUIRED_VALUES:
            if value not in _REQUIRED_VALUES[key]:
                allowed = " or ".join(sorted(_REQUIRED_VALUES[key]))
                raise TsplibError(source, number, f"{key} {_show(value)} not supported ({allowed})")
        elif key not in _INFORMATIONAL and key != "DIMENSION":
            raise TsplibError(source, number, f"keyword {_show(key)} not supported")
        header[key] = value
        if key == "DIMENSION":
            _dimension(value, source, number)
    for key in ("TYPE", "EDGE_WEIGHT_TYPE", "DIMENSION"):
        if key not in header:
            raise TsplibError(
                source, section_line or max(number, 1), f"{key} missing before the cities"
            )
    if section_line is None:
        raise TsplibError(source, max(number, 1), "NODE_COORD_SECTION missing")
    dimension = _dimension(header["DIMENSION"], source, None)
    coords: list[tuple[float, float] | None] = [None] * dimension
    seen = 0
    while number < len(lines) and seen < dimension:
        raw = lines[number]
        number += 1
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        if line == "EOF" or len(fields) != 3:
            raise TsplibError(
                source,
                number,
                f"expected 'index x y' for city {seen + 1} of {dimension}, got {_show(line)}",
            )
        index = _index(fields[0], dimension, source, number)
        if coords[index - 1] is not None:
            raise TsplibError(source, number, f"city {index} given twice")
        coords[index - 1] = (
            _coord(fields[1], "x", source, number),
            _coord(fields[2], "y", source, number),
        )
        seen += 1
    if seen < dimension:
        raise TsplibError(source, number, f"only {seen} of {dimension} cities before end of file")
    for raw in lines[number:]:
        number += 1
        line = raw.strip()
        if line and line != "EOF":
            raise TsplibError(source, number, f"unexpected text after the cities: {_show(line)}")
    return TsplibInstance(
        name=header.get("NAME", ""),
        coords=tuple(c for c in coords if c is not None),
        comment=header.get("COMMENT", ""),
    )


def _dimension(value: str, source: str, line: int | None) -> int:
    if not _WHOLE.fullmatch(value):
        raise TsplibError(source, line, f"DIMENSION {_show(value)} is not a whole number")
    dimension = int(value)
    if not 2 <= dimension <= MAX_DIMENSION:
        raise TsplibError(source, line, f"DIMENSION {dimension} outside 2..{MAX_DIMENSION}")
    return dimension


def _index(text: str, dimension: int, source: str, line: int) -> int:
    if not _WHOLE.fullmatch(text) or not 1 <= int(text) <= dimension:
        raise TsplibError(source, line, f"city index {_show(text)} outside 1..{dimension}")
    return int(text)


def _coord(text: str, axis: str, source: str, line: int) -> float:
    if not _NUMBER.fullmatch(text):
        raise TsplibError(source, line, f"{axis} {_show(text)} is not a number")
    value = float(text)
    if not math.isfinite(value) or abs(value) > MAX_COORD:
        raise TsplibError(source, line, f"{axis} {_show(text)} is not a finite coordinate")
    return value


def _show(text: str, limit: int = 40) -> str:
    """Quote outside text for a message, cut short so a hostile line cannot flood a log."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
