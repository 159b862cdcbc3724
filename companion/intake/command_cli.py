"""`skycourier command`: operator commands, signed for the downlink or given locally.

- `skycourier command sign hold --dispatcher-keys DIR --drone ID [--order ID]` prints a
  signed command (`companion.security.signed_commands`) for the ground side to publish on
  ``skycourier/v1/<drone_id>/commands`` (e.g. `mosquitto_pub -t ... -f FILE`);
- `skycourier command hold|resume|abort|return|land [--order ID]` gives the running daemon
  the command through its control socket and prints its answer with what the mission did.

Expected failures (a key file, bad arguments, no daemon) are one line on stderr with exit
status 1; a refused command prints its answer and exits 1 too. The argument definitions
import nothing heavy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ACTIONS = ("abort", "return", "hold", "resume", "land")
_HELP = {
    "abort": "give up and fly home (RTL)",
    "return": "fly home (RTL), as abort",
    "hold": "stop where the drone is and wait",
    "resume": "go on after a hold",
    "land": "give up and land where the drone is",
}


def add_command_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="operator_command", required=True)
    sign = sub.add_parser("sign", help="print a signed command for the dispatcher to publish")
    sign.add_argument("action", choices=ACTIONS)
    sign.add_argument(
        "--dispatcher-keys", type=Path, required=True, metavar="DIR", help="the dispatcher's keys"
    )
    sign.add_argument("--drone", required=True, metavar="ID", help="the drone's id")
    sign.add_argument("--order", metavar="ID", help="act only while this order flies")
    sign.add_argument(
        "--valid-for",
        type=int,
        default=None,
        metavar="S",
        help="seconds it may be acted on (default 60, at most 120)",
    )
    sign.add_argument("--out", type=Path, help="write it to this file (not overwritten)")
    for action in ACTIONS:
        local = sub.add_parser(action, help=f"{_HELP[action]}: through the control socket")
        local.add_argument("--order", metavar="ID", help="act only while this order flies")
        local.add_argument("--config", type=Path, default=None, help="the daemon's configuration")
        local.add_argument(
            "--socket",
            type=Path,
            default=None,
            help="control socket (default: [intake] socket_path)",
        )


class _Fail(Exception):
    """An expected failure: printed as one line, exit status 1."""


def _sign(args: argparse.Namespace) -> int:
    from companion.security.keys import KeyStore, write_new_file
    from companion.security.signed_commands import (
        DEFAULT_VALID_FOR_S,
        decode_command,
        sign_command,
    )

    if args.out is not None and args.out.exists():
        raise _Fail(f"{args.out}: already exists; refusing to overwrite it")
    blob = sign_command(
        KeyStore(args.dispatcher_keys).dispatcher_signing_key(),
        drone_id=args.drone,
        command=args.action,
        issued_at=int(time.time()),
        valid_for_s=DEFAULT_VALID_FOR_S if args.valid_for is None else args.valid_for,
        order_id=args.order,
    )
    if args.out is None:
        print(blob.decode("ascii"))
        return 0
    write_new_file(args.out, blob, mode=0o644)  # exactly the signed bytes: no newline
    print(json.dumps(decode_command(blob)[0].summary(), indent=2))
    return 0


def _local(args: argparse.Namespace) -> int:
    from companion.config import load_config
    from companion.intake.control import ControlError, send_command

    path = args.socket or load_config(args.config).intake.socket_path
    try:
        answer = send_command(path, args.operator_command, args.order)
    except ControlError as exc:
        raise _Fail(str(exc)) from None
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("accepted") is True else 1


def run_command(args: argparse.Namespace) -> int:
    """`skycourier command ...`: 0 done, 1 refused or failed (said on stderr)."""
    from companion.security.keys import KeyFileError

    handler = _sign if args.operator_command == "sign" else _local
    try:
        return handler(args)
    except (_Fail, KeyFileError, ValueError) as exc:
        print(f"skycourier command {args.operator_command}: {exc}", file=sys.stderr)
        return 1
