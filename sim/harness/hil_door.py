"""The door camera of the hardware-in-the-loop rig: a person at the drop, served as MJPEG
over HTTP like the rig's downward camera (`sim.harness.hil_camera`), which the daemon opens
as its `[identity] camera`.

Until the drone asks for its recipient the feed shows an empty doorstep (no face). When the
ground station sees an order's "verify-recipient" event (the drone hovers at the drop and the
person walks up to it), the feed shows the person's face (`sim.faces`), made from a labelled
photo of the `face_recognition` 1.3.0 source distribution as `skycourier sim` makes it
(`sim.harness.handover`), in real time at `FPS`:

- "recipient": obama.jpg, blinking every `LOOP_S` (a first blink `BLINK_AT_S` after walking
  up, once the liveness check's baseline frames are in), as the liveness challenge asks;
- "impostor": biden.jpg, another labelled person, blinking the same way;
- "photo": obama.jpg as a still photo held to the lens (shaken by the hand, never blinking).

The rig's orders seal the recipient's template enrolled from obama2.jpg (`door_template`),
another photo of the same person, as a dispatcher enrols a customer. The person steps away
again once the drone's verdict (or the mission's end) reaches the ground.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from companion.identity.enrol import EnrolmentError, enrol_template
from companion.identity.errors import FaceModelError
from companion.security.orders import create_order
from companion.telemetry import schema
from sim.faces import PORTRAIT_CROP, STILL_SIZE, FaceSynthError, FaceSynthesiser, load_face_still
from sim.harness.handover import (
    BIDEN_CROP,
    ENROL_PHOTO,
    RECIPIENTS,
    HandoverUnavailable,
    fetch_photo,
)
from sim.harness.hil_camera import MjpegFeed
from sim.harness.hil_ground import GroundStation

log = logging.getLogger(__name__)

PATH = "/door.mjpg"
BOUNDARY = "skycourierdoor"
#: JPEG quality of the feed: high, so compression does not move the landmarks a blink moves.
JPEG_QUALITY = 95
#: Frames a second: what the liveness check expects (10 Hz, at most 0.3 s between frames).
FPS = 10.0
#: One loop of the person's face (s), and when in it the blink comes (after the liveness
#: check's five baseline frames, with room for the frames a busy machine drops).
LOOP_S = 2.0
BLINK_AT_S = 1.0
#: Who the door camera shows: the rig's mode and the `skycourier sim` recipient it is.
DOOR_MODES = {"recipient": "right", "impostor": "impostor", "photo": "photo"}
#: The events after which the person at the door steps away.
STEP_AWAY_EVENTS = frozenset(
    {"recipient-verdict", "cleared", "abort", "finished", "order-done", "order-interrupted"}
)


def door_template() -> np.ndarray:
    """The recipient's template as the dispatcher enrols it (from `ENROL_PHOTO`);
    HandoverUnavailable when the photos or the face models are missing."""
    try:
        return enrol_template([fetch_photo(ENROL_PHOTO)])
    except (EnrolmentError, FaceModelError) as exc:
        raise HandoverUnavailable(f"the recipient cannot be enrolled: {exc}") from exc


def door_faces(mode: str, challenge: str) -> list[np.ndarray]:
    """One loop (`LOOP_S` at `FPS`) of the face the door camera shows in `mode`;
    HandoverUnavailable when the photos are missing or the face cannot be made."""
    if mode not in DOOR_MODES:
        raise ValueError(f"unknown door camera {mode!r}: one of {', '.join(DOOR_MODES)}")
    recipient = RECIPIENTS[DOOR_MODES[mode]]
    crop = PORTRAIT_CROP if recipient.photo == "obama.jpg" else BIDEN_CROP
    try:
        still = load_face_still(fetch_photo(recipient.photo), crop, STILL_SIZE)
        frames = FaceSynthesiser(still).sequence(
            challenge if recipient.live else "jitter",  # type: ignore[arg-type]
            fps=FPS,
            seconds=LOOP_S,
            event_at=BLINK_AT_S,
        )
    except FaceSynthError as exc:
        raise HandoverUnavailable(f"the door camera's face cannot be made: {exc}") from exc
    return [frame.image for frame in frames]


def door_order(
    signing_key: Ed25519PrivateKey,
    seal_public: X25519PublicKey,
    template: np.ndarray,
    *,
    drone_id: str,
    order_id: str,
    drop: tuple[float, float],
    pin: str | None = None,
    valid_s: int = 3600,
) -> bytes:
    """An order sealing the enrolled `template`, otherwise as `hil_ground.make_order`
    makes one (valid from a minute ago, for `valid_s` seconds)."""
    now = int(time.time())
    return create_order(
        signing_key, drone_id=drone_id, seal_public=seal_public, order_id=order_id,
        lat=drop[0], lon=drop[1], template=template.copy(), not_before=now - 60,
        expires=now + valid_s, pin=pin,
    )  # fmt: skip


def doorstep(size: tuple[int, int]) -> np.ndarray:
    """The empty doorstep (no face): a door-coloured gradient of the faces' size."""
    height, width = size
    ramp = np.linspace(90, 150, height, dtype=np.float32)[:, None, None]
    tint = np.array([0.8, 0.9, 1.0], np.float32)[None, None, :]
    return np.broadcast_to(ramp * tint, (height, width, 3)).astype(np.uint8)


class DoorFeed(MjpegFeed):
    """The door camera's feed on 127.0.0.1 (a free port, `url`): the doorstep, and `faces`
    in a loop from when `ground` sees a "verify-recipient" event until the verdict.
    `walk_ups` holds, per check, the order and the monotonic time the person walked up."""

    def __init__(self, ground: GroundStation, faces: list[np.ndarray]) -> None:
        if not faces:
            raise ValueError("the door camera needs a face to show")
        super().__init__("door camera", PATH, BOUNDARY, JPEG_QUALITY)
        self._ground = ground
        self._faces = faces
        self._empty = doorstep(faces[0].shape[:2])
        self._present: tuple[str, float] | None = None  # (order id, walked up at)
        self.walk_ups: list[tuple[str, float]] = []
        self.face_frames = 0

    def _workers(self) -> dict[str, Callable[[], None]]:
        return {"render": self._render, "ground": self._follow}

    # -- the person at the door --------------------------------------------------------------

    def _follow(self) -> None:
        """Walk up on an order's "verify-recipient" event, step away after its verdict."""
        seen = self._ground.mark
        while not self._stop.is_set():
            for received in self._ground.wait_new(seen, 0.5):
                seen = received.index + 1
                event = received.record
                if isinstance(event, schema.Event) and not received.retained:
                    self._on_event(event)

    def _on_event(self, event: schema.Event) -> None:
        with self._cond:
            if event.kind == "verify-recipient" and event.mission_id:
                self._present = (event.mission_id, time.monotonic())
                self.walk_ups.append(self._present)
                log.info("door camera: the person walks up for order %s", event.mission_id)
            elif (
                self._present is not None
                and event.kind in STEP_AWAY_EVENTS
                and event.mission_id == self._present[0]
            ):
                self._present = None
                log.info("door camera: the person steps away (%s)", event.kind)

    def show(self, faces: list[np.ndarray]) -> None:
        """Someone else comes to the door from the next check on (`door_faces`)."""
        if not faces:
            raise ValueError("the door camera needs a face to show")
        with self._cond:
            self._faces = faces

    def _image(self, now: float) -> np.ndarray:
        with self._cond:
            present = self._present
            faces = self._faces
        if present is None:
            return self._empty
        self.face_frames += 1
        return faces[int((now - present[1]) * FPS) % len(faces)]

    # -- the feed ----------------------------------------------------------------------------

    def _render(self) -> None:
        period = 1.0 / FPS
        due = time.monotonic()
        while not self._stop.is_set():
            due += period
            self._encode_and_publish(self._image(time.monotonic()))
            self._stop.wait(max(0.0, due - time.monotonic()))
            due = max(due, time.monotonic() - period)  # behind: skip frames, no burst
