"""The secure hand-over of `skycourier sim`: keys, a signed order, MAVLink signing, the audit
trail and a recipient at the door, wired the way the drone flies them.

At the start of a run (`prepare_handover`), in the run's folder:

- a dispatcher key store (`keys/dispatcher`) and a drone key store (`keys/drone`), each file
  mode 0600 in a 0700 folder, made once and reused by later runs into the same folder (a drone
  keeps its keys; its nonce store `order-nonces.json` remembers every order it accepted);
- the recipient enrolled from one photo (obama2.jpg of the `face_recognition` 1.3.0 source
  distribution on PyPI), the template sealed into an order for the drop signed by the
  dispatcher (`create_order`, written to `order.json`), then zeroed; on the drone side the
  order is verified (`verify_order`) before the mission may fly;
- the audit trail `audit.jsonl`, signed with the drone's identity key, which takes the
  accepted order, the mission runner's hand-over records (`MissionRunner(audit=...)`) and the
  identity service's check;
- the drone's MAVLink signing secret for the autopilot link (the built-in vehicle, or SITL,
  then takes only signed commands).

At the hand-over the mission's "verify-recipient" step starts the identity service
(`companion.identity.service`), which opens the template sealed in the order and judges the
frames of the simulated door camera (`SimDoorCamera`): a face made from a still photo by
`sim.faces` that follows the liveness challenge or not (`RECIPIENTS`). Like the downward
camera (`sim.harness.vision`), the door camera runs in lockstep with the built-in vehicle:
a frame is due every `DOOR_FRAME_PERIOD_S` of simulated time from the start of the check,
and the vehicle's clock waits until it has been judged and the mission has taken in what came
of it, so the verdict never depends on the machine's speed.

Without the face photos (no package index) or the face models (dlib-bin,
face_recognition_models), the run flies a plain delivery without the recipient check and the
report says why; keys, signing and the audit trail do not need them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from companion.bus import Bus
from companion.config import Config
from companion.identity.enrol import EnrolmentError, enrol_template
from companion.identity.errors import FaceModelError
from companion.identity.liveness import LivenessParams
from companion.identity.service import analyzer_from_config
from companion.mission.events import MissionEvent
from companion.mission.runner import MissionRunner
from companion.security.audit import AuditTrail, verify_audit
from companion.security.keys import KeyStore, write_new_file
from companion.security.orders import (
    NonceStore,
    Order,
    OrderError,
    create_order,
    verify_order,
)
from firmware_bridge.state import VehicleState
from sim.faces import (
    PHOTO_SDIST,
    PORTRAIT_CROP,
    STILL_SIZE,
    FaceSynthError,
    FaceSynthesiser,
    default_cache,
    fetch_face_photo,
    load_face_still,
)
from sim.harness.vision import CameraPose

log = logging.getLogger(__name__)

#: Simulated seconds between door-camera frames (10 Hz, what the liveness check expects).
DOOR_FRAME_PERIOD_S = 0.1
#: When the challenge is done in a live sequence (s from the first frame): after the
#: liveness check's five baseline frames.
EVENT_AT_S = 0.6
#: Wall seconds a door frame waits for the mission to take in what came of it.
MISSION_PATIENCE_S = 5.0
#: How long a signed order of the simulator stays valid (Unix seconds).
ORDER_LIFETIME_S = 3600

#: The photos of the `face_recognition` 1.3.0 source distribution used here (pinned), besides
#: obama.jpg, which `sim.faces.fetch_face_photo` fetches and checks.
PHOTO_SHA256 = {
    "obama2.jpg": "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
    "biden.jpg": "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
}
ENROL_PHOTO = "obama2.jpg"
#: biden.jpg (970 x 2204) cut around the face as `sim.faces.PORTRAIT_CROP` cuts obama.jpg.
BIDEN_CROP = (313, 119, 876, 682)

#: The verdict's figures the report shows (with the liveness and face measures).
VERDICT_KEYS = ("matched", "live", "distance", "threshold", "frames", "reason", "decided_at_s")
#: What a run writes into its folder besides the flight outputs (the key stores and the nonce
#: store stay: they are the drone's and the dispatcher's).
HANDOVER_OUTPUTS = ("order.json", "audit.jsonl")


@dataclass(frozen=True)
class Recipient:
    """Who stands at the door: the photo the face is made from and what it does."""

    name: str
    photo: str
    live: bool  # follows the liveness challenge (else the photo is shaken in front of the lens)
    description: str


RECIPIENTS = {
    "right": Recipient("right", "obama.jpg", True, "the recipient, following the challenge"),
    "impostor": Recipient("impostor", "biden.jpg", True, "someone else, following the challenge"),
    "photo": Recipient("photo", "obama.jpg", False, "a photo of the recipient held to the lens"),
}


class HandoverUnavailable(Exception):
    """The recipient check cannot be simulated here (photos or face models missing)."""


# -- photos ------------------------------------------------------------------------------------


def fetch_photo(name: str, cache_dir: Path | None = None) -> Path:
    """A photo of the `face_recognition` 1.3.0 source distribution, extracted once beside it
    and checked against its pinned sha256 (the distribution is downloaded by
    `sim.faces.fetch_face_photo`)."""
    try:
        portrait = fetch_face_photo(cache_dir if cache_dir is not None else default_cache())
    except FaceSynthError as exc:
        raise HandoverUnavailable(f"the face photos cannot be fetched: {exc}") from exc
    if name == portrait.name:
        return portrait
    target = portrait.parent / name
    if target.exists() and _sha256(target.read_bytes()) == PHOTO_SHA256[name]:
        return target
    sdist = portrait.parent / PHOTO_SDIST
    member = f"{PHOTO_SDIST.removesuffix('.tar.gz')}/tests/test_images/{name}"
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            extracted = archive.extractfile(member)
            data = extracted.read() if extracted is not None else b""
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise HandoverUnavailable(f"{sdist}: no {member} in it ({exc})") from exc
    if _sha256(data) != PHOTO_SHA256[name]:
        raise HandoverUnavailable(f"{sdist}:{member} is not the pinned photo (sha256 differs)")
    target.write_bytes(data)
    return target


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def door_faces(recipient: Recipient, challenge: str, seconds: float) -> list[np.ndarray]:
    """The face stills (300 x 300) the door camera shows, one per frame at 10 Hz: the
    challenge done at `EVENT_AT_S` by a live recipient, the photo shaken by the hand that
    holds it otherwise."""
    crop = PORTRAIT_CROP if recipient.photo == "obama.jpg" else BIDEN_CROP
    try:
        still = load_face_still(fetch_photo(recipient.photo), crop, STILL_SIZE)
        synthesiser = FaceSynthesiser(still)
        kind = challenge if recipient.live else "jitter"
        frames = synthesiser.sequence(
            kind,  # type: ignore[arg-type]
            fps=1.0 / DOOR_FRAME_PERIOD_S,
            seconds=seconds,
            event_at=EVENT_AT_S,
        )
    except FaceSynthError as exc:
        raise HandoverUnavailable(f"the door camera's faces cannot be made: {exc}") from exc
    return [frame.image for frame in frames]


# -- the door camera ---------------------------------------------------------------------------


class SimDoorCamera:
    """The camera that faces the recipient during the hand-over's recipient check of
    `drop_id`: from the check's "verify-recipient" event until its verdict (or the mission's
    end) it hands `faces` (one per frame, the last one held) to `deliver` (the identity
    service's `frame`), every `DOOR_FRAME_PERIOD_S` of simulated time, stamped with the
    vehicle's time.

    In lockstep (`start_lockstep`) the frames are asked for by the vehicle's step gate
    (`allow`) and each waits until the mission has taken in what came of it; against SITL
    (`start_free`) they follow the companion's newest view of the autopilot's clock."""

    def __init__(
        self,
        bus: Bus,
        drop_id: str,
        faces: Sequence[np.ndarray],
        deliver: Callable[[np.ndarray, float], None],
    ) -> None:
        if not faces:
            raise ValueError("the door camera needs at least one face to show")
        self.bus = bus
        self.drop_id = drop_id
        self.faces = list(faces)
        self.deliver = deliver
        self.frames = 0
        self.errors = 0
        self.started_at: float | None = None
        self.lockstep = False
        self._active = False
        self._cond = threading.Condition()
        self._next_t = math.inf
        self._pending: float | None = None
        self._runner: MissionRunner | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stops = [bus.subscribe(MissionEvent, self._on_event)]

    def _on_event(self, event: MissionEvent) -> None:
        if event.event == "verify-recipient" and event.detail.get("drop") == self.drop_id:
            if event.boot_time_s is None:
                return
            with self._cond:
                self.started_at = self._next_t = event.boot_time_s
                self._active = True
                self._cond.notify_all()
        elif event.event in ("recipient-verdict", "cleared", "abort", "finished"):
            with self._cond:
                self._active = False
                self._cond.notify_all()

    # -- running -----------------------------------------------------------------------------

    def start_lockstep(self, runner: MissionRunner) -> None:
        self.lockstep = True
        self._runner = runner
        self._start(self._serve_requests)

    def start_free(self) -> None:
        latest: dict[str, float] = {}

        def on_state(state: VehicleState) -> None:
            if state.boot_time_s is not None:
                latest["t"] = state.boot_time_s

        self._stops.append(self.bus.subscribe(VehicleState, on_state))
        self._start(lambda: self._free_run(latest))

    def _start(self, target: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=target, name="sim-door-camera", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        for stop in self._stops:
            stop()
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def allow(self, t_next: float, pose: Callable[[], CameraPose]) -> bool:
        """The vehicle's step gate: False while a frame due before `t_next` is taken."""
        with self._cond:
            if not self._active:
                return True
            if self._pending is not None:
                return False
            if t_next > self._next_t:
                self._pending = pose().t
                self._cond.notify_all()
                return False
        return True

    def _serve_requests(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._stop.is_set())
                t = self._pending
            if t is None:
                return
            try:
                self._frame(t)
                if self._runner is not None and not self._runner.wait_idle(MISSION_PATIENCE_S):
                    log.warning("door camera: the mission took more than %g s over a frame",
                                MISSION_PATIENCE_S)  # fmt: skip
            finally:
                with self._cond:
                    self._pending = None
                    self._next_t = max(self._next_t + DOOR_FRAME_PERIOD_S,
                                       t + DOOR_FRAME_PERIOD_S / 2)  # fmt: skip
                    self._cond.notify_all()

    def _free_run(self, latest: dict[str, float]) -> None:
        while not self._stop.wait(0.01):
            t = latest.get("t")
            with self._cond:
                due = self._active and t is not None and t >= self._next_t
                if due:
                    self._next_t = t + DOOR_FRAME_PERIOD_S  # type: ignore[operator]
            if due:
                self._frame(t)  # type: ignore[arg-type]

    def _frame(self, t: float) -> None:
        face = self.faces[min(self.frames, len(self.faces) - 1)]
        self.frames += 1
        try:
            self.deliver(face, t)
        except Exception:  # a failed frame is counted and logged, never the end of the sim
            self.errors += 1
            log.exception("door camera: frame failed")


# -- keys, order, audit trail -----------------------------------------------------------------


@dataclass
class Handover:
    """The secure side of one simulated delivery: key stores, the audit trail, the accepted
    order and, with a recipient check, the enrolled recipient's door-camera faces."""

    out_dir: Path
    drone_keys: KeyStore
    dispatcher_keys: KeyStore
    trail: AuditTrail
    recipient: Recipient | None
    note: str = ""
    order: Order | None = None
    faces: list[np.ndarray] = field(default_factory=list, repr=False)
    analyzer: Any = None
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def checks_recipient(self) -> bool:
        return self.order is not None

    @property
    def audit_path(self) -> Path:
        return self.trail.path

    def audit(self, kind: str, data: dict[str, Any]) -> None:
        """The audit hook of the mission runner and the identity service."""
        with self._lock:
            self.trail.append(kind, **data)
            self.records.append((kind, data))

    def signing_secret(self) -> bytes:
        return self.drone_keys.mavlink_signing_secret()

    def close(self) -> None:
        self.trail.close()


def prepare_handover(
    config: Config, out_dir: Path, order_id: str, drop: tuple[float, float], recipient: str
) -> Handover:
    """Keys, the audit trail and, unless `recipient` is "none" or the faces cannot be made
    here (`Handover.note` says why), the signed and verified order for `order_id` (the
    mission's id, which names the drop) with the recipient's sealed template and the door
    camera's faces. KeyFileError, AuditError or OrderError when the keys, the trail or the
    order are refused: the delivery must not fly then."""
    for name in HANDOVER_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    dispatcher = KeyStore(out_dir / "keys" / "dispatcher")
    if not dispatcher.has_dispatcher():
        dispatcher.init_dispatcher()
    drone = KeyStore(out_dir / "keys" / "drone")
    if not drone.has_drone():
        drone.init_drone(config.telemetry.drone_id)
    drone_id = drone.drone_id()
    trail = AuditTrail(out_dir / "audit.jsonl", drone.drone_identity_key())
    handover = Handover(out_dir, drone, dispatcher, trail, RECIPIENTS.get(recipient))
    try:
        if handover.recipient is None:
            handover.note = "no recipient check (--recipient none)"
            return handover
        try:
            faces, analyzer, template = _enrol_and_film(config, handover.recipient)
        except HandoverUnavailable as exc:
            handover.note = str(exc)
            log.warning("sim: flying without the recipient check: %s", exc)
            return handover
        now = int(time.time())
        try:
            blob = create_order(
                dispatcher.dispatcher_signing_key(),
                drone_id=drone_id,
                seal_public=drone.drone_seal_key().public_key(),
                order_id=order_id,
                lat=drop[0],
                lon=drop[1],
                template=template,
                not_before=now,
                expires=now + ORDER_LIFETIME_S,
            )
        except ValueError as exc:  # e.g. a mission id that cannot be an order id
            raise OrderError("malformed", f"cannot sign the order {order_id!r}: {exc}") from exc
        finally:
            template.fill(0)  # sealed in the order; the clear copy goes
        write_new_file(out_dir / "order.json", blob)
        order = verify_order(
            blob,
            dispatcher_public=dispatcher.dispatcher_public(),
            drone_id=drone_id,
            now=time.time(),
            nonces=NonceStore(out_dir / "order-nonces.json"),
        )
        summary = order.summary()
        trail.append(
            "order-accepted",
            order_id=order.order_id,
            drone_id=order.drone_id,
            digest=order.digest,
            drop=summary["drop"],
            expires=order.expires,
            recipient=summary["recipient"],
            pin=summary["pin"],
        )
        handover.order, handover.faces, handover.analyzer = order, faces, analyzer
        handover.note = f"{handover.recipient.description} ({handover.recipient.photo})"
        return handover
    except BaseException:
        trail.close()
        raise


def _enrol_and_film(
    config: Config, recipient: Recipient
) -> tuple[list[np.ndarray], Any, np.ndarray]:
    """The door camera's faces, the face analyser and the template enrolled from
    `ENROL_PHOTO`; HandoverUnavailable when the photos or the face models are missing."""
    try:
        analyzer = analyzer_from_config(config.identity)
    except FaceModelError as exc:
        raise HandoverUnavailable(str(exc)) from exc
    seconds = LivenessParams().time_limit_s + 1.0
    faces = door_faces(recipient, config.identity.liveness_challenge, seconds)
    try:
        template = enrol_template([fetch_photo(ENROL_PHOTO)], analyzer)
    except EnrolmentError as exc:
        raise HandoverUnavailable(f"the recipient cannot be enrolled: {exc}") from exc
    return faces, analyzer, template


def handover_summary(
    handover: Handover,
    *,
    identity: dict[str, Any] | None,
    camera: SimDoorCamera | None,
    gripper: dict[str, Any],
    signing: dict[str, Any],
) -> dict[str, Any]:
    """The report's `handover` section (numbers and words only). Closes the audit trail and
    verifies it with the drone's identity key."""
    handover.close()
    public = handover.drone_keys.drone_identity_key().public_key()
    check = verify_audit(handover.audit_path, public)
    kinds: dict[str, int] = {}
    for line in handover.audit_path.read_text().splitlines():
        kind = str(json.loads(line).get("kind"))
        kinds[kind] = kinds.get(kind, 0) + 1
    section: dict[str, Any] = {
        "enabled": handover.checks_recipient,
        "note": handover.note,
        "recipient": handover.recipient.name if handover.recipient else None,
        "keys": {
            "drone": str(handover.drone_keys.path),
            "dispatcher": str(handover.dispatcher_keys.path),
        },
        "signing": signing,
        "gripper": gripper,
        "audit": {
            "path": str(handover.audit_path),
            "records": check.records,
            "head": check.head,
            "verified": check.ok,
            "signatures_checked": check.signatures_checked,
            "result": str(check),
            "kinds": kinds,
        },
    }
    if handover.order is None:
        return section
    order = handover.order
    section["order"] = {
        "order_id": order.order_id,
        "drone_id": order.drone_id,
        "digest": order.digest,
        "expires": order.expires,
        "path": str(handover.out_dir / "order.json"),
    }
    section["enrolled_from"] = ENROL_PHOTO
    section["door_camera"] = {
        "photo": handover.recipient.photo if handover.recipient else None,
        "frames": camera.frames if camera is not None else 0,
        "frame_errors": camera.errors if camera is not None else 0,
        "lockstep": camera.lockstep if camera is not None else False,
        "started_at_s": camera.started_at if camera is not None else None,
    }
    checks = (identity or {}).get("checks") or []
    if checks:
        last = checks[-1]
        section["verdict"] = {key: last[key] for key in VERDICT_KEYS}
        section["verdict"]["liveness"] = last["liveness"]
        section["verdict"]["face"] = last["face"]
        started = camera.started_at if camera is not None else None
        decided = last["decided_at_s"]
        section["check_s"] = (
            round(decided - started, 2) if started is not None and decided is not None else None
        )
    judged = [data for kind, data in handover.records if kind == "recipient-verdict"]
    if judged:
        section["gate"] = {"outcome": judged[-1].get("outcome"), "why": judged[-1].get("why")}
    section["identity_errors"] = (identity or {}).get("errors", [])
    return section
