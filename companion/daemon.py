"""`skycourier run`: the on-board daemon.

It owns the link to the flight controller for the life of the process, keeps the vehicle
state on the bus, and logs a status line at a steady rate. At start it reads the mission
journal: a mission left unfinished by a crash or reboot is never forgotten. If the vehicle
is still flying it is brought home (RTL), since the plan's context (recipient, obstacles) is
gone with the old process; if it is on the ground the mission is closed as interrupted. In
both cases the outcome is journaled. Orders reach the daemon through later subsystems
(order intake, telemetry link); until then it supervises.

With the drone's key store in `[security] keys_dir` (`skycourier keys init --drone ID`), the
link to the flight controller is MAVLink 2 signed with its secret, and the daemon's decisions
(so far: the missions it closes after a restart) go into the audit trail at
`[security] audit_path`, signed with the drone's identity key. Without one the daemon says so
and flies unsigned; a key store it cannot use (a key file others can read, a corrupt file) or
an audit trail it cannot continue stops it from starting.

Everything the daemon starts (journal, audit trail, autopilot link, GPS, telemetry, vision) is
pushed onto one `ExitStack` as it starts, so a failure starting any part, or any way out of
the run, stops exactly what was started, newest first.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from contextlib import ExitStack
from types import FrameType
from typing import Any

from companion.autopilot import connect_autopilot
from companion.bus import Bus
from companion.config import Config, SecurityConfig
from companion.gps.service import start_gps
from companion.mission.journal import Journal, JournalError
from companion.security.audit import AuditError, AuditTrail
from companion.security.keys import KeyFileError, KeyStore
from companion.telemetry.uplink import open_uplink
from companion.vision.service import start_vision
from firmware_bridge.errors import BridgeError
from firmware_bridge.state import LinkState, StatusText, VehicleState
from firmware_bridge.vehicle import Vehicle

log = logging.getLogger(__name__)

_STATUS_EVERY_S = 10.0


#: Receives an audited record: its kind and data (numbers and words only).
AuditHook = Callable[[str, dict[str, Any]], None]


def recover_unfinished(
    journal: Journal, vehicle: Vehicle, audit: AuditHook | None = None
) -> list[tuple[str, str]]:
    """Close every unfinished mission safely; returns (mission_id, outcome) pairs. Each one
    closed also goes to `audit` (a "restart-recovery" record) when given."""
    closed = []
    for mission_id in journal.unfinished():
        state = vehicle.state
        if state.armed:
            outcome = "companion restarted mid-flight: returning home"
            journal.record(mission_id, "abort", "abort", {"reason": outcome, "action": "RTL"},
                           state.boot_time_s)  # fmt: skip
            try:
                vehicle.rtl()
            except BridgeError as exc:
                journal.record(mission_id, "abort", "abort-action-failed", {"error": str(exc)},
                               state.boot_time_s)  # fmt: skip
                log.error("mission %s: RTL after restart failed: %s", mission_id, exc)
        else:
            outcome = "interrupted on the ground by a companion restart"
        journal.finish(mission_id, outcome, state.boot_time_s)
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
        try:
            _start_subsystems(config, bus, vehicle, running)
        except Exception:
            # Whatever did start is stopped by `running` on the way out.
            log.exception("daemon not started: a subsystem failed to start")
            return 1
        try:
            vehicle.wait_until(
                lambda s: s.boot_time_s is not None, config.vehicle.connect_timeout_s, "telemetry"
            )
            recover_unfinished(journal, vehicle, audit)
            while not stop.wait(_STATUS_EVERY_S):
                _log_status(vehicle.state, vehicle.link.up)
        except BridgeError as exc:
            log.error("daemon stopped: %s", exc)
            return 1
    return 0


def _start_subsystems(config: Config, bus: Bus, vehicle: Vehicle, running: ExitStack) -> None:
    """Start GPS, telemetry and vision, each pushed onto `running` as soon as it runs."""
    gps = start_gps(config.gps, bus)
    if gps is not None:
        running.callback(gps.stop)
    uplink = open_uplink(config.modem, config.telemetry, bus)
    if uplink is not None:
        running.callback(uplink.close)
    else:
        log.warning(
            'telemetry off: [telemetry] transport is "modem" but [modem] port is unset, so no '
            "telemetry, events or SMS will reach the operator; set [modem] port to the modem's "
            'AT port, or [telemetry] transport = "ip" to send over another network interface'
        )
    # Obstacles go to the autopilot as OBSTACLE_DISTANCE and on the bus; None: no vision.
    vision = start_vision(config.vision, bus, vehicle)
    if vision is not None:
        running.callback(vision.stop)


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
