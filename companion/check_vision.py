"""`skycourier check` for the camera and the models: one frame read from `[vision] source`,
the detector model loaded in ONNX Runtime, and the face models the recipient check needs.

Vision is optional: with no `[vision] source` the camera and its models are skipped. The
face models are checked whenever a camera is configured, because that camera is what the
recipient check at the door sees through: without the models, the check of an order that
names its recipient can never pass, and the parcel is flown home.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from companion.check import CheckRow
from companion.config import Config, VisionConfig

if TYPE_CHECKING:  # cv2 loads only when a camera is checked
    from companion.vision.capture import SourceSpec

#: How long to wait for the first frame (an RTSP camera's own open timeout is 5 s).
FRAME_S = 10.0


def models_need_tensorrt() -> bool:
    """Whether ONNX Runtime here would build TensorRT engines (minutes, the first time)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "TensorrtExecutionProvider" in ort.get_available_providers()


def _vision_off(device: str, check: str) -> CheckRow:
    return CheckRow(device, check, "skip", "vision off ([vision] source unset)")


def check_camera(config: Config, where: str) -> list[CheckRow]:
    """One frame from `[vision] source`, and its size."""
    vc = config.vision
    if vc.source is None:
        return [_vision_off("camera", "frame")]
    from companion.vision.capture import Capture, CaptureError, parse_source

    try:
        source = parse_source(vc.source)
    except CaptureError as exc:
        return [
            CheckRow(
                "camera",
                "source",
                "fail",
                f"[vision] source {exc.path}: {exc.cause}",
                f"set source in [vision] of {where} to a camera (/dev/video0, csi), a "
                "GStreamer pipeline (gst:...), an rtsp:// URL, a video file or an image folder",
            )
        ]
    device = _device_path(source)
    if device is not None and (not Path(device).exists() or not os.access(device, os.R_OK)):
        # A live source is retried for ever by the capture: say what is wrong at once.
        why = "does not exist" if not Path(device).exists() else "permission denied"
        return [CheckRow("camera", "frame", "fail", f"{device}: {why}", _camera_fix(source, where))]
    capture = Capture(source, replay_reopen_limit=1, reopen_backoff_s=(0.5,))
    try:
        frame = capture.read(FRAME_S)
        last_error = capture.stats.last_error
    except CaptureError as exc:
        frame, last_error = None, exc.cause
    finally:
        capture.close(2.0)
    if frame is None:
        why = last_error or f"no frame within {FRAME_S:g} s"
        return [CheckRow("camera", "frame", "fail", f"{source}: {why}", _camera_fix(source, where))]
    height, width = frame.image.shape[:2]
    return [CheckRow("camera", "frame", "pass", f"{width} x {height} frame from {source}")]


def _device_path(source: SourceSpec) -> str | None:
    """The V4L2 device node of a camera source (None for any other kind)."""
    if source.kind != "device":
        return None
    target = source.target
    return target if isinstance(target, str) else f"/dev/video{target}"


def _camera_fix(source: SourceSpec, where: str) -> str:
    kind, dev = source.kind, _device_path(source)
    if dev is not None:
        if not Path(dev).exists():
            return (
                f"check the camera's cable (on a Raspberry Pi: camera_auto_detect=1 in "
                f"/boot/firmware/config.txt, then reboot); `ls -l /dev/video*` lists the "
                f"cameras: set source in [vision] of {where}"
            )
        if not os.access(dev, os.R_OK | os.W_OK):
            return (
                "add the user that runs skycourier to the video group (sudo usermod -aG video "
                "$USER, then log in again; the service's own user is in it already)"
            )
        return (
            f"stop the program that holds {dev} (`fuser -v {dev}`), or choose the capture "
            f"node (`v4l2-ctl --list-devices`) in [vision] source of {where}"
        )
    if kind == "gstreamer":
        return (
            "try the pipeline with gst-launch-1.0 (ending in fakesink); on a Jetson the CSI "
            "camera needs nvargus-daemon running (sudo systemctl restart nvargus-daemon)"
        )
    if kind == "stream":
        return "check the URL, its credentials and that the camera is reachable (ffprobe URL)"
    return f"check the path in [vision] source of {where}: it must hold images or a video"


def check_models(config: Config, where: str) -> list[CheckRow]:
    """The detector model loads in ONNX Runtime; the face models load (with a camera)."""
    vc = config.vision
    if vc.source is None:
        return [_vision_off("models", "detector"), _vision_off("models", "face models")]
    return [_detector_row(vc), _face_row(config)]


def _detector_row(vc: VisionConfig) -> CheckRow:
    from companion.vision.detector import Detector, model_path
    from companion.vision.errors import ModelError

    path = model_path(vc.variant, vc.models_dir)
    build = f"skycourier models build --variant {vc.variant} --out {path.parent}"
    try:
        detector = Detector(
            path, conf_threshold=vc.conf, classes=vc.class_names, threads=vc.threads
        )
    except ModelError as exc:
        return CheckRow("models", "detector", "fail", f"{exc.path}: {exc.cause}", build)
    except ImportError as exc:
        return CheckRow(
            "models",
            "detector",
            "fail",
            f"ONNX Runtime is not installed: {exc}",
            "pip install onnxruntime (on a Jetson: the onnxruntime-gpu wheel for its JetPack)",
        )
    except ValueError as exc:  # an unknown class name
        return CheckRow(
            "models",
            "detector",
            "fail",
            f"[vision] classes: {exc}",
            "use COCO class names (person, car, dog, ...) in [vision] classes",
        )
    height, width = detector.input_size
    providers = ", ".join(p.removesuffix("ExecutionProvider") for p in detector.providers)
    return CheckRow(
        "models",
        "detector",
        "pass",
        f"{path.name} loads ({detector.dtype}, {width} x {height}, on {providers})",
    )


def _face_row(config: Config) -> CheckRow:
    from companion.identity.errors import FaceModelError
    from companion.identity.faces import PACKAGES
    from companion.identity.service import analyzer_from_config

    try:
        analyzer_from_config(config.identity)  # dlib's models and the ONNX embedding network
    except FaceModelError as exc:
        return CheckRow(
            "models",
            "face models",
            "fail",
            str(exc),
            "install the face packages into skycourier's environment: pip install "
            + " ".join(PACKAGES.values()),
        )
    return CheckRow(
        "models", "face models", "pass", "dlib face detector, landmarks and embedding load"
    )
