"""`skycourier detect` and `skycourier models build` (their argument definitions and
runners): JSON boxes in source pixels, annotation, frame limits, and one clear line with a
non-zero status for a missing model, an unreadable image or a camera that is not there."""

from __future__ import annotations

import argparse
import io
import json
import shutil

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="pip install 'opencv-python-headless>=4.8,<5'")
pytest.importorskip("onnxruntime", reason="pip install 'onnxruntime>=1.17'")

from companion.vision.commands import (  # noqa: E402
    add_detect_arguments,
    add_models_arguments,
    run_detect,
    run_models,
)
from companion.vision.nms import box_iou  # noqa: E402
from models import BUILD_DIR  # noqa: E402
from models.build import build_models  # noqa: E402

CACHE = BUILD_DIR / "test-cache"


@pytest.fixture(scope="module")
def models_dir(sources):
    build_models(CACHE, ["fp32"], sources=sources)
    return CACHE


@pytest.fixture(scope="module")
def images(sources):
    return {p.name: p for p in sources.images}


def detect(*argv):
    parser = argparse.ArgumentParser(prog="skycourier detect")
    add_detect_arguments(parser)
    args = parser.parse_args([str(a) for a in argv])
    out, err = io.StringIO(), io.StringIO()
    status = run_detect(args, out, err)
    return status, out.getvalue(), err.getvalue()


def test_detect_json_on_bus_gives_people_and_the_bus_in_source_pixels(models_dir, images):
    status, out, err = detect(
        images["bus.jpg"], "--json", "--models-dir", models_dir, "--threads", 1
    )
    assert status == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == {"frame", "source", "boxes"}
    assert record["frame"] == 0 and record["source"] == str(images["bus.jpg"])
    boxes = record["boxes"]
    assert all(set(b) == {"box", "score", "class_id", "class_name"} for b in boxes)
    names = [b["class_name"] for b in boxes]
    assert "bus" in names and names.count("person") >= 2
    for b in boxes:
        x1, y1, x2, y2 = b["box"]
        assert 0 <= x1 < x2 <= 810 and 0 <= y1 < y2 <= 1080  # bus.jpg is 810 x 1080
        assert 0.25 < b["score"] <= 1.0
    bus = next(b for b in boxes if b["class_name"] == "bus")
    assert bus["class_id"] == 5
    # Where the bus is in the photo's own pixels (not the 416 x 416 network input).
    iou = box_iou(np.array(bus["box"]), np.array([[49.0, 184.0, 793.0, 773.0]]))[0]
    assert iou > 0.9


def test_detect_class_filter_threshold_and_annotation(models_dir, images, tmp_path):
    out_jpg = tmp_path / "annotated.jpg"
    status, out, err = detect(
        images["bus.jpg"], "--models-dir", models_dir, "--classes", "bus",
        "--conf", "0.5", "--annotate", out_jpg, "--threads", 1,
    )  # fmt: skip
    assert status == 0, err
    assert "bus" in out and "person" not in out
    annotated = cv2.imread(str(out_jpg))
    assert annotated is not None and annotated.shape == (1080, 810, 3)
    assert not np.array_equal(annotated, cv2.imread(str(images["bus.jpg"])))


def test_detect_folder_one_object_per_frame_and_max_frames(models_dir, images, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(images["bus.jpg"], folder / "a.jpg")
    shutil.copy(images["zidane.jpg"], folder / "b.jpg")
    status, out, err = detect(
        folder, "--json", "--models-dir", models_dir, "--threads", 1,
        "--annotate", tmp_path / "out-{frame}.jpg",
    )  # fmt: skip
    assert status == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["frame"] for r in records] == [0, 1]
    assert records[1]["source"].endswith("b.jpg")
    assert any(b["class_name"] == "person" for b in records[1]["boxes"])
    assert (tmp_path / "out-0.jpg").exists() and (tmp_path / "out-1.jpg").exists()
    status, out, _ = detect(folder, "--json", "--models-dir", models_dir, "--max-frames", 1)
    assert status == 0 and len(out.splitlines()) == 1


def test_detect_video_file(models_dir, images, tmp_path):
    video = tmp_path / "clip.avi"
    frame = cv2.resize(cv2.imread(str(images["zidane.jpg"])), (640, 360))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (640, 360))
    for _ in range(3):
        writer.write(frame)
    writer.release()
    status, out, err = detect(video, "--json", "--models-dir", models_dir, "--threads", 1)
    assert status == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2]
    assert all(any(b["class_name"] == "person" for b in r["boxes"]) for r in records)
    for r in records:
        for b in r["boxes"]:
            assert b["box"][2] <= 640 and b["box"][3] <= 360


def test_missing_model_says_how_to_build_it(tmp_path, images):
    status, out, err = detect(images["bus.jpg"], "--models-dir", tmp_path, "--variant", "int8")
    assert status == 1 and out == ""
    assert "skycourier models build" in err and "--variant int8" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unreadable_image_and_missing_source_are_clear_errors(models_dir, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    status, _, err = detect(bad, "--models-dir", models_dir)
    assert status == 1 and "not a decodable image" in err and str(bad) in err
    status, _, err = detect(tmp_path / "nothing.mp4", "--models-dir", models_dir)
    assert status == 1 and "no such file" in err
    status, _, err = detect("/dev/video99", "--models-dir", models_dir)
    assert status == 1 and "/dev/video99 does not exist" in err
    status, _, err = detect(bad, "--models-dir", models_dir, "--classes", "unicorn")
    assert status == 2 and "unicorn" in err
    assert "Traceback" not in err


def test_models_build_plain_progress_when_not_a_tty(sources):
    parser = argparse.ArgumentParser(prog="skycourier models")
    add_models_arguments(parser)
    args = parser.parse_args(["build", "--variant", "fp32", "--out", str(CACHE)])
    out, err = io.StringIO(), io.StringIO()
    assert run_models(args, out, err) == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[0/2] fetch sources"
    assert any("fp32" in line and "cached" in line for line in lines)
    assert lines[-1].startswith(f"fp32: {CACHE / 'yolov4-tiny.onnx'}  sha256 ")
    args = parser.parse_args(["build", "--variant", "all"])
    assert args.variant == ["all"]
