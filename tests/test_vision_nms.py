"""Properties of the class-wise NMS, against a brute-force pairwise reference and OpenCV."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from companion.vision.nms import batched_nms, box_iou, nms


def boxes_strategy(max_n: int = 40):
    def build(raw: np.ndarray) -> np.ndarray:
        x1, y1 = raw[:, 0], raw[:, 1]
        return np.stack([x1, y1, x1 + raw[:, 2], y1 + raw[:, 3]], axis=1)

    # half-pixel steps: realistic sizes, with exact repeats and touching edges common
    coords = st.integers(0, 800).map(lambda v: v / 2)
    return st.integers(0, max_n).flatmap(
        lambda n: st.tuples(
            arrays(np.float32, (n, 4), elements=coords).map(build),
            arrays(np.float32, n, elements=st.floats(0.0625, 1, width=32), unique=True),
            arrays(np.int64, n, elements=st.integers(0, 3)),
            st.floats(0.1, 0.9),
        )
    )


def reference(boxes, scores, classes, thr) -> list[int]:
    """Greedy NMS by the definition, pair by pair."""
    kept: list[int] = []
    for i in sorted(range(len(scores)), key=lambda k: -scores[k]):
        ok = True
        for k in kept:
            if classes[k] != classes[i]:
                continue
            if box_iou(boxes[k], boxes[i : i + 1])[0] > thr:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


@settings(max_examples=150, deadline=None)
@given(boxes_strategy())
def test_batched_nms_equals_the_pairwise_definition(case):
    boxes, scores, classes, thr = case
    got = batched_nms(boxes, scores, classes, thr).tolist()
    assert got == reference(boxes, scores, classes, thr)


@settings(max_examples=100, deadline=None)
@given(boxes_strategy())
def test_kept_boxes_are_distinct_sorted_and_not_overlapping_within_a_class(case):
    boxes, scores, classes, thr = case
    kept = batched_nms(boxes, scores, classes, thr)
    assert len(set(kept.tolist())) == len(kept)
    assert np.all(np.diff(scores[kept]) <= 0)
    for n, i in enumerate(kept):
        for j in kept[n + 1 :]:
            if classes[i] == classes[j]:
                assert box_iou(boxes[i], boxes[j : j + 1])[0] <= thr
    # every dropped box was dropped by a kept, higher-scoring box of its class
    for d in set(range(len(scores))) - set(kept.tolist()):
        partners = [k for k in kept if classes[k] == classes[d] and scores[k] >= scores[d]]
        assert any(box_iou(boxes[k], boxes[d : d + 1])[0] > thr for k in partners)


@settings(max_examples=60, deadline=None)
@given(boxes_strategy())
def test_single_class_matches_opencv(case):
    cv2 = pytest.importorskip("cv2", reason="pip install 'opencv-python-headless>=4.8,<5'")
    boxes, scores, _, thr = case
    boxes = boxes + np.array([0, 0, 1, 1], np.float32)  # OpenCV's IoU of empty boxes differs
    rects = [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in boxes]
    theirs = np.array(cv2.dnn.NMSBoxes(rects, scores.tolist(), 0.0, thr)).reshape(-1)
    assert sorted(nms(boxes, scores, thr).tolist()) == sorted(theirs.tolist())


def test_empty_and_max_keep():
    empty = np.zeros((0, 4), np.float32)
    assert batched_nms(empty, np.zeros(0), np.zeros(0, np.int64), 0.5).size == 0
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32)
    kept = nms(boxes, np.array([0.5, 0.9, 0.7]), 0.5, max_keep=2)
    assert kept.tolist() == [1, 2]


def test_overlapping_boxes_of_different_classes_both_survive():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]], np.float32)
    kept = batched_nms(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 1, 0]), 0.5)
    assert kept.tolist() == [0, 1]
