"""Model build for the on-board detector: the darknet YOLOv4-Tiny cfg and weights, read by our
own parser, converted to ONNX (FP32, INT8, FP16) with a manifest of checksums.

The weights and the ONNX files are build outputs under `models/build/` (gitignored); only the
code and the pinned checksums of the inputs live in the repository.
"""

from __future__ import annotations

from pathlib import Path

#: Where builds go unless told otherwise; `build/` is gitignored.
BUILD_DIR = Path(__file__).resolve().parent / "build"

__all__ = ["BUILD_DIR"]
