"""`skycourier sim` with its simulated downward camera: the real YOLOv4-Tiny detector sees the
person who steps onto the pad as the descent starts, the descent-cone guard holds the
mission, and the delivery resumes and completes once they have walked off, on a machine whose
cores are all busy. Without the model the sim says how to enable the camera and flies without
it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from companion.config import Config
from companion.geo import offset
from companion.vision.detector import model_path

SKYCOURIER = [sys.executable, "-m", "companion.cli"]


def test_default_sim_holds_for_the_person_in_the_cone_and_still_delivers_on_a_busy_machine(
    tmp_path: Path,
) -> None:
    pytest.importorskip("onnxruntime", reason="pip install 'onnxruntime>=1.17'")
    shipped = model_path(Config().vision.variant)
    if not shipped.exists():
        pytest.skip(f"{shipped} is missing: run `skycourier models build`")
    out = tmp_path / "report"
    # Every core kept busy by other processes for the whole run: the simulated vehicle waits
    # for the companion and the camera (lockstep), so the outcome must not change.
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        done = subprocess.run(
            [*SKYCOURIER, "sim", "--out", str(out), "--quiet", "--speedup", "20"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["outcome"] == "delivered"
    vision = report["vision"]
    assert vision["enabled"] and vision["frame_errors"] == 0
    assert vision["frames"] >= 5
    assert vision["detections"].get("person", 0) >= 1
    assert vision["frames_with_intruder"] >= 1
    assert vision["holds"] >= 1
    hold = vision["hold_events"][0]
    assert hold["phase"] in ("descend", "release")
    assert hold["reason"].startswith("person inside the descent cone")
    # A hold of a few seconds that ended: the person walked off and the descent resumed.
    assert 1.0 <= hold["held_s"] <= 30.0
    assert vision["hold_s"] == pytest.approx(sum(h["held_s"] for h in vision["hold_events"]))
    names = [p["name"] for p in report["phases"]]
    assert names[-7:] == ["takeoff", "cruise", "descend", "release", "climb", "return", "land"]
    assert vision["lockstep"] is True


def test_without_the_model_the_sim_flies_blind_and_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sim.harness.simulate import Order, run_simulation

    monkeypatch.setenv("SKYCOURIER_MODELS", str(tmp_path / "no-models"))
    config = Config().updated("test", sim={"speedup": 25.0})
    lat, lon = offset(config.sim.home_lat, config.sim.home_lon, 60.0, 90.0)
    with caplog.at_level(logging.WARNING, logger="sim.harness.vision"):
        report = run_simulation(
            config,
            Order("blind-1", lat, lon),
            tmp_path / "out",
            show_progress=False,
            recipient="none",  # the camera is the subject; the face check costs time only
        )
    assert report["outcome"] == "delivered"
    assert report["vision"]["enabled"] is False
    assert report["vision"]["holds"] == 0
    assert "no-models" in report["vision"]["note"]
    assert "run `skycourier models build` to enable the simulated camera" in caplog.text
    assert not (tmp_path / "no-models").exists()  # the sim builds nothing
