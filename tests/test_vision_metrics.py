"""The mAP@0.5 evaluator on cases whose answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from companion.vision.metrics import (
    Box,
    average_precision,
    labelled_images,
    mean_average_precision,
    read_yolo_labels,
)

A = Box(0, 0, 0, 10, 10)
B = Box(0, 20, 20, 30, 30)
C = Box(1, 50, 50, 80, 90)


def det(box: Box, score: float, dx: float = 0.0) -> Box:
    return Box(box.class_id, box.x1 + dx, box.y1, box.x2 + dx, box.y2, score)


def test_perfect_detections_score_one():
    mean, per = mean_average_precision([[det(A, 0.9), det(B, 0.8), det(C, 0.7)]], [[A, B, C]])
    assert mean == pytest.approx(1.0) and per == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}


def test_nothing_detected_scores_zero():
    assert mean_average_precision([[]], [[A, C]])[0] == 0.0


def test_half_recall_is_about_half():
    # one of two class-0 objects found: precision 1 up to recall 0.5 -> 51 of 101 points
    _, per = mean_average_precision([[det(A, 0.9)]], [[A, B]])
    assert per[0] == pytest.approx(51 / 101)


def test_duplicate_is_a_false_positive_and_order_matters():
    # a duplicate of A ranked above B: P = 1, 1/2, 2/3 at R = .5, .5, 1
    _, per = mean_average_precision([[det(A, 0.9), det(A, 0.85), det(B, 0.8)]], [[A, B]])
    assert per[0] == pytest.approx((51 * 1.0 + 50 * (2 / 3)) / 101)
    # ranked below B it costs nothing
    _, per = mean_average_precision([[det(A, 0.9), det(B, 0.85), det(A, 0.8)]], [[A, B]])
    assert per[0] == pytest.approx(1.0)


def test_iou_below_half_does_not_count_and_images_stay_apart():
    shifted = det(A, 0.9, dx=6)  # IoU 4*10 / (2*100 - 40) = 0.25
    assert mean_average_precision([[shifted]], [[A]])[0] == 0.0
    # a detection in image 1 cannot match a truth in image 0
    assert mean_average_precision([[], [det(A, 0.9)]], [[A], []])[0] == 0.0


def test_classes_without_truth_are_not_averaged():
    mean, per = mean_average_precision([[det(A, 0.9), det(C, 0.9)]], [[A]])
    assert per == {0: pytest.approx(1.0)} and mean == pytest.approx(1.0)


def test_average_precision_of_empty_curve():
    assert average_precision(np.array([]), np.array([])) == 0.0


def test_yolo_labels(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    (tmp_path / "images" / "b.jpg").write_bytes(b"")
    (tmp_path / "labels" / "a.txt").write_text("3 0.5 0.5 0.2 0.4\n\n")
    pairs = labelled_images(tmp_path)
    assert [p.name for p, _ in pairs] == ["a.jpg", "b.jpg"]
    (box,) = read_yolo_labels(pairs[0][1], 200, 100)
    assert (box.class_id, box.x1, box.y1, box.x2, box.y2) == (3, 80, 30, 120, 70)
    assert read_yolo_labels(pairs[1][1], 200, 100) == []
    (tmp_path / "labels" / "a.txt").write_text("3 0.5 0.5\n")
    with pytest.raises(ValueError, match=r"a\.txt:1"):
        read_yolo_labels(pairs[0][1], 200, 100)
