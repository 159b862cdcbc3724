"""Darknet cfg parser and weights reader.

We read darknet's files ourselves instead of going through OpenCV or a third-party converter so
that the graph we ship is one we can inspect and test layer by layer, and so that OpenCV stays
an independent implementation to check our detections against.

The formats follow darknet's own `parser.c`: a cfg is a list of `[section]` blocks of
`key=value` lines; a weights file is a small header (major, minor, revision as int32, then the
images-seen counter as int64 from version 0.2 on, int32 before) followed by float32 arrays,
layer by layer in cfg order: for a convolution with batch normalisation the biases (beta),
scales (gamma), rolling mean and rolling variance, each `filters` long, then the kernel
`filters x (channels / groups) x size x size`; without batch normalisation the biases, then the
kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DarknetError(ValueError):
    """A cfg or weights file that cannot be read; the message names the file and the problem."""


@dataclass
class Section:
    """One `[type]` block of a cfg, with the line it starts on for error messages."""

    type: str
    options: dict[str, str]
    line: int

    def get_int(self, key: str, default: int | None = None) -> int:
        """An integer option; a missing option without a default is an error naming the line."""
        value = self.options.get(key)
        if value is None:
            if default is None:
                raise DarknetError(f"[{self.type}] at line {self.line}: missing '{key}'")
            return default
        try:
            return int(value)
        except ValueError:
            raise DarknetError(
                f"[{self.type}] at line {self.line}: '{key}={value}' is not an integer"
            ) from None

    def get_float(self, key: str, default: float) -> float:
        """A float option."""
        value = self.options.get(key)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise DarknetError(
                f"[{self.type}] at line {self.line}: '{key}={value}' is not a number"
            ) from None

    def get_ints(self, key: str, default: list[int] | None = None) -> list[int]:
        """A comma-separated list of integers."""
        value = self.options.get(key)
        if value is None:
            if default is None:
                raise DarknetError(f"[{self.type}] at line {self.line}: missing '{key}'")
            return list(default)
        try:
            return [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise DarknetError(
                f"[{self.type}] at line {self.line}: '{key}={value}' is not a list of integers"
            ) from None

    def get_floats(self, key: str) -> list[float]:
        """A comma-separated list of numbers (anchors)."""
        value = self.options.get(key, "")
        try:
            return [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise DarknetError(
                f"[{self.type}] at line {self.line}: '{key}={value}' is not a list of numbers"
            ) from None


@dataclass
class Cfg:
    """A parsed cfg: the `[net]` section and the layers after it, in order."""

    net: Section
    layers: list[Section]
    path: Path | None = None

    @property
    def width(self) -> int:
        """Network input width in pixels."""
        return self.net.get_int("width")

    @property
    def height(self) -> int:
        """Network input height in pixels."""
        return self.net.get_int("height")

    @property
    def channels(self) -> int:
        """Network input channels (3 for RGB)."""
        return self.net.get_int("channels", 3)


def parse_cfg_text(text: str, path: Path | None = None) -> Cfg:
    """Parse cfg text; comments (`#`, `;`) and blank lines are skipped as darknet does."""
    sections: list[Section] = []
    where = path or "<cfg>"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise DarknetError(f"{where}:{number}: unterminated section header {line!r}")
            sections.append(Section(line[1:-1].strip().lower(), {}, number))
            continue
        if not sections:
            raise DarknetError(f"{where}:{number}: option before the first section: {line!r}")
        if "=" not in line:
            raise DarknetError(f"{where}:{number}: expected key=value, got {line!r}")
        key, value = line.split("=", 1)
        sections[-1].options[key.strip()] = value.strip()
    if not sections or sections[0].type not in ("net", "network"):
        raise DarknetError(f"{where}: the first section must be [net]")
    return Cfg(sections[0], sections[1:], path)


def parse_cfg(path: Path) -> Cfg:
    """Parse a cfg file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DarknetError(f"{path}: cannot read cfg: {exc}") from exc
    return parse_cfg_text(text, Path(path))


@dataclass
class ConvWeights:
    """One convolution's parameters as darknet stores them (batch norm not yet folded)."""

    kernel: np.ndarray  # (filters, channels // groups, size, size)
    bias: np.ndarray  # (filters,) beta when batch-normalised, else the conv bias
    bn_scale: np.ndarray | None = None  # gamma
    bn_mean: np.ndarray | None = None
    bn_var: np.ndarray | None = None

    def folded(self, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
        """Kernel and bias with batch normalisation folded in, as darknet computes at inference:
        y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta. Darknet's eps is 1e-5 in the
        CPU path (`normalize_cpu` uses `sqrt(var + .000001f)` in some forks and `.00001f` in
        AlexeyAB's); OpenCV uses 1e-5, and the difference is far below our tolerances."""
        if self.bn_scale is None:
            return self.kernel, self.bias
        assert self.bn_mean is not None and self.bn_var is not None
        factor = self.bn_scale / np.sqrt(self.bn_var + eps)
        kernel = self.kernel * factor[:, None, None, None]
        bias = self.bias - self.bn_mean * factor
        return kernel.astype(np.float32), bias.astype(np.float32)


@dataclass
class Weights:
    """The header of a weights file and the convolution parameters by layer index."""

    version: tuple[int, int, int]
    seen: int
    convs: dict[int, ConvWeights] = field(default_factory=dict)


def read_weights(path: Path, cfg: Cfg, input_channels: list[int]) -> Weights:
    """Read a weights file for `cfg`; `input_channels[i]` is layer i's input channel count
    (from `models.onnx_export.layer_shapes`). The file must end exactly where the last layer's
    parameters end: anything shorter or longer means cfg and weights do not belong together."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DarknetError(f"{path}: cannot read weights: {exc}") from exc
    return parse_weights(data, cfg, input_channels, name=str(path))


def parse_weights(
    data: bytes, cfg: Cfg, input_channels: list[int], name: str = "<weights>"
) -> Weights:
    """Parse weights bytes; see `read_weights`."""
    if len(data) < 16:
        raise DarknetError(f"{name}: {len(data)} bytes is too short for a weights header")
    major, minor, revision = (int(v) for v in np.frombuffer(data, np.int32, 3, 0))
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        seen = int(np.frombuffer(data, np.int64, 1, 12)[0])
        offset = 20
    else:
        seen = int(np.frombuffer(data, np.int32, 1, 12)[0])
        offset = 16
    if (len(data) - offset) % 4:
        raise DarknetError(f"{name}: body of {len(data) - offset} bytes is not float32 data")
    floats = np.frombuffer(data, np.float32, offset=offset)
    weights = Weights((major, minor, revision), seen)
    pos = 0

    def take(count: int, what: str) -> np.ndarray:
        nonlocal pos
        if pos + count > floats.size:
            raise DarknetError(
                f"{name}: ends inside {what} (needs {pos + count} floats, has {floats.size}); "
                "cfg and weights do not match or the file is truncated"
            )
        out = floats[pos : pos + count].copy()
        pos += count
        return out

    for index, layer in enumerate(cfg.layers):
        if layer.type not in ("convolutional", "conv"):
            continue
        filters = layer.get_int("filters", 1)
        size = layer.get_int("size", 1)
        groups = layer.get_int("groups", 1)
        channels = input_channels[index]
        if channels % groups:
            raise DarknetError(
                f"layer {index} (cfg line {layer.line}): {channels} input channels "
                f"not divisible by groups={groups}"
            )
        what = f"layer {index} [convolutional] (cfg line {layer.line})"
        bias = take(filters, what)
        scale = mean = var = None
        if layer.get_int("batch_normalize", 0):
            scale = take(filters, what)
            mean = take(filters, what)
            var = take(filters, what)
        kernel = take(filters * (channels // groups) * size * size, what)
        weights.convs[index] = ConvWeights(
            kernel.reshape(filters, channels // groups, size, size), bias, scale, mean, var
        )
    if pos != floats.size:
        raise DarknetError(
            f"{name}: {floats.size - pos} floats left over after the last layer; "
            "cfg and weights do not match"
        )
    return weights


def write_weights(path: Path, weights: Weights, cfg: Cfg) -> None:
    """Write darknet weights (version 0.2.0 header); the tests use it to make small networks
    that both our converter and OpenCV can read."""
    parts: list[bytes] = [
        np.array(weights.version, np.int32).tobytes(),
        np.array([weights.seen], np.int64).tobytes(),
    ]
    for index, layer in enumerate(cfg.layers):
        conv = weights.convs.get(index)
        if conv is None:
            continue
        arrays = [conv.bias]
        if layer.get_int("batch_normalize", 0):
            assert conv.bn_scale is not None and conv.bn_mean is not None
            assert conv.bn_var is not None
            arrays += [conv.bn_scale, conv.bn_mean, conv.bn_var]
        arrays.append(conv.kernel.reshape(-1))
        parts.extend(np.asarray(a, np.float32).tobytes() for a in arrays)
    Path(path).write_bytes(b"".join(parts))
