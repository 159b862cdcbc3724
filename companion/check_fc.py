"""`skycourier check` for the flight controller: its heartbeat, its firmware version, and its
parameters against the preflight checks of a delivery.

The link is opened as the daemon opens it (`connect_autopilot`: every `[vehicle]` and
`[companion]` setting, MAVLink 2 signing with the drone's key when its key store has one).
Then:

- HEARTBEAT: the autopilot and vehicle type of the configured system/component (SkyCourier
  flies ArduPilot; another autopilot fails here);
- AUTOPILOT_VERSION, asked for with MAV_CMD_REQUEST_MESSAGE (MAVLink's common way; ArduPilot
  answers it, GCS_MAVLINK::handle_command_request_message), falling back to the older
  MAV_CMD_REQUEST_AUTOPILOT_CAPABILITIES: the firmware version, which must be 4.0 or later
  (Lua scripting, which the companion watchdog needs);
- every parameter, judged by `companion.mission.preflight.check_autopilot` against the
  default delivery of the configuration (`[delivery]` from the autopilot's home, `[flight]`
  altitudes and limits): each finding is its own failing row naming the parameter and the
  value it needs, fixed by `skycourier fc apply`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

from companion.check import CheckRow
from companion.config import Config
from firmware_bridge.dialect import mavlink

DEVICE = "flight controller"
#: How long to wait for a message once asked for it (ArduPilot answers within milliseconds;
#: a HEARTBEAT comes every second).
ANSWER_S = 3.0
#: How long to wait for the battery level and the home position from the telemetry streams
#: (HOME_POSITION comes every 2 s; without a GPS fix there is none).
TELEMETRY_S = 3.0
#: FIRMWARE_VERSION_TYPE (MAVLink common.xml) in words.
_RELEASE_TYPES = {0: "dev", 64: "alpha", 128: "beta", 192: "rc", 255: "official"}
#: Rates ArduPilot's SERIALn_BAUD offers for a companion link, the usual ones first.
FC_RATES = (57600, 115200, 921600, 460800, 230400, 500000, 1500000)
#: How long to listen for a heartbeat at each rate while looking for the link's rate.
HEARD_S = 1.5
#: The first ArduPilot release with Lua scripting (Copter 4.0), which the watchdog needs.
MIN_MAJOR = 4


def check_flight_controller(config: Config, where: str) -> list[CheckRow]:
    """Heartbeat, firmware version and preflight parameters of `[vehicle] connection`."""
    from companion.autopilot import connect_autopilot
    from companion.check_serial import port_failure
    from companion.security.keys import KeyFileError, KeyStore
    from firmware_bridge.errors import BridgeError, SigningError

    vc = config.vehicle
    endpoint = vc.endpoint
    if endpoint.kind == "serial":
        problem = _serial_problem(endpoint.address, endpoint.port_or_baud)
        if problem is not None:
            return [
                port_failure(DEVICE, endpoint.address, problem, "connection in [vehicle]", where)
            ]
    try:
        keys = KeyStore(config.security.keys_dir)
        secret = keys.mavlink_signing_secret() if keys.has_drone() else None
    except KeyFileError as exc:
        return [
            CheckRow(
                DEVICE,
                "signing key",
                "fail",
                f"the drone's key store cannot be used: {exc}",
                "fix the key file as the message says, or create the keys: skycourier keys "
                f"init --dir {config.security.keys_dir} --drone ID",
            )
        ]
    messages = _Messages(vc.target_system, vc.target_component)
    try:
        vehicle = connect_autopilot(config, lambda _event: None, signing_secret=secret)
    except SigningError as exc:
        return [
            CheckRow(
                DEVICE,
                "signing",
                "fail",
                f"{vc.connection}: {exc}",
                "the flight controller holds another signing key: clear it from a ground "
                "station on its USB port (MAVLink signing setup), then start the daemon",
            )
        ]
    except BridgeError as exc:
        if endpoint.kind == "serial" and exc.__cause__ is None:  # opened, but silent
            rate = mavlink_rate(endpoint.address, FC_RATES, skip=endpoint.port_or_baud)
            if rate is not None:
                return [_baud_row(endpoint.address, endpoint.port_or_baud, rate, where)]
        opened = exc.__cause__ is None
        return [
            CheckRow(
                DEVICE, "heartbeat", "fail", str(exc), _no_heartbeat_fix(config, where, opened)
            )
        ]
    with vehicle:
        remove = vehicle.link.add_listener(messages)
        try:
            rows = [_heartbeat_row(messages, vc.connection)]
            rows.append(_version_row(vehicle, messages))
            rows += _parameter_rows(vehicle, config)
        finally:
            remove()
    return rows


def _serial_problem(device: str, baud: int) -> BaseException | None:
    """Why the serial port cannot be opened, or None when it can (it is closed again at
    once: the link opens it for real)."""
    import serial

    try:
        serial.Serial(device, baud, exclusive=True).close()
    except (serial.SerialException, OSError) as exc:
        return exc
    return None


def mavlink_rate(device: str, rates: Sequence[int], *, skip: int | None = None) -> int | None:
    """The first of `rates` at which `device` carries a MAVLink HEARTBEAT (at the wrong
    rate a UART reads garbage, which never passes MAVLink's CRC), or None. `HEARD_S` a rate:
    ArduPilot sends its heartbeat once a second."""
    import serial

    for rate in rates:
        if rate == skip:
            continue
        parser = mavlink.MAVLink(None)
        parser.robust_parsing = True
        try:
            with serial.Serial(device, rate, timeout=0.1, exclusive=True) as port:
                port.reset_input_buffer()
                end = time.monotonic() + HEARD_S
                while time.monotonic() < end:
                    data = port.read(4096)
                    if not data:
                        continue
                    try:
                        messages = parser.parse_buffer(data) or []
                    except Exception:  # pymavlink can still raise on some corrupt input
                        continue
                    if any(m.get_type() == "HEARTBEAT" for m in messages):
                        return rate
        except (serial.SerialException, OSError):
            return None
    return None


def _baud_row(device: str, configured: int, rate: int, where: str) -> CheckRow:
    return CheckRow(
        DEVICE,
        "baud",
        "fail",
        f"the flight controller sends MAVLink at {rate} baud on {device}, not at the "
        f"configured {configured}",
        f'set connection = "{device}:{rate}" in [vehicle] of {where} (or SERIALn_BAUD '
        f"{configured // 1000} on the flight controller's port)",
    )


def _no_heartbeat_fix(config: Config, where: str, opened: bool) -> str:
    vc = config.vehicle
    endpoint = vc.endpoint
    address = f"{endpoint.address}:{endpoint.port_or_baud}"
    if not opened:
        if endpoint.kind == "tcp":
            return (
                f"start the autopilot listening on {address} (SITL, or `skycourier vehicle`), "
                f"or set connection in [vehicle] of {where}"
            )
        return f"set connection in [vehicle] of {where} to an address this machine has"
    ids = (
        f"[vehicle] target_system {vc.target_system} must be its SYSID_THISMAV and "
        f"target_component {vc.target_component} its component (1)"
    )
    if endpoint.kind == "serial":
        return (
            f"no MAVLink at any of {', '.join(map(str, FC_RATES))} baud: wire the flight "
            "controller's TELEM port TX to the host's RX (and RX to TX, grounds joined), and "
            f"set SERIALn_PROTOCOL 2 and SERIALn_BAUD {endpoint.port_or_baud // 1000} on it; "
            f"{ids}"
        )
    if endpoint.kind == "tcp":
        return f"the program on {address} sends no MAVLink heartbeat: {ids}"
    return (
        f"make the autopilot send MAVLink to {address}, or set connection in [vehicle] of "
        f"{where}; {ids}"
    )


class _Messages:
    """Keeps the autopilot's latest HEARTBEAT and AUTOPILOT_VERSION (a link listener, called
    on the link's reader thread)."""

    def __init__(self, system: int, component: int) -> None:
        self._source = (system, component)
        self._lock = threading.Condition()
        self._latest: dict[str, Any] = {}

    def __call__(self, msg: Any) -> None:
        kind = msg.get_type()
        if kind not in ("HEARTBEAT", "AUTOPILOT_VERSION"):
            return
        if (msg.get_srcSystem(), msg.get_srcComponent()) != self._source:
            return  # a camera's or gimbal's heartbeat is not the autopilot's
        with self._lock:
            self._latest[kind] = msg
            self._lock.notify_all()

    def forget(self, kind: str) -> None:
        with self._lock:
            self._latest.pop(kind, None)

    def wait(self, kind: str, timeout: float) -> Any:
        with self._lock:
            self._lock.wait_for(lambda: kind in self._latest, timeout)
            return self._latest.get(kind)


def _enum_name(enum: str, value: int) -> str:
    entry = mavlink.enums.get(enum, {}).get(value)
    return entry.name if entry is not None else f"{enum} {value}"


def _heartbeat_row(messages: _Messages, connection: str) -> CheckRow:
    heartbeat = messages.wait("HEARTBEAT", ANSWER_S)
    if heartbeat is None:
        return CheckRow(
            DEVICE,
            "heartbeat",
            "fail",
            f"{connection}: the link came up, then no HEARTBEAT for {ANSWER_S:g} s",
            "check the link's cable and the flight controller's power",
        )
    autopilot = _enum_name("MAV_AUTOPILOT", heartbeat.autopilot)
    vehicle_type = _enum_name("MAV_TYPE", heartbeat.type)
    seen = f"{autopilot}, {vehicle_type} on {connection}"
    if heartbeat.autopilot != mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA:
        return CheckRow(
            DEVICE,
            "heartbeat",
            "fail",
            f"{seen}: not ArduPilot",
            "flash ArduCopter 4.x (SkyCourier relies on ArduPilot's parameters, fences, "
            "failsafes and Lua scripting)",
        )
    return CheckRow(DEVICE, "heartbeat", "pass", seen)


def _version_row(vehicle: Any, messages: _Messages) -> CheckRow:
    from firmware_bridge.errors import BridgeError

    messages.forget("AUTOPILOT_VERSION")
    asked = []
    for command, params in (
        (mavlink.MAV_CMD_REQUEST_MESSAGE, (mavlink.MAVLINK_MSG_ID_AUTOPILOT_VERSION,)),
        (mavlink.MAV_CMD_REQUEST_AUTOPILOT_CAPABILITIES, (1,)),
    ):
        try:
            vehicle.command_long(command, *params)
        except BridgeError as exc:
            asked.append(f"{_enum_name('MAV_CMD', command)}: {exc}")
            continue
        version = messages.wait("AUTOPILOT_VERSION", ANSWER_S)
        if version is not None:
            return _describe_version(version)
        asked.append(f"{_enum_name('MAV_CMD', command)}: accepted, no AUTOPILOT_VERSION")
    return CheckRow(
        DEVICE,
        "firmware",
        "fail",
        "no AUTOPILOT_VERSION (" + "; ".join(asked) + ")",
        "update the flight controller to ArduCopter 4.x, which answers MAV_CMD_REQUEST_MESSAGE",
    )


def _describe_version(msg: Any) -> CheckRow:
    value = int(msg.flight_sw_version)
    major, minor, patch = value >> 24 & 0xFF, value >> 16 & 0xFF, value >> 8 & 0xFF
    release = _RELEASE_TYPES.get(value & 0xFF, f"type {value & 0xFF}")
    custom = bytes(int(b) & 0xFF for b in msg.flight_custom_version).split(b"\0", 1)[0]
    build = custom.decode("ascii", "replace") if custom.isascii() and custom else ""
    text = f"firmware {major}.{minor}.{patch} ({release}{f', build {build}' if build else ''})"
    if major < MIN_MAJOR:
        return CheckRow(
            DEVICE,
            "firmware",
            "fail",
            f"{text}: older than 4.0, which has no Lua scripting for the companion watchdog",
            "update the flight controller to ArduCopter 4.x",
        )
    return CheckRow(DEVICE, "firmware", "pass", text)


def _parameter_rows(vehicle: Any, config: Config) -> list[CheckRow]:
    from companion.geo import distance_m, offset
    from companion.mission.plan import delivery_plan
    from companion.mission.preflight import check_autopilot
    from firmware_bridge.errors import BridgeError

    connection = config.vehicle.connection
    try:
        params = vehicle.get_all_params()
    except BridgeError as exc:
        return [
            CheckRow(
                DEVICE,
                "parameters",
                "fail",
                f"cannot read the parameters: {exc}",
                "check the link (a lossy radio link drops parameters), then run it again",
            )
        ]
    # Judged with what came in time: no battery level is itself a finding.
    with contextlib.suppress(BridgeError):
        vehicle.wait_until(
            lambda s: s.home is not None and s.battery.remaining_pct is not None,
            TELEMETRY_S,
            "the home position and the battery level",
        )
    state = vehicle.state
    delivery = config.delivery
    place = state.home or state.position
    if place is not None:
        home = (place.lat, place.lon)
        drop = delivery.drop_point(*home)
        where_to = f"a delivery {distance_m(*home, *drop):.0f} m from home"
    else:
        # No position yet (no GPS fix indoors): the geometry is what the checks need.
        home = config.sim.home[:2]
        drop = offset(*home, delivery.distance_m, delivery.bearing_deg)
        where_to = (
            f"a delivery {delivery.distance_m:g} m from home ([delivery] distance_m; no home "
            "position from the autopilot yet)"
        )
    plan = delivery_plan("skycourier-check", drop, config.flight)
    findings = check_autopilot(params, plan, home, state.battery.remaining_pct)
    if not findings:
        return [
            CheckRow(
                DEVICE,
                "parameters",
                "pass",
                f"{len(params)} parameters; the preflight checks pass for {where_to}",
            )
        ]
    apply = f"skycourier fc apply --connection {connection}"
    rows = []
    for finding in findings:
        if finding.param == "battery":
            fix = "charge or change the battery before a delivery"
        elif finding.param == "SCW_ENABLE" and "SCW_ENABLE" not in params:
            fix = (
                "copy firmware_bridge/autopilot/scripts/companion_watchdog.lua to the flight "
                f"controller's APM/scripts/ folder, run `{apply}` (it sets SCR_ENABLE 1) and "
                "reboot it"
            )
        else:
            fix = (
                f"`{apply}` pushes delivery-copter.parm (add --airframe for the frame), or set "
                f"{finding.param} as said in a ground station"
            )
        rows.append(CheckRow(DEVICE, f"parameter {finding.param}", "fail", finding.problem, fix))
    return rows
