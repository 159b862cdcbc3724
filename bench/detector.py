"""Detector: our ONNX Runtime path vs OpenCV DNN's darknet path, end to end, same frames.

Both start from the same decoded BGR frames and end with the same kind of result (boxes in
source pixels, scores, class ids after class-wise NMS at 0.25 / 0.45). Ours: letterbox,
`session.run` on the FP32 graph (decode inside), numpy post-processing. The baseline is the
usual OpenCV recipe: `cv2.dnn.readNetFromDarknet` on the same cfg/weights,
`blobFromImage(..., (416, 416), swapRB=True)`, `forward` of the YOLO outputs, vectorised
best-class + threshold, `cv2.dnn.NMSBoxes` per class. Both get the same thread count
(ONNX Runtime intra-op threads, `cv2.setNumThreads`). Also measured: our overhead above a bare
`session.run` on a prepared tensor, INT8 vs FP32 end to end, and, where the shared COCO sample
is present, mAP@0.5 of FP32 and INT8.

    python bench/detector.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import interleaved, median_ms, write_results
from companion.vision.detector import Detector, read_image
from companion.vision.metrics import Box, labelled_images, mean_average_precision, read_yolo_labels
from models import BUILD_DIR
from models.build import SHARED_COCO, build_models, fetch_sources

CONF, NMS_IOU = 0.25, 0.45


class OpenCvDarknet:
    """The baseline: OpenCV's darknet importer and the usual post-processing."""

    def __init__(self, cfg: Path, weights: Path) -> None:
        self.net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.outputs = self.net.getUnconnectedOutLayersNames()

    def detect(self, frame: np.ndarray) -> list[tuple[int, float, list[float]]]:
        blob = cv2.dnn.blobFromImage(frame, 1 / 255.0, (416, 416), swapRB=True, crop=False)
        self.net.setInput(blob)
        rows = np.concatenate(self.net.forward(self.outputs))
        scores = rows[:, 5:]
        class_ids = scores.argmax(axis=1)
        conf = scores[np.arange(len(rows)), class_ids]
        keep = conf > CONF
        rows, class_ids, conf = rows[keep], class_ids[keep], conf[keep]
        h, w = frame.shape[:2]
        rects = np.stack(
            [
                (rows[:, 0] - rows[:, 2] / 2) * w,
                (rows[:, 1] - rows[:, 3] / 2) * h,
                rows[:, 2] * w,
                rows[:, 3] * h,
            ],
            axis=1,
        )
        out = []
        for cls in np.unique(class_ids):
            idx = np.flatnonzero(class_ids == cls)
            kept = cv2.dnn.NMSBoxes(rects[idx].tolist(), conf[idx].tolist(), CONF, NMS_IOU)
            for k in np.array(kept).reshape(-1):
                x, y, bw, bh = rects[idx[k]]
                out.append((int(cls), float(conf[idx[k]]), [x, y, x + bw, y + bh]))
        return out


def coco_map(fp32: Detector, int8: Detector, limit: int) -> dict:
    """mAP@0.5 of both variants on the shared COCO sample (letterbox, conf 0.001 as COCO
    evaluations do, so the whole precision/recall curve counts)."""
    pairs = labelled_images(SHARED_COCO)[:limit]
    truths, found = [], {"fp32": [], "int8": []}
    for image_path, label_path in pairs:
        frame = read_image(image_path)
        h, w = frame.shape[:2]
        truths.append(read_yolo_labels(label_path, w, h))
        for name, det in (("fp32", fp32), ("int8", int8)):
            found[name].append([Box(d.class_id, *d.box, d.score) for d in det.detect(frame)])
    fp32_map = mean_average_precision(found["fp32"], truths)[0]
    int8_map = mean_average_precision(found["int8"], truths)[0]
    return {
        "coco_images": len(pairs),
        "map50_fp32": round(100 * fp32_map, 2),
        "map50_int8": round(100 * int8_map, 2),
        "map50_int8_loss_points": round(100 * (fp32_map - int8_map), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    args = parser.parse_args()
    threads = args.threads

    sources = fetch_sources(BUILD_DIR / "sources")
    manifest = build_models(BUILD_DIR, ["fp32", "int8"], sources=sources)
    paths = {name: BUILD_DIR / entry["file"] for name, entry in manifest["variants"].items()}
    cv2.setNumThreads(threads)
    cpu = ["CPUExecutionProvider"]
    ours = Detector(paths["fp32"], threads=threads, providers=cpu, conf_threshold=CONF)
    int8 = Detector(paths["int8"], threads=threads, providers=cpu, conf_threshold=CONF)
    baseline = OpenCvDarknet(sources.cfg, sources.weights)

    frames = [read_image(p) for p in sources.images]
    tensors = [ours.prepare(f)[0] for f in frames]

    def run_ours() -> None:
        for frame in frames:
            ours.detect(frame)

    def run_bare() -> None:
        for tensor in tensors:
            ours.session.run(["boxes", "scores"], {"images": tensor})

    def run_int8() -> None:
        for frame in frames:
            int8.detect(frame)

    def run_opencv() -> None:
        for frame in frames:
            baseline.detect(frame)

    reps = 5 if args.quick else 25
    times = interleaved(
        {"ours": run_ours, "opencv": run_opencv, "bare": run_bare, "int8": run_int8}, reps
    )
    per_frame = {k: median_ms(v) / len(frames) for k, v in times.items()}
    figures: dict = {
        "frames": len(frames),
        "repetitions": reps,
        "threads": threads,
        "ours_ms_median": round(per_frame["ours"], 2),
        "opencv_dnn_ms_median": round(per_frame["opencv"], 2),
        "bare_session_run_ms_median": round(per_frame["bare"], 2),
        "int8_ms_median": round(per_frame["int8"], 2),
        "overhead_above_session_run_pct": round(
            100 * (per_frame["ours"] / per_frame["bare"] - 1), 1
        ),
    }
    if (SHARED_COCO / "images").is_dir():
        map_ours = Detector(paths["fp32"], threads=threads, providers=cpu, conf_threshold=0.001)
        map_int8 = Detector(paths["int8"], threads=threads, providers=cpu, conf_threshold=0.001)
        figures.update(coco_map(map_ours, map_int8, 16 if args.quick else 10_000))
    else:
        figures["coco"] = f"not measured: {SHARED_COCO / 'images'} absent"
    write_results(
        "detector",
        {
            "vs_opencv_dnn": per_frame["opencv"] / per_frame["ours"],
            "vs_bare_session_run": per_frame["bare"] / per_frame["ours"],
            "int8_vs_fp32": per_frame["ours"] / per_frame["int8"],
        },
        figures,
        {
            "vs_opencv_dnn": "cv2.dnn.readNetFromDarknet, same cfg/weights, same frames and "
            "threads, blobFromImage + forward + NMSBoxes per class (end to end per frame)",
            "vs_bare_session_run": "the same FP32 session.run alone on a prepared tensor "
            "(below 1: our pre/post-processing overhead)",
            "int8_vs_fp32": "our detector end to end, INT8 QDQ graph vs FP32 graph",
        },
    )


if __name__ == "__main__":
    main()
