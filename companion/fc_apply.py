"""`skycourier fc apply`: push delivery-copter.parm and an airframe overlay (and any further
.parm files) to a flight controller, read every value back and print what happened to each.

Exit status 0 only when every parameter is set or already held; 1 when any was refused or
reads back different; 2 when the files cannot be read or the flight controller not reached.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_fc_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="fc_command", required=True)
    apply = sub.add_parser(
        "apply", help="push delivery-copter.parm (+ airframe overlay) and verify every value"
    )
    apply.add_argument(
        "--connection", required=True, help="the flight controller, e.g. tcp:127.0.0.1:5760"
    )
    apply.add_argument(
        "--airframe", default=None, help="airframe overlay from airframes/ (e.g. quad-4s-5000)"
    )
    apply.add_argument(
        "--param-file",
        type=Path,
        action="append",
        default=[],
        metavar="F",
        help="a further .parm file loaded after them (repeatable, in order)",
    )
    apply.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the first heartbeat"
    )


def run_fc(args: argparse.Namespace) -> int:
    from firmware_bridge.errors import BridgeError
    from firmware_bridge.param_apply import (
        MISMATCHED,
        REFUSED,
        ParmFileError,
        apply_params,
        format_table,
        merged,
        shipped_files,
    )
    from firmware_bridge.vehicle import Vehicle

    try:
        entries = merged(shipped_files(args.airframe) + list(args.param_file))
    except ParmFileError as exc:
        print(f"skycourier fc apply: {exc}", file=sys.stderr)
        return 2
    try:
        with Vehicle.connect(args.connection, connect_timeout_s=args.timeout) as vehicle:
            outcomes = apply_params(vehicle, entries)
    except (BridgeError, OSError, ValueError) as exc:
        print(f"skycourier fc apply: {args.connection}: {exc}", file=sys.stderr)
        return 2
    print(format_table(outcomes))
    bad = [o for o in outcomes if o.status in (REFUSED, MISMATCHED)]
    return 1 if bad else 0
