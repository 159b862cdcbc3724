"""`skycourier sim` performs the secure hand-over, as a user runs it (a process, files on
disk, an exit status): a signed order with the recipient's sealed template, MAVLink signing,
the audit trail, and at a short drop the identity service judging the simulated door camera.
The right recipient blinking gets the parcel; an impostor blinking and a photo of the
recipient held to the camera do not, and the drone flies the parcel home with the reason in
the report and in the audit trail. Nothing biometric reaches the report, the audit trail or
the log."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.biometric import (
    assert_no_biometric_fields,
    assert_nothing_biometric,
    template_values_in,
)

SKYCOURIER = [sys.executable, "-m", "companion.cli"]

#: A short delivery, so a run takes seconds: 20 m out, low cruise, a short hold.
SHORT_DROP = """\
[delivery]
distance_m = 20
[flight]
cruise_alt_m = 12
handover_alt_m = 5
release_hold_s = 1
[sim]
speedup = 50
"""


@pytest.fixture(scope="module")
def template() -> np.ndarray:
    """The recipient's template as the simulator enrols it (to look for it in the output);
    skips where the face models or the photos are not to be had."""
    pytest.importorskip("dlib", reason="pip install dlib-bin")
    pytest.importorskip("face_recognition_models", reason="pip install face_recognition_models")
    from companion.identity.enrol import enrol_template
    from sim.harness.handover import ENROL_PHOTO, HandoverUnavailable, fetch_photo

    try:
        return enrol_template([fetch_photo(ENROL_PHOTO)])
    except HandoverUnavailable as exc:
        pytest.skip(f"no face photos (package index unreachable?): {exc}")


class Runs:
    """One simulated delivery per recipient (at INFO log level), flown when a test first
    asks for it, so no test waits for more than one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "short.toml"
        self.config.write_text(SHORT_DROP)
        self._done: dict[str, dict] = {}

    def __getitem__(self, recipient: str) -> dict:
        if recipient not in self._done:
            out = self.root / recipient
            done = subprocess.run(
                [*SKYCOURIER, "--log-level", "INFO", "sim", "--config", str(self.config),
                 "--out", str(out), "--quiet", "--no-camera", "--recipient", recipient],
                capture_output=True,
                text=True,
                timeout=180,
            )  # fmt: skip
            self._done[recipient] = {
                "rc": done.returncode,
                "output": done.stdout + done.stderr,
                "out": out,
                "report": json.loads((out / "report.json").read_text()),
            }
        return self._done[recipient]


@pytest.fixture(scope="module")
def runs(template, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("handover"))


def audit_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]


def test_the_right_recipient_blinking_receives_the_parcel(runs) -> None:
    run = runs["right"]
    assert run["rc"] == 0, run["output"]
    report = run["report"]
    assert report["outcome"] == "delivered"
    handover = report["handover"]
    assert handover["enabled"] and handover["recipient"] == "right"
    verdict = handover["verdict"]
    assert verdict["matched"] and verdict["live"] and verdict["reason"] == ""
    assert verdict["distance"] <= verdict["threshold"] == 0.55
    assert verdict["liveness"]["challenge"] == "blink" and verdict["liveness"]["passed"]
    assert verdict["liveness"]["ear_min"] < 0.65 * verdict["liveness"]["ear_baseline"]
    assert handover["gate"] == {"outcome": "cleared", "why": ""}
    assert handover["gripper"]["released"] and not handover["gripper"]["parcel_aboard"]
    assert "hand-over: right: face matched at" in run["output"]
    assert "blink passed" in run["output"] and "parcel released" in run["output"]
    kinds = [r["kind"] for r in audit_records(run["out"])]
    assert kinds == ["order-accepted", "verify-recipient", "recipient-check",
                     "recipient-verdict", "cleared", "released", "finished"]  # fmt: skip


@pytest.mark.parametrize(
    ("recipient", "because"),
    [
        ("impostor", "recipient not verified: face not matched (distance 0."),
        ("photo", "recipient not verified: liveness check failed: liveness no-event"),
    ],
)
def test_an_impostor_or_a_photo_gets_nothing_and_the_parcel_flies_home(
    runs, recipient: str, because: str
) -> None:
    run = runs[recipient]
    assert run["rc"] == 1, run["output"]
    report = run["report"]
    assert report["outcome"].startswith(because), report["outcome"]
    handover = report["handover"]
    verdict = handover["verdict"]
    if recipient == "impostor":
        assert not verdict["matched"] and verdict["live"]
        assert verdict["distance"] > verdict["threshold"]
    else:
        assert verdict["matched"] and not verdict["live"]
        assert verdict["liveness"]["reason"] == "no-event"
    assert handover["gate"]["outcome"] == "refused"
    gripper = handover["gripper"]
    assert not gripper["released"] and gripper["parcel_aboard"]
    assert gripper["landed"] and gripper["landed_from_home_m"] < 3.0  # flown home
    assert f"hand-over: {recipient}:" in run["output"] and "parcel kept aboard" in run["output"]
    records = audit_records(run["out"])
    kinds = [r["kind"] for r in records]
    assert "released" not in kinds and "cleared" not in kinds
    assert kinds[:4] == ["order-accepted", "verify-recipient", "recipient-check",
                         "recipient-verdict"]  # fmt: skip
    abort = next(r["data"] for r in records if r["kind"] == "abort")
    assert abort["reason"] == report["outcome"] and abort["action"] == "RTL"


@pytest.mark.parametrize("recipient", ["right", "impostor", "photo"])
def test_the_audit_trail_verifies_and_the_keys_are_private(runs, recipient: str) -> None:
    out = runs[recipient]["out"]
    handover = runs[recipient]["report"]["handover"]
    done = subprocess.run(
        [*SKYCOURIER, "audit", "verify", str(out / "audit.jsonl"), "--drone-pub",
         str(out / "keys" / "drone" / "drone.pub.json"), "--expect-head",
         handover["audit"]["head"]],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{handover['audit']['records']} records" in done.stdout
    assert handover["audit"]["verified"] and handover["audit"]["signatures_checked"]
    order = handover["order"]
    accepted = audit_records(out)[0]["data"]
    assert accepted["order_id"] == order["order_id"] == runs[recipient]["report"]["mission_id"]
    assert accepted["digest"] == order["digest"]
    assert handover["signing"]["link"] == "on"  # MAVLink 2 signing with the autopilot
    for path in (out / "keys" / "drone", out / "keys" / "dispatcher"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        for key in path.iterdir():
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for name in ("order.json", "audit.jsonl", "order-nonces.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name


def test_nothing_biometric_in_the_report_the_audit_trail_or_the_log(runs, template) -> None:
    for recipient in ("right", "impostor", "photo"):
        run = runs[recipient]
        assert template_values_in((run["out"] / "report.json").read_text(), template) == []
        assert_nothing_biometric((run["out"] / "audit.jsonl").read_text(), template)
        assert_nothing_biometric(run["output"], template)
        assert "recipient check for drop" in run["output"]  # the service did log (at INFO)
        for document in [run["report"]["handover"], *audit_records(run["out"])]:
            assert_no_biometric_fields(document)
