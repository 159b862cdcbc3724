"""Detector: our ONNX Runtime path vs OpenCV DNN's darknet path, end to end, same frames.

Both start from the same decoded BGR frames and end with the same kind of result (boxes in
source pixels, scores, class ids after class-wise NMS at 0.25 / 0.45). Ours is the deployment
default (`[vision]` defaults: `companion.config.VisionConfig`): pre-processing, `session.run`
(decode inside the graph), numpy post-processing. The baseline is the usual OpenCV recipe:
`cv2.dnn.readNetFromDarknet` on the same cfg/weights, `blobFromImage(..., (416, 416),
swapRB=True)`, `forward` of the YOLO outputs, vectorised best-class + threshold,
`cv2.dnn.NMSBoxes` per class. Both get the same thread count (ONNX Runtime intra-op threads,
`cv2.setNumThreads`).

Timing: the wheel's two sample frames (bus.jpg 810 x 1080, zidane.jpg 1280 x 720), every
repetition runs each frame through OpenCV and ours in alternating order; medians per frame,
the 10th/90th percentiles and the ratio over blocks of ten repetitions show the spread. The
ratio is the summed per-frame medians of OpenCV over ours (the cost of the frame set).

Accuracy: mAP@0.5 (COCO rules, conf 0.001) of every option on the shared labelled COCO images
(`../shared/reference/coco`), which are disjoint from the INT8 calibration set (the wheel's
two sample images, checked by sha256 here: the run stops if they overlap), with a paired
bootstrap interval of each option's difference from the FP32 reference (64 images are few).

Options measured besides the default: FP32 letterboxed to 416 x 416 (the former default),
FP32 stretched as darknet does, FP32 with the free-size graph ("rect"), the INT8 model
letterboxed to a square, at 384, with spinning worker threads, with less graph optimisation,
and INT8 builds with other calibration choices (8-bit weights, percentile, entropy, first
conv or head convs quantised); for each INT8 option also how closely its confident boxes
match the float model's at the same input (mean IoU: box fidelity, which mAP@0.5 barely
sees). `--isa avx2` (and by default on a CPU with AVX-512 or VNNI) also
runs everything with the AVX-512/VNNI CPUID bits masked (Linux CPUID faulting, a small
LD_PRELOAD library compiled here with `cc`), so ONNX Runtime, OpenCV and numpy take the code
paths they take on an AVX2-only CPU; `ratios.vs_opencv_dnn` is that AVX2 figure when present.

    python bench/detector.py [--quick] [--threads N] [--isa auto|native|avx2] [--reps N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import write_results
from companion.config import VisionConfig
from companion.vision.detector import Detector, model_path, read_image
from companion.vision.metrics import Box, average_precision, labelled_images, read_yolo_labels
from companion.vision.nms import box_iou
from models import BUILD_DIR
from models.build import (
    SHARED_COCO,
    build_int8,
    build_models,
    calibration_images,
    calibration_record,
    convert,
    fetch_sources,
    sha256,
)

CONF, NMS_IOU, MAP_CONF = 0.25, 0.45, 0.001
CPU = ["CPUExecutionProvider"]
OPTIONS_DIR = BUILD_DIR / "bench-options"
#: Set in the child process that runs with the AVX-512/VNNI CPUID bits masked.
EMULATED_ENV = "SKYCOURIER_BENCH_AVX2"

#: CPUID faulting (arch_prctl ARCH_SET_CPUID, Linux >= 4.12 on CPUs/hypervisors that offer
#: it: flag `cpuid_fault`) turns every CPUID instruction into SIGSEGV; the handler runs the
#: real CPUID and clears the AVX-512, VNNI and AMX bits of leaf 7 before returning.
AVX2_SHIM = r"""
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>
static long set_cpuid(int on) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on); }
static void handler(int sig, siginfo_t *info, void *vctx) {
    ucontext_t *ctx = vctx;
    greg_t *r = ctx->uc_mcontext.gregs;
    unsigned char *ip = (unsigned char *)r[REG_RIP];
    if (!(ip[0] == 0x0f && ip[1] == 0xa2)) { signal(SIGSEGV, SIG_DFL); return; }
    unsigned leaf = (unsigned)r[REG_RAX], sub = (unsigned)r[REG_RCX], a, b, c, d;
    set_cpuid(1);
    __cpuid_count(leaf, sub, a, b, c, d);
    set_cpuid(0);
    if (leaf == 7 && sub == 0) {
        b &= ~((1u<<16)|(1u<<17)|(1u<<21)|(1u<<26)|(1u<<27)|(1u<<28)|(1u<<30)|(1u<<31));
        c &= ~((1u<<1)|(1u<<6)|(1u<<11)|(1u<<12)|(1u<<14));
        d &= ~((1u<<2)|(1u<<3)|(1u<<8)|(1u<<22)|(1u<<23)|(1u<<24)|(1u<<25));
    } else if (leaf == 7 && sub == 1) {
        a &= ~((1u<<4)|(1u<<5)|(1u<<23));
    }
    r[REG_RAX] = a; r[REG_RBX] = b; r[REG_RCX] = c; r[REG_RDX] = d;
    r[REG_RIP] += 2;
}
__attribute__((constructor)) static void init(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    if (set_cpuid(0) != 0) perror("cpuid mask: arch_prctl(ARCH_SET_CPUID)");
}
"""


# -- the baseline ----------------------------------------------------------------------------


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


# -- the machine -----------------------------------------------------------------------------


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo has none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_flags(flags: set[str]) -> dict[str, bool]:
    names = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    return {name: name in flags for name in names}


def avx2_environment() -> tuple[dict[str, str] | None, str]:
    """The environment for a child that sees an AVX2-only CPU, or None and why not."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return None, "AVX2 emulation needs Linux on x86_64"
    if "cpuid_fault" not in cpu_flags():
        return None, "this CPU/hypervisor offers no CPUID faulting (flag cpuid_fault)"
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc) to build the CPUID mask"
    folder = BUILD_DIR / "bench-avx2"
    folder.mkdir(parents=True, exist_ok=True)
    source, library = folder / "cpuidmask.c", folder / "cpuidmask.so"
    if not library.exists() or source.read_text() != AVX2_SHIM:
        source.write_text(AVX2_SHIM)
        done = subprocess.run(
            [compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            return None, f"cannot compile the CPUID mask: {done.stderr.strip()[:200]}"
    env = dict(os.environ, LD_PRELOAD=str(library), **{EMULATED_ENV: "1"})
    return env, "AVX-512, VNNI and AMX CPUID bits masked (CPUID faulting, LD_PRELOAD)"


def seen_isa() -> dict[str, bool]:
    """What numpy's CPU dispatch sees in this process (under the mask, no AVX-512)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    return {k: bool(features.get(k)) for k in ("AVX2", "FMA3", "AVX512F", "AVX512_SKX")} | {
        "AVX512VNNI": bool(features.get("AVX512_CNL") or features.get("AVX512VNNI"))
    }


# -- timing ----------------------------------------------------------------------------------


def spread(samples_s: list[float]) -> dict:
    ms = sorted(1000 * s for s in samples_s)
    q = np.percentile(ms, [10, 25, 50, 75, 90])
    return {
        "median_ms": round(float(q[2]), 2),
        "p10_ms": round(float(q[0]), 2),
        "p90_ms": round(float(q[4]), 2),
        "iqr_ms": round(float(q[3] - q[1]), 2),
        "n": len(ms),
    }


def time_frames(
    runs: dict[str, Callable[[np.ndarray], object]],
    frames: list[np.ndarray],
    reps: int,
    cpu: dict[str, float] | None = None,
) -> dict[str, list[list[float]]]:
    """Seconds per call, `[name][frame] -> samples`; each repetition runs every frame through
    every callable, the order of the callables reversed on odd repetitions, after two warm-up
    passes (ONNX Runtime's first runs allocate). `cpu` receives the process CPU seconds per
    call of each (all threads: what the rest of the daemon cannot use)."""
    names = list(runs)
    for _ in range(2):
        for frame in frames:
            for name in names:
                runs[name](frame)
    times = {name: [[] for _ in frames] for name in names}
    used = dict.fromkeys(names, 0.0)
    for rep in range(reps):
        order = names if rep % 2 == 0 else names[::-1]
        for i, frame in enumerate(frames):
            for name in order:
                cpu_start, start = time.process_time(), time.perf_counter()
                runs[name](frame)
                times[name][i].append(time.perf_counter() - start)
                used[name] += time.process_time() - cpu_start
    if cpu is not None:
        cpu.update({name: used[name] / (reps * len(frames)) for name in names})
    return times


def frame_set_ms(samples: list[list[float]]) -> float:
    """Cost of the frame set: the sum of the per-frame medians, per frame."""
    return 1000 * sum(statistics.median(s) for s in samples) / len(samples)


def block_ratios(base: list[list[float]], ours: list[list[float]], block: int = 10) -> list:
    """The ratio over consecutive blocks of `block` repetitions: how much it moves."""
    reps = len(base[0])
    out = []
    for start in range(0, reps - block + 1, block):
        b = [s[start : start + block] for s in base]
        o = [s[start : start + block] for s in ours]
        out.append(round(frame_set_ms(b) / frame_set_ms(o), 3))
    return out


# -- accuracy --------------------------------------------------------------------------------


def _image_matches(found: list[Box], truth: list[Box]) -> tuple[np.ndarray, ...]:
    """Per detection of one image: class, score, true positive (COCO rules at IoU 0.5: by
    score, each to the unmatched same-class box it overlaps most); and boxes per class."""
    classes = np.array([d.class_id for d in found], dtype=np.int64)
    scores = np.array([d.score for d in found], dtype=np.float64)
    tp = np.zeros(len(found))
    gt_classes = np.array([t.class_id for t in truth], dtype=np.int64)
    gt_boxes = np.array([t.xyxy for t in truth]).reshape(-1, 4)
    used = np.zeros(len(truth), bool)
    for k in np.argsort(-scores, kind="stable"):
        same = np.flatnonzero(gt_classes == classes[k])
        if same.size == 0:
            continue
        ious = box_iou(found[k].xyxy, gt_boxes[same])
        ious[used[same]] = -1.0
        best = int(ious.argmax())
        if ious[best] >= 0.5:
            used[same[best]] = True
            tp[k] = 1.0
    return classes, scores, tp, np.bincount(gt_classes, minlength=80)


def map50(per_image: list[tuple[np.ndarray, ...]], idx: np.ndarray | range) -> float:
    """mAP@0.5 over the images `idx` (repeats allowed: the bootstrap), as
    `companion.vision.metrics.mean_average_precision` computes it (tested equal)."""
    classes = np.concatenate([per_image[i][0] for i in idx])
    scores = np.concatenate([per_image[i][1] for i in idx])
    tp = np.concatenate([per_image[i][2] for i in idx])
    counts = sum(per_image[i][3] for i in idx)
    order = np.lexsort((-scores, classes))
    classes, tp = classes[order], tp[order]
    bounds = np.searchsorted(classes, np.arange(len(counts) + 1))
    aps = []
    for cls in np.flatnonzero(counts):
        hits = np.cumsum(tp[bounds[cls] : bounds[cls + 1]])
        aps.append(average_precision(hits / counts[cls], hits / np.arange(1, len(hits) + 1)))
    return 100 * float(np.mean(aps)) if aps else 0.0


def evaluate(detector: Detector, pairs: list[tuple[Path, Path]]) -> list[tuple]:
    out = []
    for image_path, label_path in pairs:
        frame = read_image(image_path)
        h, w = frame.shape[:2]
        found = [Box(d.class_id, *d.box, d.score) for d in detector.detect(frame)]
        out.append(_image_matches(found, read_yolo_labels(label_path, w, h)))
    return out


def box_agreement(reference: Detector, other: Detector, pairs: list[tuple[Path, Path]]) -> dict:
    """How closely `other` reproduces the float model's confident detections (score >= 0.4):
    for each, the same-class detection of `other` it overlaps most; its IoU (box fidelity,
    which mAP@0.5 hardly sees but obstacle distances do) and the score difference; `lost`
    where none overlaps by 0.5."""
    ious, deltas, lost = [], [], 0
    for image_path, _ in pairs:
        frame = read_image(image_path)
        theirs = other.detect(frame)
        for d in reference.detect(frame):
            if d.score < 0.4:
                continue
            same = [t for t in theirs if t.class_id == d.class_id]
            overlap = box_iou(np.array(d.box), np.array([t.box for t in same]).reshape(-1, 4))
            best = int(overlap.argmax()) if len(same) else -1
            if best < 0 or overlap[best] < 0.5:
                lost += 1
                continue
            ious.append(float(overlap[best]))
            deltas.append(abs(same[best].score - d.score))
    return {
        "matched": len(ious),
        "lost": lost,
        "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
        "p10_iou": round(float(np.percentile(ious, 10)), 4) if ious else None,
        "mean_abs_score_delta": round(float(np.mean(deltas)), 4) if deltas else None,
    }


def bootstrap_difference(ref: list[tuple], other: list[tuple], n: int = 1000) -> dict:
    """Paired bootstrap over images of mAP(other) - mAP(ref): mean, sd, 95 % interval."""
    rng = np.random.default_rng(0)
    size = len(ref)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, size, size)
        diffs.append(map50(other, idx) - map50(ref, idx))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {
        "boot_mean": round(float(np.mean(diffs)), 2),
        "boot_sd": round(float(np.std(diffs)), 2),
        "ci95": [round(float(lo), 2), round(float(hi), 2)],
        "p_loss_over_1": round(float(np.mean(np.array(diffs) < -1.0)), 3),
    }


# -- the options -----------------------------------------------------------------------------


def build_options(sources, quick: bool) -> dict[str, tuple[Path, dict, str]]:
    """name -> (model, Detector keyword arguments, what it is). The deployment default first;
    `--quick` keeps the default and the former default only."""
    config = VisionConfig()
    manifest = build_models(BUILD_DIR, ["fp32", config.variant], sources=sources)
    default_path = BUILD_DIR / manifest["variants"][config.variant]["file"]
    assert default_path == model_path(config.variant, BUILD_DIR)
    fp32 = BUILD_DIR / manifest["variants"]["fp32"]["file"]
    options: dict[str, tuple[Path, dict, str]] = {
        "default": (default_path, {}, f"deployment default: {config.variant}, Detector defaults"),
        "fp32-letterbox": (fp32, {}, "FP32 416 x 416 letterbox (the former default)"),
    }
    if quick:
        return options
    OPTIONS_DIR.mkdir(parents=True, exist_ok=True)
    free = OPTIONS_DIR / "yolov4-tiny-free-size.onnx"
    import onnx

    onnx.save(convert(sources, "float32", dynamic=True), str(free))
    options["fp32-rect"] = (free, {}, "FP32, free-size graph, rect letterbox (416 long side)")
    options["fp32-stretch"] = (
        fp32,
        {"preprocess": "stretch"},
        "FP32 stretched to 416 x 416 (darknet's and OpenCV's own input)",
    )
    options["int8-letterbox"] = (
        default_path,
        {"preprocess": "letterbox"},
        "the INT8 model letterboxed to 416 x 416",
    )
    options["int8-rect-384"] = (default_path, {"input_size": 384}, "the INT8 model at 384")
    options["int8-spin"] = (
        default_path,
        {"spin_wait": True},
        "the default with ONNX Runtime's worker threads spinning between runs",
    )
    options["int8-graph-extended"] = (
        default_path,
        {"graph_optimization": "extended"},
        "the default with graph optimisation 'extended' (no NCHWc/NHWC layouts)",
    )
    images = calibration_images(sources)
    record = calibration_record(images)
    variants = {
        "int8-8bit-weights": ({"reduce_range": False}, "8-bit weights (no reduce_range)"),
        "int8-percentile": ({"method": "percentile"}, "percentile 99.999 ranges"),
        "int8-entropy": ({"method": "entropy"}, "entropy ranges"),
        "int8-first-conv-int8": ({"first_conv_float": False}, "first convolution quantised"),
        "int8-head-convs-int8": ({"head_convs_float": False}, "head convolutions quantised"),
    }
    for name, (settings, what) in variants.items():
        path = OPTIONS_DIR / f"{name}.onnx"
        build_int8(sources, images, record, path, **settings)
        options[name] = (path, {}, f"INT8 as the default but {what}")
    return options


def measure(args: argparse.Namespace) -> dict:
    """Everything one process measures: latency of every option against OpenCV and mAP."""
    threads = args.threads
    sources = fetch_sources(BUILD_DIR / "sources")
    options = build_options(sources, args.quick)
    cv2.setNumThreads(threads)
    baseline = OpenCvDarknet(sources.cfg, sources.weights)
    frames = [read_image(p) for p in sources.images]

    def detector(name: str, conf: float) -> Detector:
        path, kwargs, _ = options[name]
        return Detector(path, threads=threads, providers=CPU, conf_threshold=conf, **kwargs)

    ours = detector("default", CONF)
    reps = args.reps or (10 if args.quick else 100)
    tensors = [ours.prepare(f)[0] for f in frames]
    bare_index = {id(f): t for f, t in zip(frames, tensors, strict=True)}
    cpu: dict[str, float] = {}
    headline = time_frames(
        {
            "opencv": baseline.detect,
            "ours": ours.detect,
            "bare": lambda f: ours.session.run(["boxes", "scores"], {"images": bare_index[id(f)]}),
        },
        frames,
        reps,
        cpu,
    )
    opencv_ms, ours_ms = frame_set_ms(headline["opencv"]), frame_set_ms(headline["ours"])
    result: dict = {
        "default": {
            "detector": repr(ours),
            "ours_ms": round(ours_ms, 2),
            "opencv_dnn_ms": round(opencv_ms, 2),
            "bare_session_run_ms": round(frame_set_ms(headline["bare"]), 2),
            "cpu_ms_per_frame": round(1000 * cpu["ours"], 2),
            "opencv_dnn_cpu_ms_per_frame": round(1000 * cpu["opencv"], 2),
            "vs_opencv_dnn": round(opencv_ms / ours_ms, 3),
            "vs_opencv_dnn_blocks_of_10_reps": block_ratios(headline["opencv"], headline["ours"]),
            "repetitions": reps,
            "per_frame": {
                path.name: {
                    "shape": list(frame.shape[:2]),
                    "ours": spread(headline["ours"][i]),
                    "opencv_dnn": spread(headline["opencv"][i]),
                    "ratio": round(
                        statistics.median(headline["opencv"][i])
                        / statistics.median(headline["ours"][i]),
                        3,
                    ),
                }
                for i, (path, frame) in enumerate(zip(sources.images, frames, strict=True))
            },
        },
        "options": {},
        "seen_by_numpy": seen_isa(),
    }
    option_reps = max(5, reps // 3)
    for name, (path, kwargs, what) in options.items():
        if name == "default":
            times, base, cpu_s = headline["ours"], headline["opencv"], cpu["ours"]
        else:
            run = detector(name, CONF)
            used: dict[str, float] = {}
            runs = {"opencv": baseline.detect, name: run.detect}
            timed = time_frames(runs, frames, option_reps, used)
            times, base, cpu_s = timed[name], timed["opencv"], used[name]
        result["options"][name] = {
            "what": what,
            "model": path.name,
            "settings": kwargs,
            "ms": round(frame_set_ms(times), 2),
            "p10_p90_ms_per_frame": [[spread(s)["p10_ms"], spread(s)["p90_ms"]] for s in times],
            "repetitions": len(times[0]),
            "cpu_ms_per_frame": round(1000 * cpu_s, 2),
            "vs_opencv_dnn": round(frame_set_ms(base) / frame_set_ms(times), 3),
        }

    if (SHARED_COCO / "images").is_dir():
        pairs = labelled_images(SHARED_COCO)
        if args.quick:
            pairs = pairs[:16]
        calibration = {sha256(p) for p in calibration_images(sources)}
        evaluation = {sha256(p): p.name for p, _ in pairs}
        overlap = sorted(evaluation[h] for h in calibration & set(evaluation))
        if overlap:
            raise SystemExit(f"evaluation images also in the INT8 calibration set: {overlap}")
        found = {name: evaluate(detector(name, MAP_CONF), pairs) for name in options}
        ref = found["fp32-letterbox"]
        for name, per_image in found.items():
            entry = result["options"][name]
            entry["map50"] = round(map50(per_image, range(len(pairs))), 2)
            entry["map50_vs_fp32_letterbox"] = round(
                entry["map50"] - map50(ref, range(len(pairs))), 2
            )
            if name != "fp32-letterbox":
                entry["map50_difference_bootstrap"] = bootstrap_difference(
                    ref, per_image, 200 if args.quick else 1000
                )
        if "fp32-rect" in options:  # box fidelity against float at the same input
            free = options["fp32-rect"][0]
            for name, (_, kwargs, _) in options.items():
                if name.startswith("fp32") or name in ("int8-spin", "int8-graph-extended"):
                    continue
                same_input = {k: v for k, v in kwargs.items() if k in ("preprocess", "input_size")}
                reference = Detector(free, threads=threads, providers=CPU, **same_input)
                result["options"][name]["box_agreement_with_fp32"] = box_agreement(
                    reference, detector(name, CONF), pairs
                )
        result["accuracy_set"] = {
            "images": len(pairs),
            "boxes": int(sum(int(p[3].sum()) for p in ref)),
            "source": "../shared/reference/coco (COCO train2017, coco128 every other image)",
            "files": [p.name for p, _ in pairs],
            "disjoint_from_calibration": True,
        }
    else:
        result["accuracy_set"] = f"not measured: {SHARED_COCO / 'images'} absent"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--threads", type=int, default=VisionConfig().threads)
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default 100; quick 10)")
    parser.add_argument(
        "--isa",
        choices=("auto", "native", "avx2"),
        default="auto",
        help="auto: native, plus AVX2 emulation where the CPU has AVX-512 or VNNI",
    )
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_out is not None:  # the emulated child: measure, hand the figures back
        args.child_out.write_text(json.dumps(measure(args)))
        return

    flags = isa_flags(cpu_flags())
    wide = flags["avx512f"] or flags["avx512_vnni"] or flags["avx_vnni"]
    runs: dict[str, dict] = {}
    notes: dict[str, str] = {}
    if args.isa in ("auto", "native"):
        runs["native"] = measure(args)
    if args.isa == "avx2" or (args.isa == "auto" and wide):
        env, why = avx2_environment()
        notes["avx2_emulation"] = why
        if env is not None:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "avx2.json"
                argv = [sys.executable, __file__, "--threads", str(args.threads)]
                argv += ["--reps", str(args.reps), "--child-out", str(out)]
                argv += ["--quick"] if args.quick else []
                subprocess.run(argv, env=env, check=True)
                runs["avx2"] = json.loads(out.read_text())
        elif args.isa == "avx2":
            raise SystemExit(f"--isa avx2: {why}")
    primary = "avx2" if "avx2" in runs else "native"
    main_run = runs[primary]["default"]
    ratios = {
        "vs_opencv_dnn": main_run["vs_opencv_dnn"],
        "vs_bare_session_run": main_run["bare_session_run_ms"] / main_run["ours_ms"],
    }
    if primary == "avx2" and "native" in runs:
        ratios["vs_opencv_dnn_native_isa"] = runs["native"]["default"]["vs_opencv_dnn"]
    figures = {
        "ratio_from": primary,
        "threads": args.threads,
        "frames": [p.name for p in fetch_sources(BUILD_DIR / "sources").images],
        "calibration_set": calibration_record(
            calibration_images(fetch_sources(BUILD_DIR / "sources"))
        ),
        "runs": runs,
        "cpu_flags": flags,
        **notes,
    }
    write_results(
        "detector",
        ratios,
        figures,
        {
            "vs_opencv_dnn": "cv2.dnn.readNetFromDarknet, same cfg/weights, same frames and "
            "threads, blobFromImage + forward + NMSBoxes per class, end to end per frame; ours "
            "is the deployment default ([vision] defaults), end to end; the AVX2 run where "
            "the CPU has AVX-512/VNNI (figures.ratio_from)",
            "vs_bare_session_run": "the default's session.run alone on a prepared tensor "
            "(below 1: our pre/post-processing overhead)",
            "vs_opencv_dnn_native_isa": "as vs_opencv_dnn, on this CPU's own instruction set",
        },
    )


if __name__ == "__main__":
    main()
