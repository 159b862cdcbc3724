"""Faces in camera frames: detection, landmarks, quality gates and 128-D embeddings.

The models are the ones `face_recognition` uses (dlib's HOG frontal detector, the 68- and
5-point shape predictors, and the ResNet embedding network, 99.38 % on LFW), with the
weights from `face_recognition_models` and the runtime from `dlib-bin`, so nothing compiles
dlib. We drive dlib directly, and differently where it matters for a Pi-class CPU:

- `face_recognition` runs the HOG detector on the full frame upsampled twice over (a 1280 x 720
  frame becomes 2560 x 1440). The detector's window is about 80 pixels, so upsampling only
  helps with faces too small to verify anyway. We scale the frame (or the region of interest,
  e.g. the person box of the YOLOv4-Tiny detector) *down* so that the smallest face we accept
  just fills the window, detect on that, and map the boxes back.
- Alignment (5-point shape, as `face_recognition` with model="small") and the embedding run
  on the full-resolution pixels around the box, so downscaled detection costs no accuracy.
- The embedding network runs on ONNX Runtime (`resnet_onnx`: the same weights, read from the
  same file; the same numbers as dlib's to 1e-6) because the dlib-bin wheels have no BLAS and
  take about ten times as long; `embedder="dlib"` uses dlib's `compute_face_descriptor`.

Before a face is embedded it passes three gates, each a `FaceRejected` with its reason:
its eye-to-chin size in pixels, the sharpness of the aligned face chip (variance of the
Laplacian) and the head pose estimated from the landmarks. A face the gates refuse is not
guessed at: the verifier counts it as a rejected frame, never as a match.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from companion.identity.errors import FaceModelError, FaceRejected

#: The import name and the pip package of each runtime dependency.
PACKAGES = {"dlib": "dlib-bin", "face_recognition_models": "face_recognition_models"}

#: Side of the aligned face chip the embedding network takes, and the margin around the
#: 5-point face frame (dlib's and face_recognition's values).
CHIP_SIZE = 150
CHIP_PADDING = 0.25

#: Smallest eye-to-chin distance (pixels, in the image the detector sees) at which dlib's HOG
#: frontal detector, without upsampling, found every reference face (13 photos and zidane.jpg
#: placed on 1280 x 720 canvases at eye-to-chin 40..120 px, detected at scales 0.5..1: all
#: found from 45 px, few below); a little margin on top.
HOG_MIN_EYE_CHIN_PX = 48.0

#: Depth of the nose tip in front of the eyes over half the distance between the eye centres
#: (about 35 mm over 31.5 mm), for the yaw and pitch estimate.
NOSE_DEPTH = 1.1
#: Drop of the nose tip below the eye line over half the eye distance on a frontal face
#: (median of the reference faces), the zero of the pitch estimate.
NOSE_DROP = 1.06


@dataclass(frozen=True)
class QualityLimits:
    """What a face must reach before it is embedded.

    - `min_eye_chin_px`: eyes-to-chin distance in frame pixels. Measured on the reference
      faces shrunk to a size and embedded: the embedding moves from the full-size one by a
      median 0.08 (max 0.12) at 70 px, 0.11 (max 0.19) at 60 px, 0.20 at 40 px, against a gap
      of 0.12 between the farthest genuine pair and the default threshold. The detection
      scale follows from it (`FaceAnalyzer.detect_scale`).
    - `min_sharpness`: variance of the Laplacian of the grey aligned chip. The reference
      faces and zidane.jpg measure 85..1918 sharp; a Gaussian blur of one chip pixel brings
      them to 12..27 and moves their embeddings by 0.12..0.27, half a pixel to 34..178
      (moves 0.05..0.13). 40 refuses every one-pixel blur and passes every sharp photo.
    - `max_yaw_deg`, `max_pitch_deg`: head pose from the landmarks; beyond about 30 degrees
      the frontal landmarks, and so the alignment, fall apart. The reference faces estimate
      at most 29 degrees of yaw (a three-quarter portrait) and 22 of pitch.
    """

    min_eye_chin_px: float = 70.0
    min_sharpness: float = 40.0
    max_yaw_deg: float = 35.0
    max_pitch_deg: float = 30.0


@dataclass(frozen=True)
class FaceBox:
    """A detected face: left, top, right, bottom in full-frame pixels and the detector's
    score (higher is more face-like)."""

    left: int
    top: int
    right: int
    bottom: int
    score: float = 0.0

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "box": [self.left, self.top, self.right, self.bottom],
            "score": round(self.score, 3),
        }


@dataclass(frozen=True)
class FaceQuality:
    """The measures the gates looked at (for reports and the audit trail)."""

    eye_chin_px: float
    sharpness: float
    yaw_deg: float
    pitch_deg: float

    def as_dict(self) -> dict[str, float]:
        return {
            "eye_chin_px": round(self.eye_chin_px, 1),
            "sharpness": round(self.sharpness, 1),
            "yaw_deg": round(self.yaw_deg, 1),
            "pitch_deg": round(self.pitch_deg, 1),
        }


@dataclass(frozen=True)
class FaceSample:
    """A face that passed the gates: its 128-D embedding, its 68 landmarks (full-frame
    pixels, for the liveness check) and the quality measures. `faces_in_frame` says how many
    faces the frame (or region of interest) held when this one was picked as the largest."""

    box: FaceBox
    embedding: np.ndarray = field(repr=False)
    landmarks68: np.ndarray = field(repr=False)
    quality: FaceQuality
    faces_in_frame: int = 1


@dataclass(frozen=True)
class _Models:
    detector: Any
    shape68: Any
    shape5: Any
    encoder: Any


def _require(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as exc:
        raise FaceModelError(
            f"face verification needs the Python package {name!r}: "
            f"pip install {PACKAGES[name]} ({exc})"
        ) from exc


@functools.lru_cache(maxsize=4)
def onnx_embedder(threads: int = 1) -> Any:
    """The embedding network on ONNX Runtime (see `resnet_onnx`), built once a process."""
    frm = _require("face_recognition_models")
    from companion.identity.resnet_onnx import OnnxEmbedder, ResnetFileError

    try:
        return OnnxEmbedder(frm.face_recognition_model_location(), threads=threads)
    except ImportError as exc:
        raise FaceModelError(
            f"the ONNX embedder needs onnxruntime and onnx: pip install onnxruntime onnx ({exc})"
        ) from exc
    except (OSError, ResnetFileError) as exc:
        raise FaceModelError(
            f"cannot read the face embedding network ({exc}); reinstall face_recognition_models"
        ) from exc


@functools.lru_cache(maxsize=1)
def load_models() -> _Models:
    """dlib's detector, predictors and embedding network, loaded once a process (the 68-point
    predictor alone is 100 MB); FaceModelError when a package or a model file is missing."""
    dlib = _require("dlib")
    frm = _require("face_recognition_models")
    files = {
        "shape68": frm.pose_predictor_model_location(),
        "shape5": frm.pose_predictor_five_point_model_location(),
        "encoder": frm.face_recognition_model_location(),
    }
    try:
        return _Models(
            detector=dlib.get_frontal_face_detector(),
            shape68=dlib.shape_predictor(files["shape68"]),
            shape5=dlib.shape_predictor(files["shape5"]),
            encoder=dlib.face_recognition_model_v1(files["encoder"]),
        )
    except RuntimeError as exc:
        raise FaceModelError(
            f"cannot load the dlib face models ({exc}); reinstall face_recognition_models"
        ) from exc


def _bgr(frame: np.ndarray) -> np.ndarray:
    """The frame as a contiguous BGR uint8 image, or FaceRejected("bad-frame") saying why."""
    if not isinstance(frame, np.ndarray):
        raise FaceRejected("bad-frame", f"expected a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise FaceRejected("bad-frame", f"expected uint8 pixels, got {frame.dtype}")
    if frame.ndim not in (2, 3) or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise FaceRejected("bad-frame", f"not an image: shape {frame.shape}")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.shape[2] != 3:
        raise FaceRejected("bad-frame", f"not an image: shape {frame.shape}")
    return np.ascontiguousarray(frame)


def _clip_roi(
    roi: tuple[float, float, float, float] | None, width: int, height: int
) -> tuple[int, int, int, int]:
    if roi is None:
        return 0, 0, width, height
    x1, y1, x2, y2 = (float(v) for v in roi)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 < x1 or y2 < y1:
        raise ValueError(f"roi must be finite x1, y1, x2, y2 with x1 <= x2, y1 <= y2: {roi}")
    left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
    right, bottom = min(width, math.ceil(x2)), min(height, math.ceil(y2))
    return left, top, max(left, right), max(top, bottom)


def head_pose(landmarks68: np.ndarray) -> tuple[float, float]:
    """Yaw and pitch in degrees (0, 0 for a frontal face) from the 68 landmarks.

    In the frame of the eye line (roll removed), a nose tip at depth D in front of the eye
    centres, which are 2c apart, moves sideways by D sin(yaw) while the eyes close in to
    c cos(yaw), so yaw = atan(offset / c / NOSE_DEPTH). Vertically the nose tip sits
    c NOSE_DROP below the eye line on a frontal face and moves by the head's pitch on a circle
    of radius c hypot(NOSE_DROP, NOSE_DEPTH). Positive yaw: the face turned to the image's
    right; positive pitch: the head tipped down.
    """
    points = np.asarray(landmarks68, dtype=np.float64)
    left_eye, right_eye = points[36:42].mean(axis=0), points[42:48].mean(axis=0)
    nose = points[30]
    axis = right_eye - left_eye
    half = float(np.hypot(*axis)) / 2.0
    if half < 1e-6:
        return 90.0, 90.0
    u = axis / (2.0 * half)
    v = np.array([-u[1], u[0]])
    offset = nose - (left_eye + right_eye) / 2.0
    across, down = float(offset @ u) / half, float(offset @ v) / half
    yaw = math.degrees(math.atan2(across, NOSE_DEPTH))
    radius = math.hypot(NOSE_DROP, NOSE_DEPTH)
    pitch = math.degrees(
        math.asin(max(-1.0, min(1.0, down / radius))) - math.atan2(NOSE_DROP, NOSE_DEPTH)
    )
    return yaw, pitch


def eye_chin_px(landmarks68: np.ndarray) -> float:
    """Distance from the midpoint of the eye centres to the chin (landmark 8), in pixels."""
    points = np.asarray(landmarks68, dtype=np.float64)
    eyes = (points[36:42].mean(axis=0) + points[42:48].mean(axis=0)) / 2.0
    return float(np.hypot(*(points[8] - eyes)))


def sharpness(chip_rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey face chip: edges (eyes, lips, hair) give a high
    variance, blur (motion, focus) a low one. The chip is aligned and of a fixed size, so the
    measure does not depend on how large the face was in the frame."""
    grey = cv2.cvtColor(chip_rgb, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _shape_points(shape: Any, dx: int, dy: int) -> np.ndarray:
    return np.array([(p.x + dx, p.y + dy) for p in shape.parts()], dtype=np.float64)


class FaceAnalyzer:
    """Detection, landmarks, quality gates and embeddings on BGR frames.

    `detect_scale` is the factor frames (or regions of interest) are scaled by before the HOG
    detector runs; by default it is chosen so that a face of `limits.min_eye_chin_px` just
    fills the detector's window, since smaller faces would be refused anyway. `embedder` is
    "onnx" (ONNX Runtime with `threads` threads, the default) or "dlib" (dlib's own
    `compute_face_descriptor`, with `jitters`: dlib's num_jitters, 0 or 1 the plain chip, more
    averages perturbed copies at that many times the cost; the ONNX path takes no jitters).
    """

    def __init__(
        self,
        limits: QualityLimits | None = None,
        *,
        detect_scale: float | None = None,
        embedder: str = "onnx",
        threads: int = 1,
        jitters: int = 0,
    ) -> None:
        self.limits = limits or QualityLimits()
        if detect_scale is None:
            detect_scale = min(1.0, HOG_MIN_EYE_CHIN_PX / self.limits.min_eye_chin_px)
        if not 0.05 <= detect_scale <= 1.0:
            raise ValueError(f"detect_scale must be within 0.05 .. 1, got {detect_scale}")
        if jitters < 0:
            raise ValueError(f"jitters must be >= 0, got {jitters}")
        if embedder not in ("onnx", "dlib"):
            raise ValueError(f'embedder must be "onnx" or "dlib", got {embedder!r}')
        if embedder == "onnx" and jitters > 1:
            raise ValueError('jitters need embedder="dlib"')
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.detect_scale = detect_scale
        self.jitters = jitters
        self.embedder = embedder
        self._models = load_models()
        self._onnx = onnx_embedder(threads) if embedder == "onnx" else None

    def detect(
        self, frame_bgr: np.ndarray, roi: tuple[float, float, float, float] | None = None
    ) -> list[FaceBox]:
        """Faces in the frame (or in `roi`, x1, y1, x2, y2 in frame pixels), largest first,
        boxes in full-frame pixels. The detector runs once on the grey frame scaled by
        `detect_scale`, never upsampled beyond it."""
        frame = _bgr(frame_bgr)
        height, width = frame.shape[:2]
        left, top, right, bottom = _clip_roi(roi, width, height)
        if right - left < 2 or bottom - top < 2:
            return []
        region = frame[top:bottom, left:right]
        scale = self.detect_scale
        small_w = max(1, round(region.shape[1] * scale))
        small_h = max(1, round(region.shape[0] * scale))
        interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        small = cv2.resize(region, (small_w, small_h), interpolation=interpolation)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        rects, scores, _ = self._models.detector.run(grey, 0, 0.0)
        sx, sy = region.shape[1] / small_w, region.shape[0] / small_h
        boxes = []
        for rect, score in zip(rects, scores, strict=True):
            box = FaceBox(
                left=int(max(0, min(width, round(left + rect.left() * sx)))),
                top=int(max(0, min(height, round(top + rect.top() * sy)))),
                right=int(max(0, min(width, round(left + (rect.right() + 1) * sx)))),
                bottom=int(max(0, min(height, round(top + (rect.bottom() + 1) * sy)))),
                score=float(score),
            )
            if box.width > 1 and box.height > 1:
                boxes.append(box)
        return sorted(boxes, key=lambda b: b.area, reverse=True)

    def _crop(self, frame: np.ndarray, box: FaceBox) -> tuple[np.ndarray, int, int, Any]:
        """The RGB pixels around the box (with room for the chip's padding) and the box as a
        dlib rectangle in crop coordinates: the predictors and the chip only read there, so
        only that much is converted."""
        import dlib

        height, width = frame.shape[:2]
        if (
            box.width < 2
            or box.height < 2
            or box.right <= 0
            or box.bottom <= 0
            or box.left >= width
            or box.top >= height
        ):
            raise FaceRejected(
                "bad-frame",
                f"face box {box.as_dict()['box']} not inside the {width} x {height} frame",
            )
        margin = max(box.width, box.height)
        x0, y0 = max(0, box.left - margin), max(0, box.top - margin)
        x1, y1 = min(width, box.right + margin), min(height, box.bottom + margin)
        rgb = cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_BGR2RGB)
        rect = dlib.rectangle(box.left - x0, box.top - y0, box.right - x0 - 1, box.bottom - y0 - 1)
        return rgb, x0, y0, rect

    def landmarks68(self, frame_bgr: np.ndarray, box: FaceBox) -> np.ndarray:
        """The 68 landmarks (iBUG 300-W order) of the face in `box`, shape (68, 2), in
        full-frame pixels."""
        frame = _bgr(frame_bgr)
        rgb, x0, y0, rect = self._crop(frame, box)
        return _shape_points(self._models.shape68(rgb, rect), x0, y0)

    def analyse(self, frame_bgr: np.ndarray, box: FaceBox) -> FaceSample:
        """The face in `box` gated and embedded, or FaceRejected: "too-small" (eyes to chin
        under the limit), "blurred" (chip sharpness under the limit), "off-angle" (yaw or
        pitch over the limit)."""
        import dlib

        frame = _bgr(frame_bgr)
        rgb, x0, y0, rect = self._crop(frame, box)
        points68 = _shape_points(self._models.shape68(rgb, rect), x0, y0)
        limits = self.limits
        size = eye_chin_px(points68)
        if size < limits.min_eye_chin_px:
            raise FaceRejected(
                "too-small",
                f"eyes to chin {size:.0f} px, under the minimum {limits.min_eye_chin_px:.0f} px",
            )
        yaw, pitch = head_pose(points68)
        if abs(yaw) > limits.max_yaw_deg or abs(pitch) > limits.max_pitch_deg:
            raise FaceRejected(
                "off-angle",
                f"head turned {yaw:+.0f} deg, tipped {pitch:+.0f} deg; limits "
                f"{limits.max_yaw_deg:.0f} and {limits.max_pitch_deg:.0f} deg",
            )
        shape5 = self._models.shape5(rgb, rect)
        chip = dlib.get_face_chip(rgb, shape5, size=CHIP_SIZE, padding=CHIP_PADDING)
        sharp = sharpness(chip)
        if sharp < limits.min_sharpness:
            raise FaceRejected(
                "blurred",
                f"sharpness {sharp:.0f} (variance of the Laplacian), under the minimum "
                f"{limits.min_sharpness:.0f}",
            )
        return FaceSample(
            box=box,
            embedding=self.embed_chip(chip),
            landmarks68=points68,
            quality=FaceQuality(eye_chin_px=size, sharpness=sharp, yaw_deg=yaw, pitch_deg=pitch),
        )

    def embed_chip(self, chip_rgb: np.ndarray) -> np.ndarray:
        """The (128,) float32 embedding of an aligned 150 x 150 RGB face chip."""
        if self._onnx is not None:
            return self._onnx.embed(chip_rgb)
        descriptor = self._models.encoder.compute_face_descriptor(chip_rgb, self.jitters)
        return np.asarray(descriptor, dtype=np.float32)

    def analyse_frame(
        self, frame_bgr: np.ndarray, roi: tuple[float, float, float, float] | None = None
    ) -> FaceSample:
        """The largest face of a camera frame (or of `roi`), analysed; FaceRejected
        ("no-face") when there is none. Where several faces are seen the largest is taken
        (the recipient steps up to the drone; bystanders stand back) and `faces_in_frame`
        says so, for the verdict to report."""
        faces = self.detect(frame_bgr, roi)
        if not faces:
            where = "the region of interest" if roi is not None else "the frame"
            raise FaceRejected("no-face", f"no face found in {where}")
        sample = self.analyse(frame_bgr, faces[0])
        return dataclasses.replace(sample, faces_in_frame=len(faces))
