"""`skycourier plan ORDERS.geojson`: plan a delivery job and print it (`--json` for
machines), optionally drawing its map. The file is an orders file
(`companion.routing.orders`): the airspace, the orders and the depot."""

from __future__ import annotations

import argparse
import json
import sys

from companion.config import ConfigError, load_config
from companion.routing.airspace import AirspaceError
from companion.routing.delivery import DeliveryPlan, DeliveryRefused, plan_deliveries
from companion.routing.energy import EnergyInputError, airframe
from companion.routing.orders import load_orders


def run_orders(args: argparse.Namespace) -> int:
    """Plan the orders file `args.orders`; 2 with the reasons on stderr when refused."""
    try:
        flight = load_config(args.config).flight
        job = load_orders(args.orders)
        if job.depot is None:
            raise AirspaceError(
                f'{args.orders}: no depot: add a Point feature with properties {{"depot": true}}'
            )
        plan = plan_deliveries(
            job.airspace,
            job.orders,
            job.depot,
            airframe(args.airframe),
            profile=args.profile,
            flight=flight,
            drones=args.drones,
            time_limit_s=args.time_limit,
        )
    except DeliveryRefused as err:
        print(f"skycourier plan: {args.orders}: refused before take-off:", file=sys.stderr)
        for reason in err.reasons:
            print(f"  {reason}", file=sys.stderr)
        return 2
    except (AirspaceError, EnergyInputError, ConfigError) as err:
        print(f"skycourier plan: {err}", file=sys.stderr)
        return 2
    if args.png:
        from companion.routing.plan_map import plot_plan

        try:
            plot_plan(args.png, plan, job.airspace)
        except OSError as err:
            print(
                f"skycourier plan: cannot write {args.png}: {err.strerror or err}", file=sys.stderr
            )
            return 2
    if args.json:
        print(json.dumps(plan.report()))
    else:
        print(_text(plan, str(args.orders)))
        if args.png:
            print(f"map: {args.png}")
    return 0


def _text(plan: DeliveryPlan, name: str) -> str:
    battery = plan.model.battery
    drops = sum(len(s.orders) for s in plan.sorties)
    lines = [
        f"{name}: {drops} drops in {len(plan.sorties)} sorties, {plan.distance_m / 1000:.2f} km; "
        f"{plan.model.frame.name}, {battery.capacity_mah:.0f} mAh with a "
        f"{battery.reserve_fraction:.0%} reserve; {plan.profile.name} ceiling "
        f"{plan.profile.ceiling_m:g} m; {plan.margin_m:g} m from every zone"
    ]
    for s in plan.sorties:
        e = s.energy
        lines.append(
            f"{s.mission.mission_id} ({s.drone}, departs at {s.start_s:.0f} s): "
            + " -> ".join(o.order_id for o in s.orders)
        )
        lines.append(
            f"  {s.distance_m:.0f} m, {e.time_s:.0f} s, {e.energy_wh:.1f} Wh, "
            f"{e.charge_mah:.0f} mAh; margin {e.margin_mah:.0f} mAh above the reserve, "
            f"{100 * e.remaining_fraction:.0f}% left at landing"
        )
    return "\n".join(lines)
