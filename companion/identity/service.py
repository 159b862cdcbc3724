"""The recipient check at the door: the identity service of a hand-over.

When the mission starts the recipient check of a drop (its "verify-recipient" `MissionEvent`),
the service opens that drop's recipient template (sealed in the signed order; opened only
now, held only in memory) and judges the camera frames it is given: each frame's largest face
is detected (in the vision service's newest person box when that box is from the same camera,
else in the frame scaled down: `FaceAnalyzer.detect`), gated and embedded; the embeddings go
to a k-of-n `FaceVerifier` against the template and the 68 landmarks to a `LivenessCheck`
(the `[identity] liveness_challenge`). Frames before the recipient's face first shows are
waited through (the liveness check's time limit bounds the wait). Once both checks have
decided (or the liveness check has failed, which no face verdict can mend), one
`RecipientVerdict` goes on the bus, stamped with the autopilot's time of the frame that
decided it; the release gate in the mission core judges it. Then the template is zeroed and
dropped, and so is every embedding and landmark array of the frames, once used.

Both checks must be about the same face: the liveness check only takes the landmarks of a
face whose embedding stays within the threshold of the first face the check analysed, so a
photo of the recipient held up for the face check and someone else blinking for the liveness
check fail (a frame with another face counts as the face lost). Frames whose face the quality
gates refuse give the liveness check nothing (a gap, which it bounds).

Fail safe: a frame with no face, a stale or out-of-order frame (older than `MAX_FRAME_AGE_S`
behind the autopilot's newest time, or not after the previous one), a template that does not
open, an error in the face models: none of them ever counts as a match or as live. Time is the
autopilot's only (frame times and `VehicleState.boot_time_s`): no wall clock is read, so the
check decides the same on simulated time as on the drone.

Nothing biometric leaves the service: the verdict, the audit record (`recipient-check`) and
the log carry numbers and words only (distances, frame counts, eye/mouth aspect ratios).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from companion.bus import Bus
from companion.config import IdentityConfig
from companion.identity.errors import FaceRejected
from companion.identity.faces import FaceAnalyzer, FaceSample, QualityLimits
from companion.identity.liveness import LivenessCheck, LivenessResult
from companion.identity.verify import FaceVerifier, Verdict, face_distance
from companion.mission.events import MissionEvent
from companion.mission.handover import MAX_LIVENESS_FIGURES
from companion.mission.inputs import RecipientVerdict
from firmware_bridge.state import VehicleState

log = logging.getLogger(__name__)

#: A frame more than this many autopilot seconds older than the newest vehicle time is stale.
MAX_FRAME_AGE_S = 0.5
#: A person box is the face's region of interest only if taken this close to the frame's time.
ROI_MAX_AGE_S = 0.25
#: The mission event that starts a check, and those after which no check may go on.
CHECK_EVENT = "verify-recipient"
END_EVENTS = frozenset({"abort", "finished"})
#: The liveness figures a verdict carries, most telling first (the verdict holds at most
#: `MAX_LIVENESS_FIGURES`).
LIVENESS_FIGURES = (
    "frames", "ear_baseline", "ear_min", "mar_baseline", "mar_max", "event_s",
    "event_residual", "residual_max", "ear_noise", "mar_noise", "residual_noise",
)  # fmt: skip

#: What the liveness check is given for a frame whose face cannot be vouched for: nothing.
_SKIP = object()

#: Receives the service's audit record: its kind and data (numbers and words only).
AuditHook = Callable[[str, dict[str, Any]], None]
#: Gives the recipient template of a drop when its check starts (e.g. `open_template`).
TemplateOpener = Callable[[], np.ndarray]


def analyzer_from_config(config: IdentityConfig) -> FaceAnalyzer:
    """A `FaceAnalyzer` with the `[identity]` quality gates (FaceModelError when dlib or the
    model files are missing)."""
    return FaceAnalyzer(
        QualityLimits(
            min_eye_chin_px=config.min_eye_chin_px,
            min_sharpness=config.min_sharpness,
            max_yaw_deg=config.max_yaw_deg,
            max_pitch_deg=config.max_pitch_deg,
        )
    )


@dataclass(frozen=True)
class CheckOutcome:
    """What one check decided, as numbers and words: the verdict that was published, the
    face consensus and the liveness result behind it (None where that part never decided)."""

    verdict: RecipientVerdict
    face: Verdict | None
    liveness: LivenessResult | None
    waiting_frames: int
    stale_frames: int
    face_changes: int
    roi_frames: int

    def as_record(self) -> dict[str, Any]:
        """The audit record's data: scalars, short words and small dicts; nothing biometric."""
        v = self.verdict
        return {
            "drop": v.drop_id,
            "matched": v.matched,
            "live": v.live,
            "distance": None if v.distance is None else round(v.distance, 4),
            "threshold": v.threshold,
            "frames": v.frames,
            "decided_at_s": round(v.decided_at_s, 3) if _finite(v.decided_at_s) else None,
            "reason": v.reason,
            "face": None if self.face is None else self.face.as_dict(),
            "liveness": None if self.liveness is None else self.liveness.as_record(),
            "waiting_frames": self.waiting_frames,
            "stale_frames": self.stale_frames,
            "face_changes": self.face_changes,
            "roi_frames": self.roi_frames,
        }


class RecipientCheck:
    """One recipient check of one drop (sans-I/O: frames and times in, one verdict out; no
    clock, no bus). `frame` and `tick` return the `RecipientVerdict` once, when it decides,
    and None otherwise; `wipe` zeroes the template (call it when the check is over)."""

    def __init__(
        self,
        drop_id: str,
        template: np.ndarray,
        analyzer: FaceAnalyzer,
        config: IdentityConfig,
        *,
        max_frame_age_s: float = MAX_FRAME_AGE_S,
    ) -> None:
        self.drop_id = drop_id
        self.analyzer = analyzer
        self.threshold = config.threshold
        self.max_frame_age_s = max_frame_age_s
        self._template = template
        self._face = FaceVerifier(
            template,
            threshold=config.threshold,
            k=config.k,
            n=config.n,
            max_rejected=config.max_rejected,
        )
        self._liveness = LivenessCheck(config.liveness_challenge)
        self._anchor: np.ndarray | None = None  # the first analysed face's embedding
        self._face_verdict: Verdict | None = None
        self._last_t: float | None = None
        self.frames = 0
        self.waiting_frames = 0
        self.stale_frames = 0
        self.face_changes = 0
        self.roi_frames = 0
        self.outcome: CheckOutcome | None = None

    @property
    def decided(self) -> bool:
        return self.outcome is not None

    def frame(
        self,
        image: np.ndarray,
        t: float,
        *,
        now: float | None = None,
        roi: tuple[float, float, float, float] | None = None,
    ) -> RecipientVerdict | None:
        """Judge one camera frame taken at `t` (autopilot seconds); `now` is the autopilot's
        newest time (for the staleness check), `roi` an optional region to look for the face
        in first (x1, y1, x2, y2 in frame pixels)."""
        if self.outcome is not None:
            return None
        self.frames += 1
        if not _finite(t):
            # No time, no order: the liveness check fails on it ("bad-time").
            self.stale_frames += 1
            self._liveness.feed(None, t)
            return self._maybe_decide(now if _finite(now) else self._last_t)
        if (self._last_t is not None and t <= self._last_t) or (
            _finite(now) and now - t > self.max_frame_age_s  # type: ignore[operator]
        ):
            self.stale_frames += 1
            self._feed_face(FaceRejected("bad-frame", f"stale frame (taken at {t:.3f} s)"), t)
            return self._maybe_decide(t)
        self._last_t = t
        sample, landmarks = self._analyse(image, roi)
        if sample is None:
            self.waiting_frames += 1  # nobody in front of the camera yet
            return None
        self._feed_face(sample, t)
        if landmarks is not _SKIP:
            self._liveness.feed(landmarks, t)  # type: ignore[arg-type]
        for array in (landmarks, *_arrays(sample)):
            if isinstance(array, np.ndarray):
                array.fill(0)
        return self._maybe_decide(t)

    def tick(self, now: float) -> RecipientVerdict | None:
        """No frame, but the autopilot's clock moved on to `now`: the liveness check fails once
        frames stop coming (its frame gap and time limit), and the check with it."""
        if self.outcome is not None or not _finite(now):
            return None
        self._liveness.tick(now)
        return self._maybe_decide(now)

    def wipe(self) -> None:
        """Zero every copy of the template and of the first face's embedding, drop them."""
        for array in (self._template, self._face.template, self._anchor):
            if array is not None and array.flags.writeable:
                array.fill(0)
        self._anchor = None
        self._template = np.zeros((0, 128), np.float32)
        self._face.template = self._template

    # -- one frame ---------------------------------------------------------------------------

    def _analyse(
        self, image: np.ndarray, roi: tuple[float, float, float, float] | None
    ) -> tuple[FaceSample | FaceRejected | None, np.ndarray | object | None]:
        """The frame's largest face for the face check (None while no face has been seen
        yet in this check), and what the liveness check gets: the landmarks of the check's
        own face, None (no face, or another person's) or `_SKIP` (nothing: the quality gates
        refused the face, or the face models failed on the frame)."""
        try:
            faces = self.analyzer.detect(image, roi) if roi is not None else []
            if faces:
                self.roi_frames += 1
            else:
                faces = self.analyzer.detect(image)
            if not faces:
                if self._anchor is None:
                    return None, _SKIP
                return FaceRejected("no-face", "no face found in the frame"), None
            sample = self.analyzer.analyse(image, faces[0])
        except FaceRejected as exc:
            return exc, _SKIP
        except Exception as exc:  # a model failure is a frame without a verdict, never a match
            log.warning("recipient check: a frame failed in the face models: %s",
                        type(exc).__name__)  # fmt: skip
            return FaceRejected("bad-frame", f"face models failed: {type(exc).__name__}"), _SKIP
        sample = replace(sample, faces_in_frame=len(faces))
        embedding = sample.embedding.astype(np.float32)
        try:
            if self._anchor is None:
                self._anchor = embedding.copy()
            elif face_distance(self._anchor[None, :], embedding) > self.threshold:
                self.face_changes += 1
                return sample, None
        finally:
            embedding.fill(0)
        return sample, sample.landmarks68.copy()

    def _feed_face(self, sample: FaceSample | FaceRejected, t: float) -> None:
        if self._face_verdict is None:
            self._face_verdict = self._face.feed(sample, t)

    # -- the verdict -------------------------------------------------------------------------

    def _maybe_decide(self, t: float | None) -> RecipientVerdict | None:
        live = self._liveness.result
        if live is None:
            return None
        if self._face_verdict is None and live.passed:
            return None  # the face consensus still needs frames: it gets them
        return self._decide(self._face_verdict, live, t)

    def _decide(
        self, face: Verdict | None, live: LivenessResult, t: float | None
    ) -> RecipientVerdict:
        matched = face is not None and face.match and self.face_changes == 0
        reasons = []
        if face is None:
            reasons.append(f"face undecided after {self.frames} frames")
        elif not face.match:
            closest = f", closest {min(face.distances):.3f}" if face.distances else ""
            reasons.append(
                f"face {face.reason}: {face.matches} of {face.frames} frames within "
                f"{face.threshold:.2f}{closest}"
            )
        if self.face_changes:
            reasons.append(f"another face in {self.face_changes} frames")
        if not live.passed:
            reasons.append(f"liveness {live.reason}: {live.detail}")
        verdict = RecipientVerdict(
            drop_id=self.drop_id,
            decided_at_s=math.nan if t is None else float(t),
            matched=matched,
            live=live.passed,
            distance=_consensus_distance(face),
            threshold=self.threshold,
            frames=self.frames,
            liveness=_liveness_figures(live),
            reason="; ".join(reasons)[:200],
        )
        self.outcome = CheckOutcome(
            verdict, face, live, self.waiting_frames, self.stale_frames, self.face_changes,
            self.roi_frames,
        )  # fmt: skip
        return verdict


def _arrays(sample: object) -> tuple[np.ndarray, ...]:
    """The arrays of a face sample (to be zeroed once used); none for a rejection."""
    if isinstance(sample, FaceSample):
        return sample.embedding, sample.landmarks68
    return ()


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _consensus_distance(face: Verdict | None) -> float | None:
    """The distance the k-of-n consensus rests on: the k-th closest analysed frame's (the
    farthest of the closest k), so a match is always within the threshold; with fewer than k
    analysed frames the farthest of them; None without any."""
    if face is None or not face.distances:
        return None
    ranked = sorted(face.distances)
    return round(ranked[min(face.k, len(ranked)) - 1], 4)


def _liveness_figures(result: LivenessResult) -> tuple[tuple[str, float], ...]:
    figures = result.measurements
    chosen = [name for name in LIVENESS_FIGURES if name in figures]
    return tuple((name, figures[name]) for name in chosen[:MAX_LIVENESS_FIGURES])


class IdentityService:
    """The recipient check bound to the bus: starts a check on the mission's
    "verify-recipient" event for a drop it expects (`expect`), takes frames from the camera
    (`frame`, called from the camera's thread), ticks on the autopilot's `VehicleState`s and
    publishes the `RecipientVerdict`. With `person_roi` the vision service's newest
    `Detections` of the same frame size, taken within `ROI_MAX_AGE_S` of the frame, give the
    face's region of interest (only meaningful where the face camera is the vision camera).
    `audit` receives one "recipient-check" record per check.

    A frame is analysed under the service's lock; a `VehicleState` that comes meanwhile (on
    the bridge's thread, which must not wait) skips its tick, the next one ticks."""

    def __init__(
        self,
        bus: Bus,
        analyzer: FaceAnalyzer,
        config: IdentityConfig,
        *,
        audit: AuditHook | None = None,
        person_roi: bool = True,
        max_frame_age_s: float = MAX_FRAME_AGE_S,
    ) -> None:
        self.bus = bus
        self.analyzer = analyzer
        self.config = config
        self.audit = audit
        self.max_frame_age_s = max_frame_age_s
        self._lock = threading.RLock()
        self._openers: dict[str, TemplateOpener] = {}
        self._check: RecipientCheck | None = None
        self._now: float | None = None
        self._person: tuple[float, tuple[int, int], tuple[float, float, float, float]] | None = None
        self.outcomes: list[CheckOutcome] = []
        self.ignored_frames = 0
        self.errors: list[str] = []
        self._stops = [
            bus.subscribe(MissionEvent, self._on_event),
            bus.subscribe(VehicleState, self._on_state),
        ]
        if person_roi:
            from companion.vision.service import Detections

            self._stops.append(bus.subscribe(Detections, self._on_detections))

    # -- set-up ------------------------------------------------------------------------------

    def expect(self, drop_id: str, opener: TemplateOpener) -> None:
        """Check the recipient of `drop_id` with the template `opener` gives when the check
        starts (and not before: the template is in the clear only during the hand-over)."""
        with self._lock:
            self._openers[drop_id] = opener

    def expect_order(self, order: Any, seal_key: Any, drop_id: str | None = None) -> None:
        """Check the recipient of a verified `Order` (its drop: `drop_id`, by default the
        order id) with its template opened by this drone's X25519 `seal_key`."""
        from companion.security.orders import open_template

        self.expect(drop_id or order.order_id, lambda: open_template(order, seal_key))

    @property
    def checking(self) -> bool:
        with self._lock:
            return self._check is not None

    def close(self) -> None:
        """Stop listening; wipe a check still open and forget the expected templates."""
        for stop in self._stops:
            stop()
        with self._lock:
            self._end_check("the service closed")
            self._openers.clear()

    # -- input -------------------------------------------------------------------------------

    def frame(self, image: np.ndarray, t: float) -> None:
        """A camera frame taken at `t` (autopilot seconds). Ignored while no check runs."""
        with self._lock:
            check = self._check
            if check is None:
                self.ignored_frames += 1
                return
            verdict = check.frame(image, t, now=self._now, roi=self._roi(image, t))
            self._settle(check, verdict)

    def _on_state(self, state: VehicleState) -> None:
        now = state.boot_time_s
        if now is None:
            return
        self._now = now
        if not self._lock.acquire(blocking=False):
            return  # a frame is being analysed; the next state ticks
        try:
            check = self._check
            if check is not None:
                self._settle(check, check.tick(now))
        finally:
            self._lock.release()

    def _on_detections(self, detections: Any) -> None:
        people = [d for d in detections.detections if d.class_name == "person"]
        if people:
            box = max(people, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1])).box
            self._person = (detections.t, tuple(detections.frame_size), box)

    def _roi(self, image: np.ndarray, t: float) -> tuple[float, float, float, float] | None:
        person = self._person
        if person is None or not isinstance(image, np.ndarray) or image.ndim < 2:
            return None
        taken, size, box = person
        same_camera = size == (image.shape[1], image.shape[0])
        return box if same_camera and _finite(t) and abs(t - taken) <= ROI_MAX_AGE_S else None

    def _on_event(self, event: MissionEvent) -> None:
        if event.event == CHECK_EVENT:
            self._start(str(event.detail.get("drop", "")), event.boot_time_s)
        elif event.event in END_EVENTS:
            with self._lock:
                self._end_check(f"the mission ended ({event.event})")

    # -- a check -----------------------------------------------------------------------------

    def _start(self, drop_id: str, at: float | None) -> None:
        with self._lock:
            self._end_check("a new check began")
            opener = self._openers.pop(drop_id, None)
            if opener is None:
                self._refuse(drop_id, at, f"no recipient template for drop {drop_id!r}")
                return
            template = None
            try:
                template = opener()
                self._check = RecipientCheck(
                    drop_id, template, self.analyzer, self.config,
                    max_frame_age_s=self.max_frame_age_s,
                )  # fmt: skip
            except Exception as exc:  # a template that does not open is a refusal
                if isinstance(template, np.ndarray) and template.flags.writeable:
                    template.fill(0)
                self._refuse(drop_id, at, f"the recipient template cannot be used: {exc}")
                return
            log.info("recipient check for drop %s began at %s s", drop_id, at)

    def _refuse(self, drop_id: str, at: float | None, why: str) -> None:
        """With the lock held: a check that cannot even start refuses at once."""
        log.error("recipient check for drop %s refused: %s", drop_id, why)
        self.errors.append(why)
        self._publish(
            RecipientVerdict(
                drop_id=drop_id,
                decided_at_s=math.nan if at is None else float(at),
                matched=False,
                live=False,
                distance=None,
                threshold=self.config.threshold,
                frames=0,
                reason=why[:200],
            )
        )

    def _settle(self, check: RecipientCheck, verdict: RecipientVerdict | None) -> None:
        """With the lock held: publish a decided check's verdict, audit it, wipe it."""
        if verdict is None or check.outcome is None:
            return
        outcome = check.outcome
        self.outcomes.append(outcome)
        self._check = None
        check.wipe()
        log.info(
            "recipient check for drop %s: matched %s (distance %s, threshold %.2f), live %s, "
            "%d frames%s",
            verdict.drop_id, verdict.matched, verdict.distance, verdict.threshold,
            verdict.live, verdict.frames, f": {verdict.reason}" if verdict.reason else "",
        )  # fmt: skip
        if self.audit is not None:
            try:
                self.audit("recipient-check", outcome.as_record())
            except Exception as exc:  # the mission's own records still go to the trail
                self.errors.append(f"audit: {exc}")
                log.error("recipient check for drop %s not audited: %s", verdict.drop_id, exc)
        self._publish(verdict)

    def _end_check(self, why: str) -> None:
        """With the lock held: abandon an undecided check (no verdict) and wipe it."""
        check = self._check
        if check is None:
            return
        self._check = None
        check.wipe()
        log.info("recipient check for drop %s ended without a verdict: %s", check.drop_id, why)

    def _publish(self, verdict: RecipientVerdict) -> None:
        # With the lock held, so a verdict is on the bus before any later input is judged;
        # the mission runner only queues it.
        self.bus.publish(verdict)

    def summary(self) -> dict[str, Any]:
        """The checks so far (numbers and words only), for reports."""
        with self._lock:
            return {
                "checks": [o.as_record() for o in self.outcomes],
                "ignored_frames": self.ignored_frames,
                "errors": list(self.errors),
            }
