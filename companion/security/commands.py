"""`skycourier keys`, `skycourier order` and `skycourier audit`.

The argument definitions import nothing heavy; each handler imports the crypto (and, for
`order create --photo`, the face models) only when it runs. Every expected failure (a key file,
an order refused, a broken trail, bad arguments) is one line on stderr naming the file or
field and the reason, with exit status 1; `order inspect` and `audit verify` exit 1 when the
order is refused or the trail is bad.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any


def add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", required=True)
    init = sub.add_parser("init", help="create a drone's or the dispatcher's keys (mode 0600)")
    init.add_argument("--dir", type=Path, required=True, help="key directory (created 0700)")
    role = init.add_mutually_exclusive_group(required=True)
    role.add_argument("--drone", metavar="ID", help="create a drone's keys, for drone ID")
    role.add_argument("--dispatcher", action="store_true", help="create the dispatcher's key")
    show = sub.add_parser("show", help="print the public keys and fingerprints (never private)")
    show.add_argument("--dir", type=Path, required=True, help="key directory")
    export = sub.add_parser("export", help="write a public-key file to hand to the other side")
    export.add_argument("--dir", type=Path, required=True, help="key directory")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--drone", action="store_true", help="the drone's drone.pub.json")
    which.add_argument("--dispatcher", action="store_true", help="dispatcher.pub.json")
    export.add_argument("--out", type=Path, required=True, help="file to write (not overwritten)")


def add_order_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="order_command", required=True)
    create = sub.add_parser("create", help="build a signed order with a sealed recipient template")
    create.add_argument("--dispatcher-keys", type=Path, required=True, metavar="DIR")
    create.add_argument(
        "--drone-pub", type=Path, required=True, metavar="FILE", help="the drone's drone.pub.json"
    )
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--photo",
        type=Path,
        action="append",
        metavar="P",
        help="recipient photo, one face (repeat for more)",
    )
    source.add_argument(
        "--template-npy",
        type=Path,
        metavar="FILE",
        help="a precomputed (n, 128) template saved with numpy.save",
    )
    create.add_argument("--lat", type=float, required=True, help="drop latitude (degrees)")
    create.add_argument("--lon", type=float, required=True, help="drop longitude (degrees)")
    create.add_argument(
        "--alt", type=float, default=0.0, help="drop point altitude above the take-off point (m)"
    )
    create.add_argument(
        "--expires-in",
        type=int,
        required=True,
        metavar="S",
        help="seconds from now until the order expires",
    )
    create.add_argument(
        "--window",
        metavar="START,END",
        help="hand-over window: Unix seconds or ISO 8601 times with a zone",
    )
    create.add_argument("--pin", help="fallback PIN (4-12 digits), stored as a scrypt hash")
    create.add_argument("--order-id", help="order id (default: a random one)")
    create.add_argument("--out", type=Path, required=True, help="order file (not overwritten)")
    inspect = sub.add_parser("inspect", help="verify an order (dry: its nonce is not used up)")
    inspect.add_argument("file", type=Path)
    inspect.add_argument(
        "--keys", type=Path, required=True, metavar="DIR", help="the drone's key directory"
    )
    inspect.add_argument("--dispatcher-pub", type=Path, required=True, metavar="FILE")
    inspect.add_argument(
        "--nonces",
        type=Path,
        metavar="FILE",
        help="the drone's nonce store: refuse an order already accepted",
    )

    submit = sub.add_parser("submit", help="hand an order to the running daemon (`skycourier run`)")
    submit.add_argument("file", type=Path)
    submit.add_argument("--config", type=Path, default=None, help="the daemon's TOML configuration")
    submit.add_argument(
        "--socket", type=Path, default=None, help="control socket (default: [intake] socket_path)"
    )


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", required=True)
    verify = sub.add_parser("verify", help="check an audit trail's chain and signatures")
    verify.add_argument("file", type=Path)
    verify.add_argument(
        "--drone-pub",
        type=Path,
        metavar="FILE",
        help="the drone's drone.pub.json: check every record's signature",
    )
    verify.add_argument(
        "--expect-head",
        metavar="HASH",
        help="a head hash recorded elsewhere: detects records cut off the end",
    )


class _Fail(Exception):
    """An expected failure: printed as one line, exit status 1."""


def _run(prog: str, handler: Any, args: argparse.Namespace) -> int:
    from companion.security.audit import AuditError
    from companion.security.keys import KeyFileError
    from companion.security.orders import OrderError

    try:
        return handler(args)
    except (_Fail, KeyFileError, OrderError, AuditError, ValueError) as exc:
        print(f"skycourier {prog}: {exc}", file=sys.stderr)
        return 1


# --- keys ---------------------------------------------------------------------------------


def _key_info(key: Any) -> dict[str, str]:
    from companion.security.encoding import b64url
    from companion.security.keys import fingerprint, raw_public

    return {"public": b64url(raw_public(key)), "fingerprint": fingerprint(key)}


def _keys(args: argparse.Namespace) -> int:
    from companion.security.keys import (
        DISPATCHER_PUB,
        DRONE_PUB,
        KeyStore,
        dispatcher_public_json,
        write_new_file,
    )

    store = KeyStore(args.dir)
    if args.keys_command == "init":
        if args.dispatcher:
            key = store.init_dispatcher()
            print(f"dispatcher key created in {args.dir}: {_key_info(key)['fingerprint']}")
            print(f"give {store.file(DISPATCHER_PUB)} to the drones ([security] dispatcher_pub)")
        else:
            public = store.init_drone(args.drone)
            print(f"drone {public.drone_id} keys created in {args.dir}")
            print(f"  identity {_key_info(public.identity)['fingerprint']}")
            print(f"  seal     {_key_info(public.seal)['fingerprint']}")
            print(f"give {store.file(DRONE_PUB)} to the dispatcher")
        return 0
    if args.keys_command == "show":
        shown: dict[str, Any] = {"dir": str(args.dir)}
        if store.has_dispatcher():
            shown["dispatcher"] = {
                "signing_ed25519": _key_info(store.dispatcher_public()),
                "public_file": str(store.file(DISPATCHER_PUB)),
            }
        if store.has_drone():
            public = store.drone_public()
            shown["drone"] = {
                "drone_id": public.drone_id,
                "identity_ed25519": _key_info(public.identity),
                "seal_x25519": _key_info(public.seal),
                "public_file": str(store.file(DRONE_PUB)),
            }
        if len(shown) == 1:
            raise _Fail(f"{args.dir}: no keys here (create them with `skycourier keys init`)")
        print(json.dumps(shown, indent=2))
        return 0
    data = (
        store.drone_public().to_json()
        if args.drone
        else dispatcher_public_json(store.dispatcher_public())
    )
    write_new_file(args.out, data + b"\n", mode=0o644)
    print(f"wrote {args.out}")
    return 0


def run_keys(args: argparse.Namespace) -> int:
    return _run(f"keys {args.keys_command}", _keys, args)


# --- order --------------------------------------------------------------------------------


def _time_arg(text: str) -> int:
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise _Fail(f"--window: {text!r} is neither Unix seconds nor an ISO 8601 time") from None
    if when.tzinfo is None:
        raise _Fail(f"--window: {text!r} has no time zone (add Z or +01:00)")
    return int(when.timestamp())


def _template(args: argparse.Namespace) -> Any:
    import numpy as np

    if args.template_npy is not None:
        try:
            template = np.load(args.template_npy, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise _Fail(f"{args.template_npy}: not a readable .npy array: {exc}") from None
        if not isinstance(template, np.ndarray):
            raise _Fail(f"{args.template_npy}: holds several arrays; give one (n, 128) array")
        return template
    try:
        from companion.identity.enrol import EnrolmentError, enrol_template
        from companion.identity.errors import FaceModelError
    except ImportError as exc:
        raise _Fail(
            f"face enrolment is unavailable ({exc}); give a precomputed --template-npy"
        ) from None
    try:
        return enrol_template(args.photo)
    except EnrolmentError as exc:
        raise _Fail(str(exc)) from None
    except FaceModelError as exc:  # dlib or the model files missing
        raise _Fail(
            f"face enrolment is unavailable ({exc}); give a precomputed --template-npy"
        ) from None


def _create(args: argparse.Namespace) -> int:
    import secrets

    from companion.security.keys import KeyStore, load_drone_public, write_new_file
    from companion.security.orders import MAX_LIFETIME_S, create_order, decode_order

    if not 0 < args.expires_in <= MAX_LIFETIME_S:
        raise _Fail(f"--expires-in: must be 1 to {MAX_LIFETIME_S} s, got {args.expires_in}")
    if args.out.exists():
        raise _Fail(f"{args.out}: already exists; refusing to overwrite it")
    signing_key = KeyStore(args.dispatcher_keys).dispatcher_signing_key()
    drone = load_drone_public(args.drone_pub)
    now = int(time.time())
    window = None
    if args.window is not None:
        start, sep, end = args.window.partition(",")
        if not sep:
            raise _Fail("--window: give START,END")
        window = (_time_arg(start), _time_arg(end))
        if not now <= window[0] < window[1] <= now + args.expires_in:
            raise _Fail("--window: must lie between now and the expiry, start before end")
    template = _template(args)
    try:
        blob = create_order(
            signing_key,
            drone_id=drone.drone_id,
            seal_public=drone.seal,
            order_id=args.order_id or f"o-{secrets.token_hex(6)}",
            lat=args.lat,
            lon=args.lon,
            alt_m=args.alt,
            template=template,
            not_before=now,
            expires=now + args.expires_in,
            window=window,
            pin=args.pin,
        )
    finally:
        if getattr(template, "flags", None) is not None and template.flags.writeable:
            template.fill(0)
    write_new_file(args.out, blob, mode=0o600)
    print(json.dumps(decode_order(blob)[0].summary(), indent=2))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from companion.security.keys import KeyStore, load_dispatcher_public
    from companion.security.orders import MAX_ORDER_BYTES, NonceStore, open_template, verify_order

    try:
        with open(args.file, "rb") as f:
            blob = f.read(MAX_ORDER_BYTES + 1)
    except OSError as exc:
        raise _Fail(f"{args.file}: cannot be read: {exc.strerror or exc}") from None
    store = KeyStore(args.keys)
    dispatcher = load_dispatcher_public(args.dispatcher_pub)
    order = verify_order(
        blob,
        dispatcher_public=dispatcher,
        drone_id=store.drone_id(),
        now=time.time(),
        nonces=NonceStore(args.nonces),
        record=False,
    )
    template = open_template(order, store.drone_seal_key())
    template.fill(0)
    summary = order.summary()
    summary["recipient"]["opens_with_this_drone"] = True
    print(
        json.dumps(
            {"verified": True, "replay_checked": args.nonces is not None, "order": summary},
            indent=2,
        )
    )
    return 0


def _submit(args: argparse.Namespace) -> int:
    """The daemon's answer to one order: 0 accepted, 1 refused (with the reason)."""
    from companion.config import load_config
    from companion.intake.control import ControlError, submit_order
    from companion.security.orders import MAX_ORDER_BYTES

    path = args.socket or load_config(args.config).intake.socket_path
    try:
        with open(args.file, "rb") as f:
            blob = f.read(MAX_ORDER_BYTES + 1)
    except OSError as exc:
        raise _Fail(f"{args.file}: cannot be read: {exc.strerror or exc}") from None
    try:
        answer = submit_order(path, blob)
    except ControlError as exc:
        raise _Fail(str(exc)) from None
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("accepted") is True else 1


def run_order(args: argparse.Namespace) -> int:
    handlers = {"create": _create, "inspect": _inspect, "submit": _submit}
    return _run(f"order {args.order_command}", handlers[args.order_command], args)


# --- audit --------------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    from companion.security.audit import verify_audit
    from companion.security.keys import load_drone_public

    public = load_drone_public(args.drone_pub).identity if args.drone_pub else None
    report = verify_audit(args.file, public, expect_head=args.expect_head)
    print(report)
    return 0 if report.ok else 1


def run_audit(args: argparse.Namespace) -> int:
    return _run(f"audit {args.audit_command}", _verify, args)
