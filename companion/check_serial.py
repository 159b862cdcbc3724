"""`skycourier check` for the serial devices: the companion's GPS receiver and the modem.

Each opens its port as the daemon does (exclusively, at the configured rate) and asks the
device who it is: the GPS with UBX MON-VER after finding the rate its output decodes at
(`companion.gps.identify`), the modem with `ATI`, `AT+CPIN?` and the registration polls
(`companion.modem.identify`). A port that cannot be opened gets the fix its errno calls for:
the device path (and where to find the right one), the dialout group, or the program that
holds it.
"""

from __future__ import annotations

import errno
from typing import get_args

import serial

from companion.check import CheckRow
from companion.config import Config, ModemConfig
from companion.gps.ubx_config import BAUD_RATES
from companion.serial_errors import serial_cause

#: The names the udev rules in deploy/ give each device.
UDEV_NAMES = {
    "gps": "/dev/skycourier-gps",
    "modem": "/dev/skycourier-modem",
    "flight controller": "/dev/skycourier-fc",
}
#: Each device in words, for the fixes.
NAMES = {"gps": "GPS receiver", "modem": "modem", "flight controller": "flight controller"}
#: Rates the A7670's UART can be set to (AT+IPR), as `[modem] baud` allows them.
MODEM_RATES: tuple[int, ...] = get_args(ModemConfig.model_fields["baud"].annotation)


def _errno(exc: BaseException) -> int | None:
    err = getattr(exc, "errno", None)
    if err is None and exc.__context__ is not None:
        err = getattr(exc.__context__, "errno", None)
    return err


def port_failure(device: str, port: str, exc: BaseException, setting: str, where: str) -> CheckRow:
    """The failing row for a serial port that did not open, with the fix its errno calls
    for; `setting` names the option holding the port ("port in [gps]")."""
    err = _errno(exc)
    udev, name = UDEV_NAMES[device], NAMES[device]
    if err == errno.ENOENT:
        return CheckRow(
            device,
            "port",
            "fail",
            f"{port}: no such device",
            f"check the {name}'s cable and power; `ls -l /dev/serial/by-id/` lists the serial "
            f"devices present: set {setting} of {where} to the {name}'s entry there, or to "
            f"{udev} once the udev rules from deploy/ are installed",
        )
    if err in (errno.EACCES, errno.EPERM):
        return CheckRow(
            device,
            "port",
            "fail",
            f"{port}: permission denied",
            "add the user that runs skycourier to the dialout group (sudo usermod -aG dialout "
            "$USER, then log in again; the service's own user is in it already)",
        )
    if err in (errno.EBUSY, errno.EAGAIN):
        return CheckRow(
            device,
            "port",
            "fail",
            f"{port}: busy, another program has it open",
            f"stop the program that holds it (`fuser -v {port}` names it): the daemon "
            "(sudo systemctl stop skycourier), gpsd or ModemManager (the udev rules from "
            "deploy/ keep ModemManager off SkyCourier's ports)",
        )
    if err == errno.ENOTTY:
        return CheckRow(
            device,
            "port",
            "fail",
            f"{port}: not a serial port",
            f"set {setting} of {where} to the {name}'s serial device "
            f"(`ls -l /dev/serial/by-id/`, or {udev} with the udev rules from deploy/)",
        )
    return CheckRow(
        device,
        "port",
        "fail",
        f"{port}: {serial_cause(exc)}",
        f"unplug and replug the {name}; if it persists, check its cable and power",
    )


def _unset(device: str, section: str, demanded: tuple[str, str] | None, where: str) -> CheckRow:
    """An unset port: skipped, unless `demanded` = (by what, how to turn that off) says the
    preflight needs the device: then no delivery could ever start, which is a failure."""
    if demanded is None:
        return CheckRow(device, "identity", "skip", f"not configured ([{section}] port unset)")
    by, turn_off = demanded
    return CheckRow(
        device,
        "identity",
        "fail",
        f"[{section}] port is unset, but {by}: every delivery would be refused",
        f"set port in [{section}] of {where} to the {NAMES[device]}'s serial device, or {turn_off}",
    )


# -- GPS ----------------------------------------------------------------------------------


def check_gps(config: Config, where: str) -> list[CheckRow]:
    """The receiver on `[gps] port` answers UBX MON-VER at a rate the configuration names."""
    from companion.gps.identify import identify_receiver

    gc = config.gps
    if gc.port is None:
        demanded = (
            ("[preflight] companion_gps is on", "set companion_gps = false in [preflight]")
            if config.preflight.companion_gps
            else None
        )
        return [_unset("gps", "gps", demanded, where)]
    # The configured rate; once the daemon has configured the receiver, the target rate.
    expected = [gc.baud] + ([gc.target_baud] if gc.configure else [])
    rates = list(dict.fromkeys([*expected, *BAUD_RATES]))
    try:
        found = identify_receiver(gc.port, rates)
    except (serial.SerialException, OSError) as exc:
        return [port_failure("gps", gc.port, exc, "port in [gps]", where)]
    tried = ", ".join(map(str, found.rates_tried))
    if found.baud is None:
        if found.heard_bytes:
            return [
                CheckRow(
                    "gps",
                    "identity",
                    "fail",
                    f"{gc.port}: {found.heard_bytes} bytes but no NMEA or UBX at any of {tried} "
                    "baud: not a GPS receiver (another device's port?)",
                    "set port in [gps] of "
                    f"{where} to the receiver's port (`ls -l /dev/serial/by-id/`: a u-blox "
                    "shows as usb-u-blox_AG...; or /dev/skycourier-gps with the udev rules "
                    "from deploy/)",
                )
            ]
        return [
            CheckRow(
                "gps",
                "identity",
                "fail",
                f"{gc.port}: no data at any of {tried} baud",
                "power the receiver and wire its TX to the host's RX (and RX to TX, grounds "
                f"joined); or set port in [gps] of {where} to the receiver's port",
            )
        ]
    version = found.version
    if version is None:
        if not gc.configure:
            return [
                CheckRow(
                    "gps",
                    "identity",
                    "pass",
                    f"NMEA at {found.baud} baud on {gc.port}; no answer to UBX MON-VER (not "
                    "needed: [gps] configure is off)",
                )
            ]
        return [
            CheckRow(
                "gps",
                "identity",
                "fail",
                f"NMEA at {found.baud} baud on {gc.port}, but no answer to UBX MON-VER: not "
                "a u-blox receiver, or its UBX input is off",
                "use a u-blox 6/7 receiver (NEO-6M), whose UBX input is on by default; or set "
                f"configure = false in [gps] of {where} to read it as it is",
            )
        ]
    who = f"{version.generation} (software {version.sw_version}, hardware {version.hw_version})"
    if found.baud not in expected:
        return [
            CheckRow(
                "gps",
                "baud",
                "fail",
                f"{who} answers at {found.baud} baud on {gc.port}, not at the configured {gc.baud}",
                f"set baud = {found.baud} in [gps] of {where}",
            )
        ]
    note = "" if found.baud == gc.baud else " ([gps] target_baud: the daemon configured it)"
    return [CheckRow("gps", "identity", "pass", f"{who} at {found.baud} baud on {gc.port}{note}")]


# -- modem --------------------------------------------------------------------------------

#: ATI lines worth showing (the IMEI identifies the subscriber's device: not printed).
_ATI_KEYS = ("Manufacturer", "Model", "Revision")


def check_modem(config: Config, where: str) -> list[CheckRow]:
    """The modem on `[modem] port` answers ATI at the configured rate; its SIM state and
    network registration are reported (registration is shown, not required)."""
    from companion.modem.identify import identify_modem

    mc = config.modem
    if mc.port is None:
        demanded = (
            (
                '[preflight] uplink is on with [telemetry] transport "modem"',
                'set uplink = false in [preflight], or transport = "ip" in [telemetry]',
            )
            if config.preflight.uplink and config.telemetry.transport == "modem"
            else None
        )
        return [_unset("modem", "modem", demanded, where)]
    try:
        probe = identify_modem(mc.port, mc.baud, MODEM_RATES)
    except (serial.SerialException, OSError) as exc:
        return [port_failure("modem", mc.port, exc, "port in [modem]", where)]
    if probe.baud is None:
        rates = ", ".join(map(str, MODEM_RATES))
        return [
            CheckRow(
                "modem",
                "identity",
                "fail",
                f"{mc.port}: no answer to AT at any of {rates} baud",
                "power the modem on (the A7670 starts on a PWRKEY pulse; its status LED "
                "lights), cross TX/RX with common ground; over USB, set port in [modem] of "
                f"{where} to its AT interface (/dev/skycourier-modem with the udev rules from "
                "deploy/; a SimTech entry under /dev/serial/by-id/)",
            )
        ]
    if probe.baud != mc.baud:
        return [
            CheckRow(
                "modem",
                "baud",
                "fail",
                f"{mc.port}: the modem answers at {probe.baud} baud, not at the configured "
                f"{mc.baud}",
                f"set baud = {probe.baud} in [modem] of {where} (or set the module back to "
                "its factory 115200 with AT+IPR=115200)",
            )
        ]
    if probe.identity_error is not None:
        return [
            CheckRow(
                "modem",
                "identity",
                "fail",
                f"{mc.port}: answers AT but not ATI: {probe.identity_error}",
                "power-cycle the modem, then run skycourier check again",
            )
        ]
    shown = [line for line in probe.identity if line.split(":", 1)[0] in _ATI_KEYS]
    rows = [
        CheckRow(
            "modem",
            "identity",
            "pass",
            f"{'; '.join(shown or probe.identity[:3]) or 'ATI answered OK'} at {mc.baud} baud "
            f"on {mc.port}",
        ),
        _sim_row(probe.sim, probe.sim_error, mc.pin is not None, where),
    ]
    if probe.registration:
        seen = "; ".join(f"{what}: {state}" for what, state in probe.registration)
    else:
        seen = "not reported (AT+CEREG? and AT+CREG? unanswered)"
    rows.append(CheckRow("modem", "registration", "info", seen))
    return rows


def _sim_row(sim: str | None, error: str | None, have_pin: bool, where: str) -> CheckRow:
    if sim == "READY":
        return CheckRow("modem", "SIM", "pass", "SIM ready")
    if sim == "SIM PIN":
        if have_pin:
            return CheckRow("modem", "SIM", "pass", "SIM asks for its PIN: the daemon enters "
                            "[modem] pin (not tried here: each wrong try counts)")  # fmt: skip
        return CheckRow(
            "modem",
            "SIM",
            "fail",
            "SIM asks for a PIN and [modem] pin is unset",
            f'set pin = "<the PIN>" in [modem] of {where}, or remove the PIN in a phone',
        )
    if sim is not None and "PUK" in sim:
        return CheckRow(
            "modem",
            "SIM",
            "fail",
            f"SIM is locked ({sim}): three wrong PINs were entered",
            "unlock it with its PUK in a phone, then set the right pin in [modem]",
        )
    if sim is not None:
        return CheckRow(
            "modem", "SIM", "fail", f"SIM state {sim}", "unlock the SIM in a phone first"
        )
    return CheckRow(
        "modem",
        "SIM",
        "fail",
        f"AT+CPIN?: {error}",
        "insert the SIM (modem powered off), contacts down; a SIM busy or failure right after "
        "power-up clears within seconds: run skycourier check again",
    )
