"""The `skycourier` command line.

`skycourier run` is the on-board daemon the systemd unit starts; `skycourier config` checks a
configuration file or prints the defaults; `gps`, `models`, `detect` and `track` are the
device and ground tools; `keys`, `order` and `audit` those of the secure hand-over;
`command` the operator's commands to a drone in flight. Commands
that live outside the on-board package register themselves in the entry-point group
`skycourier.commands` (as pytest and flask find their plugins): the simulator side adds
`skycourier sim` and `skycourier vehicle` from `sim.harness.cli`, so the on-board package
never imports the simulator.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import entry_points
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

log = logging.getLogger("skycourier")

#: Entry-point group of the commands other packages add: each entry point is a function
#: ``register(subparsers)`` that adds its subcommand(s) with a ``func`` default.
COMMANDS_GROUP = "skycourier.commands"


def _status(args: argparse.Namespace) -> int:
    """Print the running daemon's status as JSON; 2 when no daemon answers."""
    import json

    from companion.intake.control import ControlError, daemon_status

    path = args.socket or load_config(args.config).intake.socket_path
    try:
        print(json.dumps(daemon_status(path), indent=2))
    except ControlError as exc:
        print(f"skycourier status: {exc}", file=sys.stderr)
        return 2
    return 0


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
    return monitor(args.port, args.baud, args.configure, save=args.save, eeprom=args.eeprom)


def _sms_sign(args: argparse.Namespace) -> int:
    from companion.modem.operator_sms import run_sign

    return run_sign(args)


def _keys(args: argparse.Namespace) -> int:
    from companion.security.commands import run_keys

    return run_keys(args)


def _order(args: argparse.Namespace) -> int:
    from companion.security.commands import run_order

    return run_order(args)


def _command(args: argparse.Namespace) -> int:
    from companion.intake.command_cli import run_command

    return run_command(args)


def _audit(args: argparse.Namespace) -> int:
    from companion.security.commands import run_audit

    return run_audit(args)


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


def _face(args: argparse.Namespace) -> int:
    from companion.identity.commands import run_face

    return run_face(args)


def _fc(args: argparse.Namespace) -> int:
    from companion.fc_apply import run_fc

    return run_fc(args)


def _check(args: argparse.Namespace) -> int:
    from companion.check import run_check

    return run_check(args)


def _track(args: argparse.Namespace) -> int:
    from companion.track import run_track

    return run_track(args)


def _plan(args: argparse.Namespace) -> int:
    import json

    from companion.routing.planner import PlanError, solve_tsp
    from companion.routing.tsplib import TsplibError, read_tsplib

    if args.orders is not None and args.tsplib is not None:
        print(
            "skycourier plan: give ORDERS.geojson or --tsplib FILE.tsp, not both", file=sys.stderr
        )
        return 2
    if args.orders is not None:
        from companion.routing.plan_command import run_orders

        return run_orders(args)
    if args.tsplib is None:
        print("skycourier plan: give ORDERS.geojson or --tsplib FILE.tsp", file=sys.stderr)
        return 2
    try:
        instance = read_tsplib(args.tsplib)
        tour = solve_tsp(instance.distance_matrix(), time_limit_s=args.time_limit)
    except (TsplibError, PlanError) as exc:
        print(f"skycourier plan: {exc}", file=sys.stderr)
        return 2
    order = [i + 1 for i in tour.order]  # TSPLIB's 1-based city numbers
    if args.json:
        print(json.dumps({"name": instance.name, "length": tour.length, "order": order}))
    else:
        print(f"{instance.name or args.tsplib}: length {tour.length:g}")
        print("order: " + " ".join(map(str, order)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests and docs can introspect it)."""
    parser = argparse.ArgumentParser(prog="skycourier", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the on-board daemon (what the systemd unit starts)")
    run.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    run.set_defaults(func=_run)
    status = sub.add_parser("status", help="the running daemon's link, vehicle, mission, orders")
    status.add_argument("--config", type=Path, default=None, help="the daemon's configuration")
    status.add_argument(
        "--socket", type=Path, default=None, help="control socket (default: [intake] socket_path)"
    )
    status.set_defaults(func=_status)

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
    live.add_argument(
        "--save",
        action="store_true",
        help="with --configure: save the configuration (CFG-CFG) to battery-backed RAM",
    )
    live.add_argument(
        "--eeprom",
        action="store_true",
        help="with --save: also to the board's configuration EEPROM (where one is fitted)",
    )
    gps.set_defaults(func=_gps)

    models = sub.add_parser("models", help="build the detector's ONNX models")
    add_models_arguments(models)
    models.set_defaults(func=run_models)

    detect = sub.add_parser("detect", help="detect objects in an image, video, camera or folder")
    add_detect_arguments(detect)
    detect.set_defaults(func=run_detect)

    _add_registered_commands(sub)

    track = sub.add_parser(
        "track", help="print a drone's live telemetry and events from an MQTT broker"
    )
    add_track_arguments(track)
    track.set_defaults(func=_track)

    sms = sub.add_parser("sms", help="operator commands by SMS")
    sms_sub = sms.add_subparsers(dest="sms_command", required=True)
    sign = sms_sub.add_parser(
        "sign", help="print the text of a signed command (status, abort, land, hold, resume)"
    )
    from companion.modem.operator_sms import add_sign_arguments

    add_sign_arguments(sign)
    sign.set_defaults(func=_sms_sign)

    from companion.security.commands import (
        add_audit_arguments,
        add_keys_arguments,
        add_order_arguments,
    )

    keys = sub.add_parser("keys", help="the dispatcher's and the drones' keys: init, show, export")
    add_keys_arguments(keys)
    keys.set_defaults(func=_keys)
    order = sub.add_parser("order", help="signed delivery orders: create, inspect, submit")
    add_order_arguments(order)
    order.set_defaults(func=_order)
    command = sub.add_parser(
        "command", help="operator commands: sign one for the downlink, or give one locally"
    )
    from companion.intake.command_cli import add_command_arguments

    add_command_arguments(command)
    command.set_defaults(func=_command)
    audit = sub.add_parser("audit", help="the hand-over audit trail: verify")
    add_audit_arguments(audit)
    audit.set_defaults(func=_audit)

    face = sub.add_parser("face", help="face verification tools: compare two photos")
    from companion.identity.commands import add_face_arguments

    add_face_arguments(face)
    face.set_defaults(func=_face)

    plan = sub.add_parser(
        "plan", help="plan deliveries from an orders GeoJSON file, or solve a TSPLIB instance"
    )
    plan.add_argument(
        "orders",
        type=Path,
        nargs="?",
        default=None,
        metavar="ORDERS.geojson",
        help="airspace, orders and depot in one GeoJSON FeatureCollection",
    )
    plan.add_argument(
        "--tsplib", type=Path, default=None, help="solve a TSPLIB EUC_2D instance (FILE.tsp)"
    )
    plan.add_argument("--png", type=Path, default=None, metavar="MAP.png", help="draw the plan")
    plan.add_argument(
        "--airframe",
        choices=("sitl-copter", "quad-4s-5000"),
        default="sitl-copter",
        help="energy profile of the drone (default sitl-copter)",
    )
    plan.add_argument(
        "--profile",
        choices=("easa-open", "faa-part107", "dgca"),
        default="easa-open",
        help="regulatory profile whose ceiling holds (default easa-open)",
    )
    plan.add_argument(
        "--drones", type=int, default=1, help="drones for the orders that name none (default 1)"
    )
    plan.add_argument(
        "--config", type=Path, default=None, help="TOML configuration ([flight] altitudes, speeds)"
    )
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="S",
        help="seconds of search (default: 1 + 0.05 a city, at most 8)",
    )
    plan.set_defaults(func=_plan)

    fc = sub.add_parser("fc", help="the flight controller: push and verify parameter files")
    from companion.fc_apply import add_fc_arguments

    add_fc_arguments(fc)
    fc.set_defaults(func=_fc)

    check = sub.add_parser(
        "check", help="open and identify every configured device; print what to fix"
    )
    check.add_argument(
        "--config", type=Path, default=None, help="TOML configuration file (the daemon's)"
    )
    check.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    check.set_defaults(func=_check)

    config = sub.add_parser("config", help="check a configuration file or print the defaults")
    config.add_argument("file", type=Path, nargs="?", default=None)
    config.add_argument("--print-default", action="store_true")
    config.set_defaults(func=_config)
    return parser


def _add_registered_commands(sub: argparse._SubParsersAction) -> None:
    """The commands registered in `COMMANDS_GROUP`; one that fails to load is left out with a
    warning naming it, so a broken plugin never takes the daemon's own commands down."""
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            register = entry.load()
            register(sub)
        except Exception as exc:  # a plugin's import error must not break the CLI
            log.warning("command %r (%s) is unavailable: %s", entry.name, entry.value, exc)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `skycourier` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
