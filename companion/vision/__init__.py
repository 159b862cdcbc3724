"""On-board vision: YOLOv4-Tiny on ONNX Runtime, with models built by `models/`.

`Detector(model_path(variant))` loads an FP32, INT8 or FP16 graph and turns BGR frames or
image files into `Detection`s; bad files raise `ModelError` / `ImageError` (both
`VisionError`, with `.path` and `.cause`) so the daemon can log and carry on.

Nothing is imported here: OpenCV and ONNX Runtime load only where a module needs them, not
for every `skycourier` command that builds its argument parser.
"""
