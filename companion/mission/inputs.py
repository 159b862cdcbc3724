"""What the mission core is told: the events its runner feeds it.

Each is a small frozen dataclass. The core never reads a clock, a socket or a thread: time is
the autopilot's own (`StateUpdate.state.boot_time_s`), and everything else that happens
(a command's answer, a camera verdict, an operator's request, the recipient's verdict or
fallback PIN at a hand-over, the companion's view of the link) arrives as one of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from firmware_bridge.state import VehicleState


@dataclass(frozen=True)
class StateUpdate:
    """A new snapshot of the vehicle; its `boot_time_s` is the core's clock."""

    state: VehicleState


@dataclass(frozen=True)
class LinkStatus:
    """The companion's view of the autopilot link, sent on a steady tick: whether the
    heartbeat is fresh, and how long it has been silent, timed by the link's clock (the
    autopilot's pace: a dead link stops the autopilot's own clock, so this is the one input
    that tells the core time is passing without it)."""

    up: bool
    silent_s: float


@dataclass(frozen=True)
class CommandResult:
    """How a command the core asked for ended: `accepted`, or `result` says why not (a
    MAV_RESULT name, "timeout", "link down"); `texts` are the autopilot's own explanations
    that came with a refusal (pre-arm failures)."""

    token: int
    accepted: bool
    result: str = "MAV_RESULT_ACCEPTED"
    detail: str = ""
    texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParamsRead:
    """The autopilot's parameters, read for the preflight; `error` when they could not be."""

    token: int
    values: tuple[tuple[str, float], ...] = ()
    error: str = ""


@dataclass(frozen=True)
class LimitsUploaded:
    """The answer to `UploadLimits`: every way the flight controller does not hold the
    limits (empty when it holds them exactly, read back)."""

    token: int
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReceiverStatus:
    """The companion's own GPS receiver as the preflight sees it: its last fix's quality and
    how old that fix is (seconds on the companion's clock), with the driver's status word."""

    fix_3d: bool
    satellites: int | None
    hdop: float | None
    age_s: float | None
    status: str


@dataclass(frozen=True)
class UplinkStatus:
    """The telemetry uplink as the preflight sees it: the modem registered on a network, and
    telemetry flowing (records acknowledged by the broker recently); `detail` says why not."""

    registered: bool
    flowing: bool
    detail: str = ""


@dataclass(frozen=True)
class OrderStatus:
    """A drop's signed order at the preflight: verified at intake (dispatcher's signature,
    this drone, fresh nonce) and still within its validity now; `reason` says why not."""

    order_id: str
    valid: bool
    reason: str = ""


@dataclass(frozen=True)
class GroundStatus:
    """What the companion knows of its own systems before a flight: its GPS receiver, the
    uplink, the wind (m/s, with where that figure comes from) and the drops' signed orders;
    None (or no entry) where it has none."""

    gps: ReceiverStatus | None = None
    uplink: UplinkStatus | None = None
    wind_mps: float | None = None
    wind_source: str = ""
    orders: tuple[OrderStatus, ...] = ()


@dataclass(frozen=True)
class SystemsChecked:
    """The answer to `CheckSystems`: the ground status, or `error` when there is none."""

    token: int
    status: GroundStatus | None = None
    error: str = ""


@dataclass(frozen=True)
class AutopilotText:
    """A STATUSTEXT from the autopilot (failsafe and fence messages explain mode changes)."""

    severity: int
    text: str
    boot_time_s: float | None = None


@dataclass(frozen=True)
class ConeVerdict:
    """What the descent-cone camera saw in one frame: `reason` to hold (something below the
    drone) or None (clear), for the frame taken at `frame_time_s` on the autopilot's clock.
    The core judges it by that time: a verdict older than the plan's camera age is no
    verdict at all."""

    frame_time_s: float
    reason: str | None


@dataclass(frozen=True)
class RecipientVerdict:
    """The identity service's decision on the person at a drop's hand-over, published once
    both of its checks have decided (the k-of-n face consensus and the liveness challenge).

    `matched`: the consensus accepted the face against the order's template, at `distance`
    (None without a face) under `threshold`; `live`: the liveness challenge passed;
    `liveness`: its measurements as (name, number) pairs (eye/mouth aspect-ratio baseline,
    extreme, frames); `frames`: the camera frames the decision rests on; `reason`: why it
    refused, if it did; `decided_at_s`: when it decided, on the autopilot's clock.

    Numbers only: no template, embedding or landmarks ever travel in it (it is journaled and
    audited). The core judges it by its drop, its time and its figures: only a fresh, matched
    AND live verdict given during the recipient check of `drop_id` clears the release."""

    drop_id: str
    decided_at_s: float
    matched: bool
    live: bool
    distance: float | None
    threshold: float
    frames: int
    liveness: tuple[tuple[str, float], ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class FallbackPin:
    """An operator's fallback PIN for `drop_id`, already checked outside the core against the
    order's hash by whoever received the authenticated operator command (`source`, e.g.
    "sms:+44..."): only its result travels, never the PIN. A valid one given during the
    recipient check of that drop clears the release."""

    drop_id: str
    valid: bool
    source: str


class OperatorAction(str, Enum):
    """What an operator may ask of a mission in flight."""

    ABORT = "abort"  # give up and return home (RTL)
    LAND = "land"  # give up and land where the drone is
    HOLD = "hold"  # stop where the drone is and wait
    RESUME = "resume"  # go on after a hold


@dataclass(frozen=True)
class OperatorCommand:
    """An operator's request, already authenticated by whatever carried it (`source`)."""

    action: OperatorAction
    source: str = "operator"


@dataclass(frozen=True)
class JournalFailed:
    """The journal could not record a transition: the mission must not go on unrecorded."""

    error: str


Input = (
    StateUpdate
    | LinkStatus
    | CommandResult
    | ParamsRead
    | LimitsUploaded
    | SystemsChecked
    | AutopilotText
    | ConeVerdict
    | OperatorCommand
    | RecipientVerdict
    | FallbackPin
    | JournalFailed
)
