"""The JSON shapes of the REST API and the live feed (pydantic models, so that
``/openapi.json`` describes them), and the conversions from the store's views and from
received wire records into them. A track point has the same shape whether it comes from
``/api/drones/{id}/track`` or from ``/api/live``, so the page draws both with one function.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from companion.telemetry import schema
from ground.store import (
    CommandView,
    DroneView,
    EventView,
    HandoverView,
    OrderView,
    Received,
    TrackPoint,
)

Out = TypeVar("Out", bound=BaseModel)


class TrackPointOut(BaseModel):
    drone_id: str
    seq: int
    record_id: str
    t: datetime
    phase: str | None
    armed: bool
    mode: str
    lat: float | None
    lon: float | None
    alt_rel_m: float | None
    heading_deg: float | None
    ground_speed_mps: float | None
    battery_pct: int | None
    battery_v: float | None
    gps_fix: int
    gps_sats: int | None
    gps_alarms: list[str]
    link_rssi_dbm: int | None
    link_rsrp_dbm: float | None
    link_sinr_db: float | None


class DroneOut(BaseModel):
    drone_id: str
    #: online while its status is within the telemetry schema's time-to-live.
    online: bool
    liveness: Literal["online", "offline", "expired", "unknown"]
    last_seen_at: datetime | None
    status_expires_at: datetime | None
    latest: TrackPointOut | None


class EventOut(BaseModel):
    drone_id: str
    seq: int
    record_id: str
    t: datetime
    kind: str
    mission_id: str | None
    phase: str | None
    detail: dict[str, Any]


class OrderOut(BaseModel):
    order_id: str
    drone_id: str
    state: str
    outcome: str | None
    created_at: datetime
    created_by: str | None
    updated_at: datetime
    #: The drone's last word on it (an ``order-refused`` answer's reason and message, an
    #: ``order-done``'s outcome) or why the broker did not confirm it.
    detail: dict[str, Any] | None


class HandoverOut(BaseModel):
    """One hand-over step as the drone reported it: a recipient verdict or fallback PIN
    judged (`outcome` cleared / refused / ignored, and `why`), or the parcel released."""

    drone_id: str
    mission_id: str | None
    drop_id: str | None
    step: str
    outcome: str
    why: str | None
    t: datetime


class CommandOut(BaseModel):
    """An operator command and how far it got: ``sending``, ``sent`` / ``unconfirmed`` (the
    broker), ``accepted`` / ``refused`` (the drone, with its `reason` and `message`)."""

    command_id: str
    drone_id: str
    order_id: str | None
    command: str
    issued_by: str
    issued_at: datetime
    expires_at: datetime
    state: str
    reason: str | None
    message: str | None
    answered_at: datetime | None


class RegisteredOut(BaseModel):
    """A drone registered for dispatch, with its keys' fingerprints (to compare with
    `skycourier keys show` on the drone)."""

    drone_id: str
    registered_at: datetime
    fingerprints: dict[str, str]


class DispatchOut(BaseModel):
    """Whether this instance can send orders and commands, and to which drones."""

    enabled: bool
    connected: bool
    drones: list[str]
    commands: list[str]


class StatusOut(BaseModel):
    drone_id: str
    seq: int
    record_id: str
    t: datetime
    state: str
    ttl_s: float | None


class LiveBatch(BaseModel):
    """One ``data:`` of ``/api/live``: records one ingest batch stored."""

    telemetry: list[TrackPointOut]
    events: list[EventOut]
    statuses: list[StatusOut]


def _copy(model: type[Out], view: object) -> Out:
    """`model` filled from the same-named attributes of a store view (pydantic converts and
    checks each, e.g. a tuple of alarms to a list)."""
    return model(**{name: getattr(view, name) for name in model.model_fields})


def track_point(p: TrackPoint) -> TrackPointOut:
    return _copy(TrackPointOut, p)


def drone(d: DroneView) -> DroneOut:
    return DroneOut(
        drone_id=d.drone_id,
        online=d.online,
        liveness=d.liveness,
        last_seen_at=d.last_seen_at,
        status_expires_at=d.status_expires_at,
        latest=None if d.latest is None else track_point(d.latest),
    )


def event(e: EventView) -> EventOut:
    return _copy(EventOut, e)


def order(o: OrderView) -> OrderOut:
    return _copy(OrderOut, o)


def handover(h: HandoverView) -> HandoverOut:
    return _copy(HandoverOut, h)


def command(c: CommandView) -> CommandOut:
    return _copy(CommandOut, c)


def _when(text: str) -> datetime:
    moment = schema.parse_time(text)
    if moment is None:  # the decoder checked it; a record that is not decoded never gets here
        raise ValueError(f"record time {text!r}")
    return datetime.fromtimestamp(moment, tz=timezone.utc)


def live_batch(batch: list[Received]) -> LiveBatch:
    """Received records (from the fleet's live subscription, or a stored ingest batch) as the
    live feed sends them."""
    telemetry, events, statuses = [], [], []
    for item in batch:
        r = item.record
        if isinstance(r, schema.Telemetry):
            pos, link = r.position, r.link
            telemetry.append(
                TrackPointOut(
                    drone_id=r.drone_id,
                    seq=r.seq,
                    record_id=r.id,
                    t=_when(r.t),
                    phase=r.phase,
                    armed=r.armed,
                    mode=r.mode,
                    lat=None if pos is None else pos.lat,
                    lon=None if pos is None else pos.lon,
                    alt_rel_m=None if pos is None else pos.alt_rel_m,
                    heading_deg=r.heading_deg,
                    ground_speed_mps=r.ground_speed_mps,
                    battery_pct=r.battery.pct,
                    battery_v=r.battery.voltage_v,
                    gps_fix=r.gps.fix_type,
                    gps_sats=r.gps.satellites,
                    gps_alarms=list(r.gps.alarms),
                    link_rssi_dbm=None if link is None else link.rssi_dbm,
                    link_rsrp_dbm=None if link is None else link.rsrp_dbm,
                    link_sinr_db=None if link is None else link.sinr_db,
                )
            )
        elif isinstance(r, schema.Event):
            events.append(
                EventOut(
                    drone_id=r.drone_id,
                    seq=r.seq,
                    record_id=r.id,
                    t=_when(r.t),
                    kind=r.kind,
                    mission_id=r.mission_id,
                    phase=r.phase,
                    detail=r.detail,
                )
            )
        else:
            statuses.append(
                StatusOut(
                    drone_id=r.drone_id,
                    seq=r.seq,
                    record_id=r.id,
                    t=_when(r.t),
                    state=r.state,
                    ttl_s=r.ttl_s,
                )
            )
    return LiveBatch(telemetry=telemetry, events=events, statuses=statuses)
