"""Liveness challenge at the door: the recipient blinks, or opens the mouth, and the drone
checks from dlib's 68-point landmarks over consecutive frames that a living face did it, not
a photo held up to the camera.

The measures are the eye aspect ratio of Soukupová & Čech ("Real-Time Eye Blink Detection
using Facial Landmarks", CVWW 2016): per eye ``(|p2-p6| + |p3-p5|) / (2 |p1-p4|)`` on the six
eye points, and the same ratio on the eight inner-lip points for the mouth (three vertical
gaps over twice the corner-to-corner width). Both are ratios of distances, so moving,
turning or scaling a photo (a similarity) leaves them as they were; a photo *tilted* away
from the camera, though, foreshortens every vertical distance and would fake a blink. Each
frame is therefore first mapped onto the first frame's face by the affine transform that
best fits the points a blink or a mouth opening does not move (brows, nose, eye corners),
which undoes any motion of a flat picture, and the ratios are measured there.

From the first `baseline_frames` frames come a per-subject baseline (median) and its noise
(scaled median absolute deviation), so that detector jitter on a still never counts: an
event must go beyond both a fixed fraction of the baseline and `noise_k` times the noise.
The event is a dip of both eyes' ratio (blink) or a rise of the mouth's (mouth) that lasts a
plausible time and comes back. Its change must also be non-rigid: the challenge points must
move away from the baseline shape, after the affine fit has removed the motion of the whole
face, by more than `min_residual` of the inter-ocular distance and `residual_k` times what
the baseline frames show.

Sans-I/O: frames and their times in, one `LivenessResult` out; no clock, no images. Anything
odd fails safe with a specific reason: a frame without a face, malformed or non-finite
landmarks, a bad, repeated or out-of-order time, a gap between frames, a noisy baseline, or
no qualifying event within the time limit. `feed` and `tick` never raise; only a constructor
argument that is a caller's bug raises `ValueError`. Results carry scalar measurements for
the audit trail, never landmarks or images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import numpy as np

Challenge = Literal["blink", "mouth"]
CHALLENGES: tuple[str, ...] = ("blink", "mouth")

#: Reason codes of a `LivenessResult`; every one but "passed" is a failure.
REASONS = (
    "passed",
    "face-lost",
    "bad-landmarks",
    "face-too-small",
    "bad-time",
    "time-order",
    "frame-gap",
    "too-few-frames",
    "pose-change",
    "unstable-baseline",
    "no-event",
    "event-too-short",
    "event-too-long",
    "rigid-only",
)

# dlib 68-point indices (iBUG 300-W layout).
LEFT_EYE = np.arange(36, 42)  # 36 outer corner, 37-38 upper lid, 39 inner corner, 40-41 lower
RIGHT_EYE = np.arange(42, 48)  # 42 inner corner, 43-44 upper lid, 45 outer corner, 46-47 lower
INNER_LIPS = np.arange(60, 68)  # 60 and 64 corners, 61-63 upper, 65-67 lower
#: The points a blink moves (the lids, not the corners), and those a mouth opening moves.
EYELIDS = np.array([37, 38, 40, 41, 43, 44, 46, 47])
INNER_LIPS_MOVING = np.array([61, 62, 63, 65, 66, 67])
#: Points neither a blink nor a mouth opening moves: brows, nose, the four eye corners.
ANCHORS = np.concatenate([np.arange(17, 36), [36, 39, 42, 45]])
#: Landmarks from a camera lie within a few thousand pixels; far beyond is garbage.
MAX_COORD_PX = 1e5


@dataclass(frozen=True)
class LivenessParams:
    """Thresholds of the check. The defaults suit ~10 fps of a face 50 px or more between
    the eyes: the jitter of dlib's landmarks on a still photo there is 8 to 14 % of the eye
    aspect ratio per eye and up to 0.03 in the mouth ratio (shaken registry photos)."""

    #: Frames that set the baseline (the subject looks at the camera, eyes open, mouth shut).
    baseline_frames: int = 5
    #: The whole challenge, from the first frame, must be done within this many seconds.
    time_limit_s: float = 6.0
    #: Longest acceptable gap between frames: a longer one could hide anything.
    max_gap_s: float = 0.3
    #: Smallest inter-ocular distance in pixels at which landmarks are trusted.
    min_iod_px: float = 10.0
    #: Least ratio of the smaller to the larger stretch of the affine map from a frame to the
    #: first (1 for a pure move, turn or zoom). A photo tilted 36 degrees away measures 0.81
    #: and dlib misreads its mouth as open; a face looking at the camera stays above 0.95.
    min_aspect_kept: float = 0.85
    #: A baseline whose noise exceeds this fraction of the ratio (blink) or this much (mouth).
    max_baseline_noise: float = 0.2
    #: An event must exceed `noise_k` times the baseline noise as well as the fixed threshold.
    noise_k: float = 4.0
    #: Blink: both eyes' ratio falls by at least this fraction of their baseline ...
    blink_closure: float = 0.35
    #: ... and the blink is over when both are back within this fraction.
    blink_reopen: float = 0.15
    #: Plausible blink duration, from the first closed frame to the first reopened one.
    blink_duration_s: tuple[float, float] = (0.05, 0.6)
    #: Mouth: the inner-lip ratio rises by at least this much above its baseline ...
    mouth_opening: float = 0.35
    #: ... and the mouth is shut again when it is back within this much.
    mouth_closing: float = 0.15
    #: Plausible duration of a mouth opening.
    mouth_duration_s: tuple[float, float] = (0.1, 3.0)
    #: The challenge points must move, beyond the whole face's affine motion, by at least
    #: this fraction of the inter-ocular distance (RMS) ...
    min_residual: float = 0.015
    #: ... and by `residual_k` times the residual of the baseline frames.
    residual_k: float = 2.5

    def check(self) -> None:
        """Raise ValueError naming the first parameter that makes no sense."""
        positive = {
            "time_limit_s": self.time_limit_s,
            "max_gap_s": self.max_gap_s,
            "min_iod_px": self.min_iod_px,
            "min_aspect_kept": self.min_aspect_kept,
            "max_baseline_noise": self.max_baseline_noise,
            "noise_k": self.noise_k,
            "mouth_opening": self.mouth_opening,
            "min_residual": self.min_residual,
            "residual_k": self.residual_k,
        }
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(
                    f"LivenessParams.{name} must be a finite number > 0, not {value!r}"
                )
        if self.min_aspect_kept > 1:
            raise ValueError("LivenessParams.min_aspect_kept must be <= 1")
        if not (isinstance(self.baseline_frames, int) and self.baseline_frames >= 3):
            raise ValueError(
                f"LivenessParams.baseline_frames must be an int >= 3, not {self.baseline_frames!r}"
            )
        if not 0 <= self.blink_reopen < self.blink_closure < 1:
            raise ValueError("LivenessParams needs 0 <= blink_reopen < blink_closure < 1")
        if not 0 <= self.mouth_closing < self.mouth_opening:
            raise ValueError("LivenessParams needs 0 <= mouth_closing < mouth_opening")
        for name in ("blink_duration_s", "mouth_duration_s"):
            low, high = getattr(self, name)
            if not 0 <= low < high:
                raise ValueError(f"LivenessParams.{name} must be (low, high) with 0 <= low < high")


@dataclass(frozen=True)
class LivenessResult:
    """The verdict: `passed`, a `reason` from `REASONS`, a sentence in `detail`, and scalar
    `measurements` (baseline, extreme, duration, frames, residuals) for the audit trail."""

    challenge: str
    passed: bool
    reason: str
    detail: str
    measurements: dict[str, float | int] = field(default_factory=dict)

    def as_record(self) -> dict[str, object]:
        """Flat fields for `AuditTrail.append`: scalars only, no landmarks."""
        return {
            "challenge": self.challenge,
            "passed": self.passed,
            "reason": self.reason,
            "detail": self.detail,
            **self.measurements,
        }


class _Phase(Enum):
    BASELINE = "baseline"
    WAITING = "waiting"  # baseline set, no event under way
    EVENT = "event"  # the eyes are shut / the mouth is open
    REARM = "rearm"  # an event was refused; wait for the face to return to rest


@dataclass
class _Frame:
    """What one frame gives after pose normalisation."""

    t: float
    ear: tuple[float, float]  # left, right
    mar: float
    shape: np.ndarray  # normalised landmarks (68, 2), kept only during the check


def eye_aspect_ratio(eye: np.ndarray) -> float:
    """Soukupová & Čech's EAR of six eye points p1..p6 (corner, two upper, corner, two lower)."""
    vertical = np.linalg.norm(eye[1] - eye[5]) + np.linalg.norm(eye[2] - eye[4])
    return float(vertical / (2.0 * np.linalg.norm(eye[0] - eye[3])))


def mouth_aspect_ratio(lips: np.ndarray) -> float:
    """The same ratio on the eight inner-lip points: three vertical gaps over twice the width."""
    vertical = (
        np.linalg.norm(lips[1] - lips[7])
        + np.linalg.norm(lips[2] - lips[6])
        + np.linalg.norm(lips[3] - lips[5])
    )
    return float(vertical / (2.0 * np.linalg.norm(lips[0] - lips[4])))


def _robust_spread(values: np.ndarray) -> tuple[float, float]:
    """Median and scaled median absolute deviation (a standard deviation for normal noise that
    one blink among the baseline frames does not inflate)."""
    median = float(np.median(values))
    return median, 1.4826 * float(np.median(np.abs(values - median)))


class LivenessCheck:
    """One liveness challenge over a run of frames; see the module docstring.

    Feed the landmarks of every frame (None when no face was found) with the frame's time in
    seconds; `feed` returns None while the check is undecided and the `LivenessResult` once
    it is (and the same result for any later frame). Call `tick(now)` when no frame came, so
    a stalled camera fails on time.
    """

    def __init__(self, challenge: Challenge, params: LivenessParams | None = None) -> None:
        if challenge not in CHALLENGES:
            raise ValueError(
                f"unknown liveness challenge {challenge!r}; expected one of {CHALLENGES}"
            )
        self.challenge: str = challenge
        self.params = params or LivenessParams()
        self.params.check()
        self._result: LivenessResult | None = None
        self._phase = _Phase.BASELINE
        self._t0: float | None = None
        self._last_t: float | None = None
        self._frames = 0
        self._baseline: list[_Frame] = []
        self._reference: np.ndarray | None = None  # the first frame's landmarks
        self._iod = 0.0
        # Set when the baseline is complete.
        self._ear_base = (0.0, 0.0)
        self._ear_noise = (0.0, 0.0)
        self._mar_base = 0.0
        self._mar_noise = 0.0
        self._rest_shape: np.ndarray | None = None
        self._residual_noise = 0.0
        # Extremes over the run, and the event under way.
        self._ear_min = math.inf
        self._mar_max = -math.inf
        self._residual_max = 0.0
        self._event_start = 0.0
        self._event_residual = 0.0
        self._event_duration: float | None = None
        self._refusal: tuple[str, str] | None = None

    @property
    def result(self) -> LivenessResult | None:
        """The verdict once decided, else None."""
        return self._result

    def feed(self, landmarks68: np.ndarray | None, t: float) -> LivenessResult | None:
        """One frame: its 68 landmarks in pixels (None: no face) and its time in seconds."""
        if self._result is not None:
            return self._result
        bad_time = self._check_time(t)
        if bad_time is not None:
            return bad_time
        t = float(t)
        if self._t0 is not None and t - self._t0 > self.params.time_limit_s:
            return self._time_out()
        self._t0 = t if self._t0 is None else self._t0
        self._last_t = t
        if landmarks68 is None:
            return self._finish("face-lost", f"no face in the frame at t={t:.3f} s")
        points = self._check_landmarks(landmarks68, t)
        if isinstance(points, LivenessResult):
            return points
        with np.errstate(all="ignore"):
            frame = self._measure(points, t)
        if isinstance(frame, LivenessResult):
            return frame
        self._frames += 1
        if self._phase is _Phase.BASELINE:
            return self._add_baseline(frame)
        return self._track(frame)

    def tick(self, now: float) -> LivenessResult | None:
        """No frame came: fail once the gap or the time limit is exceeded at time `now`. The
        challenge's time limit runs from the first frame or the first tick, whichever comes
        first, so a camera that never delivers a frame fails too."""
        if self._result is not None:
            return self._result
        if not _is_time(now):
            return self._finish("bad-time", f"tick time {_shown(now)} is not a finite number")
        now = float(now)
        if self._t0 is None:
            self._t0 = now
        if now - self._t0 > self.params.time_limit_s:
            return self._time_out()
        if self._last_t is not None and now - self._last_t > self.params.max_gap_s:
            return self._finish(
                "frame-gap",
                f"no frame for {now - self._last_t:.3f} s (limit {self.params.max_gap_s} s)",
            )
        return None

    # --- input checks -------------------------------------------------------------------

    def _check_time(self, t: object) -> LivenessResult | None:
        if not _is_time(t):
            return self._finish("bad-time", f"frame time {_shown(t)} is not a finite number")
        t = float(t)  # type: ignore[arg-type]
        if self._last_t is None:
            if self._t0 is not None and t < self._t0:
                return self._finish(
                    "time-order", f"frame time {t:.3f} s is before the start {self._t0:.3f} s"
                )
            return None
        if t <= self._last_t:
            return self._finish(
                "time-order", f"frame time {t:.3f} s does not follow {self._last_t:.3f} s"
            )
        if t - self._last_t > self.params.max_gap_s:
            return self._finish(
                "frame-gap",
                f"{t - self._last_t:.3f} s between frames (limit {self.params.max_gap_s} s)",
            )
        return None

    def _check_landmarks(self, landmarks: object, t: float) -> np.ndarray | LivenessResult:
        if not isinstance(landmarks, np.ndarray):
            return self._finish(
                "bad-landmarks", f"landmarks at t={t:.3f} s are a {type(landmarks).__name__}"
            )
        if landmarks.shape != (68, 2) or landmarks.dtype.kind not in "iuf":
            return self._finish(
                "bad-landmarks",
                f"landmarks at t={t:.3f} s have shape {landmarks.shape} and dtype "
                f"{landmarks.dtype}, expected (68, 2) numbers",
            )
        points = landmarks.astype(np.float64)
        if not np.all(np.isfinite(points)) or np.any(np.abs(points) > MAX_COORD_PX):
            return self._finish(
                "bad-landmarks",
                f"landmarks at t={t:.3f} s hold non-finite or out-of-range coordinates",
            )
        return points

    # --- measurement --------------------------------------------------------------------

    def _measure(self, points: np.ndarray, t: float) -> _Frame | LivenessResult:
        """Map the frame onto the reference face by the anchors' affine fit; measure there."""
        if self._reference is None:
            iod = float(np.linalg.norm(points[LEFT_EYE].mean(0) - points[RIGHT_EYE].mean(0)))
            if not iod >= self.params.min_iod_px:
                return self._finish(
                    "face-too-small",
                    f"{iod:.1f} px between the eyes (at least {self.params.min_iod_px} px)",
                )
            self._reference, self._iod = points, iod
            shape = points
        else:
            source = np.hstack([points[ANCHORS], np.ones((len(ANCHORS), 1))])
            affine, _, rank, _ = np.linalg.lstsq(source, self._reference[ANCHORS], rcond=None)
            if rank < 3:
                return self._finish("bad-landmarks", f"landmarks at t={t:.3f} s are collinear")
            stretch = np.linalg.svd(affine[:2], compute_uv=False)
            kept = float(stretch[1] / stretch[0]) if stretch[0] > 0 else 0.0
            if not kept >= self.params.min_aspect_kept:
                return self._finish(
                    "pose-change",
                    f"the face at t={t:.3f} s is squashed to {kept:.2f} of its first shape "
                    f"(limit {self.params.min_aspect_kept}): tilted or turned away",
                )
            shape = np.hstack([points, np.ones((68, 1))]) @ affine
        ear = (eye_aspect_ratio(shape[LEFT_EYE]), eye_aspect_ratio(shape[RIGHT_EYE]))
        mar = mouth_aspect_ratio(shape[INNER_LIPS])
        if not all(math.isfinite(v) and 0 <= v < 1e3 for v in (*ear, mar)):
            return self._finish(
                "bad-landmarks", f"landmarks at t={t:.3f} s give no eye or mouth to measure"
            )
        return _Frame(t=t, ear=ear, mar=mar, shape=shape)

    def _residual(self, shape: np.ndarray, rest: np.ndarray) -> float:
        """RMS distance of the points the challenge moves from their rest shape, in
        inter-ocular units."""
        idx = EYELIDS if self.challenge == "blink" else INNER_LIPS_MOVING
        return float(np.sqrt(np.mean(np.sum((shape[idx] - rest[idx]) ** 2, axis=1))) / self._iod)

    def _add_baseline(self, frame: _Frame) -> LivenessResult | None:
        self._baseline.append(frame)
        if len(self._baseline) < self.params.baseline_frames:
            return None
        p = self.params
        left = _robust_spread(np.array([f.ear[0] for f in self._baseline]))
        right = _robust_spread(np.array([f.ear[1] for f in self._baseline]))
        self._mar_base, self._mar_noise = _robust_spread(np.array([f.mar for f in self._baseline]))
        self._ear_base = (left[0], right[0])
        # A floor of 1 % keeps a perfectly repeated frame from setting a zero noise.
        self._ear_noise = (max(left[1], 0.01 * left[0]), max(right[1], 0.01 * right[0]))
        self._mar_noise = max(self._mar_noise, 0.01)
        self._rest_shape = np.median(np.stack([f.shape for f in self._baseline]), axis=0)
        residuals = [self._residual(f.shape, self._rest_shape) for f in self._baseline]
        self._residual_noise = float(np.median(residuals))
        self._baseline = []
        self._phase = _Phase.WAITING
        if self.challenge == "blink":
            if min(self._ear_base) <= 0:
                return self._finish("unstable-baseline", "the eyes are shut in the baseline frames")
            noise = max(self._ear_noise[0] / left[0], self._ear_noise[1] / right[0])
            if noise > p.max_baseline_noise:
                return self._finish(
                    "unstable-baseline",
                    f"eye ratio noise {noise:.0%} of the baseline "
                    f"(limit {p.max_baseline_noise:.0%})",
                )
        elif self._mar_noise > p.max_baseline_noise:
            return self._finish(
                "unstable-baseline",
                f"mouth ratio noise {self._mar_noise:.3f} (limit {p.max_baseline_noise})",
            )
        return None

    # --- the event ----------------------------------------------------------------------

    def _levels(self, frame: _Frame) -> tuple[bool, bool]:
        """(beyond the event threshold, back at rest) for a frame."""
        p = self.params
        if self.challenge == "blink":
            closure = [1.0 - frame.ear[i] / self._ear_base[i] for i in (0, 1)]
            needed = [
                max(p.blink_closure, p.noise_k * self._ear_noise[i] / self._ear_base[i])
                for i in (0, 1)
            ]
            on = closure[0] >= needed[0] and closure[1] >= needed[1]
            return on, max(closure) <= p.blink_reopen
        rise = frame.mar - self._mar_base
        return rise >= max(p.mouth_opening, p.noise_k * self._mar_noise), rise <= p.mouth_closing

    def _track(self, frame: _Frame) -> LivenessResult | None:
        assert self._rest_shape is not None
        on, off = self._levels(frame)
        residual = self._residual(frame.shape, self._rest_shape)
        self._residual_max = max(self._residual_max, residual)
        self._ear_min = min(self._ear_min, (frame.ear[0] + frame.ear[1]) / 2.0)
        self._mar_max = max(self._mar_max, frame.mar)
        if self._phase is _Phase.REARM:
            if off:
                self._phase = _Phase.WAITING
            return None
        if self._phase is _Phase.WAITING:
            if on:
                self._phase = _Phase.EVENT
                self._event_start = frame.t
                self._event_residual = residual
            return None
        # An event is under way.
        self._event_residual = max(self._event_residual, residual)
        low, high = self._durations()
        duration = frame.t - self._event_start
        if duration > high:
            self._event_duration = duration
            self._refuse("event-too-long", f"{self._what()} lasted over {high} s")
            return None
        if not off:
            return None
        self._event_duration = duration
        if duration < low:
            self._refuse("event-too-short", f"{self._what()} lasted {duration:.3f} s (< {low} s)")
            return None
        bound = max(self.params.min_residual, self.params.residual_k * self._residual_noise)
        if self._event_residual < bound:
            self._refuse(
                "rigid-only",
                f"the {self._what()} moved the landmarks by {self._event_residual:.3f} of the "
                f"eye distance beyond the face's own motion (needs {bound:.3f})",
            )
            return None
        return self._finish(
            "passed", f"{self._what()} of {duration:.3f} s at t={self._event_start:.3f} s"
        )

    def _durations(self) -> tuple[float, float]:
        p = self.params
        return p.blink_duration_s if self.challenge == "blink" else p.mouth_duration_s

    def _what(self) -> str:
        return "blink" if self.challenge == "blink" else "mouth opening"

    def _refuse(self, reason: str, detail: str) -> None:
        """An event that does not count: remember why, wait for rest, keep looking."""
        self._refusal = (reason, detail)
        self._phase = _Phase.REARM

    # --- verdicts -----------------------------------------------------------------------

    def _time_out(self) -> LivenessResult:
        limit = self.params.time_limit_s
        if self._phase is _Phase.BASELINE:
            return self._finish(
                "too-few-frames",
                f"{self._frames} usable frames in {limit} s "
                f"(the baseline alone needs {self.params.baseline_frames})",
            )
        if self._refusal is not None:
            reason, detail = self._refusal
            return self._finish(reason, f"{detail}; no valid {self._what()} within {limit} s")
        return self._finish("no-event", f"no {self._what()} within {limit} s")

    def _finish(self, reason: str, detail: str) -> LivenessResult:
        assert reason in REASONS, reason
        self._result = LivenessResult(
            challenge=self.challenge,
            passed=reason == "passed",
            reason=reason,
            detail=detail,
            measurements=self._measurements(),
        )
        self._baseline = []
        self._reference = self._rest_shape = None
        return self._result

    def _measurements(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"frames": self._frames}
        if self._phase is _Phase.BASELINE:
            return out
        if self.challenge == "blink":
            out["ear_baseline"] = round((self._ear_base[0] + self._ear_base[1]) / 2.0, 4)
            out["ear_noise"] = round(max(self._ear_noise), 4)
            if math.isfinite(self._ear_min):
                out["ear_min"] = round(self._ear_min, 4)
        else:
            out["mar_baseline"] = round(self._mar_base, 4)
            out["mar_noise"] = round(self._mar_noise, 4)
            if math.isfinite(self._mar_max):
                out["mar_max"] = round(self._mar_max, 4)
        out["residual_max"] = round(self._residual_max, 4)
        out["residual_noise"] = round(self._residual_noise, 4)
        if self._event_duration is not None:
            out["event_s"] = round(self._event_duration, 3)
            out["event_residual"] = round(self._event_residual, 4)
        return out


def _shown(value: object) -> str:
    """A short repr of a hostile value for a reason's detail."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_time(t: object) -> bool:
    """A real, finite number of seconds (not a bool, not an int too large for a float)."""
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(float(t))
    except OverflowError:
        return False
