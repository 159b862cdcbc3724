"""Fault injection and the lockstep gate of the built-in vehicle: the hooks the companion's
and the simulator harness's tests use. Durations are simulated seconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from sim.vehicle import DEFAULT_HOME, Faults, VehicleServer
from sim.vehicle.faults import FaultState
from tests.test_sim_vehicle import GUIDED, LOITER, REL_INT, C, Gcs, offset

ACCEPTED, FAILED = C.MAV_RESULT_ACCEPTED, C.MAV_RESULT_FAILED
TARGET = "POSITION_TARGET_GLOBAL_INT"
HOLD_AT = 2.0 + 1e-9  # simulated time adds up 0.02 s steps: allow their rounding


@pytest.fixture
def flying() -> Iterator[tuple[VehicleServer, Gcs]]:
    """A vehicle hovering at 10 m in GUIDED, POSITION_TARGET_GLOBAL_INT at 10 Hz."""
    server = VehicleServer(DEFAULT_HOME, speedup=20.0, port=0).start()
    gcs = Gcs(server.port)
    try:
        assert gcs.command(C.MAV_CMD_SET_MESSAGE_INTERVAL, 87, 100_000) == ACCEPTED
        gcs.arm_guided_when_ready()
        gcs.takeoff(10.0)
        yield server, gcs
    finally:
        gcs.close()
        server.stop()


def settle(gcs: Gcs, seconds: float) -> None:
    until = gcs.sim_time + seconds
    gcs.wait(lambda: gcs.sim_time >= until, f"{seconds} s")


def no_ack(gcs: Gcs, command: int, *params: float) -> bool:
    """Send a COMMAND_LONG and report whether no ACK came within 0.5 wall seconds (10 s
    simulated: ArduPilot answers at once)."""
    try:
        gcs.inbox = [m for m in gcs.inbox if m.get_type() != "COMMAND_ACK"]
        gcs.conn.mav.command_long_send(1, 1, command, 0, *params, *[0.0] * (7 - len(params)))
        gcs.expect("COMMAND_ACK", timeout=0.5)
    except AssertionError:
        return True
    return False


def reposition(gcs: Gcs, lat: int, lon: int, alt: float, flags: int = 0) -> int:
    return gcs.command_int(C.MAV_CMD_DO_REPOSITION, REL_INT, [-1, flags, 0, 0], lat, lon, alt)


def test_faults_are_validated() -> None:
    with pytest.raises(ValueError, match="drop_commands"):
        Faults(drop_commands=1.5)
    with pytest.raises(ValueError, match="drop_setpoints"):
        Faults(drop_setpoints=-0.1)
    with pytest.raises(ValueError, match="exclude each other"):
        Faults(refuse_targets=True, ignore_targets=True)
    assert Faults(drop_command_ids=[176, 400]).drop_command_ids == frozenset({176, 400})


def test_losses_are_drawn_reproducibly_from_the_seed() -> None:
    def losses(seed: int) -> list[bool]:
        state = FaultState(Faults(drop_commands=0.3, drop_setpoints=0.3, seed=seed))
        return [state.drop_command(400) or state.drop_setpoint() for _ in range(2000)]

    first = losses(7)
    assert losses(7) == first
    assert losses(8) != first
    # a message is lost when either draw (0.3 each) says so: 1 - 0.7² = 0.51
    assert sum(first) / len(first) == pytest.approx(0.51, abs=0.04)
    only_arming = FaultState(Faults(drop_commands=1.0, drop_command_ids=frozenset({400})))
    assert only_arming.drop_command(400) and not only_arming.drop_command(176)


def test_dropped_commands_have_no_effect_and_no_ack() -> None:
    faults = Faults(drop_commands=1.0, drop_command_ids=frozenset({C.MAV_CMD_DO_SET_MODE}))
    server = VehicleServer(DEFAULT_HOME, speedup=20.0, port=0, faults=faults).start()
    gcs = Gcs(server.port)
    try:
        assert no_ack(gcs, C.MAV_CMD_DO_SET_MODE, 1, GUIDED)
        assert server.state.mode == "STABILIZE"
        # commands not in the set still get through
        assert gcs.command(C.MAV_CMD_REQUEST_MESSAGE, C.MAVLINK_MSG_ID_AUTOPILOT_VERSION) == 0
        server.set_faults(Faults(drop_commands=1.0))
        assert no_ack(gcs, C.MAV_CMD_REQUEST_MESSAGE, C.MAVLINK_MSG_ID_AUTOPILOT_VERSION)
        server.set_faults(Faults())
        assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, GUIDED) == ACCEPTED
        assert server.state.mode == "GUIDED"
    finally:
        gcs.close()
        server.stop()


def test_dropped_setpoints_never_arrive(flying: tuple[VehicleServer, Gcs]) -> None:
    server, gcs = flying
    server.set_faults(Faults(drop_setpoints=1.0))
    gcs.goto(*offset(40, 0), 10)
    gcs.velocity(5, 0, 0)
    settle(gcs, 3.0)
    assert abs(server.state.north_m) < 0.5
    server.set_faults(Faults())
    goal = offset(40, 0)
    gcs.goto(*goal, 10)
    gcs.wait(lambda: gcs.distance_to(*goal) < 1.0, "the goal once setpoints get through")


def test_refused_targets_fail_like_a_target_outside_the_fence(
    flying: tuple[VehicleServer, Gcs],
) -> None:
    server, gcs = flying
    server.set_faults(Faults(refuse_targets=True))
    goal = offset(40, 0)
    assert reposition(gcs, *goal, 10) == FAILED
    gcs.goto(*goal, 10)
    settle(gcs, 3.0)
    assert abs(server.state.north_m) < 0.5 and TARGET not in gcs.last
    assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, LOITER) == ACCEPTED
    assert reposition(gcs, *goal, 10, flags=1) == FAILED
    assert server.state.mode == "LOITER"  # refused before the mode change, as ArduCopter
    # velocity setpoints are not destinations
    assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, GUIDED) == ACCEPTED
    gcs.velocity(3, 0, 0)
    gcs.wait(lambda: server.state.north_m > 2.0, "velocity control")


def test_ignored_targets_are_accepted_and_never_take_effect(
    flying: tuple[VehicleServer, Gcs],
) -> None:
    server, gcs = flying
    first = offset(20, 0)
    assert reposition(gcs, *first, 10) == ACCEPTED
    gcs.wait(lambda: gcs.distance_to(*first) < 1.0, "the first target")
    server.set_faults(Faults(ignore_targets=True))
    second = offset(60, 0)
    assert reposition(gcs, *second, 10) == ACCEPTED
    gcs.goto(*second, 10)
    settle(gcs, 5.0)
    assert gcs.distance_to(*first) < 1.0  # still holding the previous target
    assert (gcs.last[TARGET].lat_int, gcs.last[TARGET].lon_int) == first
    assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, LOITER) == ACCEPTED
    assert reposition(gcs, *second, 10, flags=1) == ACCEPTED
    assert server.state.mode == "LOITER"


def test_a_closed_step_gate_holds_time_but_not_the_link() -> None:
    released = threading.Event()
    calls: list[float] = []
    server: VehicleServer | None = None

    def gate(t_next: float) -> bool:
        calls.append(t_next)
        # the gate may read the server: it is called outside the server's lock
        assert server is not None and server.state.time_s < t_next
        return t_next <= HOLD_AT or released.is_set()

    server = VehicleServer(DEFAULT_HOME, speedup=20.0, port=0, step_gate=gate).start()
    gcs = Gcs(server.port)
    try:
        gcs.wait(lambda: server.sim_time == pytest.approx(2.0), "the hold at 2 s", 10)
        held_calls = len(calls)
        time.sleep(0.3)  # 6 s of simulated time at 20x, were the gate open
        assert server.sim_time <= HOLD_AT
        assert len(calls) > held_calls + 10  # asked again about every millisecond
        # the link is served meanwhile: commands are ACKed, parameters answered
        assert gcs.command(C.MAV_CMD_DO_SET_MODE, 1, GUIDED) == ACCEPTED
        assert server.state.mode == "GUIDED"
        assert gcs.set_param("RTL_ALT", 2500).param_value == 2500
        assert server.sim_time <= HOLD_AT
        released.set()
        released_at = time.monotonic()
        time.sleep(0.05)
        # no catching up on the hold: at most the speed-up times the wall time since release
        elapsed = time.monotonic() - released_at
        assert server.sim_time <= 2.0 + 20.0 * elapsed + 0.1
        gcs.wait(lambda: server.sim_time > 3.0, "time to go on", 10)
        assert calls[-1] > 3.0
        server.set_step_gate(None)
    finally:
        gcs.close()
        server.stop()
