"""The simulated downward camera near the drop, seen by the real detector.

A person stands on the pad when the descent starts and walks off soon after the mission holds
for them; the frames go through the real YOLOv4-Tiny detector into the same descent-cone guard
the daemon uses, so the hold and resume of the hand-over are exercised end to end.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from companion.bus import Bus
from companion.geo import distance_m
from companion.mission.events import MissionEvent
from companion.vision.obstacles import CameraGeometry
from companion.vision.service import Detections
from firmware_bridge.state import VehicleState
from sim.camera import Pinhole

log = logging.getLogger(__name__)


#: Frames per simulated second the vision loop aims at (fewer when the detector cannot keep
#: up with the speed-up: the newest moment always wins, none is queued).
VISION_HZ = 4.0
#: The camera only matters near the hand-over: below this altitude, within this distance of
#: the drop, until the parcel is released (rendering and detecting cost ~50-80 ms a frame).
VISION_BELOW_M = 40.0
VISION_WITHIN_M = 50.0
#: The simulated person steps onto the pad as the descent starts and walks off this many
#: simulated seconds after the drone has stopped over them (at the latest after the stay).
PERSON_LINGER_S = 1.0
PERSON_MAX_STAY_S = 30.0


class SimVision:
    """The vision loop of `skycourier sim`: renders `SimCamera` frames at the vehicle's
    altitude and offset from the drop point, runs the real YOLOv4-Tiny detector on them and
    feeds a `DescentGuard`, which the mission consults as its obstacle monitor. Its own thread,
    paced in simulated time; `summary()` is the report's `vision` section."""

    def __init__(self, bus: Bus, clock: Callable[[], float], drop: tuple[float, float]) -> None:
        from companion.vision.descent_guard import DescentGuard
        from companion.vision.detector import model_path
        from sim.camera import GEOMETRY

        self.clock = clock
        self.bus = bus
        self.drop = drop
        self.model = model_path("fp32")
        self.guard: DescentGuard | None = None
        self.note = ""
        self.frames = 0
        self.errors = 0
        self.detections: dict[str, int] = {}
        self.intruder_frames = 0
        self.frame_ms: list[float] = []
        self.holds: list[dict] = []
        self._geometry = GEOMETRY
        self._camera = None  # the SimCamera of the current scene
        self._scene_t0: float | None = None  # clock() when the descent started
        self._state: VehicleState | None = None
        self._done = False  # parcel released or mission over: the camera is off
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.model.exists():
            self.note = f"{self.model} is missing"
            log.warning(
                "sim camera off: %s is missing; run `skycourier models build` to enable the "
                "simulated camera (flying without vision)",
                self.model,
            )
            return
        self.guard = DescentGuard(companion_geometry(GEOMETRY), clock=clock)
        bus.subscribe(VehicleState, self._on_state)
        bus.subscribe(MissionEvent, self._on_event)

    def start(self) -> None:
        if self.guard is not None:
            self._thread = threading.Thread(target=self._run, name="sim-vision", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    # -- bus --------------------------------------------------------------------------------

    def _on_state(self, state: VehicleState) -> None:
        self._state = state

    def _on_event(self, event: MissionEvent) -> None:
        phase, what = event.phase.value, event.event
        if phase == "descend" and what == "enter":
            self._scene_t0 = self.clock()
            self._camera = self._scene(PERSON_MAX_STAY_S)
        elif what == "hold":
            self.holds.append(
                {"phase": phase, "at_s": event.boot_time_s, "reason": event.detail.get("reason")}
            )
            if self._scene_t0 is not None and len(self.holds) == 1:
                # Seeing the drone stop above them, the person walks off.
                self._camera = self._scene(self.clock() - self._scene_t0 + PERSON_LINGER_S)
        elif what == "resume" and self.holds:
            self.holds[-1]["held_s"] = event.detail.get("held_s")
        if what in ("released", "abort") or event.phase.value in ("climb", "done"):
            self._done = True

    def _scene(self, stay_s: float):
        from sim.camera import PersonVisit, SimCamera, SimScene

        return SimCamera(SimScene(people=(PersonVisit(appear_s=0.0, stay_s=stay_s),)))

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        from companion.geo import local_en_m
        from companion.vision.detector import Detector
        from companion.vision.errors import ModelError

        assert self.guard is not None
        try:
            detector = Detector(self.model, threads=1)
        except ModelError as exc:
            self.note = str(exc)
            log.warning("sim camera off: %s; run `skycourier models build`", exc)
            return
        next_t = -math.inf
        size = (self._geometry.width, self._geometry.height)
        while not self._stop.is_set():
            state = self._state
            pos = state.position if state is not None else None
            near = pos is not None and (
                pos.alt_rel_m < VISION_BELOW_M
                and distance_m(pos.lat, pos.lon, *self.drop) < VISION_WITHIN_M
            )
            t = self.clock()
            if self._done or not near or t < next_t:
                self._stop.wait(0.01)
                continue
            assert pos is not None
            next_t = t + 1.0 / VISION_HZ
            east, north = local_en_m(self.drop[0], self.drop[1], pos.lat, pos.lon)
            camera = self._camera or self._scene(0.0)
            scene_t = t - self._scene_t0 if self._scene_t0 is not None else -1.0
            try:
                started = time.perf_counter()
                found = detector.detect(camera.frame(pos.alt_rel_m, scene_t, (north, east)))
                self.frame_ms.append((time.perf_counter() - started) * 1000.0)
                intruders = self.guard.update(found, size, t)
            except Exception:  # a bad frame is counted and logged, never the end of the sim
                self.errors += 1
                log.exception("sim camera: frame failed")
                continue
            self.frames += 1
            self.intruder_frames += bool(intruders)
            counts: dict[str, int] = {}
            for det in found:
                counts[det.class_name] = counts.get(det.class_name, 0) + 1
                self.detections[det.class_name] = self.detections.get(det.class_name, 0) + 1
            # On the bus like the daemon's camera: telemetry carries the counts.
            self.bus.publish(
                Detections(
                    t, self.frames, tuple(sorted(counts.items(), key=lambda kv: -kv[1])), size,
                    tuple(found), self.frame_ms[-1],
                )
            )  # fmt: skip

    def summary(self) -> dict:
        """The report's `vision` section."""
        if self.guard is None or self.note:
            return {"enabled": False, "note": self.note, "holds": len(self.holds)}
        ms = sorted(self.frame_ms)
        return {
            "enabled": True,
            "model": self.model.name,
            "window": (
                f"below {VISION_BELOW_M:g} m within {VISION_WITHIN_M:g} m of the drop, "
                f"until the release, at most {VISION_HZ:g} frames per simulated second"
            ),
            "frames": self.frames,
            "frame_errors": self.errors,
            "frame_ms_median": round(ms[len(ms) // 2], 1) if ms else None,
            "detections": dict(sorted(self.detections.items())),
            "frames_with_intruder": self.intruder_frames,
            "holds": len(self.holds),
            "hold_s": round(sum(h.get("held_s") or 0.0 for h in self.holds), 1),
            "hold_events": self.holds,
        }


def companion_geometry(pinhole: Pinhole) -> CameraGeometry:
    """The companion's camera model for the emulated camera: the same pinhole, pointing
    straight down."""
    return CameraGeometry(
        width=pinhole.width, height=pinhole.height, hfov_deg=pinhole.hfov_deg, pitch_down_deg=90.0
    )
