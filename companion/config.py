"""SkyCourier's configuration: one TOML file, validated into an immutable model.

A drone that reads a mistyped option as its default may fly somewhere nobody intended, so:
every key is known (an unknown one is an error, with the nearest known name suggested), every
value is typed strictly (a quoted number is a mistake, not a number) and range-checked, and
the options that depend on each other are checked together (handover below cruise below the
legal ceiling). A problem raises `ConfigError`, whose message names the file, the dotted field
and why, e.g. ``skycourier.toml: flight.cruise_alt_m: must be below flight.altitude_ceiling_m
(120 m), got 150``.

`Config.to_toml()` writes a configuration back out with every option commented from the
field descriptions; `deploy/skycourier.example.toml` is exactly `default_config_toml()`.
`Config.updated(...)` applies command-line overrides with the same validation.
"""

from __future__ import annotations

import difflib
import json
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from companion.geo import offset
from firmware_bridge.endpoint import Endpoint, EndpointError, parse_endpoint

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration that cannot be used; `problems` lists each as ``field: why``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class VehicleConfig(_Section):
    """The flight controller: how to reach it and how patiently to talk to it."""

    connection: str = Field(
        "tcp:127.0.0.1:5760",
        description=(
            "Link to the autopilot: tcp:HOST:PORT, udp:HOST:PORT (listen: the link answers "
            "only the address the autopilot's heartbeat came from), udpout:HOST:PORT, or a "
            "serial port DEVICE:BAUD (serial: prefix optional). Prefer /dev/serial/by-id/ "
            "paths: they survive USB re-enumeration."
        ),
        examples=["/dev/serial/by-id/usb-ArduPilot_fmuv3_XXXX-if00:115200", "/dev/ttyAMA0:921600"],
    )
    target_system: int = Field(1, ge=1, le=255, description="MAVLink system id of the autopilot.")
    target_component: int = Field(
        1,
        ge=0,
        le=255,
        description="MAVLink component id of the autopilot (1 = autopilot); not 0 (broadcast).",
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="Give up opening the link if no heartbeat arrives in this time."
    )
    heartbeat_timeout_s: float = Field(
        3.0, gt=0, description="The link counts as lost after this long without a heartbeat."
    )
    command_timeout_s: float = Field(
        1.5, gt=0, description="Wait this long for a COMMAND_ACK before resending a command."
    )
    command_retries: int = Field(
        3, ge=0, le=20, description="Resend an unanswered command this many times."
    )

    @field_validator("connection")
    @classmethod
    def _valid_endpoint(cls, value: str) -> str:
        try:
            parse_endpoint(value)
        except EndpointError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("target_component")
    @classmethod
    def _one_component(cls, value: int) -> int:
        # The link comes up on the heartbeat of exactly this component, and no component
        # sends its heartbeat from id 0: with 0 the link would never come up.
        if value == 0:
            raise ValueError(
                "0 is the broadcast id (MAV_COMP_ID_ALL), which no autopilot sends its "
                "heartbeat from, so the link would never come up; name the autopilot itself: "
                "1 (MAV_COMP_ID_AUTOPILOT1) on ArduPilot"
            )
        return value

    @property
    def endpoint(self) -> Endpoint:
        """The parsed `connection`."""
        return parse_endpoint(self.connection)


class CompanionConfig(_Section):
    """This computer's own MAVLink identity (MAV_COMP_ID_ONBOARD_COMPUTER is 191)."""

    system_id: int = Field(1, ge=1, le=255, description="MAVLink system id the companion uses.")
    component_id: int = Field(
        191, ge=1, le=255, description="MAVLink component id (191 = onboard computer)."
    )
    heartbeat_hz: float = Field(
        1.0, gt=0, le=50, description="Rate of the companion's own HEARTBEAT."
    )


class FlightConfig(_Section):
    """How a delivery is flown. Rates should match the autopilot's WPNAV_*/LAND_* parameters:
    they are what the ideal flight time in the report is computed from."""

    # The ceiling is declared first so that the altitudes below can be checked against it.
    altitude_ceiling_m: float = Field(
        120.0,
        gt=0,
        le=500,
        description=(
            "Legal altitude limit above home (120 m in the EU/UK). Cruise and handover "
            "altitudes must be below it."
        ),
    )
    # validate_default: a lowered ceiling must also be checked against the default altitudes.
    cruise_alt_m: float = Field(
        30.0, gt=0, validate_default=True, description="Altitude above home for the legs."
    )
    handover_alt_m: float = Field(
        5.0,
        gt=0,
        validate_default=True,
        description="Altitude above the drop point at which the parcel is released.",
    )
    cruise_speed_mps: float = Field(
        10.0, gt=0, le=20, description="Horizontal speed on the legs (WPNAV_SPEED)."
    )
    climb_rate_mps: float = Field(2.5, gt=0, le=10, description="Climb rate (WPNAV_SPEED_UP).")
    descent_rate_mps: float = Field(
        1.5,
        gt=0,
        le=10,
        description="Descent rate (WPNAV_SPEED_DN); landing uses it down to land_speed_high_alt_m.",
    )
    land_speed_mps: float = Field(
        0.5, gt=0, le=2, description="Final landing speed below land_speed_high_alt_m (LAND_SPEED)."
    )
    land_speed_high_alt_m: float = Field(
        10.0, ge=0, description="Altitude where landing slows to land_speed_mps (LAND_ALT_LOW)."
    )
    arrival_radius_m: float = Field(
        2.0, gt=0, le=50, description="The drop point counts as reached within this distance."
    )
    release_hold_s: float = Field(
        3.0, ge=0, le=120, description="Hover this long after releasing the parcel."
    )
    min_battery_pct: float = Field(
        25.0,
        ge=0,
        le=100,
        description="Do not start, or abort the delivery, when the battery is below this.",
    )
    preflight_timeout_s: float = Field(
        120.0, gt=0, description="Give up if the vehicle is not ready to arm in this time."
    )
    phase_timeout_s: float = Field(
        600.0, gt=0, description="Abort if any one phase of the flight takes longer than this."
    )
    link_loss_grace_s: float = Field(
        5.0,
        ge=0,
        description="Abort after the autopilot link is down this long (its failsafe acts then).",
    )
    max_hold_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Longest total hold for someone in the descent cone at the hand-over before "
        "the delivery is aborted and the drone flies home with the parcel.",
    )
    no_progress_s: float = Field(
        4.0,
        gt=0,
        le=60,
        description="Abort a leg when the drone has not come closer to its target for this "
        "long (the target is sent once more after half of it): a target the autopilot "
        "ignored or lost becomes a named abort instead of a hover.",
    )
    camera_max_age_s: float = Field(
        1.0,
        gt=0,
        le=10,
        description="With a descent-cone camera, the descent and the release hold unless its "
        "newest frame is at most this old (autopilot seconds): a stale frame is no frame.",
    )
    recipient_timeout_s: float = Field(
        60.0,
        gt=0,
        le=600,
        description="For an order that names its recipient, hover at the hand-over altitude "
        "at most this long (autopilot seconds) for a verified, live face match or a valid "
        "fallback PIN; without one the drone flies the parcel home.",
    )

    @field_validator("cruise_alt_m")
    @classmethod
    def _below_ceiling(cls, value: float, info: ValidationInfo) -> float:
        ceiling = info.data.get("altitude_ceiling_m")
        if ceiling is not None and value >= ceiling:
            raise ValueError(
                f"must be below flight.altitude_ceiling_m ({ceiling:g} m), got {value:g}"
            )
        return value

    @field_validator("handover_alt_m")
    @classmethod
    def _below_cruise(cls, value: float, info: ValidationInfo) -> float:
        cruise = info.data.get("cruise_alt_m")
        if cruise is not None and value >= cruise:
            raise ValueError(f"must be below flight.cruise_alt_m ({cruise:g} m), got {value:g}")
        ceiling = info.data.get("altitude_ceiling_m")
        if ceiling is not None and value >= ceiling:
            raise ValueError(
                f"must be below flight.altitude_ceiling_m ({ceiling:g} m), got {value:g}"
            )
        return value


class PreflightConfig(_Section):
    """What must be ready before a delivery arms, beyond the autopilot's parameters and its
    battery: a demanded input that is missing, stale or failing keeps the drone on the
    ground (asked again every 2 s until `flight.preflight_timeout_s`), with the reason."""

    companion_gps: bool = Field(
        True,
        description=(
            "The companion's own GPS receiver ([gps]) must have a fresh 3-D fix meeting the "
            "satellite and HDOP minimums, like the autopilot's."
        ),
    )
    uplink: bool = Field(
        True, description="The modem must be registered on a network and telemetry flowing."
    )
    max_wind_mps: float = Field(
        10.0,
        gt=0,
        le=30,
        description="Refuse to start in a reported wind above this (m/s); no report refuses too.",
    )
    declared_wind_mps: float | None = Field(
        None,
        ge=0,
        le=60,
        examples=[4.0],
        description="The wind declared for the operating area (m/s), which the daemon's "
        "preflight judges against max_wind_mps; unset: no report, so the daemon refuses to "
        "fly (the simulator reports its own simulated wind).",
    )
    min_satellites: int = Field(6, ge=4, le=40, description="Satellites used, on each receiver.")
    max_hdop: float = Field(2.0, gt=0, le=20, description="Highest HDOP, on each receiver.")
    max_fix_age_s: float = Field(
        2.0, gt=0, le=30, description="A companion fix older than this does not count."
    )


class DeliveryConfig(_Section):
    """The default drop point when no order names one: a distance and bearing from home, or
    explicit coordinates (lat and lon together), which win when given."""

    # max_range_m comes first so that distance_m (and its default) is checked against it.
    max_range_m: float = Field(
        750.0,
        gt=0,
        le=50_000,
        description=(
            "Refuse drop points farther than this from home: out and back must fit the battery "
            "with flight.min_battery_pct to spare (about 50 % of a 3.3 Ah quad flies 1 km)."
        ),
    )
    distance_m: float = Field(
        500.0, gt=0, validate_default=True, description="Distance of the drop point from home."
    )
    bearing_deg: float = Field(
        45.0, ge=0, lt=360, description="Bearing from home to the drop point, from true north."
    )
    lat: float | None = Field(
        None,
        ge=-90,
        le=90,
        description="Drop point latitude (WGS-84 degrees).",
        examples=[-35.360071],
    )
    lon: float | None = Field(
        None,
        ge=-180,
        le=180,
        validate_default=True,
        description="Drop point longitude (WGS-84 degrees).",
        examples=[149.169138],
    )

    @field_validator("distance_m")
    @classmethod
    def _within_range(cls, value: float, info: ValidationInfo) -> float:
        reach = info.data.get("max_range_m")
        if reach is not None and value > reach:
            raise ValueError(f"must be at most delivery.max_range_m ({reach:g} m), got {value:g}")
        return value

    @field_validator("lon")
    @classmethod
    def _lat_lon_together(cls, value: float | None, info: ValidationInfo) -> float | None:
        if "lat" not in info.data:
            return value  # lat itself was invalid; that error is reported
        lat = info.data["lat"]
        if lat is not None and value is None:
            raise ValueError("missing: delivery.lat is set, so delivery.lon must be too")
        if lat is None and value is not None:
            raise ValueError("delivery.lon is set, so delivery.lat must be too")
        return value

    def drop_point(self, home_lat: float, home_lon: float) -> tuple[float, float]:
        """The drop point: the explicit coordinates, or `distance_m` on `bearing_deg`."""
        if self.lat is not None and self.lon is not None:
            return self.lat, self.lon
        return offset(home_lat, home_lon, self.distance_m, self.bearing_deg)


class SimConfig(_Section):
    """The built-in simulated vehicle (and ArduPilot SITL's home) for `skycourier sim`."""

    home_lat: float = Field(-35.363261, ge=-90, le=90, description="Home latitude.")
    home_lon: float = Field(149.165230, ge=-180, le=180, description="Home longitude.")
    home_alt_m: float = Field(
        584.0, ge=-500, le=9000, description="Home altitude above mean sea level."
    )
    speedup: float = Field(
        10.0, gt=0, le=100, description="Simulated seconds per wall-clock second."
    )
    wind_speed_mps: float = Field(0.0, ge=0, le=30, description="Steady wind speed.")
    wind_from_deg: float = Field(
        0.0, ge=0, lt=360, description="Direction the wind blows from, degrees from true north."
    )

    @property
    def home(self) -> tuple[float, float, float]:
        """(lat, lon, alt_msl_m), as the simulated vehicle takes it."""
        return self.home_lat, self.home_lon, self.home_alt_m

    @property
    def wind(self) -> tuple[float, float] | None:
        """(speed_mps, from_deg), or None in calm air."""
        return (self.wind_speed_mps, self.wind_from_deg) if self.wind_speed_mps > 0 else None


class GpsConfig(_Section):
    """The companion's own u-blox receiver (NEO-6M class) on a serial port, cross-checked
    against the flight controller's GPS."""

    port: str | None = Field(
        None,
        description="Serial device of the receiver; unset: no companion GPS. Prefer "
        "/dev/serial/by-id/ paths.",
        examples=["/dev/serial/by-id/usb-u-blox_AG_-_www.u-blox.com_u-blox_6_-_GPS_Receiver-if00"],
    )
    baud: Literal[9600, 19200, 38400, 57600, 115200] = Field(
        9600, description="Rate to open the port at (the NEO-6M's factory rate is 9600)."
    )
    configure: bool = Field(
        True, description="Configure the receiver over UBX at start: rate, airborne model, baud."
    )
    target_baud: Literal[9600, 19200, 38400, 57600, 115200] = Field(
        115200, description="Baud rate to switch the receiver to when configuring it."
    )
    rate_hz: float = Field(5.0, gt=0, le=5, description="Navigation rate (NEO-6M: at most 5 Hz).")
    silence_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description="Report the receiver silent after this long without data; as long "
        "without anything that decodes, look for it at the other rates again.",
    )
    save: bool = Field(
        True,
        description="Save the configuration in the receiver (CFG-CFG), so that it comes back "
        "configured after a power loss: to its battery-backed RAM (kept while the board's "
        "backup battery lasts; the NEO-6M has no flash) and to the board's EEPROM if it has one.",
    )
    eeprom: bool = Field(
        False,
        description="The receiver's board carries a configuration EEPROM (some NEO-6M boards "
        "do): save to it too.",
    )

    @field_validator("port")
    @classmethod
    def _port_not_blank(cls, value: str | None) -> str | None:
        return _device_path(value, "gps", "no companion GPS")


class ModemConfig(_Section):
    """The SIMCom A7670 LTE modem on a UART, driven by AT commands: the drone's link beyond
    visual range (telemetry over the modem's own MQTT stack, SMS as the fallback)."""

    port: str | None = Field(
        None,
        description="Serial device of the modem's AT port; unset: no modem (telemetry then "
        'goes over IP if [telemetry] transport is "ip").',
        examples=["/dev/ttyAMA0", "/dev/serial/by-id/usb-SimTech__Incorporated_SimTech-if02"],
    )
    baud: Literal[9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600] = Field(
        115200, description="UART rate (the A7670's default is 115200 8N1, no auto-baud)."
    )
    apn: str = Field(
        "internet", min_length=1, max_length=99, description="APN of the data context (CGDCONT)."
    )
    pin: str | None = Field(
        None,
        pattern=r"^[0-9]{4,8}$",
        description="SIM PIN, if the SIM asks for one; tried once, never retried when wrong "
        "(three wrong PINs lock the SIM).",
    )
    power_key_command: str | None = Field(
        None,
        description="Command that pulses the modem's PWRKEY (last step of the recovery "
        "ladder); pins differ per board, so it is a command, run without a shell.",
        examples=["gpioset --mode=time --usec=100000 gpiochip0 4=1"],
    )
    sms_fallback_to: str | None = Field(
        None,
        pattern=r"^\+?[0-9]{3,20}$",
        description="Number that gets critical events (delivered, aborted, emergency) by SMS "
        "when the data link is down.",
        examples=["+447700900123"],
    )
    sms_operators: str = Field(
        "",
        description="Comma-separated numbers whose SMS commands are read (and answered); SMS "
        "from any other number are logged and deleted unread.",
        examples=["+447700900123,+447700900124"],
    )
    sms_key_file: Path | None = Field(
        None,
        strict=False,
        description="File holding the key (hex, 16 octets or more: `openssl rand -hex 32`) that "
        "authenticates operator SMS commands (HMAC-SHA256 over the command, a counter and the "
        "time); unset: SMS commands are refused.",
        examples=["/etc/skycourier/sms.key"],
    )
    sms_counter_path: Path = Field(
        Path("skycourier-sms-counters.json"),
        strict=False,
        description="Where the last accepted command counter of each operator number is kept, "
        "so that no command is accepted twice, across restarts too.",
    )
    sms_validity_s: float = Field(
        300.0,
        ge=10.0,
        le=86400.0,
        description="An SMS command signed longer ago than this is refused as stale.",
    )
    sms_storage: Literal["ME", "SM"] = Field(
        "ME",
        description='Where the modem stores received SMS (AT+CPMS): "ME" its flash (180 '
        'messages), "SM" the SIM (a few dozen). Each is read and deleted once handled.',
    )

    @field_validator("port")
    @classmethod
    def _port_not_blank(cls, value: str | None) -> str | None:
        return _device_path(value, "modem", "no modem")


def _device_path(value: str | None, section: str, unset_means: str) -> str | None:
    """An empty device path is a typo or a half-edited file, not "no device": it would fail
    only when the daemon opens the port, so it is refused here, saying how to say "none"."""
    if value is not None and not value.strip():
        raise ValueError(
            f"empty device path {value!r}: name the serial device (a /dev/serial/by-id/ path "
            f"is best), or delete port from [{section}] to leave it unset: {unset_means}"
        )
    return value


class TelemetryConfig(_Section):
    """Live telemetry and events to the operator over MQTT, through a durable queue that
    loses nothing when the link drops."""

    drone_id: str = Field(
        "skycourier-1",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="This drone's id in topics skycourier/v1/<drone_id>/...",
    )
    broker: str = Field(
        "tcp://127.0.0.1:1883", description="MQTT broker as tcp://host:port (TLS: see tls_ca)."
    )
    transport: Literal["modem", "ip"] = Field(
        "modem",
        description='"modem": the A7670\'s own MQTT stack over AT commands; "ip": '
        "paho-mqtt over any network interface (PPP/ECM modem, Wi-Fi, Ethernet).",
    )
    tls_ca: Path | None = Field(
        None, strict=False, description="CA certificate file: connect with TLS when set."
    )
    keepalive_s: int = Field(60, ge=10, le=3600, description="MQTT keep-alive.")
    queue_path: Path = Field(
        Path("skycourier-telemetry.db"),
        strict=False,
        description="Store-and-forward queue (SQLite); relative paths are from the working "
        "directory.",
    )
    queue_max_mb: float = Field(
        50.0, gt=0, le=10_000, description="Queue bound: telemetry is thinned beyond it."
    )
    ground_hz: float = Field(0.2, gt=0, le=10, description="Telemetry rate on the ground.")
    cruise_hz: float = Field(1.0, gt=0, le=10, description="Telemetry rate in flight.")
    handover_hz: float = Field(
        5.0, gt=0, le=10, description="Telemetry rate while descending to and at the recipient."
    )
    status_period_s: float = Field(
        30.0,
        ge=5,
        le=3600,
        description='Seconds between "online" heartbeats; each is believed for three periods '
        "(its time-to-live), so a drone that dies without a will looks offline within that.",
    )
    batch_linger_s: float = Field(
        1.0,
        ge=0,
        le=10,
        description="How long a telemetry message that is not full waits for more records "
        "(events never wait): fewer modem AT commands per second, that much more latency.",
    )

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        split_broker(value)
        return value

    @property
    def broker_address(self) -> tuple[str, int]:
        """(host, port) of `broker`."""
        return split_broker(self.broker)


class VisionConfig(_Section):
    """The camera and YOLOv4-Tiny detector: obstacles to ArduPilot as OBSTACLE_DISTANCE (set
    PRX1_TYPE=2) and on the bus. The models are built with `skycourier models build`."""

    source: str | None = Field(
        None,
        description='Camera: a V4L2 device ("0", /dev/video0), "csi" (Jetson CSI sensor 0), a '
        "GStreamer pipeline (gst:...), an rtsp:// URL, a video file or an image folder; unset: "
        "no camera, vision off.",
        examples=["/dev/video0", "csi", "rtsp://192.168.1.20:8554/cam"],
    )
    variant: Literal["fp32", "int8", "fp16"] = Field(
        "int8",
        description='Model variant: "int8" (CPU default: 8-bit, letterboxed to the frame\'s '
        'own aspect ratio; over 2x OpenCV DNN, within 1 mAP@0.5 point of FP32), "fp32" (the '
        'float reference), "fp16" (GPUs: Jetson).',
    )
    models_dir: Path | None = Field(
        None,
        strict=False,
        description="Folder of the built models; unset: $SKYCOURIER_MODELS or the repository's "
        "models/build/.",
        examples=["/var/lib/skycourier/models"],
    )
    threads: int = Field(
        2, ge=1, le=64, description="ONNX Runtime threads (leave a core to the rest of the daemon)."
    )
    conf: float = Field(
        0.25, gt=0, lt=1, description="Detection threshold on objectness x class probability."
    )
    classes: str = Field(
        "",
        description='Comma-separated COCO class names to keep, e.g. "person,car"; empty: all.',
        examples=["person,bicycle,car,motorcycle,bus,truck,dog"],
    )
    hfov_deg: float = Field(
        62.2,
        gt=0,
        lt=180,
        description="Horizontal field of view of the camera (Pi Camera Module v2: 62.2, v3: 66).",
    )
    yaw_deg: float = Field(
        0.0,
        ge=-180,
        le=180,
        description="Camera mounting: degrees clockwise from the nose (0 = looking forward).",
    )
    pitch_down_deg: float = Field(
        0.0,
        ge=-90,
        le=90,
        description="Camera mounting: degrees below the horizon (0 = ahead, 90 = straight down).",
    )
    max_fps: float = Field(
        5.0, gt=0, le=60, description="Frames analysed per second at most (the newest one wins)."
    )
    obstacle_rate_hz: float = Field(
        10.0,
        gt=2,
        le=50,
        description="Rate of OBSTACLE_DISTANCE to the autopilot (ArduPilot drops a proximity "
        "source silent for 500 ms, so above 2 Hz).",
    )

    @field_validator("source")
    @classmethod
    def _source_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("empty camera source: leave it unset for no camera")
        return value

    @field_validator("classes")
    @classmethod
    def _class_list(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",")]
        if value.strip() and not all(names):
            raise ValueError(f"an empty class name in {value!r} (comma-separated names)")
        return value

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The `classes` to keep, or None for all."""
        names = tuple(name.strip() for name in self.classes.split(",") if name.strip())
        return names or None


def split_broker(url: str) -> tuple[str, int]:
    """ "tcp://host:port" (the form AT+CMQTTCONNECT takes, also for TLS) as (host, port)."""
    if not url.startswith("tcp://"):
        raise ValueError(f"must be tcp://host:port, got {url!r}")
    host, sep, port = url[len("tcp://") :].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be tcp://host:port with a port 1-65535, got {url!r}")
    return host, int(port)


class IntakeConfig(_Section):
    """How orders reach the daemon (`skycourier run`): each is verified against
    `[security] dispatcher_pub`, queued durably, answered on the uplink, and flown in turn."""

    queue_path: Path = Field(
        Path("skycourier-orders.db"),
        strict=False,
        description="The durable order queue (SQLite); relative paths are from the working "
        "directory.",
    )
    socket_path: Path = Field(
        Path("skycourier-control.sock"),
        strict=False,
        description="The local control socket (`skycourier order submit`), created 0660: the "
        "daemon's user and group may use it.",
    )
    mqtt: bool = Field(
        True,
        description="Take orders published on skycourier/v1/<drone_id>/orders, and signed "
        "operator commands on skycourier/v1/<drone_id>/commands, over the telemetry link.",
    )


class MetricsConfig(_Section):
    """Prometheus metrics of the daemon (`skycourier run`), for fleets."""

    port: int | None = Field(
        None,
        ge=0,
        le=65535,
        examples=[9108],
        description="Serve /metrics on this TCP port; unset: no metrics server.",
    )
    address: str = Field(
        "127.0.0.1",
        description="Address the metrics server binds (loopback: only this computer; "
        '"0.0.0.0" exposes it on every interface, the LTE one included).',
    )


class JournalConfig(_Section):
    """The durable mission journal (SQLite) that lets a restarted daemon resume or land."""

    path: Path = Field(
        Path("skycourier-journal.db"),
        strict=False,
        description="Journal database file; relative paths are from the working directory.",
    )
    restart_in_air: Literal["rtl", "land"] = Field(
        "rtl",
        description="What a daemon restarted while its vehicle flies an unfinished mission "
        'commands: "rtl" flies home (the autopilot\'s fence and rally points still hold), '
        '"land" lands where it is (for fields where a return is riskier than a landing).',
    )


class SecurityConfig(_Section):
    """Keys, signed orders and the audit trail of the secure hand-over (`skycourier keys init
    --drone ID` creates the keys; the dispatcher's public file comes from its `keys init
    --dispatcher`)."""

    keys_dir: Path = Field(
        Path("skycourier-keys"),
        strict=False,
        description="This drone's key directory (mode 0700; identity, seal and MAVLink "
        "signing keys, each mode 0600); relative paths are from the working directory.",
        examples=["/etc/skycourier/keys"],
    )
    dispatcher_pub: Path | None = Field(
        None,
        strict=False,
        description="The dispatcher's public-key file (dispatcher.pub.json) that orders must "
        "be signed with; unset: every order is refused.",
        examples=["/etc/skycourier/dispatcher.pub.json"],
    )
    nonce_path: Path = Field(
        Path("skycourier-order-nonces.json"),
        strict=False,
        description="Where the nonces of accepted orders are kept (until a day after their "
        "order expired), so that no order is accepted twice, across restarts too.",
    )
    command_nonce_path: Path = Field(
        Path("skycourier-command-nonces.json"),
        strict=False,
        description="Where the nonces of accepted signed operator commands are kept (until a "
        "day after they expired), so that no command is acted on twice, across restarts too.",
    )
    audit_path: Path = Field(
        Path("skycourier-audit.jsonl"),
        strict=False,
        description="The hash-chained audit trail (JSON Lines, signed with the drone's "
        "identity key); check it with `skycourier audit verify`.",
    )


class GcsEndpointConfig(_Section):
    """One ground station in `[gcs] endpoints`."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_-]{1,32}$", description="Its name in the log and the status."
    )
    url: str = Field(
        description="udp-out:HOST:PORT (send there), udp-in:BIND:PORT (listen, answer the "
        "last sender that vouched for itself), tcp-out:HOST:PORT (connect) or "
        "tcp-in:BIND:PORT (listen, one client at a time)."
    )
    mode: Literal["read-only", "command"] = Field(
        "read-only",
        description='"read-only": it gets the stream and nothing it sends reaches the flight '
        'controller; "command": its frames, signed with its own key_file, are re-signed '
        "with the drone's key and passed on.",
    )
    key_file: Path | None = Field(
        None,
        strict=False,
        validate_default=True,
        description="A command endpoint's own 32-byte MAVLink signing key, in hex, mode 0600.",
    )
    allow_out: tuple[str, ...] = Field(
        (), strict=False, description="Only these messages go to it (empty: all)."
    )
    deny_out: tuple[str, ...] = Field((), strict=False, description="These never go to it.")
    allow_in: tuple[str, ...] = Field(
        (), strict=False, description="Command: only these messages from it pass (empty: all)."
    )
    deny_in: tuple[str, ...] = Field(
        (), strict=False, description="Command: these messages from it never pass."
    )
    rate_hz: float | None = Field(
        None, gt=0, le=1000, description="Most messages per second to it, HEARTBEAT aside."
    )

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        from firmware_bridge.router_io import RouteUrlError, parse_route_url

        try:
            parse_route_url(value)
        except RouteUrlError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("key_file")
    @classmethod
    def _key_for_command(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        mode = info.data.get("mode")
        if mode == "command" and value is None:
            raise ValueError(
                'missing: mode is "command", so the endpoint needs its own signing key '
                "(32 bytes in hex, mode 0600, e.g. from `openssl rand -hex 32`)"
            )
        if mode == "read-only" and value is not None:
            raise ValueError('only a mode = "command" endpoint uses a key; it is read-only')
        return value

    @field_validator("allow_out", "deny_out", "allow_in", "deny_in")
    @classmethod
    def _known_messages(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        from firmware_bridge.router import check_message_names

        read_only = info.data.get("mode") != "command"
        if value and read_only and info.field_name in ("allow_in", "deny_in"):
            raise ValueError(
                "a read-only endpoint sends nothing to the flight controller, so it takes no "
                'in-filter; set mode = "command" (with a key_file) for that'
            )
        check_message_names(value)
        return value


class GcsConfig(_Section):
    """Ground stations (QGroundControl, MAVProxy) that `skycourier run` hands the flight
    controller's MAVLink stream to, like mavlink-router, each with its own filters and rate
    limit. Nothing from a "read-only" one reaches the flight controller; a "command" one must
    sign with a key of its own, and what it sends is re-signed with the drone's key (needs the
    drone keys of [security]). Write each endpoint as a [[gcs.endpoints]] table, or as the inline
    list below."""

    endpoints: tuple[GcsEndpointConfig, ...] = Field(
        (),
        strict=False,
        max_length=32,
        description="The ground stations (at most 32); empty: nothing is forwarded. Each has "
        "name, url, mode (read-only, command), key_file (command), allow_out, deny_out, "
        "allow_in, deny_in (message names) and rate_hz.",
        examples=[
            [{"name": "qgc", "url": "udp-out:127.0.0.1:14550", "rate_hz": 50.0}],
            [
                {
                    "name": "ops",
                    "url": "udp-in:0.0.0.0:14560",
                    "mode": "command",
                    "key_file": "/etc/skycourier/keys/ops-gcs.key",
                }
            ],
        ],
    )

    @field_validator("endpoints")
    @classmethod
    def _unique_names(cls, value: tuple[GcsEndpointConfig, ...]) -> tuple[GcsEndpointConfig, ...]:
        names = [e.name for e in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"endpoint names must differ; {', '.join(twice)} used twice")
        return value


class IdentityConfig(_Section):
    """Face verification of the recipient at the hand-over (`skycourier face compare A B`
    prints two photos' distance, for setting the threshold)."""

    threshold: float = Field(
        0.55,
        gt=0,
        lt=2,
        description="Largest embedding distance that counts as the same person (0.55 accepts "
        "every genuine and refuses every impostor pair of the reference faces: see README).",
    )
    n: int = Field(5, ge=1, le=50, description="Frames in one verification window.")
    k: int = Field(3, ge=1, description="Matching frames needed in the window (at most n).")
    max_rejected: int = Field(
        2,
        ge=0,
        description="Unusable frames (no face, too small, blurred, off-angle) the window "
        "tolerates before it fails.",
    )
    min_eye_chin_px: float = Field(
        70.0, ge=20, description="Smallest face accepted, eyes to chin in frame pixels."
    )
    min_sharpness: float = Field(
        40.0, ge=0, description="Least variance of the Laplacian of the aligned face chip."
    )
    max_yaw_deg: float = Field(35.0, gt=0, le=90, description="Most head turn accepted.")
    max_pitch_deg: float = Field(30.0, gt=0, le=90, description="Most head tilt accepted.")
    liveness_challenge: Literal["blink", "mouth"] = Field(
        "blink",
        description='What the recipient does for the liveness check at the door: "blink" or '
        '"mouth" (open the mouth); a still or replayed photo cannot.',
    )
    camera: str | None = Field(
        None,
        description="The door camera that faces the recipient at the hand-over, in the forms "
        "of [vision] source (a device, a GStreamer pipeline, a URL, a video file or an image "
        "folder); unset: no face check on the drone, the recipient is cleared only by the "
        "operator's SMS PIN.",
        examples=["/dev/video2", "rtsp://192.168.1.21:8554/door"],
    )

    @field_validator("camera")
    @classmethod
    def _camera_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("empty camera source: leave it unset for no door camera")
        return value

    @field_validator("k", "max_rejected")
    @classmethod
    def _within_window(cls, value: int, info: ValidationInfo) -> int:
        n = info.data.get("n")
        if n is not None and value > n:
            raise ValueError(f"must be at most identity.n ({n}), got {value}")
        return value


class LoggingConfig(_Section):
    """Log output: stderr always (journald collects it under systemd), a file optionally."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Least severe level logged: DEBUG, INFO, WARNING, ERROR, CRITICAL."
    )
    format: Literal["text", "json"] = Field(
        "text", description='"text" for people, "json" (one object per line) for log shippers.'
    )
    file: Path | None = Field(
        None,
        strict=False,
        description="Also append the log to this file.",
        examples=["/var/log/skycourier/skycourier.log"],
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class Config(_Section):
    """The whole configuration; every section and option has a default."""

    vehicle: VehicleConfig = VehicleConfig()
    companion: CompanionConfig = CompanionConfig()
    flight: FlightConfig = FlightConfig()
    preflight: PreflightConfig = PreflightConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    sim: SimConfig = SimConfig()
    gps: GpsConfig = GpsConfig()
    modem: ModemConfig = ModemConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    vision: VisionConfig = VisionConfig()
    journal: JournalConfig = JournalConfig()
    intake: IntakeConfig = IntakeConfig()
    metrics: MetricsConfig = MetricsConfig()
    security: SecurityConfig = SecurityConfig()
    gcs: GcsConfig = GcsConfig()
    identity: IdentityConfig = IdentityConfig()
    logging: LoggingConfig = LoggingConfig()

    def to_toml(self) -> str:
        """This configuration as TOML, each option preceded by its description and followed by
        its examples, commented out (an unset optional option shows only its example)."""
        out = [
            "# SkyCourier configuration.",
            "# Every option is listed with its value and what it does; unknown keys are errors.",
            "# On the drone: /etc/skycourier/skycourier.toml, read by `skycourier run --config`.",
        ]
        for name in type(self).model_fields:
            section: BaseModel = getattr(self, name)
            out += ["", *_comment(_doc(type(section))), f"[{name}]"]
            for key, info in type(section).model_fields.items():
                value = getattr(section, key)
                out += _comment(info.description or "")
                if value is not None and value != ():  # unset, or an empty list of tables
                    out.append(f"{key} = {_toml_value(value)}")
                out += [f"# {key} = {_toml_value(example)}" for example in info.examples or ()]
        return "\n".join(out) + "\n"

    def updated(self, source: str = "override", **sections: Mapping[str, Any]) -> Config:
        """A copy with some options changed (``updated(sim={"speedup": 5})``), validated like a
        file: command-line overrides get the same checks, and errors name `source`.

        (pydantic's ``model_copy(update=...)`` would skip validation.)
        """
        data: dict[str, Any] = self.model_dump()
        for name, values in sections.items():
            current = data.get(name)
            data[name] = {**current, **values} if isinstance(current, dict) else dict(values)
        return _validate(data, source)


def default_config_toml() -> str:
    """The default configuration as commented TOML (``skycourier config --print-default``)."""
    return Config().to_toml()


def _doc(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def _comment(text: str) -> list[str]:
    return [f"# {line}" for line in textwrap.wrap(text, 98, break_on_hyphens=False)]


def _toml_value(value: object) -> str:
    if isinstance(value, BaseModel):  # an entry of a list of tables, such as [gcs] endpoints
        value = value.model_dump(exclude_defaults=True)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A JSON string without ASCII escaping is a valid TOML basic string.
    return json.dumps(str(value), ensure_ascii=False)


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    model: Any = Config
    for part in loc:
        if isinstance(part, int):  # the n-th entry of a list: tuple[Entry, ...]
            model = get_args(model)[0] if get_args(model) else None
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _describe(error: Any) -> str:
    loc = tuple(error["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        why = "unknown section" if len(loc) == 1 else "unknown option"
        near = difflib.get_close_matches(str(loc[-1]), _known_keys(loc[:-1]), n=1)
        if near:
            why += f"; did you mean {near[0]!r}?"
    elif kind == "value_error":
        why = str(error["ctx"]["error"])
    else:
        message = error["msg"]
        why = f"{message[0].lower()}{message[1:]}, got {error['input']!r}"
    return f"{where}: {why}"


def parse_config(text: str, source: str = "<string>") -> Config:
    """Validate TOML text; `source` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"TOML syntax error: {exc}"]) from None
    return _validate(data, source)


def _validate(data: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None


def load_config(path: Path | str | None) -> Config:
    """The configuration in `path`, or the defaults when `path` is None."""
    if path is None:
        return Config()
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["no such file"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text (byte {exc.start})"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
    return parse_config(text, str(path))
