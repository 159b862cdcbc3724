"""The darknet converter, layer by layer, on a small random network.

The network below uses every layer kind the converter supports, including the cases that are
easy to get wrong: the CSP split (route with groups/group_id), maxpool size=2 stride=1 (which
pads one pixel right and bottom), a strided maxpool on an odd size, upsample, shortcut,
convolutions with and without batch norm, and two YOLO heads with and without scale_x_y.
Each layer's ONNX output is compared with a plain numpy implementation written from
darknet's C code (not from our converter), and the decoded heads with OpenCV's own darknet
importer on the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="pip install 'onnx>=1.15'")
ort = pytest.importorskip("onnxruntime", reason="pip install 'onnxruntime>=1.17'")

from models.darknet import (  # noqa: E402
    ConvWeights,
    DarknetError,
    Weights,
    parse_cfg_text,
    parse_weights,
    read_weights,
    write_weights,
)
from models.onnx_export import export, layer_shapes  # noqa: E402

TINY_CFG = """
[net]
width=64
height=64
channels=3

# 0
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

# 1
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

# 2: the CSP split
[route]
layers=-1
groups=2
group_id=1

# 3
[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

# 4
[route]
layers = -1,-2

# 5
[shortcut]
from=-4
activation=linear

# 6
[maxpool]
size=2
stride=2

# 7: keeps 17 x 17
[maxpool]
size=2
stride=1

# 8
[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

# 9
[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

# 10
[yolo]
mask = 3,4,5
anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=2
num=6
scale_x_y = 1.05

# 11
[route]
layers = -3

# 12
[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

# 13
[upsample]
stride=2

# 14: as YOLOv4-Tiny's `layers = -1, 23`
[route]
layers = -1, 7

# 15
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

# 16
[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

# 17
[yolo]
mask = 0,1,2
anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=2
num=6
"""

#: Odd sizes: a strided maxpool on 13 x 13 (darknet pads the far edge) and a size-3 stride-1
#: maxpool (padding 2, one each side), one head without scale_x_y.
ODD_CFG = """
[net]
width=13
height=13
channels=3

[maxpool]
size=2
stride=2

[maxpool]
size=3
stride=1

[convolutional]
size=1
stride=1
pad=1
filters=18
activation=linear

[yolo]
mask = 0,1,2
anchors = 4,5, 8,9, 12,10
num=3
classes=1
"""


def random_weights(cfg, seed: int = 0) -> Weights:
    """Small random parameters that keep activations in a sane range."""
    rng = np.random.default_rng(seed)
    _, in_channels = layer_shapes(cfg)
    weights = Weights((0, 2, 5), 0)
    for index, layer in enumerate(cfg.layers):
        if layer.type != "convolutional":
            continue
        filters, size = layer.get_int("filters"), layer.get_int("size")
        std = 1.0 / np.sqrt(in_channels[index] * size * size)
        shape = (filters, in_channels[index], size, size)
        kernel = rng.normal(0, std, shape).astype(np.float32)
        bias = rng.normal(0, 0.2, filters).astype(np.float32)
        if layer.get_int("batch_normalize", 0):
            weights.convs[index] = ConvWeights(
                kernel,
                bias,
                rng.uniform(0.5, 1.5, filters).astype(np.float32),
                rng.normal(0, 0.2, filters).astype(np.float32),
                rng.uniform(0.5, 2.0, filters).astype(np.float32),
            )
        else:
            weights.convs[index] = ConvWeights(kernel, bias)
    return weights


# -- numpy reference, from darknet's C ---------------------------------------------------------


def ref_conv(x: np.ndarray, layer, conv: ConvWeights) -> np.ndarray:
    """convolutional_layer.c: conv, then batch norm (eps 1e-5) or bias, then activation."""
    size, stride = layer.get_int("size"), layer.get_int("stride", 1)
    pad = size // 2 if layer.get_int("pad", 0) else 0
    _, h, w = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    out_h = (h + 2 * pad - size) // stride + 1
    out_w = (w + 2 * pad - size) // stride + 1
    out = np.zeros((conv.kernel.shape[0], out_h, out_w))
    for i in range(size):
        for j in range(size):
            patch = xp[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
            out += np.einsum("fc,chw->fhw", conv.kernel[:, :, i, j].astype(np.float64), patch)
    if conv.bn_scale is not None:
        out = (out - conv.bn_mean[:, None, None]) / np.sqrt(conv.bn_var[:, None, None] + 1e-5)
        out = out * conv.bn_scale[:, None, None]
    out = out + conv.bias[:, None, None]
    if layer.options.get("activation") == "leaky":
        out = np.where(out > 0, out, 0.1 * out)
    return out


def ref_maxpool(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    """maxpool_layer.c forward_maxpool_layer: padding = size - 1, offset -padding/2, taps
    outside the input ignored."""
    padding = size - 1
    c, h, w = x.shape
    out_h, out_w = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    offset = -(padding // 2)
    out = np.full((c, out_h, out_w), -np.inf)
    for i in range(out_h):
        for j in range(out_w):
            for n in range(size):
                for m in range(size):
                    y, xx = offset + i * stride + n, offset + j * stride + m
                    if 0 <= y < h and 0 <= xx < w:
                        out[:, i, j] = np.maximum(out[:, i, j], x[:, y, xx])
    return out


def ref_yolo(x: np.ndarray, layer, net: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """yolo_layer.c get_yolo_box, one entry at a time, anchor-major like our rows."""
    anchors = [float(v) for v in layer.options["anchors"].split(",")]
    mask = [int(v) for v in layer.options["mask"].split(",")]
    classes = int(layer.options["classes"])
    s = float(layer.options.get("scale_x_y", 1.0))
    _, lh, lw = x.shape
    x = x.reshape(len(mask), 5 + classes, lh, lw)

    def sig(v: float) -> float:
        return 1.0 / (1.0 + np.exp(-v))

    boxes, scores = [], []
    for n, a in enumerate(mask):
        for j in range(lh):
            for i in range(lw):
                t = x[n, :, j, i]
                cx = (i + sig(t[0]) * s - (s - 1) / 2) / lw * net[1]
                cy = (j + sig(t[1]) * s - (s - 1) / 2) / lh * net[0]
                bw = np.exp(t[2]) * anchors[2 * a]
                bh = np.exp(t[3]) * anchors[2 * a + 1]
                boxes.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
                scores.append([sig(t[4]) * sig(c) for c in t[5:]])
    return np.array(boxes), np.array(scores)


def reference_forward(cfg, weights: Weights, image: np.ndarray):
    """Every layer's output and the decoded heads, in numpy."""
    outputs: list[np.ndarray] = []
    boxes, scores = [], []
    x = image
    for index, layer in enumerate(cfg.layers):
        if layer.type == "convolutional":
            x = ref_conv(x, layer, weights.convs[index])
        elif layer.type == "route":
            refs = [index + r if r < 0 else r for r in layer.get_ints("layers")]
            groups, gid = layer.get_int("groups", 1), layer.get_int("group_id", 0)
            parts = []
            for r in refs:
                chunk = outputs[r].shape[0] // groups
                parts.append(outputs[r][gid * chunk : (gid + 1) * chunk])
            x = np.concatenate(parts, axis=0)
        elif layer.type == "shortcut":
            x = x + outputs[index + layer.get_ints("from")[0]]
        elif layer.type == "maxpool":
            x = ref_maxpool(x, layer.get_int("size"), layer.get_int("stride"))
        elif layer.type == "upsample":
            x = x.repeat(2, axis=1).repeat(2, axis=2)
        elif layer.type == "yolo":
            b, s = ref_yolo(x, layer, (cfg.height, cfg.width))
            boxes.append(b)
            scores.append(s)
        outputs.append(x)
    return outputs, np.concatenate(boxes), np.concatenate(scores)


# -- tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["tiny", "odd"])
def tiny(request, tmp_path_factory):
    text = TINY_CFG if request.param == "tiny" else ODD_CFG
    cfg = parse_cfg_text(text)
    weights = random_weights(cfg)
    folder = tmp_path_factory.mktemp(request.param)
    (folder / "tiny.cfg").write_text(text)
    write_weights(folder / "tiny.weights", weights, cfg)
    image = np.random.default_rng(1).uniform(0, 1, (3, cfg.height, cfg.width)).astype(np.float32)
    return cfg, weights, folder, image


def run(model, image: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": image[None]}), strict=True))


def test_shapes_follow_darknet_arithmetic():
    shapes, in_channels = layer_shapes(parse_cfg_text(TINY_CFG))
    got = [(s.c, s.h, s.w) for s in shapes]
    assert got[0] == (8, 32, 32)
    assert got[2] == (4, 32, 32)  # half the channels of the split
    assert got[4] == (8, 32, 32)
    assert got[6] == (8, 16, 16)
    assert got[7] == (8, 16, 16)  # size=2 stride=1 keeps the size
    assert got[9] == (21, 8, 8)
    assert got[14] == (16, 16, 16)
    assert in_channels[3] == 4
    odd = [(s.c, s.h, s.w) for s in layer_shapes(parse_cfg_text(ODD_CFG))[0]]
    assert odd[:2] == [(3, 7, 7), (3, 7, 7)]  # darknet pads the odd edge


def test_weights_round_trip(tiny):
    cfg, weights, folder, _ = tiny
    _, in_channels = layer_shapes(cfg)
    again = read_weights(folder / "tiny.weights", cfg, in_channels)
    assert again.version == (0, 2, 5)
    for index, conv in weights.convs.items():
        np.testing.assert_array_equal(again.convs[index].kernel, conv.kernel)
        np.testing.assert_array_equal(again.convs[index].bias, conv.bias)


def test_every_layer_matches_numpy_reference(tiny):
    cfg, weights, _, image = tiny
    got = run(export(cfg, weights, expose_layers=True), image)
    outputs, boxes, scores = reference_forward(cfg, weights, image)
    for index, expected in enumerate(outputs):
        layer = cfg.layers[index]
        np.testing.assert_allclose(
            got[f"layer_{index}"][0],
            expected,
            rtol=1e-4,
            atol=1e-4,
            err_msg=f"layer {index} [{layer.type}] (cfg line {layer.line})",
        )
    np.testing.assert_allclose(got["boxes"][0], boxes, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got["scores"][0], scores, rtol=1e-4, atol=1e-5)


def test_float16_variant_stays_close(tiny):
    cfg, weights, _, image = tiny
    try:
        got = run(export(cfg, weights, dtype="float16"), image)
    except Exception as exc:  # some CPU builds of onnxruntime lack float16 kernels
        pytest.skip(f"this onnxruntime cannot run float16 graphs on CPU: {exc}")
    want = run(export(cfg, weights), image)
    np.testing.assert_allclose(got["scores"], want["scores"], atol=0.02)
    np.testing.assert_allclose(got["boxes"], want["boxes"], rtol=0.02, atol=0.5)


def test_decoded_heads_match_opencv(tiny):
    cv2 = pytest.importorskip("cv2", reason="pip install 'opencv-python-headless>=4.8,<5'")
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        pytest.skip("this OpenCV has no darknet importer (OpenCV 5 dropped it); install 4.x")
    cfg, weights, folder, image = tiny
    net = cv2.dnn.readNetFromDarknet(str(folder / "tiny.cfg"), str(folder / "tiny.weights"))
    net.setInput(image[None])
    heads = net.forward(net.getUnconnectedOutLayersNames())
    got = run(export(cfg, weights), image)
    boxes, scores = got["boxes"][0], got["scores"][0]
    start = 0
    # OpenCV's rows are cell-major ((y * w + x) * anchors + a); ours anchor-major; its boxes
    # are cx, cy, w, h over the network size; its class scores are zeroed below its threshold.
    for rows in sorted(heads, key=len) if len(heads) > 1 else heads:
        cells = len(rows) // 3
        ours = np.arange(len(rows)).reshape(3, cells).T.reshape(-1) + start
        start += len(rows)
        b = boxes[ours]
        cxcywh = np.stack(
            [
                (b[:, 0] + b[:, 2]) / 2,
                (b[:, 1] + b[:, 3]) / 2,
                b[:, 2] - b[:, 0],
                b[:, 3] - b[:, 1],
            ],
            axis=1,
        ) / np.array([cfg.width, cfg.height, cfg.width, cfg.height])
        np.testing.assert_allclose(cxcywh, rows[:, :4], rtol=1e-3, atol=1e-4)
        theirs = rows[:, 5:]
        shown = theirs > 0
        assert shown.any()
        np.testing.assert_allclose(scores[ours][shown], theirs[shown], rtol=1e-3, atol=1e-4)


def test_weights_that_do_not_fit_are_refused(tiny):
    cfg, _, folder, _ = tiny
    _, in_channels = layer_shapes(cfg)
    data = (folder / "tiny.weights").read_bytes()
    with pytest.raises(DarknetError, match="truncated"):
        parse_weights(data[:-8], cfg, in_channels)
    with pytest.raises(DarknetError, match="left over"):
        parse_weights(data + b"\0" * 8, cfg, in_channels)
    with pytest.raises(DarknetError, match="too short"):
        parse_weights(data[:10], cfg, in_channels)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[convolutional]\nfilters=1\n", "first section must be"),
        ("[net]\nwidth=8\n[convolutional\n", "unterminated"),
        ("[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=x\n", "not an integer"),
        ("[net]\nwidth=8\nheight=8\n[lstm]\n", "not supported"),
        ("[net]\nwidth=8\nheight=8\n[route]\nlayers=-3\n", "outside"),
    ],
)
def test_bad_cfg_names_the_problem(text: str, message: str):
    with pytest.raises(DarknetError, match=message):
        cfg = parse_cfg_text(text, Path("bad.cfg"))
        layer_shapes(cfg)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (64, 96), (96, 32), (128, 64)])
def test_free_size_graph_matches_the_reference_at_any_multiple_of_the_stride(height, width):
    """The `dynamic` export (one graph for every aspect ratio, grid offsets computed at run
    time) against the numpy reference of darknet run at that input size."""
    cfg = parse_cfg_text(TINY_CFG)
    weights = random_weights(cfg)
    model = export(cfg, weights, dynamic=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["dynamic_size"] == "1" and meta["stride"] == "8"
    assert json.loads(meta["input_size"]) == [64, 64]  # the cfg's, the nominal size
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    sized = parse_cfg_text(
        TINY_CFG.replace("width=64", f"width={width}").replace("height=64", f"height={height}")
    )
    image = np.random.default_rng(2).uniform(0, 1, (3, height, width)).astype(np.float32)
    got = run(model, image)
    _, boxes, scores = reference_forward(sized, weights, image)
    assert got["boxes"].shape == (1, len(boxes), 4)
    np.testing.assert_allclose(got["boxes"][0], boxes, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got["scores"][0], scores, rtol=1e-4, atol=1e-5)
    # and the fixed-size graph built for that size computes the same rows
    fixed = run(export(sized, weights), image)
    np.testing.assert_allclose(got["boxes"], fixed["boxes"], rtol=1e-5, atol=1e-4)
