"""The lockstep's followers: how long the vehicle waits for each, and the telemetry uplink's
hold before take-off (`sim.harness.simulate.uplink_follower`), with stand-ins for the
vehicle, the mission and the uplink: no wall time is waited for."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from sim.harness.lockstep import Follower, Lockstep
from sim.harness.simulate import UPLINK_LEAD_S, UPLINK_PATIENCE_S, uplink_follower


def lockstep(*followers: Follower, patience_s: float) -> Lockstep:
    server: Any = SimpleNamespace(link_blocked=False)
    runner: Any = SimpleNamespace(running=False)
    return Lockstep(server, runner, followers=followers, patience_s=patience_s)


def test_a_follower_with_patience_of_its_own_is_waited_for_that_long() -> None:
    behind = Follower("slow part", lambda: 0.0, max_lead_s=1.0)
    patient = Follower("modem", lambda: 0.0, max_lead_s=1.0, patience_s=1000.0)
    hasty = lockstep(behind, patience_s=0.0)
    assert hasty.gate(5.0) is False  # starts waiting
    assert hasty.gate(5.0) is True and hasty.stalls == 1  # no patience: let go at once
    waiting = lockstep(behind, patient, patience_s=0.0)
    assert [waiting.gate(5.0) for _ in range(3)] == [False, False, False]
    assert waiting.stalls == 0
    assert lockstep(patient, patience_s=0.0).gate(0.5) is True  # within its lead


class Uplink:
    """What the follower reads of a `TelemetryUplink`."""

    def __init__(self) -> None:
        self.published = 0
        self.transport = SimpleNamespace(connected=False)
        self.publisher = SimpleNamespace(stats=lambda: SimpleNamespace(published=self.published))


def test_the_uplink_holds_the_clock_whenever_it_stops_flowing_before_take_off() -> None:
    uplink = Uplink()
    server = SimpleNamespace(state=SimpleNamespace(armed=False))
    follower = uplink_follower(uplink, server)  # type: ignore[arg-type]
    assert (follower.max_lead_s, follower.patience_s) == (UPLINK_LEAD_S, UPLINK_PATIENCE_S)
    assert follower.seen() == 0.0  # booting: the vehicle may run UPLINK_LEAD_S, then waits
    uplink.transport.connected = True
    assert follower.seen() == 0.0  # connected, nothing acknowledged yet: not flowing
    uplink.published = 3
    assert follower.seen() == math.inf
    uplink.transport.connected = False  # an AT timeout on a loaded machine, a recovery...
    assert follower.seen() == 0.0  # ...holds the clock again while the preflight waits
    uplink.transport.connected = True
    server.state.armed = True
    assert follower.seen() == math.inf
    uplink.transport.connected = False  # in flight: the modem's to ride out
    server.state.armed = False  # landed and disarmed: still never again
    assert follower.seen() == math.inf
