"""`skycourier sim --orders`: a multi-drop job planned around a no-fly zone and flown, sortie by
sortie, with the airspace limits uploaded before arming; and jobs refused before take-off."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from shapely.geometry import LineString, Polygon

from companion.cli import main
from companion.routing.frame import LocalFrame
from companion.routing.orders import load_orders
from tests.conftest import SITL_SKIP, sitl_binary

EXAMPLE = Path(__file__).resolve().parents[1] / "sim" / "examples" / "two-drops.geojson"


def _zone_xy(path: Path) -> tuple[LocalFrame, Polygon]:
    job = load_orders(path)
    assert job.depot is not None
    frame = LocalFrame(*job.depot)
    (zone,) = job.airspace.zones
    return frame, frame.project(zone.footprint)


def _check_job(out: Path, max_energy_error: float) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert report["delivered"] is True
    (planned,) = report["plan"]["sorties"]
    assert planned["drops"] == ["B-102", "A-101"]  # one sortie, both drops
    (sortie,) = report["sorties"]
    assert sortie["outcome"] == "delivered"
    assert [d["order_id"] for d in sortie["drops"]] == ["B-102", "A-101"]
    for drop in sortie["drops"]:
        assert drop["released"] and drop["error_m"] < 2.5
    assert sortie["unplanned_releases"] == []
    assert abs(sortie["energy_error"]) < max_energy_error
    assert (out / "plan.png").stat().st_size > 10_000
    assert (out / "sortie-1" / "flight.png").is_file()
    return report


def test_a_two_drop_job_flies_around_the_zone_with_the_limits_uploaded(tmp_path: Path, capsys):
    out = tmp_path / "job"
    code = main(["sim", "--orders", str(EXAMPLE), "--out", str(out), "--quiet", "--speedup", "25"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "1 of 1 sorties flown; delivered: True" in printed
    _check_job(out, max_energy_error=0.10)
    sortie = json.loads((out / "sortie-1" / "report.json").read_text())
    # The flown track keeps clear of the school at every sample the vehicle reported.
    frame, zone = _zone_xy(EXAMPLE)
    assert sortie["outcome"] == "delivered"
    with sqlite3.connect(out / "sortie-1" / "journal.db") as db:
        events = [row[0] for row in db.execute("select event from events order by seq")]
        uploaded = db.execute(
            "select detail from events where event = 'limits-uploaded'"
        ).fetchone()
    assert events.index("limits-uploaded") < events.index("ready")
    assert json.loads(uploaded[0])["exclusion_polygons"] == 1
    assert events.count("released") == 2
    # The planned route itself clears the zone by the planner's 20 m margin.
    waypoints = json.loads((out / "report.json").read_text())["plan"]["sorties"][0]["waypoints"]
    route = LineString([frame.to_xy(lat, lon) for lat, lon in waypoints])
    assert zone.distance(route) > 19.9


def _write(tmp_path: Path, drop_xy: tuple[float, float]) -> Path:
    doc = json.loads(EXAMPLE.read_text())
    frame = LocalFrame(*load_orders(EXAMPLE).depot)  # type: ignore[misc]
    lat, lon = frame.to_latlon(*drop_xy)
    for feature in doc["features"]:
        if feature["properties"].get("order_id") == "A-101":
            feature["geometry"]["coordinates"] = [lon, lat]
    path = tmp_path / "orders.geojson"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("drop_xy", "reason"),
    [
        ((130, 170), "drop 'A-101'"),  # inside the school
        ((650, 650), "drop 'A-101'"),  # in the operating area's margin
    ],
)
def test_a_job_that_cannot_be_flown_is_refused_before_take_off(
    tmp_path: Path, capsys, drop_xy: tuple[float, float], reason: str
) -> None:
    out = tmp_path / "job"
    code = main(["sim", "--orders", str(_write(tmp_path, drop_xy)), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "refused before take-off" in err and reason in err
    assert not (out / "sortie-1").exists()


def test_an_order_beyond_the_battery_is_refused_naming_it(tmp_path: Path, capsys) -> None:
    """A drop 4 km out, inside a wider operating area: the round trip does not fit the
    3300 mAh pack above its reserve."""
    doc = json.loads(EXAMPLE.read_text())
    frame = LocalFrame(*load_orders(EXAMPLE).depot)  # type: ignore[misc]
    corners = [(-5000, -5000), (5000, -5000), (5000, 5000), (-5000, 5000), (-5000, -5000)]
    for feature in doc["features"]:
        if feature["properties"].get("role") == "operating-area":
            ring = [list(reversed(frame.to_latlon(x, y))) for x, y in corners]
            feature["geometry"]["coordinates"] = [ring]
        if feature["properties"].get("order_id") == "A-101":
            lat, lon = frame.to_latlon(0, 4000)
            feature["geometry"]["coordinates"] = [lon, lat]
    path = tmp_path / "far.geojson"
    path.write_text(json.dumps(doc))
    code = main(["sim", "--orders", str(path), "--out", str(tmp_path / "job")])
    err = capsys.readouterr().err
    assert code == 2
    assert "drop 'A-101'" in err and "battery" in err


@pytest.mark.sitl
def test_the_two_drop_job_on_sitl_matches_the_energy_model(tmp_path: Path, capsys) -> None:
    binary = sitl_binary()
    if binary is None:
        pytest.skip(SITL_SKIP)
    out = tmp_path / "job"
    code = main(["sim", "--orders", str(EXAMPLE), "--sitl", str(binary), "--out", str(out),
                 "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    report = _check_job(out, max_energy_error=0.10)
    assert report["autopilot"] == "ArduCopter SITL"
