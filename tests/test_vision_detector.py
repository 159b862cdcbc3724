"""The detector on the real YOLOv4-Tiny models: what it finds on the sample images, one code
path for FP32/INT8/FP16, the deployment default (INT8, letterboxed to the frame's own aspect
ratio), thresholds and class filter, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="pip install 'opencv-python-headless>=4.8,<5'")
pytest.importorskip("onnxruntime", reason="pip install 'onnxruntime>=1.17'")
onnx = pytest.importorskip("onnx", reason="pip install 'onnx>=1.15'")

from companion.config import VisionConfig  # noqa: E402
from companion.vision.detector import (  # noqa: E402
    Detection,
    Detector,
    as_bgr,
    model_path,
    read_image,
)
from companion.vision.errors import ImageError, ModelError  # noqa: E402
from companion.vision.nms import box_iou  # noqa: E402
from companion.vision.preprocess import prepare  # noqa: E402
from models import BUILD_DIR  # noqa: E402
from models.build import build_models  # noqa: E402

CACHE = BUILD_DIR / "test-cache"
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def models(sources):
    manifest = build_models(CACHE, ["fp32", "int8", "fp16"], sources=sources)
    return {name: CACHE / entry["file"] for name, entry in manifest["variants"].items()}


@pytest.fixture(scope="module")
def images(sources):
    return {p.name: p for p in sources.images}


@pytest.fixture(scope="module")
def fp32(models):
    return Detector(models["fp32"], providers=CPU, threads=1)


def test_finds_the_bus_and_its_passengers(fp32, images):
    found = fp32.detect(images["bus.jpg"])
    names = [d.class_name for d in found]
    assert "bus" in names
    assert names.count("person") >= 3
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    h, w = read_image(images["bus.jpg"]).shape[:2]
    for d in found:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert d.class_name == fp32.names[d.class_id]


def test_the_bus_box_covers_the_bus(fp32, images):
    bus = next(d for d in fp32.detect(images["bus.jpg"]) if d.class_name == "bus")
    # the bus fills most of the 810 x 1080 frame's width, in its middle band
    assert bus.box[2] - bus.box[0] > 600
    assert 100 < bus.box[1] < 350 and 650 < bus.box[3] < 900


def test_array_path_grey_and_bgra_inputs_agree(fp32, images):
    image = read_image(images["zidane.jpg"])
    from_path = fp32.detect(images["zidane.jpg"])
    assert fp32.detect(image) == from_path
    assert fp32.detect(cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)) == from_path
    grey = fp32.detect(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    assert any(d.class_name == "person" for d in grey)


def test_class_filter_and_thresholds(models, images):
    people = Detector(models["fp32"], providers=CPU, classes=["person"])
    assert {d.class_name for d in people.detect(images["bus.jpg"])} == {"person"}
    by_id = Detector(models["fp32"], providers=CPU, classes=[5])
    assert {d.class_name for d in by_id.detect(images["bus.jpg"])} == {"bus"}
    strict = Detector(models["fp32"], providers=CPU, conf_threshold=0.9)
    assert all(d.score > 0.9 for d in strict.detect(images["bus.jpg"]))
    with pytest.raises(ValueError, match="unknown class"):
        Detector(models["fp32"], providers=CPU, classes=["dragon"])
    with pytest.raises(ValueError, match="preprocess"):
        Detector(models["fp32"], providers=CPU, preprocess="crop")


def strong(detections: list[Detection]) -> list[Detection]:
    return [d for d in detections if d.score > 0.5]


@pytest.mark.parametrize("variant", ["int8", "fp16"])
def test_variants_share_the_code_path_and_agree_on_strong_detections(models, fp32, images, variant):
    try:
        other = Detector(models[variant], providers=CPU, threads=1)
    except ModelError as exc:
        pytest.skip(f"this onnxruntime cannot load the {variant} model on CPU: {exc.cause}")
    assert other.names == fp32.names and other.input_size == fp32.input_size
    for name in ("bus.jpg", "zidane.jpg"):
        ref = strong(fp32.detect(images[name]))
        got = other.detect(images[name])
        for d in ref:
            same = [g for g in got if g.class_id == d.class_id]
            assert same, f"{variant} lost {d.class_name} {d.score:.2f} on {name}"
            ious = box_iou(np.array(d.box), np.array([g.box for g in same]))
            assert ious.max() > 0.8, f"{variant} moved {d.class_name} on {name}"


def test_detection_as_dict(fp32, images):
    d = fp32.detect(images["bus.jpg"])[0]
    data = d.as_dict()
    assert set(data) == {"box", "score", "class_id", "class_name"}
    assert len(data["box"]) == 4 and isinstance(data["class_name"], str)


def test_missing_model_is_a_model_error(tmp_path):
    path = tmp_path / "absent.onnx"
    with pytest.raises(ModelError) as info:
        Detector(path)
    assert info.value.path == str(path) and "no such model file" in info.value.cause


def test_corrupt_model_is_a_model_error(tmp_path, models):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(models["fp32"].read_bytes()[:100_000])
    with pytest.raises(ModelError, match="cannot load") as info:
        Detector(path, providers=CPU)
    assert info.value.path == str(path)


def test_other_onnx_graph_is_a_model_error(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "identity.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="not a detector graph"):
        Detector(path, providers=CPU)


def test_unreadable_images_are_image_errors(fp32, tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        fp32.detect(tmp_path / "absent.jpg")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageError, match="not a decodable image") as info:
        fp32.detect(garbage)
    assert info.value.path == str(garbage)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="not a decodable image"):
        fp32.detect(empty)
    with pytest.raises(ImageError, match="not a regular file"):
        fp32.detect(tmp_path)
    with pytest.raises(ImageError, match="uint8"):
        as_bgr(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageError, match="shape"):
        fp32.detect(np.zeros((4, 4, 2), np.uint8))


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 640, 3), (480, 0, 3), (0, 0), (0, 5, 4)])
def test_an_empty_frame_is_an_image_error_not_a_division_by_zero(fp32, shape):
    with pytest.raises(ImageError, match=r"empty frame \(\d+ x \d+ pixels\)"):
        fp32.detect(np.zeros(shape, np.uint8))


# -- the deployment default and the free-size ("rect") input ------------------------------


def test_the_default_variant_loads_and_detects_the_bus(models, images):
    """What `[vision]` and `skycourier detect` run unless told otherwise."""
    variant = VisionConfig().variant
    assert variant == "int8"
    path = model_path(variant, CACHE)
    assert path == models[variant]
    detector = Detector(path, providers=CPU, threads=2)
    assert detector.dynamic_size and detector.preprocess_mode == "rect"
    bus_frame = read_image(images["bus.jpg"])
    tensor, _ = detector.prepare(bus_frame)
    assert tensor.shape == (1, 3, 416, 320)  # 810 x 1080 scaled to 312 x 416, padded to 320
    found = detector.detect(bus_frame)
    names = [d.class_name for d in found]
    assert names.count("person") >= 3
    bus = next(d for d in found if d.class_name == "bus")
    assert bus.box[2] - bus.box[0] > 600
    assert 100 < bus.box[1] < 350 and 650 < bus.box[3] < 900
    iou = box_iou(np.array(bus.box), np.array([[49.0, 184.0, 793.0, 773.0]]))[0]
    assert iou > 0.9


def test_rect_and_square_letterbox_agree_on_strong_detections(models, images):
    rect = Detector(models["int8"], providers=CPU, threads=1)
    square = Detector(models["int8"], providers=CPU, threads=1, preprocess="letterbox")
    for name in ("bus.jpg", "zidane.jpg"):
        ref = strong(square.detect(images[name]))
        got = rect.detect(images[name])
        assert ref
        for d in ref:
            same = [g for g in got if g.class_id == d.class_id]
            assert same, f"rect lost {d.class_name} {d.score:.2f} on {name}"
            assert box_iou(np.array(d.box), np.array([g.box for g in same])).max() > 0.8


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((1080, 810), (416, 320)),
        ((720, 1280), (256, 416)),
        ((480, 640), (320, 416)),
        ((416, 416), (416, 416)),
        ((3000, 20), (416, 32)),
        ((1, 1), (416, 416)),
    ],
)
def test_rect_pads_only_to_the_stride_and_maps_back(shape, expected):
    h, w = shape
    image = np.full((h, w, 3), 7, np.uint8)
    tensor, t = prepare(image, (416, 416), "rect", stride=32)
    assert tensor.shape == (1, 3, *expected)
    assert expected[0] % 32 == 0 and expected[1] % 32 == 0
    corners = np.array(
        [[t.pad_x, t.pad_y, t.pad_x + w * t.scale_x, t.pad_y + h * t.scale_y]], np.float32
    )
    np.testing.assert_allclose(t.to_source(corners)[0], [0, 0, w, h], atol=1e-3 * max(w, h))
    content = np.isclose(tensor[0, 0], 7 / 255, atol=1e-4)
    rows, cols = np.flatnonzero(content.any(1)), np.flatnonzero(content.any(0))
    assert rows[0] == t.pad_y and cols[0] == t.pad_x  # centred: padding split evenly
    assert abs((expected[0] - rows[-1] - 1) - rows[0]) <= 1
    assert abs((expected[1] - cols[-1] - 1) - cols[0]) <= 1


def test_input_size_and_rect_need_a_free_size_model(models, images):
    with pytest.raises(ValueError, match="free input size"):
        Detector(models["fp32"], providers=CPU, preprocess="rect")
    with pytest.raises(ValueError, match="cannot run at 384x384"):
        Detector(models["fp32"], providers=CPU, input_size=384)
    with pytest.raises(ValueError, match="multiples of 32"):
        Detector(models["int8"], providers=CPU, input_size=400)
    small = Detector(models["int8"], providers=CPU, threads=1, input_size=384)
    assert small.input_size == (384, 384)
    assert small.prepare(read_image(images["bus.jpg"]))[0].shape == (1, 3, 384, 288)
    assert "bus" in [d.class_name for d in small.detect(images["bus.jpg"])]
    fixed = Detector(models["fp32"], providers=CPU, threads=1)
    assert fixed.preprocess_mode == "letterbox" and not fixed.dynamic_size


def test_the_bench_avx2_emulation_hides_avx512_and_vnni():
    """bench/detector.py's AVX2 figures come from a child process whose CPUID has the AVX-512
    and VNNI bits cleared; check that numpy and OpenCV inside it see an AVX2-only CPU."""
    import json
    import subprocess
    import sys

    from bench.detector import avx2_environment

    env, why = avx2_environment()
    if env is None:
        pytest.skip(f"no AVX2 emulation here: {why}")
    probe = (
        "import json, cv2, numpy; "
        "from numpy._core._multiarray_umath import __cpu_features__ as f; "
        "print(json.dumps([f['AVX2'], f['AVX512F'], f['AVX512_SKX'], "
        "cv2.checkHardwareSupport(11), cv2.checkHardwareSupport(13)]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == [True, False, False, True, False]
