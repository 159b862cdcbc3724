"""Command line: run the built-in vehicle until interrupted.

python -m sim.vehicle --port 5760 --speedup 1 --home -35.363261,149.165230,584
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .server import DEFAULT_HOME, VehicleServer


def _floats(text: str, count: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise argparse.ArgumentTypeError(
            f"{what} must be {count} comma-separated numbers, got {text!r}"
        )
    return values


def _param(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name.strip().upper(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--param wants NAME=NUMBER, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The CLI's options."""
    parser = argparse.ArgumentParser(
        prog="python -m sim.vehicle",
        description="Built-in ArduCopter-like MAVLink vehicle listening on TCP (like SITL).",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The vehicle's options, shared by `python -m sim.vehicle` and `skycourier vehicle`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=5760, help="TCP port (0 = any free port)")
    parser.add_argument(
        "--speedup", type=float, default=1.0, help="simulated seconds per wall second"
    )
    parser.add_argument(
        "--home",
        type=lambda t: _floats(t, 3, "--home"),
        default=DEFAULT_HOME,
        help="lat,lon,alt_amsl of home (default: SITL's CMAC)",
    )
    parser.add_argument(
        "--wind", type=lambda t: _floats(t, 2, "--wind"), default=None, help="speed_mps,from_deg"
    )
    parser.add_argument("--ready-delay", type=float, default=None, help="seconds until armable")
    parser.add_argument("--sysid", type=int, default=1, help="MAVLink system id")
    parser.add_argument(
        "--param", type=_param, action="append", default=[], help="NAME=VALUE parameter override"
    )
    parser.add_argument(
        "--param-file",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help="ArduPilot .parm file loaded over the defaults (repeatable, in order; replaces "
        "the shipped delivery-copter.parm + airframes/sitl-copter.parm)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run until Ctrl-C. Returns the exit status."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Serve the vehicle the parsed options describe until Ctrl-C; the exit status."""
    if args.speedup <= 0:
        print("--speedup must be positive", file=sys.stderr)
        return 2
    try:
        server = VehicleServer(
            args.home,
            speedup=args.speedup,
            host=args.host,
            port=args.port,
            params=dict(args.param),
            wind=args.wind,
            system_id=args.sysid,
            ready_delay_s=args.ready_delay,
            param_files=args.param_file,
        )
        server.start()
    except (OSError, ValueError) as exc:
        print(f"sim.vehicle: {exc}", file=sys.stderr)
        return 1
    print(
        f"sim.vehicle: listening on tcp:{args.host}:{server.port} (speed-up {args.speedup:g})",
        flush=True,
    )
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
