"""Verification of the person at the door against the recipient's template, over a window of
camera frames.

One frame can be lucky (an impostor at a flattering angle) or unlucky (a blink, motion
blur), so the decision is a k-of-n consensus: of the next `n` frames, `k` must match (the
distance from the frame's embedding to the closest template row at most `threshold`), and
no more than `max_rejected` may be unusable (no face, too small, blurred, off-angle, stale).
A frame that is missing, stale or rejected never counts as a match; the verdict is given as
soon as it is certain (k matches reached, or no longer reachable, or too many rejections).

The core is sans-I/O: frames (their `FaceSample` or `FaceRejected`) and their capture times
in, a `Verdict` out; no clock reads, no camera.

The default threshold was measured on the labelled photos in ../shared/reference/faces
(12 genuine, 66 impostor pairs, each photo enrolled as `enrol_template` does): genuine
distances 0.338..0.438 (median 0.380), impostor distances 0.694..1.024 (median 0.859). 0.55
accepts every genuine pair and refuses every impostor pair, with 0.11 to spare above the
farthest genuine pair (camera frames are worse than portraits) and 0.14 below the closest
impostor; it is stricter than dlib's usual 0.6 because handing a parcel to the wrong person
is worse than flying it home. `skycourier face compare` prints two photos' distance for
setting it (`identity.threshold`).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from companion.identity.errors import FaceRejected
from companion.identity.faces import FaceSample

#: Measured on the reference faces: see the module docstring.
DEFAULT_THRESHOLD = 0.55
EMBEDDING_SIZE = 128


def check_template(template: np.ndarray) -> np.ndarray:
    """The template as a (n, 128) float32 array of finite values, n >= 1, or ValueError."""
    array = np.asarray(template)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != EMBEDDING_SIZE:
        raise ValueError(f"a template is (n, {EMBEDDING_SIZE}) embeddings, got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
        raise ValueError("a template must hold finite floating-point values")
    return array.astype(np.float32)


def face_distance(template: np.ndarray, embedding: np.ndarray) -> float:
    """Euclidean distance from `embedding` to the closest row of `template` (as
    `face_recognition.face_distance`, taking the minimum over the rows)."""
    return float(np.min(np.linalg.norm(template - embedding[None, :], axis=1)))


@dataclass(frozen=True)
class Verdict:
    """The outcome of one window.

    `match` is True only for k matching frames with at most `max_rejected` rejected ones.
    `reason`: "match", "no-match" (k matches no longer reachable), "too-many-rejected".
    `distances` are the analysed frames' distances in order; `rejections` counts the
    rejected frames by reason; `several_faces` counts frames where more than one face was
    seen and the largest (or the one in the region of interest) was used.
    """

    match: bool
    reason: str
    threshold: float
    k: int
    n: int
    frames: int
    matches: int
    rejected: int
    distances: tuple[float, ...]
    rejections: dict[str, int] = field(default_factory=dict)
    several_faces: int = 0
    started_at: float = 0.0
    decided_at: float = 0.0

    def summary(self) -> str:
        """One line for people: what was decided and on what."""
        parts = [
            f"{'match' if self.match else 'no match'} ({self.reason}): {self.matches} of "
            f"{self.frames} frames within {self.threshold:.2f} (needs {self.k} of {self.n})"
        ]
        if self.distances:
            parts.append(f"closest {min(self.distances):.3f}")
        if self.rejected:
            reasons = ", ".join(f"{r} {c}" for r, c in sorted(self.rejections.items()))
            parts.append(f"{self.rejected} rejected ({reasons})")
        if self.several_faces:
            parts.append(f"several faces in {self.several_faces} frames, the largest used")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """JSON- and audit-ready summary: counts and distance statistics, no embeddings."""
        distances = self.distances
        return {
            "match": self.match,
            "reason": self.reason,
            "threshold": self.threshold,
            "k": self.k,
            "n": self.n,
            "frames": self.frames,
            "matches": self.matches,
            "rejected": self.rejected,
            "rejections": dict(self.rejections),
            "several_faces": self.several_faces,
            "distance_min": round(min(distances), 4) if distances else None,
            "distance_median": round(statistics.median(distances), 4) if distances else None,
            "distance_max": round(max(distances), 4) if distances else None,
            "duration_s": round(self.decided_at - self.started_at, 3),
        }


class FaceVerifier:
    """k-of-n verification against a template; feed one frame at a time.

    `feed(sample, t)` takes the frame's `FaceSample`, its `FaceRejected`, or None (no face,
    no frame) and the frame's capture time in seconds; it returns None while undecided and
    the `Verdict` once decided. A frame whose time is not after the previous frame's is
    stale (a stalled camera repeats its last frame) and counts as rejected.
    """

    def __init__(
        self,
        template: np.ndarray,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        k: int = 3,
        n: int = 5,
        max_rejected: int | None = None,
    ) -> None:
        if not 0 < threshold < 2 or not math.isfinite(threshold):
            raise ValueError(f"threshold must be within (0, 2), got {threshold}")
        if not 1 <= k <= n:
            raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
        if max_rejected is None:
            max_rejected = n - k
        if not 0 <= max_rejected <= n:
            raise ValueError(f"max_rejected must be within 0..n, got {max_rejected}")
        self.template = check_template(template)
        self.threshold, self.k, self.n, self.max_rejected = threshold, k, n, max_rejected
        self._distances: list[float] = []
        self._rejections: Counter[str] = Counter()
        self._matches = self._frames = self._several = 0
        self._first_t: float | None = None
        self._last_t: float | None = None
        self.verdict: Verdict | None = None

    def feed(self, sample: FaceSample | FaceRejected | None, t: float) -> Verdict | None:
        """Count one frame; the Verdict once the window decides, else None."""
        if self.verdict is not None:
            raise RuntimeError("this window is decided; start a new FaceVerifier")
        self._frames += 1
        if self._first_t is None:
            self._first_t = t
        stale = not math.isfinite(t) or (self._last_t is not None and t <= self._last_t)
        if not stale:
            self._last_t = t
        reason = self._rejection(sample, stale)
        if reason is not None:
            self._rejections[reason] += 1
        else:
            assert isinstance(sample, FaceSample)
            distance = face_distance(self.template, sample.embedding.astype(np.float32))
            self._distances.append(distance)
            if distance <= self.threshold:
                self._matches += 1
            if sample.faces_in_frame > 1:
                self._several += 1
        return self._decide(t)

    @staticmethod
    def _rejection(sample: FaceSample | FaceRejected | None, stale: bool) -> str | None:
        """Why the frame cannot count, or None for a usable sample."""
        if stale:
            return "stale"
        if sample is None:
            return "no-face"
        if isinstance(sample, FaceRejected):
            return sample.reason
        if not isinstance(sample, FaceSample):
            return "bad-frame"
        embedding = np.asarray(sample.embedding)
        if embedding.shape != (EMBEDDING_SIZE,) or not np.isfinite(embedding).all():
            return "bad-frame"
        return None

    def _decide(self, t: float) -> Verdict | None:
        rejected = sum(self._rejections.values())
        remaining = self.n - self._frames
        if rejected > self.max_rejected:
            return self._give(False, "too-many-rejected", t)
        if self._matches >= self.k:
            return self._give(True, "match", t)
        if self._matches + remaining < self.k:
            return self._give(False, "no-match", t)
        return None

    def _give(self, match: bool, reason: str, t: float) -> Verdict:
        started = self._first_t if self._first_t is not None else t
        self.verdict = Verdict(
            match=match,
            reason=reason,
            threshold=self.threshold,
            k=self.k,
            n=self.n,
            frames=self._frames,
            matches=self._matches,
            rejected=sum(self._rejections.values()),
            distances=tuple(self._distances),
            rejections=dict(self._rejections),
            several_faces=self._several,
            started_at=started,
            decided_at=t if math.isfinite(t) else started,
        )
        return self.verdict
