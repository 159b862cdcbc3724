"""Image to network input, and network boxes back to source pixels.

Three modes, because they answer different needs:

- `letterbox` keeps the aspect ratio and pads the rest of the square input with a constant grey
  (114, as the YOLO family trains with), so objects are not squashed; this is the accurate
  choice for a fixed-size model.
- `rect` is the same letterbox with the least padding: the longer side is scaled to the
  network size and the shorter one padded only up to the next multiple of the network's
  stride (32 for YOLOv4-Tiny), so a 4:3 frame becomes 416 x 320 instead of 416 x 416. Same
  scale, same objects, a quarter fewer pixels to convolve; it needs a model built with a free
  input size (`dynamic_size` in its metadata).
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

MODES = ("letterbox", "rect", "stretch")


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
    image: np.ndarray, size: tuple[int, int], pad_value: int = 114, stride: int = 0
) -> tuple[np.ndarray, Transform]:
    """Resize `image` (H, W, 3 BGR uint8) into `size` (height, width) keeping its aspect ratio,
    centred on a `pad_value` background. Returns the padded BGR image and its transform.
    With `stride` > 0 the output is only as large as the resized image rounded up to
    multiples of `stride` (at most `size`, which must then be multiples of it)."""
    net_h, net_w = size
    h, w = image.shape[:2]
    scale = min(net_w / w, net_h / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if stride > 0:
        net_w = min(net_w, -(-new_w // stride) * stride)
        net_h = min(net_h, -(-new_h // stride) * stride)
    pad_x, pad_y = (net_w - new_w) // 2, (net_h - new_h) // 2
    if (new_w, new_h) != (w, h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if (new_w, new_h) == (net_w, net_h):
        out = np.ascontiguousarray(image)
    else:
        bottom, right = net_h - new_h - pad_y, net_w - new_w - pad_x
        out = cv2.copyMakeBorder(
            image, pad_y, bottom, pad_x, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3
        )
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
    image: np.ndarray,
    size: tuple[int, int],
    mode: str = "letterbox",
    pad_value: int = 114,
    stride: int = 32,
) -> tuple[np.ndarray, Transform]:
    """The network input for a BGR image, and the way back to its pixels (`stride` is used by
    the `rect` mode only)."""
    if mode == "letterbox":
        resized, transform = letterbox(image, size, pad_value)
    elif mode == "rect":
        resized, transform = letterbox(image, size, pad_value, stride)
    elif mode == "stretch":
        resized, transform = stretch(image, size)
    else:
        raise ValueError(f"pre-processing mode must be one of {MODES}, got {mode!r}")
    return to_tensor(resized), transform
