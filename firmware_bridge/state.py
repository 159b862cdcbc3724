"""Typed snapshots of the vehicle that the bridge publishes on the companion's bus.

They are small immutable dataclasses so that any subsystem may keep one without copying,
and so that a subscriber can never change what another one sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Position:
    """A global position: WGS-84 degrees, metres above mean sea level and above home."""

    lat: float
    lon: float
    alt_msl_m: float
    alt_rel_m: float


@dataclass(frozen=True)
class Battery:
    """Battery as the autopilot reports it (SYS_STATUS / BATTERY_STATUS)."""

    voltage_v: float | None = None
    current_a: float | None = None
    remaining_pct: int | None = None
    consumed_mah: float | None = None


@dataclass(frozen=True)
class GpsInfo:
    """The autopilot's own GPS (GPS_RAW_INT): fix type as MAVLink's GPS_FIX_TYPE counts,
    dilutions of precision, and the receiver's own accuracy estimates (h_acc/v_acc, MAVLink 2
    extension fields) where it sends them."""

    fix_type: int = 0
    satellites: int | None = None
    hdop: float | None = None
    vdop: float | None = None
    h_acc_m: float | None = None
    v_acc_m: float | None = None


@dataclass(frozen=True)
class VehicleState:
    """Everything the companion knows about the vehicle at one instant.

    `boot_time_s` is the autopilot's own clock (time_boot_ms of the latest message that carries
    it): under simulation it runs faster than the wall clock, so flight timing is measured with
    it, never with the companion's clock. `utc_time_s` is the autopilot's UTC (SYSTEM_TIME,
    from its GPS) as Unix seconds, read at monotonic time `utc_received_at`. `mode`,
    `armed` and `system_status` come from the HEARTBEAT, which ArduPilot sends at 1 Hz:
    `heartbeats` counts them.
    """

    wall_time: float
    boot_time_s: float | None = None
    armed: bool = False
    mode: str = "UNKNOWN"
    system_status: int = 0
    position: Position | None = None
    velocity_ned_mps: tuple[float, float, float] | None = None
    heading_deg: float | None = None
    home: Position | None = None
    battery: Battery = field(default_factory=Battery)
    gps: GpsInfo = field(default_factory=GpsInfo)
    ekf_flags: int = 0
    landed_state: int = 0
    prearm_ok: bool = False
    mission_seq: int | None = None
    utc_time_s: float | None = None
    utc_received_at: float | None = None
    #: Heartbeats received from the autopilot so far: a newer count means `mode` and `armed`
    #: were just confirmed by the autopilot itself.
    heartbeats: int = 0

    @property
    def ground_speed_mps(self) -> float | None:
        """Horizontal speed from the NED velocity."""
        if self.velocity_ned_mps is None:
            return None
        vn, ve, _ = self.velocity_ned_mps
        return (vn * vn + ve * ve) ** 0.5


@dataclass(frozen=True)
class LinkState:
    """Whether the autopilot's heartbeat is being heard, and why not when it is not."""

    up: bool
    endpoint: str
    reason: str = ""
    since: float = 0.0


@dataclass(frozen=True)
class StatusText:
    """A STATUSTEXT from the autopilot, chunked messages already joined."""

    severity: int
    text: str
    wall_time: float
    boot_time_s: float | None = None
