"""Accuracy on labelled COCO images (`../shared/reference/coco`): COCO-style mAP@0.5 of the
FP32 model, and the INT8 model within 1.5 points of it.

The INT8 model here is calibrated on the package's own sample images only (a cache of its
own), never on these COCO images, so the comparison is not flattered by grading the model on
its calibration set.
"""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime", reason="pip install 'onnxruntime>=1.17'")
pytest.importorskip("cv2", reason="pip install 'opencv-python-headless>=4.8,<5'")

from companion.vision.detector import Detector, read_image
from companion.vision.metrics import (
    Box,
    labelled_images,
    mean_average_precision,
    read_yolo_labels,
)
from models import BUILD_DIR
from models.build import SHARED_COCO, build_models

CACHE = BUILD_DIR / "test-cache-heldout"
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def coco():
    if not (SHARED_COCO / "images").is_dir():
        pytest.skip(f"labelled COCO images not found at {SHARED_COCO} (the ../shared checkout)")
    return labelled_images(SHARED_COCO)


def _map50(detector: Detector, pairs) -> float:
    truths, found = [], []
    for image_path, label_path in pairs:
        frame = read_image(image_path)
        h, w = frame.shape[:2]
        truths.append(read_yolo_labels(label_path, w, h))
        found.append([Box(d.class_id, *d.box, d.score) for d in detector.detect(frame)])
    return 100 * mean_average_precision(found, truths)[0]


def test_int8_loses_at_most_one_and_a_half_map_points(sources, coco) -> None:
    manifest = build_models(CACHE, ["fp32", "int8"], sources=sources, shared_calibration=False)
    assert manifest["variants"]["int8"]["calibration_images"] == len(sources.images)
    paths = {name: CACHE / entry["file"] for name, entry in manifest["variants"].items()}
    # conf 0.001, as COCO evaluations do: the whole precision/recall curve counts.
    fp32 = _map50(Detector(paths["fp32"], providers=CPU, threads=2, conf_threshold=0.001), coco)
    int8 = _map50(Detector(paths["int8"], providers=CPU, threads=2, conf_threshold=0.001), coco)
    assert len(coco) >= 50
    assert fp32 > 45.0, (
        fp32
    )  # YOLOv4-Tiny's published COCO mAP@0.5 is about 40; coco128 runs higher
    print(f"mAP@0.5 on {len(coco)} COCO images: FP32 {fp32:.2f}, INT8 {int8:.2f}")
    assert fp32 - int8 <= 1.5, (fp32, int8)
