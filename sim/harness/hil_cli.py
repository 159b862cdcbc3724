"""`skycourier hil`: the hardware-in-the-loop rig from the command line.

- ``skycourier hil [--work DIR]`` starts the rig (`sim.harness.hil.HilRig`): the emulated
  hardware, a mosquitto and `skycourier run` in its own process; prints where everything is
  and how to drive it, then every event the drone sends, until Ctrl-C.
- ``skycourier hil order --work DIR`` is the dispatcher: it publishes a signed order (made
  with the rig's dispatcher key, or `--file` from `skycourier order create`) on the drone's
  orders topic and follows it until it is settled; with ``--pin`` it answers the hand-over as
  the operator would, with the PIN in a signed SMS.
- ``skycourier hil sms --work DIR COMMAND`` is the operator's phone: it signs a command with
  the rig's SMS key and leaves it for the running rig, whose modem receives it as an SMS from
  the operator's number.

The running rig and the other two meet through the work folder: `rig.json` (broker, drone,
paths) and `sms-spool/`.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

DEFAULT_WORK = Path("hil-rig")
#: How often the running rig looks for spooled SMS (seconds).
SPOOL_POLL_S = 0.2


def add_arguments(hil: argparse.ArgumentParser) -> None:
    """The options of `skycourier hil` and its `order` and `sms` actions."""
    work_help = f"the rig's work folder (default: ./{DEFAULT_WORK})"
    hil.add_argument("--work", type=Path, default=DEFAULT_WORK, help=work_help)
    hil.add_argument("--drone", default="hil-1", help="the drone's id (default hil-1)")
    hil.add_argument(
        "--sitl", type=Path, default=None, help="fly this arducopter SITL binary instead"
    )
    hil.add_argument(
        "--sitl-instance", type=int, default=0, help="SITL instance (TCP 5760 + 10 x N)"
    )
    hil.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        help="the built-in vehicle's speed-up (default 1: real time, as the daemon expects)",
    )
    hil.add_argument(
        "--camera", action="store_true", help="serve a camera feed (MJPEG over HTTP) to the daemon"
    )
    hil.add_argument(
        "--door-camera",
        choices=("recipient", "impostor", "photo"),
        default=None,
        help="serve a door camera feed showing that person at the drop (the daemon's "
        "[identity] camera): the recipient blinking, another person, or the recipient's photo",
    )
    hil.add_argument(
        "--broker-port", type=int, default=0, help="the broker's port (default: a free one)"
    )
    hil.add_argument("--quiet", action="store_true", help="do not print the drone's events")
    actions = hil.add_subparsers(dest="hil_action")
    order = actions.add_parser(
        "order", help="as the dispatcher: send a signed order over MQTT and follow it"
    )
    # SUPPRESS: `skycourier hil --work DIR order` keeps DIR (a subparser's default would win).
    order.add_argument("--work", type=Path, default=argparse.SUPPRESS, help=work_help)
    order.add_argument(
        "--file", type=Path, default=None, help="an order file (`skycourier order create`)"
    )
    order.add_argument("--distance", type=float, default=60.0, help="drop distance from home, m")
    order.add_argument("--bearing", type=float, default=90.0, help="drop bearing from home, deg")
    order.add_argument("--order-id", default=None, help="the order's id (default: a random one)")
    order.add_argument(
        "--pin",
        default=None,
        help="the recipient's fallback PIN: put in the order, and sent by the operator's SMS "
        "when the drone asks for the recipient",
    )
    order.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to follow the order at most"
    )
    sms = actions.add_parser("sms", help="as the operator: send a signed SMS command")
    sms.add_argument("--work", type=Path, default=argparse.SUPPRESS, help=work_help)
    sms.add_argument("command", help="status, abort, land, hold, resume or pin")
    sms.add_argument("digits", nargs="?", default=None, help="for pin: the PIN")
    hil.set_defaults(func=run_hil)


def run_hil(args: argparse.Namespace) -> int:
    from sim.harness.hil import HilError
    from sim.harness.hil_ground import GroundError

    action = {None: _run_rig, "order": _order, "sms": _sms}[args.hil_action]
    try:
        return action(args)
    except (HilError, GroundError, OSError, ValueError) as exc:
        print(f"skycourier hil: {exc}", file=sys.stderr)
        return 1


def _run_rig(args: argparse.Namespace) -> int:
    from companion.track import format_record
    from sim.harness.hil import HilRig

    rig = HilRig(
        args.work,
        drone_id=args.drone,
        speedup=args.speedup,
        sitl=args.sitl,
        sitl_instance=args.sitl_instance,
        camera=args.camera,
        door_camera=args.door_camera,
        broker_port=args.broker_port,
    )
    print(f"starting the HIL rig in {rig.work} ...", flush=True)
    with rig:
        rig.wait_ready(180.0)
        print(_instructions(rig), flush=True)
        ground = rig.ground
        assert ground is not None
        seen = ground.mark
        try:
            while True:
                for text in rig.deliver_spooled_sms():
                    print(f"SMS from the operator delivered to the modem: {text}", flush=True)
                for received in ground.wait_new(seen, SPOOL_POLL_S):
                    seen = received.index + 1
                    if not args.quiet:
                        print(format_record(received.record), flush=True)
                problem = rig.daemon_problem()
                if problem is not None and rig.daemon.returncode == 0:
                    # An orderly exit: the terminal's Ctrl-C reached the daemon too.
                    print("the daemon stopped; stopping the rig ...", flush=True)
                    return 0
                if problem is not None:
                    print(f"skycourier hil: {problem}", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            print("stopping the rig ...", flush=True)
    return 0


def _instructions(rig: object) -> str:
    from sim.harness.hil import OPERATOR, HilRig

    assert isinstance(rig, HilRig) and rig.broker is not None and rig.gps and rig.modem
    work, broker = rig.work, f"{rig.broker.host}:{rig.broker.port}"
    here = "" if rig.work == DEFAULT_WORK.resolve() else f" --work {work}"
    autopilot = (
        f"ArduPilot SITL {rig.sitl}"
        if rig.sitl is not None
        else f"built-in vehicle (speed-up {rig.speedup:g})"
    )
    camera = f"\n  camera:     {rig.camera_url}" if rig.camera_url else ""
    if rig.door_camera_url:
        camera += f"\n  door:       {rig.door_camera_url} (shows: {rig.door_camera})"
    lines = [
        f"HIL rig for drone {rig.drone_id} in {work}",
        f"  autopilot:  {autopilot}",
        f"  GPS:        NEO-6M emulator on {rig.gps.path} ({work}/dev/skycourier-gps)",
        f"  modem:      A7670 emulator on {rig.modem.path} ({work}/dev/skycourier-modem), "
        f"operator SMS from {OPERATOR}",
        f"  broker:     {rig.broker.kind} {broker}{camera}",
        f"  daemon:     pid {rig.daemon.pid}: {' '.join(rig.daemon.command)}",
        f"              log {rig.log_path}",
        "The daemon takes orders. In another shell:",
        f"  fly one, as the dispatcher over MQTT:  skycourier hil order{here} --pin 4711",
        f"  or your own order file:                skycourier order create --dispatcher-keys "
        f"{work}/keys/dispatcher --drone-pub {work}/keys/drone.pub.json --template-npy "
        f"{work}/recipient.npy --lat LAT --lon LON --expires-in 3600 --pin 4711 --out o.json",
        f"                                         skycourier hil order{here} --file o.json",
        f"  watch the drone:                       skycourier track --broker {broker} "
        f"--drone {rig.drone_id}",
        f"  the operator's PIN by SMS:             skycourier hil sms{here} pin 4711",
        f"  the daemon's status:                   skycourier status --config {rig.config_path}",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def _order(args: argparse.Namespace) -> int:
    """Publish an order on the rig's broker and follow it; 0 when it was delivered."""
    from companion.geo import offset
    from companion.security.keys import KeyStore, load_drone_public
    from companion.track import format_record
    from sim.harness.hil import follow_order, read_manifest, spool_sms
    from sim.harness.hil_ground import GroundStation, OperatorSigner, make_order

    work = args.work.resolve()
    rig = read_manifest(work)
    drone_id = rig["drone_id"]
    if args.file is not None:
        blob = args.file.read_bytes()
        order_id = None  # named by the drone's answer
    else:
        order_id = args.order_id or f"hil-{uuid.uuid4().hex[:8]}"
        home = rig["home"]
        drone = load_drone_public(work / "keys" / "drone.pub.json")
        signing = KeyStore(work / "keys" / "dispatcher").dispatcher_signing_key()
        drop = offset(home[0], home[1], args.distance, args.bearing)
        if rig.get("door_camera"):  # the door camera's recipient, enrolled: recipient.npy
            import numpy as np

            from sim.harness.hil_door import door_order

            template = np.load(work / "recipient.npy")
            blob = door_order(signing, drone.seal, template, drone_id=drone_id,
                              order_id=order_id, drop=drop, pin=args.pin)  # fmt: skip
        else:
            blob = make_order(signing, drone.seal, drone_id=drone_id, order_id=order_id,
                              drop=drop, pin=args.pin)  # fmt: skip
    signer = OperatorSigner(work / "sms.key", drone_id, rig["operator"])

    def answer_recipient() -> None:
        if args.pin is not None:
            spool_sms(Path(rig["sms_spool"]), signer.sign(f"pin {args.pin}"))
            print("  (operator: PIN sent by SMS)", flush=True)

    with GroundStation(rig["broker"][0], rig["broker"][1], drone_id) as ground:
        mark = ground.mark
        ground.publish_order(blob)
        print(f"order published on the orders topic of {drone_id}", flush=True)
        if order_id is None:
            answer = ground.wait_for(
                lambda r: getattr(r.record, "kind", "") in ("order-accepted", "order-refused"),
                "the drone's answer",
                60.0,
                since=mark,
            )
            order_id = getattr(answer.record, "mission_id", None)
            if order_id is None:  # refused, and not even an id could be read
                print(format_record(answer.record), flush=True)
                return 1
        last = follow_order(
            ground,
            order_id,
            since=mark,
            timeout_s=args.timeout,
            answer_recipient=answer_recipient,
            on_event=lambda e: print(format_record(e), flush=True),
        )
    return 0 if last.detail.get("outcome") == "delivered" else 1


def _sms(args: argparse.Namespace) -> int:
    """Sign an operator's command and leave it for the running rig's modem."""
    from sim.harness.hil import read_manifest, spool_sms
    from sim.harness.hil_ground import OperatorSigner

    work = args.work.resolve()
    rig = read_manifest(work)
    command = args.command if args.digits is None else f"{args.command} {args.digits}"
    text = OperatorSigner(work / "sms.key", rig["drone_id"], rig["operator"]).sign(command)
    path = spool_sms(Path(rig["sms_spool"]), text)
    print(f"SMS from {rig['operator']} queued for the rig's modem ({path.name}): {text}")
    return 0
