"""The REST API (JSON, described at ``/openapi.json``) and the live feed (server-sent events
at ``/api/live``). Every route needs a signed-in operator; every POST its CSRF token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from companion.identity.enrol import MAX_PHOTOS
from companion.identity.photos import MAX_PHOTO_BYTES
from companion.security.keys import KeyFileError, fingerprint, load_drone_public, raw_public
from companion.security.orders import MAX_LIFETIME_S
from companion.security.signed_commands import COMMANDS
from companion.telemetry import schema
from ground.dispatch import (
    DEFAULT_ORDER_VALID_S,
    MIN_ORDER_VALID_S,
    Dispatcher,
    DispatchError,
    OrderRequest,
)
from ground.models import ORDER_ID_CHARS
from ground.store import MAX_ROWS, StoreError
from ground.web import views
from ground.web.security import Session
from ground.web.service import api_session, csrf_session, ground

#: A comment line on the live stream this often, so that proxies and the browser keep it.
KEEPALIVE_S = 15.0

router = APIRouter(prefix="/api", tags=["api"])
Operator = Annotated[Session, Depends(api_session)]


def _drone_id(drone_id: str) -> str:
    try:
        return schema.check_drone_id(drone_id)
    except schema.SchemaError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


@router.get("/drones", response_model=list[views.DroneOut])
async def drones(request: Request, _: Operator) -> list[views.DroneOut]:
    """Every drone: online/offline by its status's time-to-live, latest sample."""
    found = await run_in_threadpool(ground(request).store.drones)
    return [views.drone(d) for d in found]


@router.get("/drones/{drone_id}/track", response_model=list[views.TrackPointOut])
async def track(
    request: Request,
    drone_id: str,
    _: Operator,
    since: datetime | None = None,
    until: datetime | None = None,
    max_points: Annotated[int, Query(ge=2, le=MAX_ROWS)] = 2000,
) -> list[views.TrackPointOut]:
    """The drone's samples in time order, thinned evenly to `max_points`."""
    store = ground(request).store
    try:
        points = await run_in_threadpool(store.track, _drone_id(drone_id), since, until, max_points)
    except StoreError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return [views.track_point(p) for p in points]


@router.get("/drones/{drone_id}/events", response_model=list[views.EventOut])
async def events(
    request: Request,
    drone_id: str,
    _: Operator,
    limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 200,
) -> list[views.EventOut]:
    """The drone's newest `limit` events, oldest first."""
    store = ground(request).store
    found = await run_in_threadpool(lambda: store.events(drone_id=_drone_id(drone_id), limit=limit))
    return [views.event(e) for e in found]


@router.get("/orders", response_model=list[views.OrderOut])
async def orders(
    request: Request,
    _: Operator,
    drone_id: str | None = None,
    state: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 200,
) -> list[views.OrderOut]:
    """Orders, newest first, of a drone and/or in a state."""
    store = ground(request).store
    drone = None if drone_id is None else _drone_id(drone_id)
    found = await run_in_threadpool(lambda: store.orders(drone_id=drone, state=state, limit=limit))
    return [views.order(o) for o in found]


@router.get("/handovers", response_model=list[views.HandoverOut])
async def handovers(
    request: Request,
    _: Operator,
    order_id: Annotated[str | None, Query(min_length=1, max_length=ORDER_ID_CHARS)] = None,
    drone_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 500,
) -> list[views.HandoverOut]:
    """The newest `limit` hand-over steps (of an order and/or a drone), oldest first: how
    each delivery's recipient was judged and when the parcel was released."""
    store = ground(request).store
    drone = None if drone_id is None else _drone_id(drone_id)
    found = await run_in_threadpool(
        lambda: store.handovers(order_id=order_id, drone_id=drone, limit=limit)
    )
    return [views.handover(h) for h in found]


def _dispatcher(request: Request) -> Dispatcher:
    dispatcher = ground(request).dispatcher
    if dispatcher is None:
        raise HTTPException(
            status_code=503,
            detail="dispatch is off: start skycourier ground with --broker and --dispatcher-keys",
        )
    return dispatcher


#: A drone.pub.json is about 200 bytes.
MAX_PUBLIC_FILE_BYTES = 4096
#: The HTTP status of each refusal of the dispatcher.
_DISPATCH_STATUS = {"unknown-drone": 404, "invalid": 422, "photo": 422, "exists": 409,
                    "not-connected": 503}  # fmt: skip


def _refused(exc: DispatchError) -> HTTPException:
    return HTTPException(status_code=_DISPATCH_STATUS.get(exc.reason, 422), detail=exc.message)


@router.post("/drones", response_model=views.RegisteredOut, status_code=201)
async def register_drone(
    request: Request,
    session: Annotated[Session, Depends(csrf_session)],
    public: Annotated[UploadFile, File(description="the drone's drone.pub.json")],
) -> views.RegisteredOut:
    """Register a drone (or re-key it) from its ``drone.pub.json`` (`skycourier keys export
    --drone`), so that orders can be sealed to it and commands sent; audited."""
    name = public.filename or "drone.pub.json"
    data = await public.read(MAX_PUBLIC_FILE_BYTES + 1)
    try:
        drone = load_drone_public(name, data)
    except KeyFileError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    service = ground(request)
    keys = await run_in_threadpool(
        service.store.register_drone,
        drone.drone_id,
        raw_public(drone.identity),
        raw_public(drone.seal),
    )
    await run_in_threadpool(service.refresh_allowed)
    prints = {"identity": fingerprint(drone.identity), "seal": fingerprint(drone.seal)}
    await service.audit(session.username, "drone-register", "drone", drone.drone_id, prints)
    return views.RegisteredOut(
        drone_id=keys.drone_id, registered_at=keys.registered_at, fingerprints=prints
    )


@router.get("/dispatch", response_model=views.DispatchOut)
async def dispatch_info(request: Request, _: Operator) -> views.DispatchOut:
    """Whether orders and commands can be sent from here, and the drones registered."""
    service = ground(request)
    drones = await run_in_threadpool(service.store.registered_drones)
    dispatcher = service.dispatcher
    return views.DispatchOut(
        enabled=dispatcher is not None,
        connected=dispatcher is not None and dispatcher.publisher.connected,
        drones=drones,
        commands=list(COMMANDS),
    )


@router.post("/orders", response_model=views.OrderOut, status_code=201)
async def create_order(
    request: Request,
    session: Annotated[Session, Depends(csrf_session)],
    drone_id: Annotated[str, Form(max_length=64)],
    lat: Annotated[float, Form(ge=-90, le=90)],
    lon: Annotated[float, Form(ge=-180, le=180)],
    photo: Annotated[list[UploadFile], File(description="the recipient's photos, one face each")],
    alt_m: Annotated[float, Form(ge=-500, le=500)] = 0.0,
    valid_s: Annotated[int, Form(ge=MIN_ORDER_VALID_S, le=MAX_LIFETIME_S)] = (
        DEFAULT_ORDER_VALID_S
    ),
    pin: Annotated[str | None, Form(pattern=r"^[0-9]{4,12}$")] = None,
    order_id: Annotated[str | None, Form(min_length=1, max_length=ORDER_ID_CHARS)] = None,
) -> views.OrderOut:
    """Create an order for a registered drone and send it (`ground.dispatch`): the
    recipient's template from the photos, sealed to the drone; signed with the
    dispatcher's key; audited. 201 with the order as recorded (``sent``, or ``unconfirmed``
    if the broker did not acknowledge it); the drone's answer moves it on."""
    dispatcher = _dispatcher(request)
    if not 1 <= len(photo) <= MAX_PHOTOS:
        raise HTTPException(status_code=422, detail=f"photo: give 1-{MAX_PHOTOS} photos")
    photos = []
    for upload in photo:
        data = await upload.read(MAX_PHOTO_BYTES + 1)
        if len(data) > MAX_PHOTO_BYTES:
            raise HTTPException(
                status_code=413, detail=f"photo: over the {MAX_PHOTO_BYTES} byte limit"
            )
        photos.append((upload.filename or "photo", data))
    wanted = OrderRequest(
        drone_id=drone_id,
        lat=lat,
        lon=lon,
        photos=photos,
        alt_m=alt_m,
        valid_s=valid_s,
        pin=pin or None,
        order_id=order_id or None,
    )
    try:
        made = await run_in_threadpool(dispatcher.create_order, wanted, session.username)
    except DispatchError as exc:
        raise _refused(exc) from None
    return views.order(made)


class CommandIn(BaseModel):
    command: Literal["hold", "resume", "abort", "return", "land"]
    #: The order the command is about: the drone refuses it for any other.
    order_id: str | None = Field(default=None, min_length=1, max_length=ORDER_ID_CHARS)


@router.post("/drones/{drone_id}/commands", response_model=views.CommandOut, status_code=201)
async def send_command(
    request: Request,
    drone_id: str,
    body: CommandIn,
    session: Annotated[Session, Depends(csrf_session)],
) -> views.CommandOut:
    """Sign and send an operator command (audited). 201 with the command as recorded; its
    state becomes ``accepted`` or ``refused`` when the drone answers."""
    dispatcher = _dispatcher(request)
    try:
        sent = await run_in_threadpool(
            dispatcher.send_command, _drone_id(drone_id), body.command, session.username,
            body.order_id,
        )  # fmt: skip
    except DispatchError as exc:
        raise _refused(exc) from None
    return views.command(sent)


@router.get("/drones/{drone_id}/commands", response_model=list[views.CommandOut])
async def commands(
    request: Request,
    drone_id: str,
    _: Operator,
    limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 50,
) -> list[views.CommandOut]:
    """The commands sent to the drone, newest first, with its answers."""
    store = ground(request).store
    found = await run_in_threadpool(
        lambda: store.commands(drone_id=_drone_id(drone_id), limit=limit)
    )
    return [views.command(c) for c in found]


class TrackingLinkIn(BaseModel):
    order_id: str = Field(min_length=1, max_length=ORDER_ID_CHARS)


class TrackingLinkOut(BaseModel):
    order_id: str
    path: str
    expires_at: datetime


@router.post("/tracking-links", response_model=TrackingLinkOut)
async def tracking_link(
    request: Request, body: TrackingLinkIn, session: Annotated[Session, Depends(csrf_session)]
) -> TrackingLinkOut:
    """A recipient's link to one order's tracking page (audited). The order id travels in
    the body: order ids come from drones and may hold any character, ``/`` included."""
    service = ground(request)
    order_id = body.order_id
    if await run_in_threadpool(service.store.order, order_id) is None:
        raise HTTPException(status_code=404, detail="no such order")
    expires = service.clock() + service.config.tracking_ttl_s
    token = service.links.token(order_id, expires)
    await service.audit(session.username, "tracking-link", "order", order_id)
    return TrackingLinkOut(
        order_id=order_id,
        path=f"/track/{token}",
        expires_at=datetime.fromtimestamp(expires, tz=timezone.utc),
    )


class IngestOut(BaseModel):
    running: bool
    connected: bool
    stored: int
    duplicates: int
    refused: dict[str, int]
    live_subscribers: int


@router.get("/ingest", response_model=IngestOut)
async def ingest(request: Request, _: Operator) -> IngestOut:
    """This process's ingest: connected, records stored and refused by reason."""
    service = ground(request)
    stats = None if service.ingestor is None else service.ingestor.stats()
    return IngestOut(
        running=stats is not None,
        connected=bool(stats and stats.connected),
        stored=stats.stored if stats else 0,
        duplicates=stats.duplicates if stats else 0,
        refused=dict(stats.refused) if stats else {},
        live_subscribers=service.hub.subscribers,
    )


@router.get(
    "/live",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "records"}},
)
async def live(request: Request, session: Operator) -> StreamingResponse:
    """Server-sent events: ``records`` (a `LiveBatch` of what the ingest stored),
    ``resync`` (updates were dropped for this slow reader: fetch the state again),
    ``expired`` (the session ended: sign in again). The stream ends with the session."""
    service = ground(request)

    async def stream() -> AsyncIterator[str]:
        sub = service.hub.subscribe()
        try:
            yield "retry: 3000\n\n"
            while not await request.is_disconnected():
                if service.clock() >= session.expires_at:
                    yield "event: expired\ndata: {}\n\n"
                    return
                message = await sub.next(KEEPALIVE_S)
                if message is None:
                    yield ": keep-alive\n\n"
                else:
                    yield f"event: {message[0]}\ndata: {message[1]}\n\n"
        finally:
            service.hub.unsubscribe(sub)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
