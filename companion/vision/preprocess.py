"""Image to network input, and network boxes back to source pixels.

Two modes, because they answer different needs:

- `letterbox` (default) keeps the aspect ratio and pads the rest with a constant grey (114, as
  the YOLO family trains with), so objects are not squashed; this is the accurate choice.
- `stretch` resizes to the network size ignoring aspect ratio, which is what darknet's demo
  and OpenCV's `blobFromImage(..., size, swapRB=True)` do; we use it to compare detections
  with OpenCV's darknet path on equal input.

Both produce float32 NCHW RGB in 0..1 and a `Transform` that maps network-input pixels back
to the source image. The resize is cv2's bilinear, as OpenCV's DNN path uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MODES = ("letterbox", "stretch")


@dataclass(frozen=True)
class Transform:
    """source = (network - pad) / scale, per axis; then clipped to the source image."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    width: int  # source image size
    height: int

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map (N, 4) x1, y1, x2, y2 boxes from network pixels to clipped source pixels."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, 0::2] = (boxes[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (boxes[:, 1::2] - self.pad_y) / self.scale_y
        np.clip(out[:, 0::2], 0, self.width, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.height, out=out[:, 1::2])
        return out


def letterbox(
    image: np.ndarray, size: tuple[int, int], pad_value: int = 114
) -> tuple[np.ndarray, Transform]:
    """Resize `image` (H, W, 3 BGR uint8) into `size` (height, width) keeping its aspect ratio,
    centred on a `pad_value` background. Returns the padded BGR image and its transform."""
    net_h, net_w = size
    h, w = image.shape[:2]
    scale = min(net_w / w, net_h / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    pad_x, pad_y = (net_w - new_w) // 2, (net_h - new_h) // 2
    if (new_w, new_h) != (w, h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    out = np.full((net_h, net_w, 3), pad_value, np.uint8)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = image
    return out, Transform(new_w / w, new_h / h, pad_x, pad_y, w, h)


def stretch(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Transform]:
    """Resize `image` to `size` (height, width) ignoring its aspect ratio."""
    net_h, net_w = size
    h, w = image.shape[:2]
    if (w, h) != (net_w, net_h):
        image = cv2.resize(image, (net_w, net_h), interpolation=cv2.INTER_LINEAR)
    return image, Transform(net_w / w, net_h / h, 0.0, 0.0, w, h)


def to_tensor(image: np.ndarray) -> np.ndarray:
    """BGR uint8 HWC to RGB float32 NCHW in 0..1 (one C++ pass through cv2)."""
    return cv2.dnn.blobFromImage(image, 1.0 / 255.0, swapRB=True, crop=False)


def prepare(
    image: np.ndarray, size: tuple[int, int], mode: str = "letterbox", pad_value: int = 114
) -> tuple[np.ndarray, Transform]:
    """The network input for a BGR image, and the way back to its pixels."""
    if mode == "letterbox":
        resized, transform = letterbox(image, size, pad_value)
    elif mode == "stretch":
        resized, transform = stretch(image, size)
    else:
        raise ValueError(f"pre-processing mode must be one of {MODES}, got {mode!r}")
    return to_tensor(resized), transform
