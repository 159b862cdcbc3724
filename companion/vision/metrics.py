"""COCO-style mAP@0.5 for the detector, on YOLO-format labelled images.

Why our own: the acceptance check (INT8 may lose at most 1.5 points against FP32 on the shared
COCO sample) needs a small, dependency-free evaluator; pycocotools would need the labels
converted to COCO JSON first. The rules are COCO's at one IoU threshold: per class, all
detections sorted by score, each matched to the unmatched ground-truth box of the same image
it overlaps most (IoU >= 0.5), precision made monotone, 101-point interpolated AP, averaged
over the classes that have ground truth.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from companion.vision.nms import box_iou


@dataclass(frozen=True)
class Box:
    """A labelled or detected box in source pixels (score 1 for ground truth)."""

    class_id: int
    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0

    @property
    def xyxy(self) -> np.ndarray:
        return np.array([self.x1, self.y1, self.x2, self.y2], dtype=np.float64)


def read_yolo_labels(path: Path, width: int, height: int) -> list[Box]:
    """`class cx cy w h` lines normalised to 0..1; a missing file means no boxes."""
    if not Path(path).exists():
        return []
    boxes = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise ValueError(f"{path}:{number}: expected 'class cx cy w h', got {line!r}")
        cls, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:])
        boxes.append(
            Box(
                cls,
                (cx - w / 2) * width,
                (cy - h / 2) * height,
                (cx + w / 2) * width,
                (cy + h / 2) * height,
            )
        )
    return boxes


def labelled_images(root: Path) -> list[tuple[Path, Path]]:
    """(image, label file) pairs of a YOLO-layout folder (`images/`, `labels/`)."""
    root = Path(root)
    images = sorted(
        p for p in (root / "images").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    return [
        (p, root / "labels" / p.relative_to(root / "images").with_suffix(".txt")) for p in images
    ]


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO's 101-point interpolated AP of a precision/recall curve."""
    if recall.size == 0:
        return 0.0
    monotone = np.maximum.accumulate(precision[::-1])[::-1]
    points = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(recall, points, side="left")
    values = np.where(idx < monotone.size, monotone[np.minimum(idx, monotone.size - 1)], 0.0)
    return float(values.mean())


def mean_average_precision(
    detections: Sequence[Iterable[Box]],
    truths: Sequence[Iterable[Box]],
    iou_threshold: float = 0.5,
) -> tuple[float, dict[int, float]]:
    """mAP over classes with ground truth, and AP per class; `detections[i]` and `truths[i]`
    belong to image i."""
    if len(detections) != len(truths):
        raise ValueError("detections and truths must cover the same images")
    gt: dict[int, dict[int, np.ndarray]] = defaultdict(dict)
    counts: dict[int, int] = defaultdict(int)
    for image, boxes in enumerate(truths):
        by_class: dict[int, list[np.ndarray]] = defaultdict(list)
        for box in boxes:
            by_class[box.class_id].append(box.xyxy)
        for cls, items in by_class.items():
            gt[cls][image] = np.array(items)
            counts[cls] += len(items)
    dets: dict[int, list[tuple[float, int, np.ndarray]]] = defaultdict(list)
    for image, boxes in enumerate(detections):
        for box in boxes:
            dets[box.class_id].append((box.score, image, box.xyxy))
    per_class: dict[int, float] = {}
    for cls, total in counts.items():
        found = sorted(dets.get(cls, []), key=lambda d: -d[0])
        used = {image: np.zeros(len(b), bool) for image, b in gt[cls].items()}
        tp = np.zeros(len(found))
        for k, (_, image, box) in enumerate(found):
            if image not in gt[cls]:
                continue
            ious = box_iou(box, gt[cls][image])
            ious[used[image]] = -1.0
            best = int(ious.argmax())
            if ious[best] >= iou_threshold:
                used[image][best] = True
                tp[k] = 1.0
        cum_tp = np.cumsum(tp)
        recall = cum_tp / total
        precision = cum_tp / np.arange(1, len(found) + 1)
        per_class[cls] = average_precision(recall, precision)
    mean = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return mean, per_class
