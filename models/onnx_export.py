"""Darknet to ONNX, written with the `onnx` helper API.

Why our own converter: the graph is the part of the detector we must trust, so it is built
from the cfg here, one darknet layer to a few ONNX nodes, and tested layer by layer. The YOLO
heads are decoded inside the graph (sigmoid, grid offsets, `scale_x_y`, anchors from the cfg)
so the detector's Python code only ever sees `boxes` (x1, y1, x2, y2 in network-input pixels)
and `scores` (objectness times class probability), whatever the variant.

Supported layers: convolutional (batch norm folded into kernel and bias; activations leaky
(0.1), linear, relu, logistic, mish, swish), route (with `groups`/`group_id`, the CSP split of
YOLOv4-Tiny), maxpool (darknet's padding rule, so size=2 stride=1 keeps the size),
upsample (nearest), shortcut (linear) and yolo. Anything else is refused with the cfg line.

Variants: `dtype="float16"` builds the same graph with float16 weights and activations between
a Cast after the input and a Cast before the decode, so that the inputs and outputs stay
float32 and the detector has one code path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.darknet import Cfg, DarknetError, Section, Weights

OPSET = 17
#: IR version 8 is what opset 17 needs and what older ONNX Runtime builds (Jetson) still load.
IR_VERSION = 8
INPUT_NAME = "images"
BOXES_NAME = "boxes"
SCORES_NAME = "scores"
#: Prefix of the decode-head nodes; INT8 quantisation leaves these in float.
DECODE_PREFIX = "decode/"


@dataclass(frozen=True)
class Shape:
    """A layer's output as channels x height x width (batch excluded)."""

    c: int
    h: int
    w: int


@dataclass(frozen=True)
class YoloHead:
    """One [yolo] layer's decode parameters."""

    layer: int
    anchors: list[tuple[float, float]]  # the masked anchors, in network pixels
    classes: int
    scale_x_y: float
    grid: tuple[int, int]  # h, w


def _route_inputs(cfg: Cfg, index: int, layer: Section) -> list[int]:
    """Absolute indices of a route's inputs; negative entries are relative, as in darknet."""
    out = []
    for ref in layer.get_ints("layers"):
        absolute = index + ref if ref < 0 else ref
        if not 0 <= absolute < index:
            raise DarknetError(
                f"[route] at cfg line {layer.line}: layer {ref} is outside 0..{index - 1}"
            )
        out.append(absolute)
    return out


def _conv_padding(layer: Section) -> int:
    size = layer.get_int("size", 1)
    return size // 2 if layer.get_int("pad", 0) else layer.get_int("padding", 0)


def _maxpool_params(layer: Section) -> tuple[int, int, int]:
    """size, stride, padding with darknet's defaults (padding = size - 1)."""
    stride = layer.get_int("stride", 1)
    size = layer.get_int("size", stride)
    padding = layer.get_int("padding", size - 1)
    return size, stride, padding


def layer_shapes(cfg: Cfg) -> tuple[list[Shape], list[int]]:
    """Output shape of every layer and input channel count of every layer, as darknet's
    `parse_network_cfg` computes them; needed before the weights can be read."""
    shapes: list[Shape] = []
    in_channels: list[int] = []
    prev = Shape(cfg.channels, cfg.height, cfg.width)
    for index, layer in enumerate(cfg.layers):
        in_channels.append(prev.c)
        kind = layer.type
        if kind in ("convolutional", "conv"):
            size, stride = layer.get_int("size", 1), layer.get_int("stride", 1)
            pad = _conv_padding(layer)
            h = (prev.h + 2 * pad - size) // stride + 1
            w = (prev.w + 2 * pad - size) // stride + 1
            out = Shape(layer.get_int("filters", 1), h, w)
        elif kind == "route":
            refs = [shapes[i] for i in _route_inputs(cfg, index, layer)]
            groups = layer.get_int("groups", 1)
            if any(r.h != refs[0].h or r.w != refs[0].w for r in refs):
                raise DarknetError(f"[route] at cfg line {layer.line}: inputs differ in size")
            if any(r.c % groups for r in refs):
                raise DarknetError(
                    f"[route] at cfg line {layer.line}: channels not divisible by groups"
                )
            out = Shape(sum(r.c // groups for r in refs), refs[0].h, refs[0].w)
        elif kind == "maxpool":
            size, stride, padding = _maxpool_params(layer)
            out = Shape(
                prev.c,
                (prev.h + padding - size) // stride + 1,
                (prev.w + padding - size) // stride + 1,
            )
        elif kind == "upsample":
            stride = layer.get_int("stride", 2)
            if stride < 1:
                raise DarknetError(f"[upsample] at cfg line {layer.line}: stride must be >= 1")
            out = Shape(prev.c, prev.h * stride, prev.w * stride)
        elif kind in ("shortcut", "yolo", "dropout"):
            out = prev
        else:
            raise DarknetError(f"[{kind}] at cfg line {layer.line}: layer type not supported")
        shapes.append(out)
        prev = out
    return shapes, in_channels


def yolo_heads(cfg: Cfg, shapes: list[Shape]) -> list[YoloHead]:
    """The decode parameters of every [yolo] layer."""
    heads = []
    for index, layer in enumerate(cfg.layers):
        if layer.type != "yolo":
            continue
        if layer.get_int("new_coords", 0):
            raise DarknetError(f"[yolo] at cfg line {layer.line}: new_coords=1 not supported")
        values = layer.get_floats("anchors")
        pairs = list(zip(values[0::2], values[1::2], strict=False))
        mask = layer.get_ints("mask", list(range(len(pairs))))
        if any(not 0 <= m < len(pairs) for m in mask):
            raise DarknetError(f"[yolo] at cfg line {layer.line}: mask refers past the anchors")
        classes = layer.get_int("classes", 80)
        shape = shapes[index - 1] if index else None
        if shape is None or shape.c != len(mask) * (5 + classes):
            raise DarknetError(
                f"[yolo] at cfg line {layer.line}: input has {shape.c if shape else 0} channels, "
                f"expected {len(mask)} x (5 + {classes})"
            )
        heads.append(
            YoloHead(
                index,
                [pairs[m] for m in mask],
                classes,
                layer.get_float("scale_x_y", 1.0),
                (shape.h, shape.w),
            )
        )
    return heads


class _GraphBuilder:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        """Add a node with one output named after the node."""
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def nodes_multi(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))


def _activation(g: _GraphBuilder, x: str, kind: str, prefix: str, line: int) -> str:
    if kind == "linear":
        return x
    if kind == "leaky":
        return g.node("LeakyRelu", [x], f"{prefix}/leaky", alpha=0.1)
    if kind == "relu":
        return g.node("Relu", [x], f"{prefix}/relu")
    if kind == "logistic":
        return g.node("Sigmoid", [x], f"{prefix}/logistic")
    if kind == "mish":
        softplus = g.node("Softplus", [x], f"{prefix}/softplus")
        tanh = g.node("Tanh", [softplus], f"{prefix}/tanh")
        return g.node("Mul", [x, tanh], f"{prefix}/mish")
    if kind == "swish":
        sig = g.node("Sigmoid", [x], f"{prefix}/sigmoid")
        return g.node("Mul", [x, sig], f"{prefix}/swish")
    raise DarknetError(f"cfg line {line}: activation '{kind}' not supported")


def _decode(
    g: _GraphBuilder, x: str, head: YoloHead, net: tuple[int, int], dynamic: bool = False
) -> tuple[str, str]:
    """Decode one head, as darknet's `get_yolo_box`:
    cx = (grid_x + sigmoid(tx) * s - (s - 1) / 2) * stride_x, w = exp(tw) * anchor_w, and
    score = sigmoid(objectness) * sigmoid(class). Rows are anchor-major, then y, then x.

    The stride (network pixels per grid cell) is the cfg's: input size over grid size. With
    `dynamic`, the grid's size is read from the head's input at run time (any input whose
    sides are multiples of the network's largest stride), so one graph serves every aspect
    ratio; otherwise the grid offsets are constants."""
    p = f"{DECODE_PREFIX}{head.layer}"
    gh, gw = head.grid
    anchors = len(head.anchors)
    attrs = 5 + head.classes
    # (batch, anchors * attrs, gh, gw) -> (batch, anchors, cells, attrs); 0 copies the batch.
    shape = g.const(f"{p}/shape1", np.array([0, anchors, attrs, -1], np.int64))
    t = g.node("Reshape", [x, shape], f"{p}/reshape1")
    t = g.node("Transpose", [t], f"{p}/transpose", perm=[0, 1, 3, 2])

    def part(start: int, end: int, name: str) -> str:
        starts = g.const(f"{p}/{name}_start", np.array([start], np.int64))
        ends = g.const(f"{p}/{name}_end", np.array([end], np.int64))
        axes = g.const(f"{p}/{name}_axes", np.array([3], np.int64))
        return g.node("Slice", [t, starts, ends, axes], f"{p}/{name}")

    net_h, net_w = net
    stride = np.array([net_w / gw, net_h / gh], np.float32)
    s = head.scale_x_y
    if dynamic:
        offset = _dynamic_grid(g, x, p, stride, s)
    else:
        ys, xs = np.divmod(np.arange(gh * gw), gw)
        grid = np.stack([xs, ys], axis=1).astype(np.float32)  # (cells, 2)
        offset = g.const(f"{p}/xy_offset", (grid - (s - 1.0) / 2.0) * stride)
    anchor_half = np.array(head.anchors, np.float32).reshape(1, anchors, 1, 2) / 2

    xy = g.node("Sigmoid", [part(0, 2, "xy")], f"{p}/xy_sigmoid")
    xy = g.node("Mul", [xy, g.const(f"{p}/xy_scale", stride * s)], f"{p}/xy_mul")
    centre = g.node("Add", [xy, offset], f"{p}/centre")
    wh = g.node("Exp", [part(2, 4, "wh")], f"{p}/wh_exp")
    half = g.node("Mul", [wh, g.const(f"{p}/anchors_half", anchor_half)], f"{p}/half")
    top_left = g.node("Sub", [centre, half], f"{p}/x1y1")
    bottom_right = g.node("Add", [centre, half], f"{p}/x2y2")
    boxes = g.node("Concat", [top_left, bottom_right], f"{p}/boxes4d", axis=3)
    boxes_shape = g.const(f"{p}/boxes_shape", np.array([0, -1, 4], np.int64))
    boxes = g.node("Reshape", [boxes, boxes_shape], f"{p}/boxes")
    obj = g.node("Sigmoid", [part(4, 5, "obj")], f"{p}/obj_sigmoid")
    cls = g.node("Sigmoid", [part(5, attrs, "cls")], f"{p}/cls_sigmoid")
    scores = g.node("Mul", [obj, cls], f"{p}/scores4d")
    scores_shape = g.const(f"{p}/scores_shape", np.array([0, -1, head.classes], np.int64))
    scores = g.node("Reshape", [scores, scores_shape], f"{p}/scores")
    return boxes, scores


def _dynamic_grid(g: _GraphBuilder, x: str, p: str, stride: np.ndarray, s: float) -> str:
    """(cells, 2) offsets (grid_x - (s - 1) / 2) * stride_x, likewise y, row-major over the
    grid, for the grid size of `x` (batch, channels, gh, gw) at run time."""
    shape = g.node("Shape", [x], f"{p}/grid_shape")
    hw = g.node(
        "Slice",
        [
            shape,
            g.const(f"{p}/hw_start", np.array([2], np.int64)),
            g.const(f"{p}/hw_end", np.array([4], np.int64)),
        ],
        f"{p}/grid_hw",
    )
    zero = g.const(f"{p}/zero", np.array(0, np.int64))
    one = g.const(f"{p}/one", np.array(1, np.int64))
    axis = {}
    for name, index in (("h", 0), ("w", 1)):
        size = g.node(
            "Gather", [hw, g.const(f"{p}/{name}_index", np.array(index, np.int64))], f"{p}/g{name}"
        )
        steps = g.node("Range", [zero, size, one], f"{p}/range_{name}")
        axis[name] = g.node("Cast", [steps], f"{p}/range_{name}_f", to=TensorProto.FLOAT)
    # x varies along the row, y down the rows: (1, gw) and (gh, 1), each expanded to (gh, gw)
    xs = g.node("Unsqueeze", [axis["w"], g.const(f"{p}/ax0", np.array([0], np.int64))], f"{p}/xs")
    ys = g.node("Unsqueeze", [axis["h"], g.const(f"{p}/ax1", np.array([1], np.int64))], f"{p}/ys")
    xs = g.node("Expand", [xs, hw], f"{p}/xs_grid")
    ys = g.node("Expand", [ys, hw], f"{p}/ys_grid")
    last = g.const(f"{p}/ax2", np.array([2], np.int64))
    xs = g.node("Unsqueeze", [xs, last], f"{p}/xs3")
    ys = g.node("Unsqueeze", [ys, last], f"{p}/ys3")
    grid = g.node("Concat", [xs, ys], f"{p}/grid", axis=2)
    grid = g.node(
        "Reshape",
        [grid, g.const(f"{p}/grid_cells_shape", np.array([-1, 2], np.int64))],
        f"{p}/grid_cells",
    )
    shift = g.const(f"{p}/grid_shift", np.array((s - 1.0) / 2.0, np.float32))
    grid = g.node("Sub", [grid, shift], f"{p}/grid_shifted")
    return g.node("Mul", [grid, g.const(f"{p}/grid_stride", stride)], f"{p}/xy_offset")


def export(
    cfg: Cfg,
    weights: Weights,
    *,
    names: list[str] | None = None,
    dtype: str = "float32",
    expose_layers: bool = False,
    dynamic: bool = False,
    doc: str = "",
) -> onnx.ModelProto:
    """Build the ONNX model for `cfg` and `weights`.

    Input `images`: (batch, channels, height, width) float32 RGB in 0..1. Outputs `boxes`:
    (batch, N, 4) x1, y1, x2, y2 in network-input pixels and `scores`: (batch, N, classes).
    With `expose_layers`, every layer's output is also a graph output `layer_<i>` (float32),
    which the converter tests compare to a reference implementation one layer at a time.
    With `dynamic`, height and width are free (any multiples of the `stride` recorded in the
    metadata; the cfg's size stays the nominal one), so a frame can be letterboxed to its own
    aspect ratio instead of padded to a square: a 4:3 frame at 416 wide is 416 x 320, a
    quarter fewer pixels to convolve than 416 x 416, for the same objects at the same scale.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    np_dtype = np.float16 if dtype == "float16" else np.float32
    shapes, _ = layer_shapes(cfg)
    heads = {h.layer: h for h in yolo_heads(cfg, shapes)}
    if not heads:
        raise DarknetError("the cfg has no [yolo] layer to decode")
    g = _GraphBuilder(np_dtype)
    prev = INPUT_NAME
    if dtype == "float16":
        prev = g.node("Cast", [INPUT_NAME], "input/cast_fp16", to=TensorProto.FLOAT16)
    outputs: list[str] = []
    all_boxes: list[str] = []
    all_scores: list[str] = []
    net = (cfg.height, cfg.width)

    for index, layer in enumerate(cfg.layers):
        p = f"layer{index}"
        kind = layer.type
        if kind in ("convolutional", "conv"):
            conv = weights.convs.get(index)
            if conv is None:
                raise DarknetError(f"layer {index}: no weights for this convolution")
            kernel, bias = conv.folded()
            size, stride = layer.get_int("size", 1), layer.get_int("stride", 1)
            pad = _conv_padding(layer)
            w = g.const(f"{p}/weight", kernel.astype(np_dtype))
            b = g.const(f"{p}/bias", bias.astype(np_dtype))
            y = g.node(
                "Conv",
                [prev, w, b],
                f"{p}/conv",
                kernel_shape=[size, size],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
                group=layer.get_int("groups", 1),
            )
            out = _activation(g, y, layer.options.get("activation", "logistic"), p, layer.line)
        elif kind == "route":
            refs = _route_inputs(cfg, index, layer)
            groups = layer.get_int("groups", 1)
            group_id = layer.get_int("group_id", 0)
            parts = []
            for ref in refs:
                src = outputs[ref]
                if groups > 1:
                    chunk = shapes[ref].c // groups
                    starts = g.const(f"{p}/{ref}_start", np.array([group_id * chunk], np.int64))
                    ends = g.const(f"{p}/{ref}_end", np.array([(group_id + 1) * chunk], np.int64))
                    axes = g.const(f"{p}/{ref}_axes", np.array([1], np.int64))
                    src = g.node("Slice", [src, starts, ends, axes], f"{p}/slice{ref}")
                parts.append(src)
            out = parts[0] if len(parts) == 1 else g.node("Concat", parts, f"{p}/concat", axis=1)
            if out == outputs[refs[0]]:  # a plain reference: keep the graph's names unique
                out = g.node("Identity", [out], f"{p}/route")
        elif kind == "maxpool":
            size, stride, padding = _maxpool_params(layer)
            begin = padding // 2
            end = padding - begin
            out = g.node(
                "MaxPool",
                [prev],
                f"{p}/maxpool",
                kernel_shape=[size, size],
                strides=[stride, stride],
                pads=[begin, begin, end, end],
            )
        elif kind == "upsample":
            stride = layer.get_int("stride", 2)
            scales = g.const(f"{p}/scales", np.array([1, 1, stride, stride], np.float32))
            out = g.node(
                "Resize",
                [prev, "", scales],
                f"{p}/upsample",
                mode="nearest",
                nearest_mode="floor",
                coordinate_transformation_mode="asymmetric",
            )
        elif kind == "shortcut":
            refs = layer.get_ints("from")
            if len(refs) != 1 or layer.options.get("activation", "linear") != "linear":
                raise DarknetError(
                    f"[shortcut] at cfg line {layer.line}: only one 'from' and linear activation"
                )
            src = index + refs[0] if refs[0] < 0 else refs[0]
            if shapes[src] != shapes[index - 1]:
                raise DarknetError(f"[shortcut] at cfg line {layer.line}: shapes differ")
            out = g.node("Add", [prev, outputs[src]], f"{p}/shortcut")
        elif kind == "yolo":
            src = prev
            if dtype == "float16":
                src = g.node("Cast", [prev], f"{p}/cast_fp32", to=TensorProto.FLOAT)
            boxes, scores = _decode(g, src, heads[index], net, dynamic)
            all_boxes.append(boxes)
            all_scores.append(scores)
            out = prev
        else:  # dropout at inference is the identity
            out = g.node("Identity", [prev], f"{p}/identity")
        outputs.append(out)
        prev = out

    g.node("Concat", all_boxes, BOXES_NAME, axis=1)
    g.node("Concat", all_scores, SCORES_NAME, axis=1)
    total: int | str = sum(len(h.anchors) * h.grid[0] * h.grid[1] for h in heads.values())
    classes = next(iter(heads.values())).classes
    stride = max(cfg.width // s.w for s in shapes)
    height: int | str = cfg.height
    width: int | str = cfg.width
    if dynamic:
        total, height, width = "rows", "height", "width"
    graph_outputs = [
        helper.make_tensor_value_info(BOXES_NAME, TensorProto.FLOAT, ["batch", total, 4]),
        helper.make_tensor_value_info(SCORES_NAME, TensorProto.FLOAT, ["batch", total, classes]),
    ]
    if expose_layers:
        for index, name in enumerate(outputs):
            exposed = name
            if dtype == "float16":
                exposed = g.node("Cast", [name], f"expose{index}/cast", to=TensorProto.FLOAT)
            exposed = g.node("Identity", [exposed], f"layer_{index}")
            s = shapes[index]
            dims = ["batch", s.c, f"h{index}", f"w{index}"] if dynamic else ["batch", s.c, s.h, s.w]
            graph_outputs.append(helper.make_tensor_value_info(exposed, TensorProto.FLOAT, dims))
    graph = helper.make_graph(
        g.nodes,
        "darknet",
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["batch", cfg.channels, height, width]
            )
        ],
        graph_outputs,
        initializer=g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="skycourier.models",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    meta = {
        "input_size": json.dumps([cfg.height, cfg.width]),
        "dtype": dtype,
        "names": json.dumps(names or [str(i) for i in range(classes)]),
    }
    if dynamic:
        meta["dynamic_size"] = "1"
        meta["stride"] = str(stride)
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model
