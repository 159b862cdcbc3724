"""The daemon's recipient check: the door camera (`[identity] camera`) feeding the identity
service (`companion.identity.service`) during each hand-over.

`start_door_camera` is the supervisor's "identity" part of `skycourier run`: it loads the face
models (`analyzer_from_config`), the drone's seal key (the key store in `[security] keys_dir`,
which opens the recipient templates sealed in the orders), opens the camera with a `Capture`
thread and starts an `IdentityService` whose audit record goes to the daemon's audit trail.
Whatever it lacks is a `StartError` that names it, so `skycourier status` shows why the face
check is off while the operator's SMS PIN still clears the recipient. With no camera
configured the part is off and the daemon says once that recipients are released only by PIN.

Each order flown is announced (`DoorCamera.expect`) before its mission starts; the template
sealed in it is opened only when the mission's "verify-recipient" step begins, and only for
the order being flown. The service wipes it when its check decides or the mission ends.

Frames are taken from the capture all the time (the newest one wins), but go to the face
models only while a check runs. Each is stamped with the autopilot's time at its capture
(`AutopilotClock`: the newest `VehicleState.boot_time_s` carried forward by the monotonic
time since it came), which is the only time the service and the mission judge by.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from companion.bus import Bus
from companion.config import Config
from companion.identity.errors import FaceModelError
from companion.identity.service import AuditHook, IdentityService, analyzer_from_config
from companion.security.keys import KeyFileError, KeyStore
from companion.security.orders import Order, open_template
from companion.supervisor import StartError
from companion.vision.capture import Capture, CaptureError, EndOfStream, Frame, parse_source
from firmware_bridge.state import VehicleState

log = logging.getLogger(__name__)

#: How long the feeding thread waits for a frame before it looks at its stop flag again.
READ_WAIT_S = 0.5
#: Where a check reads frames at 10 Hz, an anchor older than this (monotonic seconds) means
#: the autopilot's clock is no longer heard: frames are not stamped from it.
MAX_ANCHOR_AGE_S = 2.0
NO_CAMERA = (
    "face check off: [identity] camera is unset, so recipients are released only by the "
    "operator's SMS PIN (set [identity] camera to the door camera for the face check)"
)


class AutopilotClock:
    """The autopilot's time at a monotonic instant: the newest `boot_time_s` heard, carried
    forward by the monotonic time since it was heard (`at`). Re-anchored only when the
    autopilot's time moves, since a state that repeats an old `boot_time_s` is no newer."""

    def __init__(self, max_anchor_age_s: float = MAX_ANCHOR_AGE_S) -> None:
        self.max_anchor_age_s = max_anchor_age_s
        self._anchor: tuple[float, float] | None = None  # (boot_time_s, monotonic)
        self._lock = threading.Lock()

    def heard(self, boot_time_s: float | None, monotonic: float) -> None:
        if boot_time_s is None:
            return
        with self._lock:
            if self._anchor is None or boot_time_s > self._anchor[0]:
                self._anchor = (boot_time_s, monotonic)

    def at(self, monotonic: float) -> float | None:
        """The autopilot's time at `monotonic`; None when it was never heard or not for
        `max_anchor_age_s` (a frame then has no time and is not judged)."""
        with self._lock:
            anchor = self._anchor
        if anchor is None:
            return None
        boot, heard_at = anchor
        if monotonic - heard_at > self.max_anchor_age_s:
            return None
        return boot + (monotonic - heard_at)


class DoorCamera:
    """The door camera bound to the identity service: `start` runs the thread that gives the
    service the capture's frames while a check runs; `expect` announces the order being
    flown; `stop` stops the thread, closes the capture and the service."""

    def __init__(
        self,
        bus: Bus,
        service: IdentityService,
        capture: Capture,
        seal_key: Any,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.capture = capture
        self._seal_key = seal_key
        self._monotonic = monotonic
        self.clock = AutopilotClock()
        self._current: Order | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_t: float | None = None
        self.fed = 0  # frames given to the service during checks
        self.idle = 0  # frames taken while no check ran (not analysed)
        self.untimed = 0  # frames during a check with no autopilot time (not judged)
        self.ended: str | None = None  # why the capture ended, once it did
        self._unsubscribe = bus.subscribe(VehicleState, self._on_state)

    def _on_state(self, state: VehicleState) -> None:
        self.clock.heard(state.boot_time_s, self._monotonic())

    # -- orders ------------------------------------------------------------------------------

    def expect(self, order: Order) -> None:
        """Check the recipient of `order` (its drop is its id) when its mission's check
        begins; an earlier order's template can no longer be opened."""
        with self._lock:
            self._current = order
        self.service.expect(order.order_id, lambda: self._open(order.order_id))

    def flown(self, order_id: str) -> None:
        """The order's mission is over: its template can no longer be opened."""
        with self._lock:
            if self._current is not None and self._current.order_id == order_id:
                self._current = None

    def _open(self, order_id: str) -> Any:
        with self._lock:
            order = self._current
        if order is None or order.order_id != order_id:
            raise KeyError(f"order {order_id} is not the one being flown")
        return open_template(order, self._seal_key)

    # -- frames ------------------------------------------------------------------------------

    def start(self) -> DoorCamera:
        self.capture.start()
        self._thread = threading.Thread(target=self._run, name="door-camera", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.capture.read(READ_WAIT_S)
            except EndOfStream:
                self.ended = "the camera's source ended"
                return
            except CaptureError as exc:
                if not self._stop.is_set():
                    self.ended = f"the camera failed: {exc}"
                return
            if frame is not None:
                self.feed(frame)

    def feed(self, frame: Frame) -> None:
        """One captured frame: to the service while a check runs, stamped with the
        autopilot's time at its capture; counted and dropped otherwise (also a frame that
        would not come after the one before, which the service would count as stale)."""
        if not self.service.checking:
            self.idle += 1
            return
        t = self.clock.at(frame.t_captured)
        if t is None or (self._last_t is not None and t <= self._last_t):
            self.untimed += 1
            return
        self._last_t = t
        self.fed += 1
        self.service.frame(frame.image, t)

    # -- the supervisor's view ---------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return (
            self._thread is not None
            and self._thread.is_alive()
            and self.capture.state not in ("ended", "failed", "closed")
        )

    def describe(self) -> str:
        """One line for `skycourier status`: the camera, the checks and their verdicts."""
        stats = self.capture.stats
        outcomes = self.service.outcomes
        last = ""
        if outcomes:
            v = outcomes[-1].verdict
            last = f"; last: matched {v.matched}, live {v.live}, distance {v.distance}"
        return (
            f"door camera {stats.source}: {stats.state}, {stats.captured} frames; "
            f"{len(outcomes)} checks, {self.fed} frames judged{last}"
            + (f"; {self.ended}" if self.ended else "")
        )

    def stop(self) -> None:
        self._stop.set()
        self._unsubscribe()
        self.capture.close()
        if self._thread is not None:
            self._thread.join(READ_WAIT_S + 5.0)
        self.service.close()
        with self._lock:
            self._current = None


def start_door_camera(
    config: Config, bus: Bus, audit: AuditHook | None = None
) -> DoorCamera | None:
    """The daemon's "identity" part: None (said once) without `[identity] camera`; a
    StartError naming what is missing when the face models, the drone's seal key or the
    camera cannot be had."""
    identity = config.identity
    if identity.camera is None:
        log.warning(NO_CAMERA)
        return None
    try:
        source = parse_source(identity.camera)
    except CaptureError as exc:
        raise StartError(f"[identity] camera: {exc}") from exc
    keys = KeyStore(config.security.keys_dir)
    try:
        if not keys.has_drone():
            raise StartError(
                f"{config.security.keys_dir} holds no drone keys, so no recipient template "
                f"can be opened (create them with `skycourier keys init --drone ID`)"
            )
        seal_key = keys.drone_seal_key()
    except KeyFileError as exc:
        raise StartError(f"the drone's seal key cannot be used: {exc}") from exc
    try:
        analyzer = analyzer_from_config(identity)
    except FaceModelError as exc:
        raise StartError(f"the face models cannot be loaded: {exc}") from exc
    # The door camera is not the vision camera: the person boxes of the vision service
    # describe other frames, so they give no region of interest here.
    service = IdentityService(bus, analyzer, identity, audit=audit, person_roi=False)
    door = DoorCamera(bus, service, Capture(source), seal_key)
    log.info("face check on: door camera %s", source)
    return door.start()


def recipient_announcer(
    config: Config, door: Callable[[], DoorCamera | None]
) -> Callable[[Order], Callable[[], None]]:
    """For `OrderFlights`: announces each order to the running door camera (`door()`, the
    supervisor's handle, which may change as the part restarts) and gives back what ends
    the announcement once the order is flown. Says why when a configured face check is not
    running (the PIN still clears the recipient)."""

    def announce(order: Order) -> Callable[[], None]:
        camera = door()
        if camera is None:
            if config.identity.camera is not None:
                log.warning("order %s: no face check, the identity part is not running (see "
                            "`skycourier status`); only the operator's PIN clears the "
                            "recipient", order.order_id)  # fmt: skip
            return lambda: None
        camera.expect(order)
        return lambda: camera.flown(order.order_id)

    return announce
