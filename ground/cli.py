"""`skycourier ground`: run the ground web service, and manage its operators.

    skycourier ground [--db URL] [--broker HOST:PORT] [--broker-user NAME
                      --broker-password-file FILE] [--broker-tls [--broker-ca FILE]]
                      [--group NAME] [--dispatcher-keys DIR] [--bind ADDR] [--port N]
                      [--tiles URL]
    skycourier ground user add NAME        # asks for the password (or --password-stdin)
    skycourier ground user passwd NAME
    skycourier ground user token NAME      # a new API token (printed once)
    skycourier ground user list
    skycourier ground drone add FILE       # register a drone's drone.pub.json
    skycourier ground drone list
    skycourier ground track-link ORDER     # a recipient's tracking link (path) for an order

Registered in the ``skycourier.commands`` entry-point group (see `companion.cli`), so the
on-board package never imports the ground segment.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ground.web.config import WebConfig, default_secret_file

if TYPE_CHECKING:
    from ground.store import Store


def register(sub: argparse._SubParsersAction) -> None:
    """Add `skycourier ground` and its subcommands."""
    parser = sub.add_parser(
        "ground",
        help="the ground segment: dispatch and live-tracking web service",
        description="Run the ground web service (SQLite by default, bound to 127.0.0.1), "
        "with the telemetry ingest when --broker is given.",
    )
    parser.add_argument("--db", default=None, help="database URL (default: a SQLite file)")
    parser.add_argument("--secret-file", type=Path, default=None, help="the signing key file")
    parser.add_argument("--broker", default=None, help="the fleet's MQTT broker HOST:PORT")
    parser.add_argument(
        "--dispatcher-keys",
        type=Path,
        default=None,
        metavar="DIR",
        help="the dispatcher's key store (skycourier keys init --dispatcher): send signed "
        "orders and commands (needs --broker)",
    )
    parser.add_argument("--broker-user", default=None, help="this service's broker account")
    parser.add_argument(
        "--broker-password-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="the broker account's password, in a file only its owner may read",
    )
    parser.add_argument("--broker-tls", action="store_true", help="connect to the broker over TLS")
    parser.add_argument(
        "--broker-ca", type=Path, default=None, metavar="FILE", help="CA file for --broker-tls"
    )
    parser.add_argument(
        "--registered-only",
        action="store_true",
        help="store records only from drones registered with `drone add` (others refused)",
    )
    parser.add_argument(
        "--group",
        default="skycourier-ground",
        help="the shared-subscription group of this fleet's ground instances",
    )
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")
    parser.add_argument("--tiles", default=None, help="map tile URL template ({z}/{x}/{y})")
    parser.add_argument(
        "--client-id", default="skycourier-ground", help="this instance's MQTT session name"
    )
    parser.set_defaults(func=run)
    commands = parser.add_subparsers(dest="ground_command")
    user = commands.add_parser("user", help="operator accounts")
    users = user.add_subparsers(dest="user_command", required=True)
    for name, what in (("add", "create an operator"), ("passwd", "set an operator's password")):
        cmd = users.add_parser(name, help=what)
        cmd.add_argument("name")
        cmd.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin"
        )
    token = users.add_parser("token", help="issue an operator's API token (replaces the old)")
    token.add_argument("name")
    users.add_parser("list", help="list the operators")
    drone = commands.add_parser("drone", help="the drones orders can be sent to")
    drones = drone.add_subparsers(dest="drone_command", required=True)
    add = drones.add_parser("add", help="register (or re-key) a drone from its drone.pub.json")
    add.add_argument("file", type=Path)
    drones.add_parser("list", help="list the registered drones")
    link = commands.add_parser("track-link", help="a recipient's tracking link for an order")
    link.add_argument("order_id")


def _config(args: argparse.Namespace) -> WebConfig:
    return WebConfig(
        db_url=args.db,
        broker=args.broker,
        bind=args.bind,
        port=args.port,
        secret_file=args.secret_file or default_secret_file(),
        tile_url=args.tiles,
        ingest_client_id=args.client_id,
        dispatcher_keys=args.dispatcher_keys,
        ingest_group=args.group,
        registered_only=args.registered_only,
        broker_username=args.broker_user,
        broker_password_file=args.broker_password_file,
        broker_tls=args.broker_tls or args.broker_ca is not None,
        broker_ca_file=args.broker_ca,
    )


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the passwords differ")
    return first


def run(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from companion.security.keys import KeyFileError

    try:
        return _run(args)
    except (ValueError, OSError, SQLAlchemyError, KeyFileError) as exc:  # config, database, keys
        print(f"skycourier ground: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.ground_command is None:
        from ground.web.app import serve

        print(f"skycourier ground: serving on http://{config.bind}:{config.port}/", flush=True)
        serve(config)
        return 0
    from ground.store import Store
    from ground.web.backend import Accounts

    with Store.open(config.db_url) as store:
        if args.ground_command == "track-link":
            return _track_link(config, store, args.order_id)
        if args.ground_command == "drone":
            return _drone(store, args)
        accounts = Accounts(store)
        if args.user_command == "token":
            token = accounts.issue_token(args.name)
            store.append_audit("cli", "user-token", "operator", args.name)
            print(token)
            return 0
        if args.user_command == "list":
            for account in accounts.list():
                state = " (disabled)" if account.disabled else ""
                print(f"{account.username}\t{account.role}{state}")
            return 0
        password = _password(args)
        if args.user_command == "add":
            accounts.add(args.name, password)
        else:
            accounts.set_password(args.name, password)
        store.append_audit("cli", f"user-{args.user_command}", "operator", args.name)
        print(f"operator {args.name}: password set")
    return 0


def _drone(store: Store, args: argparse.Namespace) -> int:
    from companion.security.keys import fingerprint, load_drone_public, raw_public

    if args.drone_command == "list":
        for drone_id in store.registered_drones():
            print(drone_id)
        return 0
    public = load_drone_public(args.file)
    store.register_drone(public.drone_id, raw_public(public.identity), raw_public(public.seal))
    detail = {"identity": fingerprint(public.identity), "seal": fingerprint(public.seal)}
    store.append_audit("cli", "drone-register", "drone", public.drone_id, detail)
    print(f"drone {public.drone_id}: registered (identity {detail['identity']})")
    return 0


def _track_link(config: WebConfig, store: Store, order_id: str) -> int:
    from ground.web.config import load_secret, subkey
    from ground.web.tracking import TrackingLinks

    if store.order(order_id) is None:
        raise ValueError(f"no order {order_id!r}")
    links = TrackingLinks(subkey(load_secret(config.secret_file), "tracking"))
    token = links.token(order_id, store.clock() + config.tracking_ttl_s)
    store.append_audit("cli", "tracking-link", "order", order_id)
    print(f"/track/{token}")
    return 0
