"""The simulator's commands for the `skycourier` CLI: `skycourier sim` (a whole delivery
against the built-in vehicle or ArduPilot SITL), `skycourier vehicle` (the built-in vehicle
on TCP for a ground station) and `skycourier hil` (the daemon as its own process against
emulated hardware).

They live on the simulator side and reach the CLI through the `skycourier.commands`
entry-point group (see `companion.cli`), so the on-board package never imports the
simulator; heavy imports happen inside the commands, not at registration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from companion.config import Config, load_config
from companion.mission.journal import JournalError
from firmware_bridge.errors import BridgeError

if TYPE_CHECKING:
    from sim.harness.sim_ground import SimGround
    from sim.harness.simulate import Order


def _sim(args: argparse.Namespace) -> int:
    from sim.harness.simulate import OrderError, load_order, order_from_config

    refused = _ground_options_refused(args)
    if refused:
        print(f"skycourier sim: {refused}", file=sys.stderr)
        return 2
    config = load_config(args.config)
    if args.speedup is not None:
        config = config.updated("command line", sim={"speedup": args.speedup})
    if args.distance is not None or args.bearing is not None:
        delivery = {"lat": None, "lon": None}
        if args.distance is not None:
            delivery["distance_m"] = args.distance
        if args.bearing is not None:
            delivery["bearing_deg"] = args.bearing
        config = config.updated("command line", delivery=delivery)
    try:
        order = load_order(args.order, config) if args.order else order_from_config(config)
    except OrderError as exc:
        print(f"skycourier sim: {exc}", file=sys.stderr)
        return 2
    broker = None
    if args.broker is not None:
        host, _, port = args.broker.rpartition(":")
        if not host or not port.isdigit():
            print(f"skycourier sim: --broker {args.broker!r}: expected HOST:PORT", file=sys.stderr)
            return 2
        broker = (host, int(port))
    drone = config.telemetry.drone_id

    def announce(host: str, port: int) -> None:
        if not args.quiet:
            print(
                f"telemetry: MQTT broker {host}:{port}; watch it with "
                f"`skycourier track --broker {host}:{port} --drone {drone}`",
                flush=True,
            )

    if args.orders is not None:
        return _sim_orders(args, config, broker, announce)
    _ensure_sim_model(args.quiet)
    with ExitStack() as stack:
        ground = None
        if args.ground:
            from sim.harness.sim_ground import SimGroundError, ground_broker, start_ground
            from sim.mqtt_broker import BrokerError

            try:
                broker = broker or ground_broker(stack)
                ground = start_ground(stack, args.out, broker, drone, args.ground_port, _say)
            except (SimGroundError, BrokerError) as exc:
                print(f"skycourier sim: {exc}", file=sys.stderr)
                return 2
            _say(
                f"ground: watch the flight live at {ground.dispatch_url} "
                f"(operator {ground.operator}, password {ground.password})"
            )
        code = _fly(args, config, order, broker, announce, ground)
        if ground is not None and code is not None:
            _after_flight(args, ground)
    return 1 if code is None else code


def _ground_options_refused(args: argparse.Namespace) -> str | None:
    """Why the `--ground` options cannot be used as given (None when they can): it watches
    one delivery, and needs the `ground` extra."""
    if not args.ground:
        if args.ground_port is not None or args.ground_exit:
            return "--ground-port and --ground-exit go with --ground"
        return None
    if args.orders is not None:
        return "--ground watches one delivery; it cannot be used with --orders"
    if args.ground_port is not None and not 0 < args.ground_port < 65536:
        return f"--ground-port {args.ground_port}: expected 1-65535"
    from sim.harness.sim_ground import SimGroundError, require_ground

    try:
        require_ground()
    except SimGroundError as exc:
        return str(exc)
    return None


def _say(line: str) -> None:
    print(line, flush=True)


def _fly(
    args: argparse.Namespace,
    config: Config,
    order: Order,
    broker: tuple[str, int] | None,
    announce: Callable[[str, int], None],
    ground: SimGround | None,
) -> int | None:
    """Fly the delivery and print its summary; its exit status, None when it failed to run
    (the error printed)."""
    from companion.security.audit import AuditError
    from companion.security.keys import KeyFileError
    from companion.security.orders import OrderError as SignedOrderError
    from sim.harness.simulate import run_simulation
    from sim.sitl import SitlError

    try:
        report = run_simulation(
            config,
            order,
            args.out,
            sitl_binary=args.sitl,
            sitl_defaults=[Path(p) for p in args.sitl_defaults.split(",")]
            if args.sitl_defaults
            else None,
            autopilot_params=dict(args.param) or None,
            camera=not args.no_camera,
            show_progress=not args.quiet,
            broker=broker,
            lte_outage_s=args.lte_outage,
            on_broker=announce,
            recipient=args.recipient,
            order_watch=ground,
        )
    except (BridgeError, SitlError, JournalError, KeyFileError, AuditError,
            SignedOrderError) as exc:  # fmt: skip
        print(f"skycourier sim: {exc}", file=sys.stderr)
        return None
    print(_summary(report))
    print(_gps_summary(report["companion_gps"]))
    print(_telemetry_summary(report["telemetry"]))
    print(_vision_summary(report["vision"]))
    print(_handover_summary(report["handover"]))
    print(f"report: {args.out / 'report.json'}  plot: {args.out / 'flight.png'}")
    return 0 if report["outcome"] == "delivered" else 1


def _after_flight(args: argparse.Namespace, ground: SimGround) -> None:
    """Wait until the ground store holds the flight's end, say how to look at it (now and
    later), and keep serving until Ctrl-C unless `--ground-exit`."""
    missing = ground.settle()
    if missing is not None:
        print(f"skycourier sim: ground: {missing}", file=sys.stderr)
    if ground.tracking_url is not None:
        _say(f"ground: the flight's tracking page: {ground.tracking_url}")
    _say(f"ground: look again later with `{ground.later_command()}`")
    if ground.tracking_path is not None:
        _say(f"ground: the tracking link stays valid there as {ground.tracking_path}")
    if args.ground_exit:
        return
    _say(f"ground: the ground service is still running at {ground.dispatch_url}; Ctrl-C to stop")
    ground.serve_until_interrupted()


def _sim_orders(
    args: argparse.Namespace,
    config: Config,
    broker: tuple[str, int] | None,
    announce: Callable[[str, int], None],
) -> int:
    """`skycourier sim --orders FILE`: plan the job and fly its sorties; 2 when refused."""
    from companion.routing.airspace import AirspaceError
    from companion.routing.delivery import DeliveryRefused
    from companion.routing.energy import EnergyInputError, airframe
    from sim.harness.orders_sim import fly_orders
    from sim.harness.simulate import OrderError
    from sim.sitl import SitlError

    try:
        job = fly_orders(
            config,
            args.orders,
            args.out,
            airframe=airframe(args.airframe),
            profile=args.profile,
            sitl_binary=args.sitl,
            sitl_defaults=[Path(p) for p in args.sitl_defaults.split(",")]
            if args.sitl_defaults
            else None,
            autopilot_params=dict(args.param) or None,
            show_progress=not args.quiet,
            broker=broker,
            on_broker=announce,
        )
    except DeliveryRefused as err:
        print(f"skycourier sim: {args.orders}: refused before take-off:", file=sys.stderr)
        for reason in err.reasons:
            print(f"  {reason}", file=sys.stderr)
        return 2
    except (AirspaceError, EnergyInputError, OrderError) as exc:
        print(f"skycourier sim: {args.orders}: {exc}", file=sys.stderr)
        return 2
    except (BridgeError, SitlError, JournalError) as exc:
        print(f"skycourier sim: {exc}", file=sys.stderr)
        return 1
    for sortie in job["sorties"]:
        drops = ", ".join(
            f"{d['order_id']} " + (f"({d['error_m']:.1f} m)" if d.get("error_m") is not None
                                   else "not released")
            for d in sortie["drops"]
        )  # fmt: skip
        energy = sortie["energy_error"]
        print(
            f"{sortie['mission_id']}: {sortie['outcome']}; drops {drops}; "
            f"{sortie['used_mah']} mAh used, {sortie['predicted_as_carried_mah']} predicted"
            + ("" if energy is None else f" ({energy:+.1%})")
        )
    planned = len(job["plan"]["sorties"])
    print(f"{len(job['sorties'])} of {planned} sorties flown; delivered: {job['delivered']}")
    print(f"report: {args.out / 'report.json'}  map: {args.out / 'plan.png'}")
    return 0 if job["delivered"] else 1


def _summary(report: dict) -> str:
    """One line on how the flight went; fields are None when the vehicle never flew."""

    def num(key: str, fmt: str, unit: str) -> str:
        value = report.get(key)
        return "n/a" if value is None else f"{value:{fmt}} {unit}"

    return (
        f"{report['outcome']}: {num('distance_m', '.0f', 'm')} flown in "
        f"{num('duration_s', '.1f', 's')} of flight ({num('wall_duration_s', '.1f', 's')} wall), "
        f"max altitude {num('max_alt_m', '.1f', 'm')}, "
        f"battery used {num('battery_used_pct', '.0f', '%')}"
    )


def _vision_summary(vision: dict) -> str:
    """One line on the simulated camera and the descent-cone guard."""
    if not vision.get("enabled"):
        return f"vision: off ({vision.get('note') or 'no model'})"
    seen = ", ".join(f"{n} {c}" for n, c in vision["detections"].items()) or "nothing"
    return (
        f"vision: {vision['frames']} frames near the drop ({seen} detected), "
        f"{vision['holds']} descent holds, {vision['hold_s']:.1f} s held"
    )


def _handover_summary(handover: dict) -> str:
    """One line on the hand-over: the recipient check's verdict, the parcel, the audit trail."""
    audit = handover["audit"]
    trail = f"audit trail {audit['records']} records, " + (
        "chain and signatures verified" if audit["verified"] else f"BAD: {audit['result']}"
    )
    parcel = "parcel released" if handover["gripper"]["released"] else "parcel kept aboard"
    if not handover["enabled"]:
        return f"hand-over: no recipient check ({handover['note']}); {parcel}; {trail}"
    verdict = handover.get("verdict")
    if verdict is None:
        return f"hand-over: {handover['recipient']}: no verdict; {parcel}; {trail}"
    distance = verdict["distance"]
    face = (
        f"face {'matched' if verdict['matched'] else 'not matched'}"
        + ("" if distance is None else f" at {distance:.3f}")
        + f" (threshold {verdict['threshold']:.2f})"
    )
    live = verdict["liveness"] or {}
    challenge = live.get("challenge", "liveness")
    base, extreme = (
        ("ear_baseline", "ear_min") if challenge == "blink" else ("mar_baseline", "mar_max")
    )
    figures = (
        f" ({base[:3].upper()} {live[base]:.3f} -> {live[extreme]:.3f})"
        if base in live and extreme in live
        else ""
    )
    liveness = f"{challenge} {'passed' if verdict['live'] else 'failed'}"
    if not verdict["live"]:
        liveness += f" ({live.get('reason')})"
    return f"hand-over: {handover['recipient']}: {face}, {liveness}{figures}; {parcel}; {trail}"


def _ensure_sim_model(quiet: bool) -> None:
    """Build the detector's deployment-default model (`[vision] variant`) once for the
    simulated camera, so the simulator flies the model that ships, when the default models
    folder lacks it (a `$SKYCOURIER_MODELS` folder is the user's to fill). A build that cannot
    run (no package index) leaves the simulator flying without vision, which it reports."""
    import os

    from companion.vision.commands import default_variant
    from companion.vision.detector import model_path
    from models.build import ModelBuildError, build_models

    variant = default_variant()
    target = model_path(variant)
    if target.exists() or os.environ.get("SKYCOURIER_MODELS"):
        return
    if not quiet:
        print("building the YOLOv4-Tiny model for the simulated camera (once)...", flush=True)
    try:
        build_models(target.parent, [variant])
    except ModelBuildError as exc:
        print(f"skycourier sim: cannot build the detector model: {exc}", file=sys.stderr)


def _telemetry_summary(telemetry: dict) -> str:
    """One line on the telemetry link: what reached the broker through the modem."""
    modem = telemetry.get("modem") or {}
    return (
        f"telemetry: {telemetry['published']}/{telemetry['queued']} records delivered to "
        f"{telemetry['broker']} through the A7670 ({telemetry['pending']} pending, "
        f"{telemetry['retried']} retries, {modem.get('recoveries', 0)} modem recoveries)"
    )


def _gps_summary(gps: dict) -> str:
    """One line on the companion's own receiver during the flight."""
    receiver = gps["receiver"]
    setup = (
        "not configured"
        if receiver is None
        else f"{receiver['generation']} at {receiver['baud']} baud"
    )
    median = gps["divergence_from_autopilot_m"]["median"]
    apart = "n/a" if median is None else f"{median:.1f} m"
    return (
        f"companion GPS: {gps['valid_fixes']}/{gps['fixes']} valid fixes, {setup}, median "
        f"{apart} from the autopilot's, {len(gps['integrity_alarms'])} integrity alarms"
    )


def _param(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip().upper(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--param wants NAME=NUMBER, got {text!r}") from None


def register_sim(sub: argparse._SubParsersAction) -> None:
    """Add `skycourier sim`."""
    sim = sub.add_parser("sim", help="fly a whole simulated delivery and write a flight report")
    sim.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    sim.add_argument("--out", type=Path, default=Path("flight-report"), help="report folder")
    source = sim.add_mutually_exclusive_group()
    source.add_argument("--order", type=Path, default=None, help="JSON order file (drop point)")
    source.add_argument(
        "--orders",
        type=Path,
        default=None,
        metavar="ORDERS.geojson",
        help="plan an orders file (airspace, depot, orders; as `skycourier plan`) and fly "
        "every sortie from the depot, without the camera or recipient check",
    )
    sim.add_argument(
        "--airframe",
        default="sitl-copter",
        help="energy model the --orders job is planned for (the simulators fly sitl-copter)",
    )
    sim.add_argument(
        "--profile",
        default="easa-open",
        help="regulatory profile of an --orders job: easa-open, faa-part107, dgca",
    )
    sim.add_argument("--distance", type=float, default=None, help="drop distance from home, m")
    sim.add_argument("--bearing", type=float, default=None, help="drop bearing from home, deg")
    sim.add_argument("--speedup", type=float, default=None, help="simulation speed-up factor")
    sim.add_argument("--sitl", type=Path, default=None, help="fly on this arducopter SITL binary")
    sim.add_argument(
        "--sitl-defaults",
        default=None,
        help="comma-separated SITL parameter files (default: ArduPilot's copter.parm found "
        "above the binary, plus the project's gripper set)",
    )
    sim.add_argument(
        "--broker",
        default=None,
        help="send telemetry to this MQTT broker HOST:PORT (default: start one, on 1883 if free)",
    )
    sim.add_argument(
        "--lte-outage",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="cut LTE coverage for this many simulated seconds from the start of the cruise",
    )
    sim.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set an autopilot parameter over the shipped ones (repeatable), e.g. "
        "FENCE_RADIUS=300 to see the preflight refuse the default drop",
    )
    sim.add_argument(
        "--no-camera",
        action="store_true",
        help="fly without the simulated downward camera (and its person on the pad)",
    )
    sim.add_argument(
        "--recipient",
        choices=("right", "impostor", "photo", "none"),
        default="right",
        help="who waits at the drop: the right recipient, who follows the liveness challenge "
        "(default); an impostor, who follows it too; a photo of the recipient held to the "
        "camera; none: no recipient check (a plain delivery)",
    )
    sim.add_argument(
        "--ground",
        action="store_true",
        help="also run the ground service (the `ground` extra) on the sim's broker: prints "
        "the dispatch page to watch the flight on the map, an operator's password and the "
        "recipient's tracking link; keeps serving after the flight until Ctrl-C",
    )
    sim.add_argument(
        "--ground-port",
        type=int,
        default=None,
        metavar="N",
        help="the ground service's port on 127.0.0.1 (default: 8080 if free, else any)",
    )
    sim.add_argument(
        "--ground-exit",
        action="store_true",
        help="with --ground: stop the ground service when the flight is over",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress display")
    sim.set_defaults(func=_sim)


def register_vehicle(sub: argparse._SubParsersAction) -> None:
    """Add `skycourier vehicle`, with the built-in vehicle's own options."""
    from sim.vehicle.__main__ import add_arguments, run

    vehicle = sub.add_parser(
        "vehicle",
        help="serve the built-in vehicle on TCP (like SITL) for a ground station",
        description="Built-in ArduCopter-like MAVLink vehicle listening on TCP (like SITL).",
    )
    add_arguments(vehicle)
    vehicle.set_defaults(func=run)


def register_hil(sub: argparse._SubParsersAction) -> None:
    """Add `skycourier hil`: the hardware-in-the-loop rig (`sim.harness.hil_cli`)."""
    from sim.harness.hil_cli import add_arguments

    hil = sub.add_parser(
        "hil",
        help="run `skycourier run` as on the drone against emulated hardware (HIL rig)",
        description="Hardware-in-the-loop rig: the built-in vehicle or SITL, the NEO-6M and "
        "A7670 emulators on ptys, a mosquitto, the keys and a configuration, and `skycourier "
        "run` in its own process; `hil order` and `hil sms` drive it from another shell.",
    )
    add_arguments(hil)
