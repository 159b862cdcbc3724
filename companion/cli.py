"""The `skycourier` command line.

`skycourier sim` flies a whole simulated delivery on built-in defaults; `skycourier run` is the
on-board daemon the systemd unit starts; `skycourier vehicle`
serves the built-in vehicle for a ground station or SITL-style experiments; `skycourier
config` checks a configuration file or prints the defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from companion.config import ConfigError, load_config
from companion.logging_setup import setup_logging
from companion.track import add_arguments as add_track_arguments
from companion.vision.commands import (
    add_detect_arguments,
    add_models_arguments,
    run_detect,
    run_models,
)
from firmware_bridge.errors import BridgeError

log = logging.getLogger("skycourier")


def _sim(args: argparse.Namespace) -> int:
    from companion.simulate import OrderError, load_order, order_from_config, run_simulation
    from sim.sitl import SitlError

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

    _ensure_sim_model(args.quiet)
    try:
        report = run_simulation(
            config,
            order,
            args.out,
            sitl_binary=args.sitl,
            sitl_defaults=[Path(p) for p in args.sitl_defaults.split(",")]
            if args.sitl_defaults
            else None,
            show_progress=not args.quiet,
            broker=broker,
            lte_outage_s=args.lte_outage,
            on_broker=announce,
        )
    except (BridgeError, SitlError) as exc:
        print(f"skycourier sim: {exc}", file=sys.stderr)
        return 1
    print(_summary(report))
    print(_gps_summary(report["companion_gps"]))
    print(_telemetry_summary(report["telemetry"]))
    print(_vision_summary(report["vision"]))
    print(f"report: {args.out / 'report.json'}  plot: {args.out / 'flight.png'}")
    return 0 if report["outcome"] == "delivered" else 1


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


def _ensure_sim_model(quiet: bool) -> None:
    """Build the detector's FP32 model once for the simulated camera, when the default models
    folder lacks it (a `$SKYCOURIER_MODELS` folder is the user's to fill). A build that cannot
    run (no package index) leaves the simulator flying without vision, which it reports."""
    import os

    from companion.vision.detector import model_path
    from models.build import ModelBuildError, build_models

    target = model_path("fp32")
    if target.exists() or os.environ.get("SKYCOURIER_MODELS"):
        return
    if not quiet:
        print("building the YOLOv4-Tiny model for the simulated camera (once)...", flush=True)
    try:
        build_models(target.parent, ["fp32"])
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


def _run(args: argparse.Namespace) -> int:
    from companion.daemon import run_daemon

    config = load_config(args.config)
    logging_config = config.logging
    setup_logging(
        args.log_level or logging_config.level,
        "json" if args.log_json else logging_config.format,
        logging_config.file,
    )
    return run_daemon(config)


def _gps(args: argparse.Namespace) -> int:
    from companion.gps.tools import monitor, replay

    if args.gps_command == "replay":
        return replay(args.file)
    return monitor(args.port, args.baud, args.configure)


def _vehicle(args: argparse.Namespace) -> int:
    from sim.vehicle.__main__ import main as vehicle_main

    return vehicle_main(args.rest)


def _config(args: argparse.Namespace) -> int:
    from companion.config import default_config_toml

    if args.print_default:
        print(default_config_toml())
        return 0
    if args.file is None:
        print("skycourier config: give a FILE to check, or --print-default", file=sys.stderr)
        return 2
    load_config(args.file)
    print(f"{args.file}: OK")
    return 0


def _track(args: argparse.Namespace) -> int:
    from companion.track import run_track

    return run_track(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests and docs can introspect it)."""
    parser = argparse.ArgumentParser(prog="skycourier", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="fly a whole simulated delivery and write a flight report")
    sim.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    sim.add_argument("--out", type=Path, default=Path("flight-report"), help="report folder")
    sim.add_argument("--order", type=Path, default=None, help="JSON order file (drop point)")
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
    sim.add_argument("--quiet", action="store_true", help="no progress display")
    sim.set_defaults(func=_sim)

    run = sub.add_parser("run", help="run the on-board daemon (what the systemd unit starts)")
    run.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    run.set_defaults(func=_run)

    vehicle = sub.add_parser(
        "vehicle",
        help="serve the built-in vehicle on TCP (like SITL) for a ground station; "
        "options as `python -m sim.vehicle --help`",
    )
    vehicle.set_defaults(func=_vehicle)

    gps = sub.add_parser("gps", help="the companion's GPS receiver: live monitor, log replay")
    gps_sub = gps.add_subparsers(dest="gps_command", required=True)
    replay = gps_sub.add_parser("replay", help="decode a recorded log: one JSON line per epoch")
    replay.add_argument("file", type=Path)
    live = gps_sub.add_parser("monitor", help="live fix, satellites and error counters")
    live.add_argument("--port", required=True, help="serial device, e.g. /dev/ttyAMA0")
    live.add_argument("--baud", type=int, default=9600, help="rate to open the port at")
    live.add_argument(
        "--configure", action="store_true", help="configure the receiver over UBX first"
    )
    gps.set_defaults(func=_gps)

    models = sub.add_parser("models", help="build the detector's ONNX models")
    add_models_arguments(models)
    models.set_defaults(func=run_models)

    detect = sub.add_parser("detect", help="detect objects in an image, video, camera or folder")
    add_detect_arguments(detect)
    detect.set_defaults(func=run_detect)

    track = sub.add_parser(
        "track", help="print a drone's live telemetry and events from an MQTT broker"
    )
    add_track_arguments(track)
    track.set_defaults(func=_track)

    config = sub.add_parser("config", help="check a configuration file or print the defaults")
    config.add_argument("file", type=Path, nargs="?", default=None)
    config.add_argument("--print-default", action="store_true")
    config.set_defaults(func=_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `skycourier` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "vehicle":
        args.rest = extra  # the vehicle's own options, parsed by sim.vehicle
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging(args.log_level or "WARNING", "json" if args.log_json else "text", None)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"skycourier: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skycourier: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`skycourier gps replay log | head`): not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
