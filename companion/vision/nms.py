"""Non-maximum suppression in numpy.

Class-wise NMS runs as a single greedy pass over all classes: the IoU of each kept box against
all the remaining ones is one vectorised numpy expression, and a box survives when that IoU is
low or its class differs. The Python loop runs once per kept box, not once per pair. (The
class-offset trick of torchvision's `batched_nms` would do the same with shifted coordinates,
but shifting loses precision for small boxes far from the origin; a class mask is exact.)
"""

from __future__ import annotations

import numpy as np


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1, y1, x2, y2 box against (N, 4) boxes; empty boxes have IoU 0."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    max_keep: int = 0,
    class_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, highest score first: a box is dropped when
    its IoU with a higher-scoring kept box (of the same class, when `class_ids` is given) is
    above `iou_threshold`. `max_keep` > 0 stops after that many."""
    boxes = np.asarray(boxes, dtype=np.float64)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    while order.size:
        best = order[0]
        keep.append(int(best))
        if max_keep and len(keep) >= max_keep:
            break
        rest = order[1:]
        survive = box_iou(boxes[best], boxes[rest]) <= iou_threshold
        if class_ids is not None:
            survive |= class_ids[rest] != class_ids[best]
        order = rest[survive]
    return np.array(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float,
    max_keep: int = 0,
) -> np.ndarray:
    """Class-wise NMS: boxes only suppress boxes of their own class."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    return nms(boxes, scores, iou_threshold, max_keep, np.asarray(class_ids))
