"""Lockstep between the built-in vehicle and the companion, so no outcome depends on how
fast the machine is.

The vehicle runs faster than the wall clock; the companion reacts in wall time. Left alone, a
busy machine would let the vehicle fly on while the mission has not yet seen where it is, and
a descent would go on past a person the camera saw. Like SITL's lockstep with an external
physics engine, the vehicle's step gate (`Lockstep.gate`) holds its clock while the mission
is behind it by more than `max_lead_s` of simulated time or still has events to take in or
commands to send, while another part of the companion that follows the vehicle (its GPS
receiver's fixes: a `Follower`) is more than its own lead behind, and while a simulated
camera (the downward one, the door camera of the hand-over) takes a frame that is due. The
vehicle keeps answering messages meanwhile (commands are acknowledged), and its simulated
time only advances once the companion has caught up.

While the links are cut (`VehicleServer.set_link_blocked`, a pulled cable) the companion
cannot follow and the vehicle runs on its own. A companion that does not catch up within
`patience_s` wall seconds is let go (counted in `stalls` and logged) until it has caught up
again: a stuck mission must not freeze the simulator.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from companion.mission.runner import MissionRunner
from sim.harness.vision import CameraPose, SimVision
from sim.vehicle import VehicleServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Follower:
    """A part of the companion that takes in what the vehicle does: `seen()` is the newest
    simulated time it has taken in (None while it is not following yet), which may trail the
    vehicle by at most `max_lead_s`. `patience_s` is how long (wall seconds) the vehicle
    waits for it before going on without it; None: the lockstep's `patience_s`."""

    name: str
    seen: Callable[[], float | None]
    max_lead_s: float
    patience_s: float | None = None


class FrameGate(Protocol):
    """A simulated camera in lockstep: False while a frame due before `t_next` is taken."""

    def allow(self, t_next: float, pose: Callable[[], CameraPose]) -> bool: ...


class Lockstep:
    """The step gate of a `VehicleServer` flown by `runner`, with `vision`'s frames (and
    those of the other `cameras`) and the `followers`' progress."""

    def __init__(
        self,
        server: VehicleServer,
        runner: MissionRunner,
        vision: SimVision | None = None,
        *,
        followers: Sequence[Follower] = (),
        cameras: Sequence[FrameGate] = (),
        max_lead_s: float = 0.25,
        patience_s: float = 5.0,
    ) -> None:
        self.server = server
        self.runner = runner
        self.vision = vision
        own: tuple[FrameGate, ...] = (vision,) if vision is not None else ()
        self.cameras = own + tuple(cameras)
        self.followers = tuple(followers)
        self.max_lead_s = max_lead_s
        self.patience_s = patience_s
        self.stalls = 0
        self._waiting_since: float | None = None
        self._let_go = False  # after a stall: until the companion has caught up again

    def gate(self, t_next: float) -> bool:
        """May the vehicle step to simulated time `t_next`? (Called by its thread.)"""
        if not self._companion_ready(t_next):
            return False
        return all(camera.allow(t_next, self._pose) for camera in self.cameras)

    def _behind(self, t_next: float) -> list[tuple[str, float]]:
        """The parts of the companion that have not caught up with the vehicle, each with how
        long the vehicle waits for it."""
        behind = []
        runner = self.runner
        if runner.running and not self.server.link_blocked:
            seen = runner.seen_time_s
            if seen is None or t_next - seen > self.max_lead_s or not runner.idle:
                behind.append((f"the mission (seen {_time(seen)})", self.patience_s))
        for follower in self.followers:
            seen = follower.seen()
            if seen is not None and t_next - seen > follower.max_lead_s:
                patience = self.patience_s if follower.patience_s is None else follower.patience_s
                behind.append((f"{follower.name} (seen {_time(seen)})", patience))
        return behind

    def _companion_ready(self, t_next: float) -> bool:
        behind = self._behind(t_next)
        if not behind:
            self._waiting_since = None
            self._let_go = False
            return True
        if self._let_go:
            return True
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
            return False
        patience = max(wait for _name, wait in behind)
        if now - self._waiting_since < patience:
            return False
        self.stalls += 1
        self._waiting_since = None
        self._let_go = True
        log.warning(
            "lockstep: %s did not catch up with the vehicle (at %.2f s) in %g s; the vehicle "
            "goes on until it has",
            " and ".join(name for name, _wait in behind),
            t_next,
            patience,
        )
        return True

    def _pose(self) -> CameraPose:
        snap = self.server.state
        return CameraPose(snap.time_s, snap.lat, snap.lon, snap.alt_rel_m)


def _time(seen: float | None) -> str:
    return "nothing" if seen is None else f"{seen:.2f} s"
