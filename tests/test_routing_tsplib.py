"""The TSPLIB reader: berlin52 as published, and hostile files refused with the line and the
reason (never another exception)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.routing.tsplib import (
    MAX_DIMENSION,
    TsplibError,
    euc_2d_matrix,
    nint,
    parse_tsplib,
    read_tsplib,
    tour_length,
)

BERLIN52 = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tsplib" / "berlin52.tsp"
GOOD = """NAME: tiny
TYPE: TSP
COMMENT: three cities
DIMENSION: 3
EDGE_WEIGHT_TYPE: EUC_2D
NODE_COORD_SECTION
1 0 0
2 3.0 4.0
3 0 8.5
EOF
"""


def test_berlin52_reads_as_published() -> None:
    if not BERLIN52.exists():
        pytest.skip(f"{BERLIN52} absent (the shared reference data is not checked out)")
    instance = read_tsplib(BERLIN52)
    assert instance.name == "berlin52"
    assert instance.dimension == 52
    assert instance.coords[0] == (565.0, 575.0)
    assert instance.coords[51] == (1740.0, 245.0)
    matrix = instance.distance_matrix()
    # nint(hypot(565 - 25, 575 - 185)) = nint(666.11...) = 666
    assert matrix[0][1] == 666
    assert all(matrix[i][j] == matrix[j][i] for i in range(52) for j in range(52))


def test_small_instance_and_euc_2d_rounding() -> None:
    instance = parse_tsplib(GOOD)
    assert instance.coords == ((0.0, 0.0), (3.0, 4.0), (0.0, 8.5))
    assert instance.comment == "three cities"
    matrix = instance.distance_matrix()
    assert matrix[0][1] == 5
    assert matrix[1][2] == nint(math.hypot(3.0, 4.5)) == 5  # 5.408 rounds down
    assert matrix[0][2] == 9  # 8.5 rounds half up, as TSPLIB's (int)(x + 0.5)
    assert tour_length(matrix, [0, 1, 2]) == 5 + 5 + 9


def test_cities_in_any_order_and_blank_lines() -> None:
    text = GOOD.replace("1 0 0\n2 3.0 4.0\n3 0 8.5\n", "3 0 8.5\n\n1 0 0\n  2   3.0 4.0  \n")
    assert parse_tsplib(text).coords == ((0.0, 0.0), (3.0, 4.0), (0.0, 8.5))


HOSTILE = [
    ("TYPE: ATSP", "TYPE: TSP", 2, "TYPE 'ATSP' not supported"),
    ("EDGE_WEIGHT_TYPE: GEO", "EDGE_WEIGHT_TYPE: EUC_2D", 5, "EDGE_WEIGHT_TYPE 'GEO'"),
    ("CAPACITY: 5", "COMMENT: three cities", 3, "keyword 'CAPACITY' not supported"),
    ("DIMENSION: three", "DIMENSION: 3", 4, "not a whole number"),
    ("DIMENSION: 1", "DIMENSION: 3", 4, "outside 2.."),
    (f"DIMENSION: {MAX_DIMENSION + 1}", "DIMENSION: 3", 4, "outside 2.."),
    ("NAME: a\nNAME: b", "NAME: tiny", 2, "NAME given twice"),
    ("just words", "COMMENT: three cities", 3, "expected 'KEYWORD: value'"),
    ("2 3.0", "2 3.0 4.0", 8, "expected 'index x y' for city 2"),
    ("2 3.0 4.0 5.0", "2 3.0 4.0", 8, "expected 'index x y'"),
    ("2 nan 4.0", "2 3.0 4.0", 8, "x 'nan' is not a number"),
    ("2 1e400 4.0", "2 3.0 4.0", 8, "not a finite coordinate"),
    ("2 3.0 4,0", "2 3.0 4.0", 8, "y '4,0' is not a number"),
    ("2 1_0 4.0", "2 3.0 4.0", 8, "x '1_0' is not a number"),
    ("1 3.0 4.0", "2 3.0 4.0", 8, "city 1 given twice"),
    ("4 3.0 4.0", "2 3.0 4.0", 8, "city index '4' outside 1..3"),
    ("0 3.0 4.0", "2 3.0 4.0", 8, "city index '0' outside 1..3"),
    ("2 3.0 4.0\nEOF", "2 3.0 4.0\n3 0 8.5", 9, "expected 'index x y' for city 3"),
    ("3 0 8.5\n4 1 1", "3 0 8.5", 10, "unexpected text after the cities"),
    ("NODE_COORD_SECTION extra", "NODE_COORD_SECTION", 6, "unexpected text after"),
]


@pytest.mark.parametrize(("bad", "good", "line", "reason"), HOSTILE)
def test_hostile_files_name_the_line(bad: str, good: str, line: int, reason: str) -> None:
    assert good in GOOD
    with pytest.raises(TsplibError) as caught:
        parse_tsplib(GOOD.replace(good, bad, 1), "orders.tsp")
    assert caught.value.line == line
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"orders.tsp:{line}: ")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "TYPE missing"),
        ("NAME: x\nTYPE: TSP\nEDGE_WEIGHT_TYPE: EUC_2D\nDIMENSION: 2\n", "NODE_COORD_SECTION"),
        ("TYPE: TSP\nDIMENSION: 2\nNODE_COORD_SECTION\n1 0 0\n2 1 1\n", "EDGE_WEIGHT_TYPE"),
        (GOOD.replace("3 0 8.5\nEOF\n", ""), "only 2 of 3 cities"),
    ],
)
def test_missing_parts(text: str, reason: str) -> None:
    with pytest.raises(TsplibError, match=reason):
        parse_tsplib(text)


def test_files_that_are_not_text_or_missing(tmp_path: Path) -> None:
    binary = tmp_path / "bin.tsp"
    binary.write_bytes(GOOD.encode() + b"\xff\xfe\n")
    with pytest.raises(TsplibError, match=r"bin.tsp:11: not ASCII text"):
        read_tsplib(binary)
    with pytest.raises(TsplibError, match="cannot read"):
        read_tsplib(tmp_path / "absent.tsp")
    superscript = GOOD.replace("DIMENSION: 3", "DIMENSION: ³")
    with pytest.raises(TsplibError, match="not a whole number"):
        parse_tsplib(superscript)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_is_an_instance_or_a_tsplib_error(text: str) -> None:
    try:
        parse_tsplib(text)
    except TsplibError as exc:
        assert exc.reason


LINES = st.sampled_from([*GOOD.splitlines(), "", "EOF", "2 1 1", "DIMENSION: 2", "1 -0 .5e1"])


@settings(max_examples=300, deadline=None)
@given(st.lists(LINES, max_size=14))
def test_shuffled_good_lines_never_crash(lines: list[str]) -> None:
    """Plausible lines in any order reach the deeper checks rather than the first one."""
    try:
        instance = parse_tsplib("\n".join(lines))
    except TsplibError as exc:
        assert exc.line is None or 1 <= exc.line <= max(1, len(lines) + 1)
    else:
        assert instance.dimension >= 2


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-1e6, 1e6, allow_nan=False), st.floats(-1e6, 1e6, allow_nan=False)),
        min_size=2,
        max_size=30,
    )
)
def test_written_instances_read_back(coords: list[tuple[float, float]]) -> None:
    body = "".join(f"{i} {x!r} {y!r}\n" for i, (x, y) in enumerate(coords, 1))
    text = (
        f"NAME: gen\nTYPE: TSP\nDIMENSION: {len(coords)}\nEDGE_WEIGHT_TYPE: EUC_2D\n"
        f"NODE_COORD_SECTION\n{body}EOF\n"
    )
    instance = parse_tsplib(text)
    assert instance.coords == tuple(coords)
    assert instance.distance_matrix() == euc_2d_matrix(coords)
