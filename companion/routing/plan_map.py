"""``MAP.png`` for `skycourier plan ORDERS.geojson`: the operating area, the no-fly zones and
each sortie's route with its drops numbered in flying order.

Drawn with matplotlib's object API on an Agg canvas, never pyplot (as `companion.flight_plot`):
headless, no global figure state. Coordinates are the plan's local frame (metres east and
north of the depot), so distances on the map are true.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from shapely.geometry.base import BaseGeometry

from companion.routing.airspace import Airspace
from companion.routing.delivery import DeliveryPlan
from companion.routing.frame import LocalFrame


def _outlines(geom: BaseGeometry) -> list[list[tuple[float, float]]]:
    """Every ring of a (multi)polygon, exterior and holes."""
    out = []
    for poly in getattr(geom, "geoms", [geom]):
        out.append(list(poly.exterior.coords))
        out.extend(list(r.coords) for r in poly.interiors)
    return out


def plot_plan(
    path: Path,
    plan: DeliveryPlan,
    airspace: Airspace,
    flown: Sequence[Sequence[tuple[float, float]]] = (),
) -> None:
    """Render the plan's map to `path` (PNG); `flown` adds each sortie's flown track
    ((lat, lon) points, in sortie order) as a dashed line over its planned route."""
    frame = LocalFrame(*plan.depot)
    fig = Figure(figsize=(9, 9), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for ring in _outlines(frame.project(airspace.area.footprint)):
        ax.plot(*zip(*ring, strict=True), color="0.3", linewidth=1.2)
    for zone in airspace.zones:
        geom = frame.project(zone.footprint)
        for poly in getattr(geom, "geoms", [geom]):
            ax.fill(*poly.exterior.xy, color="tab:red", alpha=0.35, linewidth=0)
            for hole in poly.interiors:
                ax.fill(*hole.xy, color="white", linewidth=0)
        label = zone.fid or f"zone {zone.index}"
        c = geom.representative_point()
        ax.annotate(label, (c.x, c.y), ha="center", fontsize=7, color="darkred")
    cmap = [f"C{k % 10}" for k in range(len(plan.sorties))]
    number = 0
    for k, sortie in enumerate(plan.sorties):
        pts = [frame.to_xy(*sortie.paths[0][0])]
        for arc in sortie.paths:
            pts.extend(frame.to_xy(*p) for p in arc[1:])
        label = (
            f"{sortie.mission.mission_id} ({sortie.drone}): "
            f"{sortie.distance_m / 1000:.2f} km, {sortie.energy.charge_mah:.0f} mAh"
        )
        ax.plot(*zip(*pts, strict=True), color=cmap[k], linewidth=1.3, label=label)
        if k < len(flown) and len(flown[k]) > 1:
            xy = [frame.to_xy(*p) for p in flown[k]]
            ax.plot(*zip(*xy, strict=True), color=cmap[k], linewidth=0.8, linestyle="--",
                    label=f"{sortie.mission.mission_id} flown")  # fmt: skip
        for o in sortie.orders:
            number += 1
            x, y = frame.to_xy(o.lat, o.lon)
            ax.plot([x], [y], "o", color=cmap[k], markersize=5)
            ax.annotate(str(number), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
    ax.plot([0], [0], "s", color="black", markersize=8, label="depot")
    ax.set_aspect("equal")
    ax.set_xlabel("east of the depot (m)")
    ax.set_ylabel("north of the depot (m)")
    ax.set_title(
        f"{len(plan.sorties)} sorties, {plan.distance_m / 1000:.2f} km, "
        f"{plan.model.frame.name}, {plan.profile.name}"
    )
    if plan.sorties:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, dpi=110)
