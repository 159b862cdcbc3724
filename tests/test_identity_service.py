"""The recipient check at the door (companion/identity/service.py) on camera frames that
`sim.faces` synthesises from registry photos (the `face_recognition` 1.3.0 sdist on PyPI),
read by the real face models, with the time given by the test (the autopilot's clock, never
the wall clock): the right person blinking is matched and live; an impostor blinking is live
but not matched; a shaken photo of the recipient is matched but not live; a photo for the
face check and someone else for the blink, stale frames, no face, failing models and a
template that does not open never clear; the template is zeroed when the check is over; and
nothing biometric reaches the verdict, the audit trail or the log."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from companion.bus import Bus
from companion.config import IdentityConfig
from companion.identity.service import (
    MAX_FRAME_AGE_S,
    IdentityService,
    RecipientCheck,
)
from companion.mission.events import MissionEvent, Phase
from companion.mission.handover import judge_verdict, verdict_figures
from companion.mission.inputs import RecipientVerdict
from companion.security.audit import AuditTrail, verify_audit
from companion.security.orders import OrderError
from firmware_bridge.state import VehicleState
from tests.biometric import (
    assert_nothing_biometric,
    longest_run_of_numbers,
    template_values_in,
)

PERIOD_S = 0.1  # 10 frames a second, as the door camera gives them
START_S = 40.0  # the autopilot's time when the check begins
CONFIG = IdentityConfig()


@pytest.fixture(scope="module")
def analyzer():
    pytest.importorskip("dlib", reason="pip install dlib-bin")
    pytest.importorskip("face_recognition_models", reason="pip install face_recognition_models")
    from companion.identity.faces import FaceAnalyzer

    return FaceAnalyzer()


@pytest.fixture(scope="module")
def photos(analyzer) -> dict[str, np.ndarray]:
    """The recipient's template (obama2.jpg) and the stills the door camera shows."""
    from companion.identity.enrol import enrol_template
    from sim.faces import PORTRAIT_CROP, STILL_SIZE, load_face_still
    from sim.harness.handover import BIDEN_CROP, HandoverUnavailable, fetch_photo

    try:
        return {
            "template": enrol_template([fetch_photo("obama2.jpg")], analyzer),
            "obama": load_face_still(fetch_photo("obama.jpg"), PORTRAIT_CROP, STILL_SIZE),
            "biden": load_face_still(fetch_photo("biden.jpg"), BIDEN_CROP, STILL_SIZE),
        }
    except HandoverUnavailable as exc:
        pytest.skip(f"no face photos (package index unreachable?): {exc}")


@pytest.fixture(scope="module")
def sequences(photos) -> dict[str, list[np.ndarray]]:
    """Seven seconds of frames each (the liveness check's limit is six)."""
    from sim.faces import FaceSynthesiser

    obama, biden = FaceSynthesiser(photos["obama"]), FaceSynthesiser(photos["biden"])

    def frames(synth: FaceSynthesiser, kind: str) -> list[np.ndarray]:
        return [f.image for f in synth.sequence(kind, fps=10, seconds=7.0, event_at=0.6)]

    return {
        "right": frames(obama, "blink"),
        "impostor": frames(biden, "blink"),
        "photo": frames(obama, "jitter"),
    }


def template(photos) -> np.ndarray:
    return photos["template"].copy()


def run(
    check: RecipientCheck, frames: list[np.ndarray], start: float = START_S
) -> tuple[RecipientVerdict, float]:
    """Feed frames at 10 Hz from `start` (the autopilot's clock runs with them) until the
    check decides; the verdict and the time of the frame that decided it."""
    for i, image in enumerate(frames):
        t = start + i * PERIOD_S
        verdict = check.frame(image, t, now=t)
        if verdict is not None:
            return verdict, t
    raise AssertionError(f"no verdict after {len(frames)} frames")


def judged(verdict: RecipientVerdict, now: float) -> tuple[str, str]:
    """What the mission's release gate makes of the verdict."""
    _, problems = verdict_figures(verdict)
    return judge_verdict(verdict, problems, now=now, check_started_s=START_S, max_age_s=2.0)


# -- the three people at the door ------------------------------------------------------------


def test_the_right_person_blinking_is_matched_and_live_and_clears_the_release(
    analyzer, photos, sequences
) -> None:
    check = RecipientCheck("drop-1", template(photos), analyzer, CONFIG)
    verdict, at = run(check, sequences["right"])
    assert verdict.matched and verdict.live and verdict.reason == ""
    assert verdict.distance is not None and verdict.distance <= CONFIG.threshold
    assert verdict.decided_at_s == at and verdict.drop_id == "drop-1"
    figures = dict(verdict.liveness)
    assert figures["ear_min"] < 0.65 * figures["ear_baseline"]  # the blink shut the eyes
    assert judged(verdict, now=at + 0.05) == ("cleared", "")


def test_an_impostor_blinking_is_live_but_not_matched(analyzer, photos, sequences) -> None:
    check = RecipientCheck("drop-1", template(photos), analyzer, CONFIG)
    verdict, at = run(check, sequences["impostor"])
    assert verdict.live and not verdict.matched
    assert verdict.distance is not None and verdict.distance > CONFIG.threshold
    assert verdict.reason.startswith("face no-match: 0 of 3 frames within 0.55")
    outcome, why = judged(verdict, now=at)
    assert outcome == "refused" and "face not matched" in why


def test_a_shaken_photo_of_the_recipient_is_matched_but_not_live(
    analyzer, photos, sequences
) -> None:
    check = RecipientCheck("drop-1", template(photos), analyzer, CONFIG)
    verdict, at = run(check, sequences["photo"])
    assert verdict.matched and not verdict.live
    assert verdict.reason.startswith("liveness no-event: no blink within 6.0 s")
    assert at - START_S == pytest.approx(6.1)  # decided by the time limit, on frame time
    assert judged(verdict, now=at)[0] == "refused"


def test_the_verdict_depends_on_the_frames_and_their_times_only(
    analyzer, photos, sequences
) -> None:
    first, _ = run(RecipientCheck("d", template(photos), analyzer, CONFIG), sequences["right"])
    again, _ = run(RecipientCheck("d", template(photos), analyzer, CONFIG), sequences["right"])
    assert first == again


# -- what never clears -----------------------------------------------------------------------


def test_a_photo_for_the_face_and_someone_else_for_the_blink_is_refused(
    analyzer, photos, sequences
) -> None:
    # The recipient's photo long enough for the k-of-n match, then the impostor blinks.
    swapped = sequences["photo"][:6] + sequences["impostor"][6:]
    check = RecipientCheck("drop-1", template(photos), analyzer, CONFIG)
    verdict, _ = run(check, swapped)
    assert not verdict.matched and not verdict.live
    assert "another face" in verdict.reason and "face-lost" in verdict.reason
    assert check.outcome is not None and check.outcome.face_changes >= 1


def test_stale_frames_never_match_and_the_check_fails_on_time(analyzer, photos, sequences) -> None:
    check = RecipientCheck("drop-1", template(photos), analyzer, CONFIG)
    verdict = None
    for i, image in enumerate(sequences["right"]):
        now = START_S + i * PERIOD_S
        # The camera delivers the right person, blinking, but every frame is too old.
        verdict = check.frame(image, now - MAX_FRAME_AGE_S - 0.1, now=now) or check.tick(now)
        if verdict is not None:
            break
    assert verdict is not None and not verdict.matched and not verdict.live
    assert check.outcome is not None and check.outcome.stale_frames >= 1
    assert verdict.distance is None  # no frame was ever analysed


def test_frames_out_of_order_or_without_a_time_never_match(analyzer, photos, sequences) -> None:
    check = RecipientCheck("drop-1", template(photos), analyzer, CONFIG)
    frames = sequences["right"]
    assert check.frame(frames[0], START_S, now=START_S) is None
    assert check.frame(frames[1], START_S, now=START_S) is None  # the same time again
    verdict = check.frame(frames[2], math.nan, now=START_S + 0.1)
    assert verdict is not None and not verdict.matched and not verdict.live
    assert "bad-time" in verdict.reason
    assert check.outcome is not None and check.outcome.stale_frames == 2


def test_nobody_at_the_door_fails_on_the_autopilots_clock(analyzer, photos) -> None:
    check = RecipientCheck("drop-1", template(photos), analyzer, CONFIG)
    empty = np.full((300, 300, 3), 90, np.uint8)
    verdict = None
    for i in range(100):
        now = START_S + i * PERIOD_S
        verdict = check.frame(empty, now, now=now) or check.tick(now)
        if verdict is not None:
            break
    assert verdict is not None and not verdict.matched and not verdict.live
    assert verdict.reason.startswith("face undecided")
    assert "too-few-frames" in verdict.reason
    assert check.outcome is not None and check.outcome.waiting_frames == check.frames


class BrokenModels:
    """A face analyser whose models fail on every frame."""

    def detect(self, frame, roi=None):
        raise RuntimeError("dlib exploded")


def test_failing_face_models_never_match(photos, sequences) -> None:
    check = RecipientCheck("drop-1", template(photos), BrokenModels(), CONFIG)  # type: ignore[arg-type]
    verdict = None
    for i, image in enumerate(sequences["right"]):
        now = START_S + i * PERIOD_S
        verdict = check.frame(image, now, now=now) or check.tick(now)
        if verdict is not None:
            break
    assert verdict is not None and not verdict.matched and not verdict.live
    assert check.outcome is not None and check.outcome.face is not None
    assert check.outcome.face.rejections == {"bad-frame": 3}


def test_the_template_is_zeroed_when_the_check_is_over(analyzer, photos, sequences) -> None:
    given = template(photos)
    check = RecipientCheck("drop-1", given, analyzer, CONFIG)
    run(check, sequences["impostor"])
    check.wipe()
    assert not given.any()
    assert check._face.template.size == 0 and check._anchor is None


# -- on the bus ------------------------------------------------------------------------------


def event(name: str, at: float, **detail) -> MissionEvent:
    return MissionEvent("m-1", Phase.RELEASE, name, detail, at)


def test_the_service_checks_on_the_missions_cue_and_publishes_one_verdict(
    analyzer, photos, sequences, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = Bus()
    verdicts: list[RecipientVerdict] = []
    bus.subscribe(RecipientVerdict, verdicts.append)
    trail = AuditTrail(tmp_path / "audit.jsonl")
    opened: list[np.ndarray] = []

    def opener() -> np.ndarray:
        opened.append(template(photos))
        return opened[-1]

    service = IdentityService(
        bus, analyzer, CONFIG, audit=lambda kind, data: trail.append(kind, **data)
    )
    service.expect("drop-1", opener)
    frames = sequences["right"]
    service.frame(frames[0], START_S - 1.0)  # before the check: not looked at
    assert not opened and service.ignored_frames == 1
    with caplog.at_level(logging.DEBUG):
        bus.publish(event("verify-recipient", START_S, drop="drop-1", timeout_s=60.0))
        assert len(opened) == 1 and service.checking
        for i, image in enumerate(frames):
            t = START_S + i * PERIOD_S
            bus.publish(VehicleState(wall_time=0.0, boot_time_s=t))
            service.frame(image, t)
            if verdicts:
                break
    service.close()
    trail.close()
    assert len(verdicts) == 1 and verdicts[0].matched and verdicts[0].live
    assert not service.checking and not opened[0].any()  # wiped
    assert verify_audit(tmp_path / "audit.jsonl").ok
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["recipient-check"]
    check = records[0]["data"]
    assert check["matched"] and check["live"] and check["liveness"]["reason"] == "passed"
    assert_nothing_biometric(json.dumps(records) + caplog.text, photos["template"])


def test_a_template_that_does_not_open_or_is_missing_is_a_refusal(analyzer) -> None:
    bus = Bus()
    verdicts: list[RecipientVerdict] = []
    bus.subscribe(RecipientVerdict, verdicts.append)
    service = IdentityService(bus, analyzer, CONFIG)

    def sealed_wrong() -> np.ndarray:
        raise OrderError("sealed", "the template does not open with this drone's key")

    service.expect("drop-1", sealed_wrong)
    bus.publish(event("verify-recipient", START_S, drop="drop-1"))
    bus.publish(event("verify-recipient", START_S + 1, drop="drop-2"))  # nothing expected
    assert [v.drop_id for v in verdicts] == ["drop-1", "drop-2"]
    for verdict in verdicts:
        assert not verdict.matched and not verdict.live and verdict.frames == 0
    assert "does not open" in verdicts[0].reason
    assert "no recipient template for drop 'drop-2'" in verdicts[1].reason
    assert verdicts[0].decided_at_s == START_S
    assert not service.checking


def test_the_missions_end_wipes_an_undecided_check(analyzer, photos) -> None:
    bus = Bus()
    service = IdentityService(bus, analyzer, CONFIG)
    given = template(photos)
    service.expect("drop-1", lambda: given)
    bus.publish(event("verify-recipient", START_S, drop="drop-1"))
    assert service.checking
    bus.publish(event("abort", START_S + 3, reason="operator"))
    assert not service.checking and not given.any()


def test_the_person_box_of_the_same_camera_is_the_region_of_interest(
    analyzer, photos, sequences
) -> None:
    from companion.vision.detector import Detection
    from companion.vision.service import Detections

    bus = Bus()
    verdicts: list[RecipientVerdict] = []
    bus.subscribe(RecipientVerdict, verdicts.append)
    service = IdentityService(bus, analyzer, CONFIG)
    service.expect("drop-1", lambda: template(photos))
    bus.publish(event("verify-recipient", START_S, drop="drop-1"))
    for i, image in enumerate(sequences["right"]):
        t = START_S + i * PERIOD_S
        # Every other frame the detector's person box is from another camera (another size).
        size = (300, 300) if i % 2 == 0 else (640, 480)
        person = Detection((20.0, 10.0, 290.0, 300.0), 0.9, 0, "person")
        bus.publish(Detections(t, i, (("person", 1),), size, (person,)))
        service.frame(image, t)
        if verdicts:
            break
    assert verdicts and verdicts[0].matched and verdicts[0].live
    record = service.summary()["checks"][0]
    assert record["roi_frames"] == (verdicts[0].frames + 1) // 2


def test_the_biometric_checks_find_what_they_look_for() -> None:
    template = np.array([[0.0123456789, -0.2345678, 0.5]], dtype=np.float32)
    assert template_values_in("distance 0.012346 ok", template) == ["0.012346"]
    assert template_values_in("x=-0.23456781", template) == ["-0.23456781"]
    assert template_values_in("distance 0.3656 and 0.355123", template) == []
    assert longest_run_of_numbers("[ 0.1 -0.2  3e-4, 5 ] 6 7 8 9 10 x 1") == 9
    assert longest_run_of_numbers('{"a": 1, "b": 2}') == 1
