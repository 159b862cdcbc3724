"""dlib's face embedding network (dlib_face_recognition_resnet_model_v1.dat from
`face_recognition_models`) as an ONNX graph for ONNX Runtime.

Why: the `dlib-bin` wheels are built without BLAS, so dlib runs the network's convolutions in
its own single-threaded loops, about 100 ms a face on a server core and several times that on
a Pi; ONNX Runtime (already the detector's runtime) runs the same weights in a few ms. The
weights are read from the same file, in memory, each time the analyzer starts (no converted
copy on disk), and a test checks the embeddings against dlib's `compute_face_descriptor` on
real faces.

The network is dlib's `anet_type` from dnn_face_recognition_ex.cpp (a ResNet-29 with 150 x
150 RGB input; the names below follow it):

    loss_metric<fc_no_bias<128, avg_pool_everything<
        alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>

with `alevel4` = 3 x ares<32>, `alevel3` = ares_down<64> + 3 x ares<64>, `alevel2` =
ares_down<128> + 2 x ares<128>, `alevel1` = ares_down<256> + 2 x ares<256>, `alevel0` =
ares_down<256>; `ares<N>` = relu(x + affine(con3x3(relu(affine(con3x3(x)))))), and
`ares_down<N>` the same with a stride-2 first convolution (no padding, dlib's default for
strided layers) added to a 2 x 2 average pool of x (dlib's add_prev adds tensors of different
sizes as if the smaller were zero-padded at the end: more channels, and on the 256-wide level
a 3 x 3 block output onto a 4 x 4 pooled input).

The file is dlib's serialisation of that network: layers from the input upwards, each
introduced by its name ("con_4", "affine_", "fc_2", ...) and followed by its parameter tensor
(a version, four dimensions as dlib's packed integers, then raw little-endian float32).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

#: Side of the face chip the network takes.
INPUT_SIZE = 150
#: (channels, number of `ares` blocks after the first, first block strided) per level,
#: from the input upwards: alevel4, alevel3, alevel2, alevel1, alevel0.
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class ResnetFileError(ValueError):
    """The model file is not the network this module knows."""


def _unpack_int(data: bytes, pos: int) -> tuple[int, int]:
    """dlib's packed integer at `pos`: a byte holding the length (low 4 bits) and the sign
    (bit 7), then that many little-endian bytes; returns (value, next position)."""
    head = data[pos]
    size = head & 0x0F
    if size > 8:
        raise ResnetFileError(f"bad packed integer at byte {pos}")
    value = int.from_bytes(data[pos + 1 : pos + 1 + size], "little")
    return (-value if head & 0x80 else value), pos + 1 + size


def _unpack_float(data: bytes, pos: int) -> tuple[float, int]:
    """dlib's portable float: a packed mantissa and a packed exponent (value = m * 2**e)."""
    mantissa, pos = _unpack_int(data, pos)
    exponent, pos = _unpack_int(data, pos)
    return float(mantissa) * 2.0**exponent, pos


def _tensor_at(data: bytes, pos: int) -> np.ndarray:
    """The parameter tensor serialised at `pos`: version 2, four packed dimensions, raw
    float32."""
    version, pos = _unpack_int(data, pos)
    if version != 2:
        raise ResnetFileError(f"tensor version {version} at byte {pos}, expected 2")
    dims = []
    for _ in range(4):
        value, pos = _unpack_int(data, pos)
        dims.append(value)
    count = int(np.prod(dims))
    if pos + 4 * count > len(data):
        raise ResnetFileError("file ends inside a tensor")
    return np.frombuffer(data, dtype="<f4", count=count, offset=pos).astype(np.float32)


@dataclass(frozen=True)
class ResnetWeights:
    """The network's parameters in forward order: per convolution its (out, in, k, k)
    filters and bias with the following affine layer folded in, and the final 256 x 128
    projection; `mean` is the input's per-channel mean (R, G, B)."""

    convs: tuple[tuple[np.ndarray, np.ndarray], ...]
    projection: np.ndarray
    mean: tuple[float, float, float]


def _conv_shapes() -> list[tuple[int, int, int]]:
    """(out, in, kernel) of the 29 convolutions in forward order."""
    shapes = [(32, 3, 7)]
    channels = 32
    for width, blocks, _down in LEVELS:
        for _ in range(blocks):
            shapes += [(width, channels, 3), (width, width, 3)]
            channels = width
    return shapes


def read_weights(data: bytes) -> ResnetWeights:
    """Parse dlib_face_recognition_resnet_model_v1.dat (its bytes) into ResnetWeights."""
    marker = re.search(rb"input_rgb_image_sized", data)
    if not data.startswith(b"\x01\x01\x01\x0dloss_metric_") or marker is None:
        raise ResnetFileError("not dlib's face recognition network (no loss_metric header)")
    pos = marker.end()
    mean = []
    for _ in range(3):
        value, pos = _unpack_float(data, pos)
        mean.append(value)
    convs = [m.end() for m in re.finditer(rb"\x01\x05con_4", data)]
    affines = [m.end() for m in re.finditer(rb"\x01\x07affine_", data)]
    fcs = [m.end() for m in re.finditer(rb"\x01\x04fc_2", data)]
    shapes = _conv_shapes()
    if len(convs) != len(shapes) or len(affines) != len(shapes) or len(fcs) != 1:
        raise ResnetFileError(
            f"{len(convs)} convolutions, {len(affines)} affine layers, {len(fcs)} projections; "
            f"expected {len(shapes)}, {len(shapes)}, 1"
        )
    layers = []
    for (out, inp, k), conv_pos, affine_pos in zip(shapes, convs, affines, strict=True):
        params = _tensor_at(data, conv_pos)
        if params.size != out * inp * k * k + out:
            raise ResnetFileError(f"convolution {out}x{inp}x{k}x{k} has {params.size} values")
        filters = params[: out * inp * k * k].reshape(out, inp, k, k)
        bias = params[out * inp * k * k :]
        affine = _tensor_at(data, affine_pos)
        if affine.size != 2 * out:
            raise ResnetFileError(f"affine layer of {out} channels has {affine.size} values")
        gamma, beta = affine[:out], affine[out:]
        layers.append((filters * gamma[:, None, None, None], bias * gamma + beta))
    num_outputs, pos = _unpack_int(data, fcs[0])
    num_inputs, pos = _unpack_int(data, pos)
    projection = _tensor_at(data, pos)
    if (num_inputs, num_outputs) != (256, 128) or projection.size != 256 * 128:
        raise ResnetFileError(f"projection {num_inputs} -> {num_outputs}, expected 256 -> 128")
    return ResnetWeights(
        convs=tuple(layers),
        projection=projection.reshape(256, 128),
        mean=(mean[0], mean[1], mean[2]),
    )


def build_model(weights: ResnetWeights):  # -> onnx.ModelProto
    """The ONNX graph: input `chips` (N, 3, 150, 150) float32 = (RGB - mean) / 256, output
    `embeddings` (N, 128)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    counter = iter(range(10_000))

    def name(prefix: str) -> str:
        return f"{prefix}{next(counter)}"

    def const(array: np.ndarray, prefix: str) -> str:
        label = name(prefix)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), label))
        return label

    def node(op: str, inputs: list[str], **attrs) -> str:
        out = name(op.lower())
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    convs = iter(weights.convs)

    def conv(x: str, stride: int) -> str:
        filters, bias = next(convs)
        k = filters.shape[2]
        pad = 0 if stride != 1 else k // 2  # dlib: no padding on strided layers
        return node(
            "Conv",
            [x, const(filters, "w"), const(bias, "b")],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
        )

    def pad_to(t: str, have: tuple[int, int], want: tuple[int, int]) -> str:
        """Zero-pad (channels, side) `have` up to `want` at the end of each axis."""
        if have == want:
            return t
        extra = [0, 0, 0, 0, 0, want[0] - have[0], want[1] - have[1], want[1] - have[1]]
        return node("Pad", [t, const(np.array(extra, np.int64), "pad")])

    x = node("Relu", [conv("chips", 2)])
    x = node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0])
    channels, side = 32, ((INPUT_SIZE - 7) // 2 + 1 - 3) // 2 + 1
    for width, blocks, down in LEVELS:
        for index in range(blocks):
            stride = 2 if down and index == 0 else 1
            y = conv(node("Relu", [conv(x, stride)]), 1)
            y_side = (side - 3) // 2 + 1 if stride == 2 else side
            shortcut, s_side = x, side
            if stride == 2:
                shortcut = node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
                s_side = (side - 2) // 2 + 1
            # dlib's add_prev: the sum is as large as the larger input in every dimension,
            # the smaller zero-padded (at the end), e.g. 3 x 3 + 4 x 4 on the 256-wide level.
            out = (max(width, channels), max(y_side, s_side))
            y = pad_to(y, (width, y_side), out)
            shortcut = pad_to(shortcut, (channels, s_side), out)
            x = node("Relu", [node("Add", [y, shortcut])])
            channels, side = out
    x = node("GlobalAveragePool", [x])
    x = node("Flatten", [x], axis=1)
    nodes.append(helper.make_node("MatMul", [x, const(weights.projection, "fc")], ["embeddings"]))
    graph = helper.make_graph(
        nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("chips", TensorProto.FLOAT, ["n", 3, 150, 150])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["n", 128])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


class OnnxEmbedder:
    """The embedding network on ONNX Runtime: `embed(chip_rgb)` for a 150 x 150 RGB uint8
    face chip (dlib.get_face_chip's), the same 128 numbers as dlib's
    `compute_face_descriptor(chip)` to float rounding."""

    def __init__(self, model_file: str, threads: int = 1) -> None:
        import onnxruntime as ort

        with open(model_file, "rb") as f:
            weights = read_weights(f.read())
        self.mean = np.array(weights.mean, np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            build_model(weights).SerializeToString(),
            options,
            providers=["CPUExecutionProvider"],
        )

    def embed(self, chip_rgb: np.ndarray) -> np.ndarray:
        """The (128,) float32 embedding of one chip."""
        if chip_rgb.shape != (INPUT_SIZE, INPUT_SIZE, 3) or chip_rgb.dtype != np.uint8:
            raise ValueError(f"expected a 150 x 150 RGB uint8 chip, got {chip_rgb.shape}")
        x = (chip_rgb.astype(np.float32) - self.mean) / 256.0
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        return self._session.run(None, {"chips": x})[0][0]
