"""On-board vision: YOLOv4-Tiny on ONNX Runtime, with models built by `models/`.

`Detector(model_path(variant))` loads an FP32, INT8 or FP16 graph and turns BGR frames or
image files into `Detection`s; bad files raise `ModelError` / `ImageError` (both
`VisionError`, with `.path` and `.cause`) so the daemon can log and carry on.
"""

from companion.vision.detector import Detection, Detector, model_path, read_image
from companion.vision.errors import ImageError, ModelError, VisionError

__all__ = [
    "Detection",
    "Detector",
    "ImageError",
    "ModelError",
    "VisionError",
    "model_path",
    "read_image",
]
