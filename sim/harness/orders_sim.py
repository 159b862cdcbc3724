"""`skycourier sim --orders ORDERS.geojson`: plan a multi-drop job and fly every sortie.

The orders file is planned exactly as `skycourier plan` plans it (`plan_deliveries`: the
airspace's zones, the battery, the regulatory profile); a refused job flies nothing. Each
sortie is then flown as its own simulated flight from the depot (`run_simulation` with the
sortie's mission: its transits around the zones, its drops, the airspace limits its
preflight uploads and reads back, its energy price checked against the battery). A fresh
autopilot per sortie is the battery swap between sorties: the pack is full again, and the
fence and rally points are uploaded again, as on the real drone after a swap.

Written to `out_dir`: `report.json` (the plan's report, and per sortie the outcome, each
drop with where the parcel left the drone and how far that is from the order's point, and
the charge predicted against the charge the autopilot counted), `plan.png` (zones, planned
routes and the flown tracks dashed over them) and one folder per sortie with that flight's
own report, plot and journal. The job stops at the first sortie that does not deliver.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from companion.bus import Bus
from companion.config import Config
from companion.geo import distance_m
from companion.routing.delivery import DeliveryPlan, DeliverySortie, plan_deliveries
from companion.routing.energy import Airframe, Wind, legs_from_mission
from companion.routing.orders import OrderFile, load_orders
from firmware_bridge.state import VehicleState
from sim.harness.simulate import Order, OrderError, run_simulation

log = logging.getLogger(__name__)

#: A flown track keeps a point every this many metres (enough for the map).
TRACK_STEP_M = 3.0
#: What both simulated autopilots carry: one 1 kg load in the gripper from take-off until
#: the first release, whatever the orders weigh (ArduPilot SITL's SIM_Gripper_Servo
#: load_mass; the built-in vehicle's battery model matches it). The charge each sortie is
#: compared with is priced for that load, so the comparison is like for like.
SIM_PARCEL_KG = 1.0


class TrackLog:
    """The (lat, lon) track of one flight, thinned to a point every `TRACK_STEP_M`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.points: list[tuple[float, float]] = []

    def attach(self, bus: Bus) -> None:
        bus.subscribe(VehicleState, self._on_state)

    def _on_state(self, state: VehicleState) -> None:
        if state.position is None or not state.armed:
            return
        p = (state.position.lat, state.position.lon)
        with self._lock:
            if not self.points or distance_m(*self.points[-1], *p) >= TRACK_STEP_M:
                self.points.append(p)


def plan_orders(config: Config, job: OrderFile, airframe: Airframe, profile: str) -> DeliveryPlan:
    """The job planned as `skycourier plan` plans it, in the simulator's wind."""
    if job.depot is None:
        raise OrderError('no depot: add a Point feature with properties {"depot": true}')
    sim = config.sim
    wind = Wind(sim.wind_speed_mps, sim.wind_from_deg if sim.wind_speed_mps > 0 else None)
    return plan_deliveries(
        job.airspace,
        job.orders,
        job.depot,
        airframe,
        profile=profile,
        flight=config.flight,
        wind=wind,
    )


def fly_orders(
    config: Config,
    orders_path: Path,
    out_dir: Path,
    *,
    airframe: Airframe,
    profile: str = "easa-open",
    **run: object,
) -> dict:
    """Plan `orders_path` and fly its sorties in turn (`run` goes to each `run_simulation`);
    write and return the job's report. Raises `DeliveryRefused` (nothing flown) when the
    job cannot be planned, `AirspaceError` for a file that cannot be read."""
    job = load_orders(orders_path)
    plan = plan_orders(config, job, airframe, profile)
    assert job.depot is not None
    config = config.updated(
        "the orders file's depot", sim={"home_lat": job.depot[0], "home_lon": job.depot[1]}
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    by_id = {o.order_id: o for o in job.orders}
    flown: list[dict] = []
    tracks: list[list[tuple[float, float]]] = []
    for k, sortie in enumerate(plan.sorties, 1):
        log.info("sortie %d of %d: %s", k, len(plan.sorties), sortie.mission.mission_id)
        track = TrackLog()
        first = sortie.orders[0]
        report = run_simulation(
            config,
            Order(sortie.mission.mission_id, first.lat, first.lon),
            out_dir / f"sortie-{k}",
            mission=sortie.mission,
            observe=track.attach,
            recipient="none",
            camera=False,
            **run,
        )
        tracks.append(track.points)
        flown.append(_sortie_result(plan, sortie, report, by_id))
        if not report.get("delivered"):
            break
    result = {
        "orders": str(orders_path),
        "autopilot": flown[0]["autopilot"] if flown else None,
        "delivered": len(flown) == len(plan.sorties) and all(s["delivered"] for s in flown),
        "plan": plan.report(),
        "sorties": flown,
    }
    _write_json(out_dir / "report.json", result)
    from companion.routing.plan_map import plot_plan  # matplotlib only when a map is drawn

    plot_plan(out_dir / "plan.png", plan, job.airspace, flown=tracks)
    return result


def _sortie_result(plan: DeliveryPlan, sortie: DeliverySortie, report: dict, by_id: dict) -> dict:
    """One sortie's outcome: each planned drop, where its parcel left the drone, and the
    charge predicted against the charge counted (`energy_error` on the charge priced for
    what the simulator carried, `SIM_PARCEL_KG`)."""
    released = {d["drop"]: d for d in report.get("drops", [])}
    drops = []
    for o in sortie.orders:
        r = released.get(o.order_id)
        entry: dict = {"order_id": o.order_id, "released": r is not None}
        if r is not None and r["lat"] is not None:
            entry["boot_time_s"] = r["boot_time_s"]
            entry["error_m"] = round(distance_m(o.lat, o.lon, r["lat"], r["lon"]), 2)
            entry["alt_rel_m"] = r["alt_rel_m"]
        drops.append(entry)
    unplanned = [d for d in released if d not in by_id]
    predicted = sortie.energy.charge_mah
    carried = {o.order_id: 0.0 for o in sortie.orders}
    carried[sortie.orders[0].order_id] = SIM_PARCEL_KG
    as_flown = plan.model.plan(
        legs_from_mission(
            sortie.mission, plan.depot, carried, handover_extra_s=plan.handover_extra_s
        )
    ).charge_mah
    used = report.get("battery_used_mah")
    return {
        "mission_id": sortie.mission.mission_id,
        "autopilot": report.get("autopilot"),
        "outcome": report.get("outcome"),
        "delivered": bool(report.get("delivered")),
        "drops": drops,
        "unplanned_releases": unplanned,
        "distance_planned_m": round(sortie.distance_m, 1),
        "distance_flown_m": report.get("distance_m"),
        "duration_s": report.get("duration_s"),
        "predicted_mah": round(predicted, 1),
        "predicted_as_carried_mah": round(as_flown, 1),
        "used_mah": used,
        "energy_error": None if not used else round(as_flown / used - 1.0, 4),
    }


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
