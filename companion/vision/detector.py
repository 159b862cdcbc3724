"""The object detector: YOLOv4-Tiny ONNX models from `models/` on ONNX Runtime.

One code path for every variant (FP32, INT8, FP16): the graphs all take float32 RGB 0..1
NCHW `images` and return decoded `boxes` (x1, y1, x2, y2 in network pixels) and `scores`
(objectness x class probability), so the Python side is pre-process, one `session.run`,
and a few vectorised numpy steps (best class, threshold, class filter, class-wise NMS, map
back to source pixels). The class names and input size travel inside the model's metadata,
and so does whether the input size is free (`dynamic_size`, `stride`): such a model (the INT8
build, the CPU default) gets each frame letterboxed to its own aspect ratio ("rect"), so a
4:3 frame costs 416 x 320 pixels of convolution instead of 416 x 416.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from companion.vision.errors import ImageError, ModelError
from companion.vision.nms import batched_nms
from companion.vision.preprocess import MODES, Transform, prepare

#: Execution providers in order of preference, where the installed onnxruntime has them.
PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
_OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class Detection:
    """One detected object; `box` is x1, y1, x2, y2 in source-image pixels."""

    box: tuple[float, float, float, float]
    score: float
    class_id: int
    class_name: str

    def as_dict(self) -> dict:
        """JSON-ready form (`skycourier detect --json`)."""
        return {
            "box": [round(v, 1) for v in self.box],
            "score": round(self.score, 4),
            "class_id": self.class_id,
            "class_name": self.class_name,
        }


def read_image(path: str | Path) -> np.ndarray:
    """A BGR uint8 image from disk, or ImageError naming the path and why not."""
    path = Path(path)
    if not path.exists():
        raise ImageError(path, "no such file")
    if not path.is_file():
        raise ImageError(path, "not a regular file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(path, f"cannot read: {exc.strerror or exc}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageError(path, f"not a decodable image ({data.size} bytes)")
    return image


def as_bgr(image: np.ndarray, where: str = "<array>") -> np.ndarray:
    """Accept grey (H, W), BGR (H, W, 3) or BGRA (H, W, 4) uint8 frames of at least one pixel;
    reject the rest with an `ImageError` that says what was wrong."""
    if not isinstance(image, np.ndarray):
        raise ImageError(where, f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(where, f"expected uint8 pixels, got {image.dtype}")
    if image.ndim in (2, 3) and (image.shape[0] == 0 or image.shape[1] == 0):
        # A camera that delivers nothing (a stalled V4L2 buffer, a broken stream) must get
        # its own error: scaling it to the network's input would divide by zero.
        raise ImageError(where, f"empty frame ({image.shape[1]} x {image.shape[0]} pixels)")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    raise ImageError(where, f"expected an H x W (x 3 or 4) image, got shape {image.shape}")


def default_providers() -> list[str]:
    """The preferred execution providers this onnxruntime build offers (CPU always last)."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


def _provider_options(providers: Sequence[str], model_path: Path) -> list:
    """TensorRT gets an engine cache beside the model, so a Jetson builds its engines once.
    Precision follows the graph (FP16 weights, INT8 QDQ nodes), so an FP32 model stays FP32."""
    out: list = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            cache = model_path.parent / "trt-cache"
            out.append(
                (
                    name,
                    {
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache),
                    },
                )
            )
        else:
            out.append(name)
    return out


class Detector:
    """Detects objects in BGR frames or image files.

    `conf_threshold` applies to objectness x class probability; `iou_threshold` to class-wise
    NMS; `classes` keeps only those names or ids; `preprocess` is "letterbox" (padded to the
    square input), "rect" (letterboxed to the frame's own aspect ratio, padded only to the
    network stride: fewer pixels, same scale; needs a model with a free input size),
    "stretch" (darknet/OpenCV's own input, for comparisons) or "auto" (rect where the model
    allows it, else letterbox); `input_size` overrides the model's nominal size (an int for a
    square, or height, width; multiples of the stride, free-size models only); `threads` is
    ONNX Runtime's intra-op thread count (None: its default, one per physical core);
    `spin_wait` lets idle worker threads busy-wait between runs (slightly lower latency on an
    otherwise idle machine, at the cost of CPU the rest of the daemon needs).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        classes: Iterable[str | int] | None = None,
        preprocess: str = "auto",
        input_size: int | tuple[int, int] | None = None,
        pad_value: int = 114,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        graph_optimization: str = "all",
        max_detections: int = 300,
        max_candidates: int = 3000,
        spin_wait: bool = False,
    ) -> None:
        if preprocess not in (*MODES, "auto"):
            raise ValueError(f"preprocess must be one of {(*MODES, 'auto')}, got {preprocess!r}")
        if graph_optimization not in _OPT_LEVELS:
            raise ValueError(f"graph_optimization must be one of {_OPT_LEVELS}")
        if not 0.0 <= conf_threshold <= 1.0 or not 0.0 <= iou_threshold <= 1.0:
            raise ValueError("thresholds must lie in 0..1")
        self.model_path = Path(model_path)
        self.conf_threshold = conf_threshold
        self.iou_threshold = iou_threshold
        self.pad_value = pad_value
        self.max_detections = max_detections
        self.max_candidates = max_candidates
        self.session = self._open(threads, providers, graph_optimization, spin_wait)
        self._read_metadata()
        if preprocess == "auto":
            preprocess = "rect" if self.dynamic_size else "letterbox"
        if preprocess == "rect" and not self.dynamic_size:
            raise ValueError(
                f"preprocess 'rect' needs a model built with a free input size; "
                f"{self.model_path.name} is fixed at {self.input_size[1]}x{self.input_size[0]}"
            )
        self.preprocess_mode = preprocess
        if input_size is not None:
            self.input_size = self._checked_size(input_size)
        self.class_mask = self._class_mask(classes)

    # -- model -----------------------------------------------------------------------------

    def _open(self, threads: int | None, providers: Sequence[str] | None, level: str, spin: bool):
        import onnxruntime as ort

        path = self.model_path
        if not path.exists():
            raise ModelError(path, "no such model file; build it with `skycourier models build`")
        if not path.is_file():
            raise ModelError(path, "not a regular file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle worker threads that busy-wait steal the cores that capture, pre-processing and
        # the rest of the daemon need on a Pi (and another session's run); let them sleep.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        chosen = list(providers) if providers else default_providers()
        try:
            return ort.InferenceSession(
                str(path), options, providers=_provider_options(chosen, path)
            )
        except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidProtobuf
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(path, f"cannot load as an ONNX model: {first}") from exc

    def _read_metadata(self) -> None:
        path = self.model_path
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if "images" not in inputs or outputs[:2] != ["boxes", "scores"]:
            raise ModelError(
                path,
                f"not a detector graph from models/ (inputs {list(inputs)}, outputs {outputs})",
            )
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            height, width = json.loads(meta["input_size"])
            self.names: list[str] = list(json.loads(meta["names"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelError(path, f"model metadata lacks input_size/names: {exc}") from exc
        self.input_size: tuple[int, int] = (int(height), int(width))
        self.dynamic_size = meta.get("dynamic_size") == "1"
        try:
            self.stride = int(meta.get("stride", "32"))
        except ValueError as exc:
            raise ModelError(path, f"model metadata has a bad stride: {exc}") from exc
        self.dtype = meta.get("dtype", "float32")
        self.providers: list[str] = self.session.get_providers()

    def _checked_size(self, size: int | tuple[int, int]) -> tuple[int, int]:
        height, width = (size, size) if isinstance(size, int) else size
        height, width = int(height), int(width)
        if (height, width) == self.input_size:
            return self.input_size
        if not self.dynamic_size:
            raise ValueError(
                f"{self.model_path.name} is fixed at {self.input_size[1]}x{self.input_size[0]}; "
                f"it cannot run at {width}x{height}"
            )
        if height <= 0 or width <= 0 or height % self.stride or width % self.stride:
            raise ValueError(
                f"input size {width}x{height} must be positive multiples of {self.stride}"
            )
        return height, width

    def _class_mask(self, classes: Iterable[str | int] | None) -> np.ndarray | None:
        if classes is None:
            return None
        mask = np.zeros(len(self.names), dtype=bool)
        for item in classes:
            if isinstance(item, str):
                if item not in self.names:
                    raise ValueError(f"unknown class name {item!r}")
                mask[self.names.index(item)] = True
            elif 0 <= int(item) < len(self.names):
                mask[int(item)] = True
            else:
                raise ValueError(f"class id {item} outside 0..{len(self.names) - 1}")
        return mask

    # -- detection -------------------------------------------------------------------------

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Transform]:
        """The network input for a BGR frame, and the way back to its pixels."""
        return prepare(image, self.input_size, self.preprocess_mode, self.pad_value, self.stride)

    def infer(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw decoded outputs for one prepared input: boxes (N, 4) and scores (N, classes)."""
        boxes, scores = self.session.run(["boxes", "scores"], {"images": tensor})
        return boxes[0], scores[0]

    def postprocess(
        self, boxes: np.ndarray, scores: np.ndarray, transform: Transform
    ) -> list[Detection]:
        """Best class per box, threshold, class filter, class-wise NMS, source pixels."""
        if self.class_mask is not None:
            scores = scores * self.class_mask
        class_ids = scores.argmax(axis=1)
        best = np.take_along_axis(scores, class_ids[:, None], axis=1)[:, 0]
        keep = np.flatnonzero(best > self.conf_threshold)
        if keep.size > self.max_candidates:
            keep = keep[np.argsort(-best[keep], kind="stable")[: self.max_candidates]]
        boxes, best, class_ids = boxes[keep], best[keep], class_ids[keep]
        kept = batched_nms(boxes, best, class_ids, self.iou_threshold, self.max_detections)
        source = transform.to_source(boxes[kept])
        return [
            Detection(
                (float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                float(s),
                int(c),
                self.names[int(c)],
            )
            for b, s, c in zip(source, best[kept], class_ids[kept], strict=True)
        ]

    def detect(self, image: np.ndarray | str | Path) -> list[Detection]:
        """Detections in a BGR frame or an image file, highest score first."""
        frame = read_image(image) if isinstance(image, (str, Path)) else as_bgr(image)
        tensor, transform = self.prepare(frame)
        boxes, scores = self.infer(tensor)
        return self.postprocess(boxes, scores, transform)

    def __repr__(self) -> str:
        return (
            f"Detector({self.model_path.name}, {self.dtype}, {self.input_size[1]}x"
            f"{self.input_size[0]}, {self.preprocess_mode}, providers={self.providers})"
        )


def model_path(variant: str = "fp32", build_dir: str | Path | None = None) -> Path:
    """Where `models/` builds a variant: `$SKYCOURIER_MODELS` or the repository's
    `models/build/` unless `build_dir` says otherwise."""
    files = {"fp32": "yolov4-tiny.onnx", "int8": "yolov4-tiny-int8.onnx"}
    files["fp16"] = "yolov4-tiny-fp16.onnx"
    if variant not in files:
        raise ValueError(f"variant must be one of {sorted(files)}, got {variant!r}")
    if build_dir is None:
        env = os.environ.get("SKYCOURIER_MODELS")
        build_dir = Path(env) if env else Path(__file__).resolve().parents[2] / "models" / "build"
    return Path(build_dir) / files[variant]
