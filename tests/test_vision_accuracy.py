"""Accuracy on labelled COCO images (`../shared/reference/coco`): COCO-style mAP@0.5 of the FP32
model, and the deployment default (`[vision]` defaults: INT8, letterboxed to each image's own
aspect ratio) within 1 point of it.

The INT8 model is built exactly as `skycourier models build` builds it, calibrated on the
package's two sample images only; the test checks by sha256 that none of the graded images is
in its calibration set, so the comparison is not flattered by grading the model on the images
it was calibrated on. (64 images are few: bench/detector.py reports a bootstrap interval.)
"""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime", reason="pip install 'onnxruntime>=1.17'")
pytest.importorskip("cv2", reason="pip install 'opencv-python-headless>=4.8,<5'")

from companion.config import VisionConfig
from companion.vision.detector import Detector, model_path, read_image
from companion.vision.metrics import (
    Box,
    labelled_images,
    mean_average_precision,
    read_yolo_labels,
)
from models import BUILD_DIR
from models.build import SHARED_COCO, build_models, sha256

CACHE = BUILD_DIR / "test-cache-heldout"
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def coco():
    if not (SHARED_COCO / "images").is_dir():
        pytest.skip(f"labelled COCO images not found at {SHARED_COCO} (the ../shared checkout)")
    return labelled_images(SHARED_COCO)


def _map50(detector: Detector, pairs) -> tuple[float, int]:
    truths, found = [], []
    for image_path, label_path in pairs:
        frame = read_image(image_path)
        h, w = frame.shape[:2]
        truths.append(read_yolo_labels(label_path, w, h))
        found.append([Box(d.class_id, *d.box, d.score) for d in detector.detect(frame)])
    return 100 * mean_average_precision(found, truths)[0], sum(len(t) for t in truths)


def test_calibration_and_evaluation_sets_are_disjoint(sources, coco) -> None:
    manifest = build_models(CACHE, [VisionConfig().variant], sources=sources)
    calibrated = {i["sha256"] for i in manifest["variants"]["int8"]["calibration"]["images"]}
    assert calibrated == {sha256(p) for p in sources.images}
    graded = {sha256(image) for image, _ in coco}
    assert len(graded) == len(coco)
    assert calibrated.isdisjoint(graded)


def test_default_variant_loses_at_most_one_map_point_on_held_out_images(sources, coco) -> None:
    default = VisionConfig()
    manifest = build_models(CACHE, ["fp32", default.variant], sources=sources)
    assert manifest["variants"]["int8"]["calibration_images"] == len(sources.images)
    # conf 0.001, as COCO evaluations do: the whole precision/recall curve counts.
    fp32, boxes = _map50(
        Detector(CACHE / manifest["variants"]["fp32"]["file"], providers=CPU, threads=2,
                 conf_threshold=0.001),
        coco,
    )  # fmt: skip
    ours = Detector(
        model_path(default.variant, CACHE), providers=CPU, threads=2, conf_threshold=0.001
    )
    assert ours.preprocess_mode == "rect"
    deployed, _ = _map50(ours, coco)
    assert len(coco) >= 50 and boxes >= 400
    assert fp32 > 45.0, fp32  # YOLOv4-Tiny's published COCO mAP@0.5 is about 40; coco128 higher
    print(
        f"mAP@0.5 on {len(coco)} held-out COCO images ({boxes} boxes): FP32 {fp32:.2f}, "
        f"default ({default.variant}, {ours.preprocess_mode}) {deployed:.2f}"
    )
    assert fp32 - deployed <= 1.0, (fp32, deployed)


def test_the_bench_computes_the_same_map_and_its_bootstrap_is_paired(sources, coco) -> None:
    """bench/detector.py's vectorised mAP (used for its bootstrap intervals) is the metrics
    module's, and the bootstrap of a model against itself is exactly zero."""
    from bench.detector import bootstrap_difference, evaluate, map50

    manifest = build_models(CACHE, ["fp32"], sources=sources)
    detector = Detector(
        CACHE / manifest["variants"]["fp32"]["file"], providers=CPU, threads=2,
        conf_threshold=0.001,
    )  # fmt: skip
    pairs = coco[:24]
    expected, _ = _map50(detector, pairs)
    per_image = evaluate(detector, pairs)
    assert abs(map50(per_image, range(len(pairs))) - expected) < 1e-9
    same = bootstrap_difference(per_image, per_image, n=20)
    assert same["boot_mean"] == 0.0 and same["ci95"] == [0.0, 0.0]
