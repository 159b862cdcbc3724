"""Parity of our FP32 ONNX model with an independent implementation: OpenCV 4.x's darknet
importer (`cv2.dnn.readNetFromDarknet`) on the same cfg and weights.

Both see the same input (darknet's own pre-processing: plain resize to 416 x 416, RGB, 1/255;
our detector's "stretch" mode) and the same post-processing rule (best class, threshold,
class-wise NMS; OpenCV's side uses cv2.dnn.NMSBoxes). Every detection above 0.3 on either
side must have a partner on the other of the same class, IoU >= 0.9 and a confidence within
0.02 (the partner may sit just under 0.3, by at most that tolerance).
"""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="pip install 'opencv-python-headless>=4.8,<5'")
pytest.importorskip("onnxruntime", reason="pip install 'onnxruntime>=1.17'")
pytest.importorskip("onnx", reason="pip install 'onnx>=1.15'")

from companion.vision.detector import Detector  # noqa: E402
from companion.vision.nms import box_iou  # noqa: E402
from models import BUILD_DIR  # noqa: E402
from models.build import build_models  # noqa: E402

THRESHOLD = 0.3
IOU_MIN = 0.9
CONF_TOL = 0.02
NMS_IOU = 0.45


@pytest.fixture(scope="module")
def fp32_model(sources):
    manifest = build_models(BUILD_DIR / "test-cache", ["fp32"], sources=sources)
    return BUILD_DIR / "test-cache" / manifest["variants"]["fp32"]["file"]


def opencv_detections(sources, image: np.ndarray, threshold: float) -> list[tuple]:
    """(class_id, score, x1, y1, x2, y2) from OpenCV's darknet path, source pixels."""
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        pytest.skip("this OpenCV has no darknet importer (OpenCV 5 dropped it); install 4.x")
    net = cv2.dnn.readNetFromDarknet(str(sources.cfg), str(sources.weights))
    blob = cv2.dnn.blobFromImage(image, 1 / 255.0, (416, 416), swapRB=True, crop=False)
    net.setInput(blob)
    rows = np.concatenate(net.forward(net.getUnconnectedOutLayersNames()))
    class_ids = rows[:, 5:].argmax(axis=1)
    scores = rows[:, 5:].max(axis=1)
    h, w = image.shape[:2]
    out = []
    for cls in np.unique(class_ids[scores > threshold]):
        idx = np.flatnonzero((class_ids == cls) & (scores > threshold))
        rects = [
            [
                float((r[0] - r[2] / 2) * w),
                float((r[1] - r[3] / 2) * h),
                float(r[2] * w),
                float(r[3] * h),
            ]
            for r in rows[idx]
        ]
        kept = cv2.dnn.NMSBoxes(rects, scores[idx].tolist(), threshold, NMS_IOU)
        for k in np.array(kept).reshape(-1):
            x, y, bw, bh = rects[k]
            # clipped to the image, as our detector reports boxes
            box = np.clip([x, y, x + bw, y + bh], 0, [w, h, w, h]).tolist()
            out.append((int(cls), float(scores[idx[k]]), *box))
    return out


def match(ours: list[tuple], theirs: list[tuple]) -> list[tuple[float, float]]:
    """For each detection above THRESHOLD in `ours`, its (IoU, confidence delta) with the best
    same-class partner in `theirs`; fails if there is none."""
    found = []
    for cls, score, *box in ours:
        if score <= THRESHOLD:
            continue
        same = [t for t in theirs if t[0] == cls]
        assert same, f"class {cls} at {score:.3f} {box} has no counterpart"
        ious = box_iou(np.array(box), np.array([t[2:] for t in same]))
        best = int(ious.argmax())
        found.append((float(ious[best]), abs(score - same[best][1])))
    return found


@pytest.mark.parametrize("name", ["bus.jpg", "zidane.jpg"])
def test_fp32_matches_opencv_darknet(sources, fp32_model, name):
    path = next(p for p in sources.images if p.name == name)
    image = cv2.imread(str(path))
    detector = Detector(
        fp32_model,
        conf_threshold=THRESHOLD - CONF_TOL,
        iou_threshold=NMS_IOU,
        preprocess="stretch",
        providers=["CPUExecutionProvider"],
    )
    ours = [(d.class_id, d.score, *d.box) for d in detector.detect(path)]
    theirs = opencv_detections(sources, image, THRESHOLD - CONF_TOL)
    assert any(s > THRESHOLD for _, s, *_ in theirs), "OpenCV found nothing to compare"
    pairs = match(ours, theirs) + match(theirs, ours)
    assert pairs
    worst_iou = min(iou for iou, _ in pairs)
    worst_conf = max(delta for _, delta in pairs)
    assert worst_iou >= IOU_MIN, f"{name}: a box pair has IoU {worst_iou:.3f}"
    assert worst_conf <= CONF_TOL, f"{name}: a confidence differs by {worst_conf:.4f}"


def test_raw_outputs_match_opencv_on_the_same_blob(sources, fp32_model):
    """Below the detections: every decoded row of both heads, on the identical input."""
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        pytest.skip("this OpenCV has no darknet importer (OpenCV 5 dropped it); install 4.x")
    image = cv2.imread(str(sources.images[0]))
    blob = cv2.dnn.blobFromImage(image, 1 / 255.0, (416, 416), swapRB=True, crop=False)
    net = cv2.dnn.readNetFromDarknet(str(sources.cfg), str(sources.weights))
    net.setInput(blob)
    heads = sorted(net.forward(net.getUnconnectedOutLayersNames()), key=len)
    detector = Detector(fp32_model, providers=["CPUExecutionProvider"])
    boxes, scores = detector.infer(blob)
    start = 0
    for rows in heads:
        cells = len(rows) // 3
        ours = np.arange(len(rows)).reshape(3, cells).T.reshape(-1) + start
        start += len(rows)
        b = boxes[ours]
        centre = (b[:, :2] + b[:, 2:]) / 2 / 416
        size = (b[:, 2:] - b[:, :2]) / 416
        np.testing.assert_allclose(centre, rows[:, :2], atol=2e-3)
        np.testing.assert_allclose(size, rows[:, 2:4], rtol=1e-2, atol=2e-3)
        shown = rows[:, 5:] > 0
        np.testing.assert_allclose(scores[ours][shown], rows[:, 5:][shown], atol=5e-3)
