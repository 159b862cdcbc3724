"""The simulated downward camera near the drop, seen by the real detector.

A person stands on the pad when the descent starts and walks off soon after the mission holds
for them; the frames go through the real YOLOv4-Tiny detector into the descent-cone guard, and
each frame's verdict reaches the mission as a `ConeVerdict` stamped with the simulated time
the frame shows, so the hold and resume of the hand-over are exercised end to end.

With the built-in vehicle the camera runs in lockstep: frames are due every `FRAME_PERIOD_S`
of simulated time while the drone is near the drop, and the vehicle's clock waits at each one
until the frame has been rendered, detected and judged by the mission (`allow`, part of the
vehicle's step gate). The outcome, holds and phases are then the same on a loaded machine as
on an idle one. ArduPilot SITL cannot be paused from outside: there the camera renders the
companion's latest view of the vehicle as often as the machine allows, and the mission holds
on any gap between frames (a stale frame never counts as clear).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from companion.bus import Bus
from companion.config import VisionConfig
from companion.geo import distance_m, local_en_m
from companion.mission.events import MissionEvent
from companion.mission.inputs import ConeVerdict
from companion.mission.runner import MissionRunner
from companion.vision.descent_guard import DescentGuard
from companion.vision.detector import Detector, model_path
from companion.vision.errors import ModelError
from companion.vision.obstacles import CameraGeometry
from companion.vision.service import Detections
from firmware_bridge.state import VehicleState
from sim.camera import GEOMETRY, PersonVisit, Pinhole, SimCamera, SimScene

log = logging.getLogger(__name__)

#: Simulated seconds between frames (4 Hz).
FRAME_PERIOD_S = 0.25
#: The camera only matters near the hand-over: below this altitude, within this distance of
#: the drop, until the parcel is released (rendering and detecting cost ~50-80 ms a frame).
VISION_BELOW_M = 40.0
VISION_WITHIN_M = 50.0
#: The simulated person steps onto the pad as the descent starts and walks off this many
#: simulated seconds after the drone has stopped over them (at the latest after the stay).
PERSON_LINGER_S = 1.0
PERSON_MAX_STAY_S = 30.0
#: Wall seconds a frame waits for the mission to take its verdict in.
MISSION_PATIENCE_S = 5.0


@dataclass(frozen=True)
class CameraPose:
    """Where the camera is when a frame is taken: simulated time, position, height."""

    t: float
    lat: float
    lon: float
    alt_rel_m: float


def companion_geometry(pinhole: Pinhole) -> CameraGeometry:
    """The companion's camera model for the emulated camera: the same pinhole, pointing
    straight down."""
    return CameraGeometry(
        width=pinhole.width, height=pinhole.height, hfov_deg=pinhole.hfov_deg, pitch_down_deg=90.0
    )


class SimVision:
    """The vision loop of `skycourier sim`: renders `SimCamera` frames at the vehicle's pose,
    runs the real detector on them, feeds a `DescentGuard` and publishes each frame's
    `ConeVerdict` (and `Detections`, for telemetry) on the bus; `summary()` is the report's
    `vision` section. `enabled` is False (with `note` saying why) when the model is missing
    or the camera is not `wanted`: the simulator then flies a plan without a camera."""

    def __init__(self, bus: Bus, drop: tuple[float, float], *, wanted: bool = True) -> None:
        self.bus = bus
        self.drop = drop
        self.model = model_path(VisionConfig().variant)  # the model that ships
        self.guard: DescentGuard | None = None
        self.note = ""
        self.lockstep = False
        self.frames = 0
        self.errors = 0
        self.detections: dict[str, int] = {}
        self.intruder_frames = 0
        self.frame_ms: list[float] = []
        self.holds: list[dict] = []
        self._camera = SimCamera(SimScene(people=()))
        self._scene_t0: float | None = None  # simulated time the descent started
        self._done = False  # parcel released or mission over: the camera is off
        self._cond = threading.Condition()
        self._next_t = 0.0  # the next frame time on the lockstep grid
        self._pending: CameraPose | None = None
        self._runner: MissionRunner | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._detector: Detector | None = None
        if not wanted:
            self.note = "turned off (--no-camera)"
            return
        if not self.model.exists():
            self.note = f"{self.model} is missing"
            log.warning(
                "sim camera off: %s is missing; run `skycourier models build` to enable the "
                "simulated camera (flying without vision)",
                self.model,
            )
            return
        try:
            self._detector = Detector(self.model, threads=1)
        except ModelError as exc:
            self.note = str(exc)
            log.warning("sim camera off: %s; run `skycourier models build`", exc)
            return
        self.guard = DescentGuard(companion_geometry(GEOMETRY))
        bus.subscribe(MissionEvent, self._on_event)

    @property
    def enabled(self) -> bool:
        """True when the camera and detector work: the mission's plan then needs its frames."""
        return self.guard is not None

    # -- running -----------------------------------------------------------------------------

    def start_lockstep(self, runner: MissionRunner) -> None:
        """Frames on request from the vehicle's step gate (`allow`); each waits until the
        mission has taken its verdict in."""
        if not self.enabled:
            return
        self.lockstep = True
        self._runner = runner
        self._start(self._serve_requests)

    def start_free(self, clock: Callable[[], float]) -> None:
        """Frames of the companion's latest view of the vehicle, every `FRAME_PERIOD_S` of
        `clock` at most (for an autopilot that cannot be paused)."""
        if not self.enabled:
            return
        latest: dict[str, VehicleState] = {}
        self.bus.subscribe(VehicleState, lambda s: latest.update(state=s))
        self._start(lambda: self._free_run(clock, latest))

    def _start(self, target: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=target, name="sim-vision", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def allow(self, t_next: float, pose: Callable[[], CameraPose]) -> bool:
        """The vehicle's step gate: False while a frame due before `t_next` is being taken.
        Frames fall on a fixed grid of simulated time and are only taken near the drop, so the
        same flight sees the same frames at the same moments whatever the machine's speed."""
        if not self.lockstep or self._done:
            return True
        with self._cond:
            if self._pending is not None:
                return False
            while t_next > self._next_t:
                here = pose()
                if not self._near(here.lat, here.lon, here.alt_rel_m):
                    self._next_t += FRAME_PERIOD_S
                    continue
                self._pending = here
                self._cond.notify_all()
                return False
        return True

    def _serve_requests(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._stop.is_set())
                pose = self._pending
            if pose is None:
                return
            try:
                self._frame(pose)
                if self._runner is not None and not self._runner.wait_idle(MISSION_PATIENCE_S):
                    log.warning("sim camera: the mission took more than %g s over a frame",
                                MISSION_PATIENCE_S)  # fmt: skip
            finally:
                with self._cond:
                    self._pending = None
                    self._next_t += FRAME_PERIOD_S
                    self._cond.notify_all()

    def _free_run(self, clock: Callable[[], float], latest: dict[str, VehicleState]) -> None:
        next_t = -math.inf
        while not self._stop.wait(0.01):
            state = latest.get("state")
            pos = state.position if state is not None else None
            if self._done or pos is None or state is None or state.boot_time_s is None:
                continue
            if clock() < next_t or not self._near(pos.lat, pos.lon, pos.alt_rel_m):
                continue
            next_t = clock() + FRAME_PERIOD_S
            self._frame(CameraPose(state.boot_time_s, pos.lat, pos.lon, pos.alt_rel_m))

    def _near(self, lat: float, lon: float, alt_rel_m: float) -> bool:
        return alt_rel_m < VISION_BELOW_M and distance_m(lat, lon, *self.drop) < VISION_WITHIN_M

    # -- one frame ---------------------------------------------------------------------------

    def _frame(self, pose: CameraPose) -> None:
        assert self.guard is not None and self._detector is not None
        east, north = local_en_m(self.drop[0], self.drop[1], pose.lat, pose.lon)
        scene_t = pose.t - self._scene_t0 if self._scene_t0 is not None else -1.0
        size = (GEOMETRY.width, GEOMETRY.height)
        try:
            started = time.perf_counter()
            found = self._detector.detect(
                self._camera.frame(pose.alt_rel_m, scene_t, (north, east))
            )
            self.frame_ms.append((time.perf_counter() - started) * 1000.0)
            intruders = self.guard.update(found, size, pose.t)
        except Exception:  # a bad frame is counted and logged, never the end of the sim
            self.errors += 1
            log.exception("sim camera: frame failed")
            return
        self.frames += 1
        self.intruder_frames += bool(intruders)
        counts: dict[str, int] = {}
        for det in found:
            counts[det.class_name] = counts.get(det.class_name, 0) + 1
            self.detections[det.class_name] = self.detections.get(det.class_name, 0) + 1
        self.bus.publish(ConeVerdict(pose.t, self.guard.reason))
        # On the bus like the daemon's camera: telemetry carries the counts.
        self.bus.publish(
            Detections(
                pose.t, self.frames, tuple(sorted(counts.items(), key=lambda kv: -kv[1])), size,
                tuple(found), self.frame_ms[-1],
            )
        )  # fmt: skip

    # -- the scene follows the mission -------------------------------------------------------

    def _on_event(self, event: MissionEvent) -> None:
        phase, what, at = event.phase.value, event.event, event.boot_time_s
        if phase == "descend" and what == "enter" and at is not None:
            self._scene_t0 = at
            self._camera = self._scene(PERSON_MAX_STAY_S)
        elif what == "hold" and phase in ("descend", "release"):
            self.holds.append({"phase": phase, "at_s": at, "reason": event.detail.get("reason")})
            if self._scene_t0 is not None and at is not None and len(self.holds) == 1:
                # Seeing the drone stop above them, the person walks off.
                self._camera = self._scene(at - self._scene_t0 + PERSON_LINGER_S)
        elif what == "resume" and self.holds and "held_s" in event.detail:
            self.holds[-1]["held_s"] = event.detail["held_s"]
        if what in ("released", "abort") or phase in ("climb", "done"):
            self._done = True

    def _scene(self, stay_s: float) -> SimCamera:
        return SimCamera(SimScene(people=(PersonVisit(appear_s=0.0, stay_s=stay_s),)))

    def summary(self) -> dict:
        """The report's `vision` section."""
        if not self.enabled:
            return {"enabled": False, "note": self.note, "holds": len(self.holds)}
        ms = sorted(self.frame_ms)
        return {
            "enabled": True,
            "model": self.model.name,
            "lockstep": self.lockstep,
            "window": (
                f"below {VISION_BELOW_M:g} m within {VISION_WITHIN_M:g} m of the drop, "
                f"until the release, every {FRAME_PERIOD_S:g} simulated seconds"
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
