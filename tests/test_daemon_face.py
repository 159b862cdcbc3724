"""The daemon checks the recipient's face: `[identity] camera` starts the "identity" part
(`companion.identity.door_camera`), each order flown is announced to it, and the door
camera's frames are judged by the identity service only during the order's recipient check.

Fast tests drive the wiring with simulated time (the autopilot's clock and the frames'
capture times given explicitly); the `hil` tests run the real daemon process on the rig with
its door camera (an MJPEG feed of a face made from a labelled photo), each a real-time
delivery of about 70 s."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from companion.bus import Bus
from companion.config import Config, ConfigError
from companion.geo import distance_m
from companion.identity import door_camera
from companion.identity.door_camera import AutopilotClock, DoorCamera, start_door_camera
from companion.identity.errors import FaceModelError
from companion.mission.events import MissionEvent, Phase
from companion.mission.inputs import RecipientVerdict
from companion.security.keys import KeyStore
from companion.supervisor import FAILED, OFF, StartError, Supervisor
from companion.vision.capture import Capture, Frame
from firmware_bridge.state import VehicleState

DRONE = "door-1"


def keys_config(tmp_path: Path, **identity: object) -> tuple[Config, KeyStore]:
    """A config whose `[security] keys_dir` holds a drone's keys, and the dispatcher's store."""
    drone = KeyStore(tmp_path / "drone")
    drone.init_drone(DRONE)
    dispatcher = KeyStore(tmp_path / "dispatcher")
    dispatcher.init_dispatcher()
    config = Config().updated(
        "test", security={"keys_dir": str(drone.path)}, identity=identity or {}
    )
    return config, dispatcher


# -- configuration and start-up ---------------------------------------------------------------


def test_the_door_camera_option_takes_a_source_and_refuses_a_blank_one() -> None:
    assert Config().identity.camera is None
    assert (
        Config().updated("t", identity={"camera": "/dev/video2"}).identity.camera == "/dev/video2"
    )
    with pytest.raises(ConfigError, match="empty camera source"):
        Config().updated("t", identity={"camera": "  "})


def test_without_a_door_camera_the_part_is_off_and_says_the_pin_alone_clears(caplog) -> None:
    supervisor = Supervisor([door_camera_part(Config(), Bus())])
    with caplog.at_level(logging.WARNING, logger="companion.identity.door_camera"):
        supervisor.start_all(0.0)
    assert [(h.name, h.state) for h in supervisor.health()] == [("identity", OFF)]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "released only by the operator's SMS PIN" in said[0]


def test_missing_face_models_are_a_start_error_the_status_shows(tmp_path, monkeypatch) -> None:
    config, _ = keys_config(tmp_path, camera=str(tmp_path))

    def no_models(_config: object) -> None:
        raise FaceModelError("dlib is not installed (pip install dlib-bin)")

    monkeypatch.setattr(door_camera, "analyzer_from_config", no_models)
    supervisor = Supervisor([door_camera_part(config, Bus())])
    supervisor.start_all(0.0)
    (health,) = supervisor.health()
    assert health.state == FAILED
    assert "the face models cannot be loaded: dlib is not installed" in health.detail


def test_without_drone_keys_or_with_a_bad_camera_the_part_says_what_is_missing(
    tmp_path: Path,
) -> None:
    no_keys = Config().updated(
        "t", security={"keys_dir": str(tmp_path / "none")}, identity={"camera": str(tmp_path)}
    )
    with pytest.raises(StartError, match="holds no drone keys"):
        start_door_camera(no_keys, Bus())
    bad_camera, _ = keys_config(tmp_path, camera=str(tmp_path / "no-such-folder"))
    with pytest.raises(StartError, match=r"\[identity\] camera: .*no such file"):
        start_door_camera(bad_camera, Bus())


def door_camera_part(config: Config, bus: Bus):
    """The daemon's own "identity" part (its list of parts, the last one)."""
    from companion.daemon import _parts

    parts = _parts(config, bus, None, None, lambda _d: None, None)  # type: ignore[arg-type]
    (part,) = [p for p in parts if p.name == "identity"]
    return part


def test_the_autopilot_clock_carries_the_newest_time_forward_and_forgets_a_silent_one() -> None:
    clock = AutopilotClock(max_anchor_age_s=2.0)
    assert clock.at(10.0) is None  # never heard
    clock.heard(100.0, 10.0)
    assert clock.at(10.25) == pytest.approx(100.25)
    clock.heard(100.0, 10.5)  # the same autopilot time again: no newer, not re-anchored
    assert clock.at(10.5) == pytest.approx(100.5)
    clock.heard(100.6, 10.55)
    assert clock.at(10.6) == pytest.approx(100.65)
    assert clock.at(12.6) is None  # not heard for over 2 s


# -- the check, through the door camera's wiring (real face models, simulated time) -----------


@pytest.fixture(scope="module")
def faces():
    """The door camera's faces (10 Hz) of each of the simulator's recipients and the
    template enrolled as the dispatcher enrols it; skips without the models or photos."""
    pytest.importorskip("dlib", reason="pip install dlib-bin")
    pytest.importorskip("face_recognition_models", reason="pip install face_recognition_models")
    from companion.identity.enrol import enrol_template
    from sim.harness.handover import (
        ENROL_PHOTO,
        RECIPIENTS,
        HandoverUnavailable,
        door_faces,
        fetch_photo,
    )

    try:
        template = enrol_template([fetch_photo(ENROL_PHOTO)])
        shown = {name: door_faces(r, "blink", 7.0) for name, r in RECIPIENTS.items()}
    except HandoverUnavailable as exc:
        pytest.skip(f"no face photos (package index unreachable?): {exc}")
    return template, shown


class Door:
    """A door camera on a bus with simulated time: `state(t)` is the autopilot's clock at
    `t`, heard at monotonic `t` too; `show(images)` feeds frames at 10 Hz from the clock on."""

    def __init__(self, tmp_path: Path, template: np.ndarray) -> None:
        from companion.identity.service import IdentityService, analyzer_from_config
        from companion.security.orders import create_order, decode_order

        config, dispatcher = keys_config(tmp_path)
        drone = KeyStore(config.security.keys_dir)
        now = int(time.time())
        blob = create_order(
            dispatcher.dispatcher_signing_key(), drone_id=DRONE,
            seal_public=drone.drone_seal_key().public_key(), order_id="o-door", lat=52.0,
            lon=13.0, template=template.copy(), not_before=now - 60, expires=now + 3600,
        )  # fmt: skip
        self.order, _, _ = decode_order(blob)
        self.bus = Bus()
        self.verdicts: list[RecipientVerdict] = []
        self.bus.subscribe(RecipientVerdict, self.verdicts.append)
        self.records: list[tuple[str, dict]] = []
        self.t = 100.0
        service = IdentityService(
            self.bus, analyzer_from_config(config.identity), config.identity,
            audit=lambda kind, data: self.records.append((kind, data)), person_roi=False,
        )  # fmt: skip
        # The capture is never started: the test hands its frames to `feed` itself.
        self.camera = DoorCamera(
            self.bus, service, Capture(tmp_path), drone.drone_seal_key(), monotonic=lambda: self.t
        )

    def state(self, t: float) -> None:
        self.t = t
        self.bus.publish(VehicleState(wall_time=t, boot_time_s=t))

    def begin_check(self) -> None:
        self.bus.publish(
            MissionEvent(
                self.order.order_id,
                Phase.RELEASE,
                "verify-recipient",
                {"drop": self.order.order_id},
                self.t,
                0.0,
            )
        )

    def show(self, images: list[np.ndarray]) -> None:
        for i, image in enumerate(images):
            if self.verdicts:
                return
            self.state(self.t + 0.1)
            self.camera.feed(Frame(image, i, self.t, "door"))


@pytest.mark.parametrize(
    ("who", "matched", "live"),
    [("right", True, True), ("impostor", False, True), ("photo", True, False)],
)
def test_the_door_camera_judges_only_during_the_check_of_the_order_being_flown(
    tmp_path: Path, faces, who: str, matched: bool, live: bool
) -> None:
    template, shown = faces
    door = Door(tmp_path, template)
    door.state(100.0)
    door.show(shown[who][:5])  # before the check: taken, never analysed
    assert (door.camera.idle, door.camera.fed, door.verdicts) == (5, 0, [])
    door.camera.expect(door.order)
    door.begin_check()
    started = door.t
    door.show(shown[who])
    (verdict,) = door.verdicts
    print(f"{who}: distance {verdict.distance}, {verdict.frames} frames, "
          f"{verdict.decided_at_s - started:.1f} s: {verdict.reason}")  # fmt: skip
    assert (verdict.drop_id, verdict.matched, verdict.live) == ("o-door", matched, live)
    assert not door.camera.service.checking  # decided: the template is wiped, dropped
    (record,) = [data for kind, data in door.records if kind == "recipient-check"]
    assert (record["matched"], record["live"]) == (matched, live)
    if who == "right":
        assert verdict.distance is not None and verdict.distance <= verdict.threshold
    # The order's template opened once: a second check of the drop is refused at once.
    door.verdicts.clear()
    door.begin_check()
    (again,) = door.verdicts
    assert not again.matched and "no recipient template" in again.reason


def test_a_flown_order_s_template_is_no_longer_opened(tmp_path: Path, faces) -> None:
    template, _ = faces
    door = Door(tmp_path, template)
    door.state(100.0)
    door.camera.expect(door.order)
    door.camera.flown(door.order.order_id)
    door.begin_check()
    (verdict,) = door.verdicts
    assert not verdict.matched and "not the one being flown" in verdict.reason


def test_each_order_is_announced_before_its_mission_and_released_after(tmp_path: Path) -> None:
    from companion.intake.flights import OrderFlights
    from companion.intake.intake import OrderIntake
    from companion.intake.queue import DONE, OrderQueue
    from companion.mission.inputs import GroundStatus
    from companion.security.orders import NonceStore
    from tests.test_intake import DISPATCHER, signed
    from tests.test_intake import DRONE as INTAKE_DRONE
    from tests.waiting import wait_until

    seen: list[str] = []

    def announce(order) -> object:
        seen.append(f"announced {order.order_id}")
        return lambda: seen.append(f"flown {order.order_id}")

    class Runner:
        def run(self, plan: object) -> str:
            seen.append("mission")
            return "delivered"

    with OrderQueue(tmp_path / "q.db") as queue:
        made = OrderIntake(queue, dispatcher_public=DISPATCHER.public_key(),
                           drone_id=INTAKE_DRONE, nonces=NonceStore(None),
                           publish=lambda _u: None)  # fmt: skip
        assert made.submit(signed("o-30"), "test").accepted
        flights = OrderFlights(queue, Config(), lambda _s: Runner(), lambda _o: GroundStatus,
                               lambda _u: None, announce)  # fmt: skip
        flights.start()
        try:
            wait_until(lambda: queue.get("o-30").state == DONE, "the order flown", 10)  # type: ignore[union-attr]
        finally:
            flights.stop()
    assert seen == ["announced o-30", "mission", "flown o-30"]


# -- the real daemon on the rig, with the door camera -----------------------------------------


@pytest.fixture(scope="module")
def door_rig(tmp_path_factory: pytest.TempPathFactory, faces):
    """A rig whose door camera shows the recipient (the daemon process with its
    `[identity] camera` on the feed); its status shows the identity part running."""
    from companion.intake.control import daemon_status
    from sim.harness.hil import HilRig

    with HilRig(tmp_path_factory.mktemp("door"), door_camera="recipient") as rig:
        rig.wait_ready(120.0)
        assert rig.config is not None and rig.config.identity.camera == rig.door_camera_url
        status = daemon_status(rig.config.intake.socket_path)
        identity = status["subsystems"]["identity"]
        assert identity["state"] == "running", identity
        assert identity["detail"].startswith(f"door camera {rig.door_camera_url}: running")
        yield rig
        assert rig.stop_daemon() == 0, rig.daemon.tail()


def audit_records(rig, kind: str) -> list[dict]:
    """The data of the drone's audit records of `kind`, once the trail is verified."""
    from companion.security.audit import verify_audit

    drone = KeyStore(rig.work / "keys" / "drone")
    trail = verify_audit(rig.work / "audit.jsonl", drone.drone_identity_key().public_key())
    assert trail.ok, trail
    lines = (rig.work / "audit.jsonl").read_text().splitlines()
    return [r["data"] for r in map(json.loads, lines) if r.get("kind") == kind]


def face_check(rig, order_id: str) -> tuple[dict, float]:
    """The order's "recipient-check" record, and the seconds (autopilot's clock) from the
    drone asking for its recipient to the identity service's verdict."""
    (check,) = [r for r in audit_records(rig, "recipient-check") if r["drop"] == order_id]
    (asked,) = [r for r in audit_records(rig, "verify-recipient") if r["mission"] == order_id]
    return check, round(check["decided_at_s"] - asked["boot_time_s"], 2)


@pytest.mark.hil
@pytest.mark.timeout(400)
def test_on_the_rig_a_blinking_recipient_is_cleared_by_face_and_gets_the_parcel(door_rig) -> None:
    from tests.hil_checks import ANSWER_S, FLIGHT_S

    rig = door_rig
    order_id = "door-right"
    mark = rig.submit_order(rig.order(order_id, pin="4711"))
    rig.wait_event("verify-recipient", order_id, FLIGHT_S, since=mark)
    # No PIN is sent: the person at the door is the only way to a release.
    cleared = rig.wait_event("cleared", order_id, ANSWER_S, since=mark)
    assert (cleared.detail["by"], cleared.detail["source"]) == ("face", "identity service")
    rig.wait_event("released", order_id, ANSWER_S, since=mark)
    done = rig.wait_event("order-done", order_id, FLIGHT_S, since=mark)
    assert done.detail["outcome"] == "delivered"
    assert rig.server is not None and rig.server.state.gripper_released
    check, took = face_check(rig, order_id)
    assert check["matched"] and check["live"] and check["distance"] <= check["threshold"]
    assert not [r for r in audit_records(rig, "recipient-pin") if r.get("drop") == order_id]
    print(f"genuine: distance {check['distance']}, {check['frames']} frames, "
          f"check {took} s")  # fmt: skip


@pytest.mark.hil
@pytest.mark.timeout(400)
def test_on_the_rig_an_impostor_is_refused_and_the_parcel_flown_home(door_rig) -> None:
    from sim.harness.hil_door import door_faces
    from tests.hil_checks import ANSWER_S, FLIGHT_S

    rig = door_rig
    assert rig.door is not None
    rig.door.show(door_faces("impostor", "blink"))
    order_id = "door-impostor"
    mark = rig.submit_order(rig.order(order_id, pin="4711"))
    rig.wait_event("verify-recipient", order_id, FLIGHT_S, since=mark)
    verdict = rig.wait_event("recipient-verdict", order_id, ANSWER_S, since=mark)
    assert verdict.detail["outcome"] == "refused", verdict.detail
    done = rig.wait_event("order-done", order_id, FLIGHT_S, since=mark)
    assert done.detail["outcome"] != "delivered"
    kinds = [e.kind for e in rig.ground.events(order_id, mark)]
    assert "released" not in kinds and "cleared" not in kinds
    assert rig.server is not None
    snap = rig.server.state  # home again, landed
    assert snap.landed and distance_m(snap.lat, snap.lon, rig.home[0], rig.home[1]) < 5.0
    check, took = face_check(rig, order_id)
    assert not check["matched"] and check["distance"] > check["threshold"]
    print(f"impostor: distance {check['distance']}, {check['frames']} frames, "
          f"check {took} s: {done.detail['outcome']}")  # fmt: skip
