"""`skycourier run`: the on-board daemon.

It owns the link to the flight controller for the life of the process, keeps the vehicle
state on the bus, and logs a status line at a steady rate. At start it reads the mission
journal: a mission left unfinished by a crash or reboot is never forgotten. If the vehicle
is still flying it is brought home (RTL), or landed where it is (`[journal] restart_in_air`),
since the plan's context (recipient, obstacles) is gone with the old process; if it is on
the ground the mission is closed as interrupted. In both cases the outcome is journaled.
Then it takes orders (`companion.intake`: the local control socket and the telemetry link's
downlink), verifies and queues them, answers each on the uplink and flies them in turn;
operator commands (hold, resume, abort, return, land) come the same two ways, signed by the
dispatcher or local, and go to the flying mission.

With the drone's key store in `[security] keys_dir` (`skycourier keys init --drone ID`), the
link to the flight controller is MAVLink 2 signed with its secret, and the daemon's
decisions (the missions it flies and closes after a restart, the commands it takes) go into
the audit trail at `[security] audit_path`, signed with the drone's identity key. Without
one the daemon says so and flies unsigned; a key store it cannot use (a key file others can
read, a corrupt file) or an audit trail it cannot continue stops it from starting.

GPS, telemetry, vision and the door camera's face check of the recipient ("identity",
`companion.identity.door_camera`) are the supervisor's parts (`companion.supervisor`): each is
started by itself, and one that fails to start or stops running is started again with a
doubling backoff while the others run on; `skycourier status` and the metrics show each
one's health. Everything else the daemon starts (journal, audit trail, autopilot link, the
ground stations' routing of `[gcs]` (`companion.gcs`), order queue, control socket, metrics)
is pushed onto one `ExitStack` as it starts, so any way out of the run stops exactly what
was started, newest first.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from types import FrameType
from typing import Any

from companion.autopilot import connect_autopilot
from companion.bus import Bus
from companion.config import Config, SecurityConfig
from companion.gcs import start_gcs
from companion.gps.driver import GpsStatus
from companion.gps.service import start_gps
from companion.identity.door_camera import recipient_announcer, start_door_camera
from companion.intake.commands import CommandIntake
from companion.intake.control import ControlError, ControlServer
from companion.intake.flights import OrderFlights
from companion.intake.intake import OrderAck, OrderIntake
from companion.intake.queue import QueueError
from companion.intake.service import (
    control_command,
    listen_on,
    open_commands,
    open_intake,
    start_flights,
)
from companion.metrics import serve_metrics
from companion.mission.events import MissionEvent, Phase
from companion.mission.journal import FINISHED_EVENT, Journal, JournalError
from companion.sd_notify import Watchdog
from companion.security.audit import AuditError, AuditTrail
from companion.security.keys import KeyFileError, KeyStore
from companion.status import DaemonStatus
from companion.supervisor import Part, Supervisor
from companion.telemetry.uplink import TelemetryUplink, open_uplink
from companion.vision.service import start_vision
from firmware_bridge.errors import BridgeError
from firmware_bridge.state import LinkState, StatusText, VehicleState
from firmware_bridge.vehicle import Vehicle

log = logging.getLogger(__name__)

_STATUS_EVERY_S = 10.0


#: Receives an audited record: its kind and data (numbers and words only).
AuditHook = Callable[[str, dict[str, Any]], None]


#: What a restarted daemon commands in the air (`[journal] restart_in_air`): the vehicle
#: command, its name in the journal, and the outcome recorded.
RESTART_ACTIONS: dict[str, tuple[str, str]] = {
    "rtl": ("RTL", "companion restarted mid-flight: returning home"),
    "land": ("LAND", "companion restarted mid-flight: landing where it is"),
}


def recover_unfinished(
    journal: Journal,
    vehicle: Vehicle,
    audit: AuditHook | None = None,
    in_air: str = "rtl",
    publish: Callable[[object], None] | None = None,
) -> list[tuple[str, str]]:
    """Close every unfinished mission safely; returns (mission_id, outcome) pairs. An armed
    vehicle is sent home or landed, as `in_air` (a `RESTART_ACTIONS` key) says. Each one
    closed also goes to `audit` (a "restart-recovery" record) when given, and what is
    journaled (the abort in the air, the end) is published as `MissionEvent`s when `publish`
    is given, so that the dispatcher hears of it as of any mission's end."""
    action, in_air_outcome = RESTART_ACTIONS[in_air]
    closed = []
    for mission_id in journal.unfinished():
        state = vehicle.state
        tell = _teller(publish, mission_id, state.boot_time_s)
        if state.armed:
            outcome = in_air_outcome
            detail = {"reason": outcome, "action": action}
            journal.record(mission_id, "abort", "abort", detail, state.boot_time_s)
            tell("abort", detail)
            try:
                if action == "RTL":
                    vehicle.rtl()
                else:
                    vehicle.land()
            except BridgeError as exc:
                journal.record(mission_id, "abort", "abort-action-failed", {"error": str(exc)},
                               state.boot_time_s)  # fmt: skip
                log.error("mission %s: %s after restart failed: %s", mission_id, action, exc)
        else:
            outcome = "interrupted on the ground by a companion restart"
        journal.finish(mission_id, outcome, state.boot_time_s)
        tell(FINISHED_EVENT, {"outcome": outcome})
        log.warning("mission %s: %s", mission_id, outcome)
        closed.append((mission_id, outcome))
        if audit is not None:
            record = {"mission": mission_id, "outcome": outcome, "armed": state.armed,
                      "boot_time_s": state.boot_time_s}  # fmt: skip
            try:
                audit("restart-recovery", record)
            except (AuditError, ValueError) as exc:  # the vehicle's safety comes first
                log.error("mission %s: restart recovery not audited: %s", mission_id, exc)
    return closed


def _teller(
    publish: Callable[[object], None] | None, mission_id: str, boot_time_s: float | None
) -> Callable[[str, dict[str, Any]], None]:
    """Publishes a recovery's transition of `mission_id` as a `MissionEvent` (or nothing)."""

    def tell(event: str, detail: dict[str, Any]) -> None:
        if publish is not None:
            publish(MissionEvent(mission_id, Phase.ABORT, event, detail, boot_time_s, time.time()))

    return tell


def open_security(
    config: SecurityConfig, running: ExitStack
) -> tuple[bytes | None, AuditHook | None]:
    """The MAVLink signing secret and the audit hook from the drone's key store in
    `config.keys_dir` (the trail pushed onto `running`); (None, None), with a warning, when
    the folder holds no drone keys. KeyFileError or AuditError when it does but they cannot
    be used."""
    keys = KeyStore(config.keys_dir)
    if not keys.has_drone():
        log.warning(
            "MAVLink signing and the audit trail are off: %s holds no drone keys (create them "
            "with `skycourier keys init --dir %s --drone ID`, or set [security] keys_dir)",
            config.keys_dir,
            config.keys_dir,
        )
        return None, None
    secret = keys.mavlink_signing_secret()
    trail = running.enter_context(AuditTrail(config.audit_path, keys.drone_identity_key()))
    return secret, lambda kind, data: trail.append(kind, **data)


def _log_link(event: LinkState) -> None:
    log.log(logging.INFO if event.up else logging.WARNING, "autopilot link %s %s",
            "up" if event.up else "down", event.reason)  # fmt: skip


def _log_text(text: StatusText) -> None:
    log.info("autopilot: %s", text.text)


def run_daemon(config: Config, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); returns the process exit status."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: stopping", signum)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    bus = Bus()
    bus.subscribe(LinkState, _log_link)
    bus.subscribe(StatusText, _log_text)
    with ExitStack() as running:
        # systemd (Type=notify): entered first, so its pings outlive every other part's stop.
        watchdog = running.enter_context(Watchdog.from_environment())
        try:
            journal = running.enter_context(Journal(config.journal.path))
        except JournalError as exc:
            log.error("cannot open the mission journal: %s", exc)
            return 1
        try:
            secret, audit = open_security(config.security, running)
        except (KeyFileError, AuditError) as exc:
            log.error("cannot use the drone's keys or audit trail: %s", exc)
            return 1
        try:
            vehicle = running.enter_context(
                connect_autopilot(config, bus.publish, signing_secret=secret)
            )
        except BridgeError as exc:
            log.error("cannot reach the autopilot: %s", exc)
            return 1
        gcs = start_gcs(config, vehicle.link, secret, running)
        intake = _open_intake(config, bus, running)
        commands = open_commands(config, bus, running, audit)
        flights: list[OrderFlights] = []  # filled once orders are flown

        def pin_check(digits: str) -> tuple[str, bool] | None:
            return flights[0].pin_check(digits) if flights else None

        supervisor = Supervisor(_parts(config, bus, vehicle, intake, pin_check, commands, audit))
        supervisor.start_all(time.monotonic())
        running.callback(lambda: supervisor.stop_all(time.monotonic()))

        def uplink() -> TelemetryUplink | None:
            return supervisor.handle("telemetry")

        status = DaemonStatus(
            bus,
            vehicle,
            queue=None if intake is None else intake.queue,
            uplink=uplink,
            health=supervisor.health,
            gcs=gcs,
        )
        _serve(config, status, intake, commands, running)
        try:
            vehicle.wait_until(
                lambda s: s.boot_time_s is not None, config.vehicle.connect_timeout_s, "telemetry"
            )
            _notify_ready(watchdog, vehicle, running)
            recover_unfinished(journal, vehicle, audit, config.journal.restart_in_air, bus.publish)
            if intake is not None:
                announce = recipient_announcer(config, lambda: supervisor.handle("identity"))
                flight = start_flights(
                    config, intake, bus, vehicle, journal, running, uplink=uplink, audit=audit,
                    announce=announce,
                )  # fmt: skip
                flights.append(flight)
            _keep_supervised(supervisor, watchdog, stop, running)
            _supervise(vehicle, watchdog, stop)
        except BridgeError as exc:
            log.error("daemon stopped: %s", exc)
            return 1
    return 0


#: How often the supervisor looks at the subsystems (seconds).
SUPERVISOR_TICK_S = 1.0


def _open_intake(config: Config, bus: Bus, running: ExitStack) -> OrderIntake | None:
    """The order queue and verifier, or None (orders off, said why) when the queue cannot
    be opened: the rest of the daemon runs on."""
    try:
        return open_intake(config, bus, running)
    except QueueError as exc:
        log.error("orders off: %s", exc)
        return None


def _parts(
    config: Config,
    bus: Bus,
    vehicle: Vehicle,
    intake: OrderIntake | None,
    pin_check: Callable[[str], tuple[str, bool] | None],
    commands: CommandIntake,
    audit: AuditHook | None = None,
) -> list[Part]:
    """GPS, telemetry, vision and identity as the supervisor's parts: each started by its own
    function (None when not configured), restarted when it fails while the others run."""

    def start_telemetry() -> TelemetryUplink | None:
        link = open_uplink(config.modem, config.telemetry, bus)
        if link is None:
            log.warning(
                'telemetry off: [telemetry] transport is "modem" but [modem] port is unset, so '
                "no telemetry, events or SMS will reach the operator; set [modem] port to the "
                'modem\'s AT port, or [telemetry] transport = "ip" to send over another '
                "network interface"
            )
        else:
            listen_on(link, config, intake, pin_check, commands)
        return link

    return [
        Part(
            "gps",
            lambda: start_gps(config.gps, bus),
            lambda g: g.stop(),
            lambda g: g.running,
            lambda _g: _gps_condition(bus),
        ),
        Part("telemetry", start_telemetry, lambda u: u.close(), lambda u: u.alive),
        # Obstacles go to the autopilot as OBSTACLE_DISTANCE and on the bus; None: no vision.
        Part(
            "vision",
            lambda: start_vision(config.vision, bus, vehicle),
            lambda v: v.stop(),
            lambda v: v.running or v.ended,
        ),
        # The door camera's face check of each order's recipient; None: the PIN only.
        Part(
            "identity",
            lambda: start_door_camera(config, bus, audit),
            lambda d: d.stop(),
            lambda d: d.alive,
            lambda d: d.describe(),
        ),
    ]


def _gps_condition(bus: Bus) -> str:
    """The receiver's last reported condition ("ok: ...", "disconnected: cannot open ..."):
    the driver runs while it looks for a missing receiver, and this says so."""
    status = bus.latest(GpsStatus)
    return "no status yet" if status is None else f"{status.state}: {status.detail}"


def _serve(
    config: Config,
    status: DaemonStatus,
    intake: OrderIntake | None,
    commands: CommandIntake,
    running: ExitStack,
) -> None:
    """The control socket (orders, status and operator commands) and, when configured, the
    metrics server."""
    submit = intake.submit if intake is not None else _orders_off
    try:
        control = ControlServer(
            config.intake.socket_path, submit, status.snapshot, control_command(commands)
        ).start()
        running.callback(control.stop)
    except ControlError as exc:  # the rest of the daemon keeps running
        log.error("control socket off: %s", exc)
    metrics = config.metrics
    if metrics.port is not None:
        try:
            server = serve_metrics(
                status.snapshot, config.telemetry.drone_id, metrics.address, metrics.port
            )
        except OSError as exc:
            log.error("metrics off: cannot serve on %s:%d: %s", metrics.address, metrics.port,
                      exc)  # fmt: skip
        else:
            running.callback(server.stop)


def _orders_off(_blob: bytes, source: str) -> OrderAck:
    return OrderAck(False, "queue", "the order queue cannot be opened (see the log)", source)


def _keep_supervised(
    supervisor: Supervisor, watchdog: Watchdog, stop: threading.Event, running: ExitStack
) -> None:
    """The supervisor's loop on its own thread, a critical loop for the watchdog."""
    beat = watchdog.register("subsystem supervisor", watchdog.max_stale(SUPERVISOR_TICK_S))
    thread = threading.Thread(
        target=supervisor.run,
        args=(stop, time.monotonic, SUPERVISOR_TICK_S, beat),
        name="supervisor",
        daemon=True,
    )
    thread.start()
    running.callback(thread.join, 5.0)


def _log_status(state: VehicleState, link_up: bool) -> None:
    pos = state.position
    log.info(
        "status",
        extra={
            "link_up": link_up,
            "mode": state.mode,
            "armed": state.armed,
            "alt_rel_m": None if pos is None else round(pos.alt_rel_m, 1),
            "battery_pct": state.battery.remaining_pct,
            "gps_fix": state.gps.fix_type,
        },
    )


# -- systemd: readiness, status lines and the watchdog (companion.sd_notify) ------------------


def _notify_ready(watchdog: Watchdog, vehicle: Vehicle, running: ExitStack) -> None:
    """The autopilot link is up and its telemetry flows: tell systemd the daemon is ready,
    watch the link's reader thread, and say STOPPING=1 on any way out from here."""
    watchdog.ready(_status_text(vehicle.state, vehicle.link.up))
    link = vehicle.link

    def reader_running() -> bool:
        # The reader drops the link within a read (0.05 s) of the heartbeat timing out; a
        # link still up with a heartbeat twice as old means the reader no longer goes round
        # (stuck in a listener), while a link that is merely down is not a hang.
        return not (link.up and link.heartbeat_age() > 2 * link.heartbeat_timeout_s)

    tick = watchdog.tick_s or _STATUS_EVERY_S
    watchdog.watch("autopilot link reader", reader_running, watchdog.max_stale(tick))
    running.callback(watchdog.stopping)


def _supervise(vehicle: Vehicle, watchdog: Watchdog, stop: threading.Event) -> None:
    """Log a status line (and send it to systemd) every `_STATUS_EVERY_S` until `stop`, then
    say STOPPING=1 before anything is stopped. This is a critical loop: it beats the watchdog
    each time round, waking at least once a tick."""
    wake = watchdog.wake_period(_STATUS_EVERY_S)
    beat = watchdog.register("status loop", watchdog.max_stale(wake))
    due = time.monotonic() + _STATUS_EVERY_S
    while not stop.wait(wake):
        beat()
        if time.monotonic() >= due:
            due = time.monotonic() + _STATUS_EVERY_S
            _log_status(vehicle.state, vehicle.link.up)
            watchdog.status(_status_text(vehicle.state, vehicle.link.up))
    watchdog.stopping()


def _status_text(state: VehicleState, link_up: bool) -> str:
    """One line for `systemctl status`."""
    pos = state.position
    alt = "no position" if pos is None else f"{pos.alt_rel_m:.1f} m"
    return (
        f"autopilot link {'up' if link_up else 'DOWN'}; {state.mode}, "
        f"{'armed' if state.armed else 'disarmed'}, {alt}, "
        f"battery {state.battery.remaining_pct} %, GPS fix {state.gps.fix_type}"
    )
