"""COMMAND_LONG / COMMAND_INT cores against scripted and random autopilot behaviour."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mavtools import (
    AUTOPILOT,
    OWN,
    Driver,
    addressed,
    ap,
    decode_stream,
    drive,
    messages,
    raw_frames,
    scripts,
    types,
)

from firmware_bridge.command_protocol import CommandAck, CommandInt, CommandLong, result_name
from firmware_bridge.dialect import mavlink
from firmware_bridge.errors import CommandError, ProtocolTimeout

ARM = mavlink.MAV_CMD_COMPONENT_ARM_DISARM
REPOSITION = mavlink.MAV_CMD_DO_REPOSITION
R = mavlink  # MAV_RESULT_* constants


def arm(**options: float) -> CommandLong:
    return CommandLong(ARM, [1], 1, 1, **options)


def ack(result: int, command: int = ARM, **fields: int) -> object:
    return ap("COMMAND_ACK", command=command, result=result, **fields)


def test_accepted_at_first_try() -> None:
    core = arm()
    sent = drive(core, [ack(R.MAV_RESULT_ACCEPTED)])
    assert types(sent) == ["COMMAND_LONG"]
    msg = sent[0]
    assert (msg.get_srcSystem(), msg.get_srcComponent()) == OWN
    assert (msg.target_system, msg.target_component) == AUTOPILOT
    assert (msg.command, msg.confirmation) == (ARM, 0)
    assert [msg.param1, msg.param2, msg.param7] == [1.0, 0.0, 0.0]
    assert core.finished and core.deadline is None
    assert core.result() == CommandAck(R.MAV_RESULT_ACCEPTED, None, 0)


def test_each_retransmission_counts_confirmation_up() -> None:
    core = arm()
    sent = drive(core, [1.0, 1.0, ack(R.MAV_RESULT_ACCEPTED)])
    assert [m.confirmation for m in sent] == [0, 1, 2]
    assert core.result().result == R.MAV_RESULT_ACCEPTED


def test_no_ack_after_all_retries_is_a_timeout_naming_the_command() -> None:
    core = arm(timeout=1.0, retries=3)
    driver = Driver(core)
    driver.start()
    driver.wait(3.9)
    assert [m.confirmation for m in driver.sent] == [0, 1, 2, 3]
    assert not core.finished
    driver.wait(0.1)
    with pytest.raises(ProtocolTimeout, match="MAV_CMD_COMPONENT_ARM_DISARM"):
        core.result()


def test_in_progress_waits_without_resending_then_accepted() -> None:
    core = arm()
    sent = drive(
        core,
        [
            ack(R.MAV_RESULT_IN_PROGRESS, progress=40),
            9.0,
            ack(R.MAV_RESULT_IN_PROGRESS, progress=80),
            9.0,
            ack(R.MAV_RESULT_ACCEPTED, result_param2=7),
        ],
    )
    assert types(sent) == ["COMMAND_LONG"]
    assert core.result() == CommandAck(R.MAV_RESULT_ACCEPTED, 80, 7)
    assert core.progress == 80


def test_in_progress_without_final_ack_times_out() -> None:
    core = arm(in_progress_timeout=10.0)
    sent = drive(core, [ack(R.MAV_RESULT_IN_PROGRESS, progress=10), 10.0])
    assert types(sent) == ["COMMAND_LONG"]
    with pytest.raises(ProtocolTimeout, match="IN_PROGRESS"):
        core.result()


def test_temporarily_rejected_is_retried_after_the_delay() -> None:
    core = arm(temp_reject_delay=0.5)
    driver = Driver(core)
    driver.start()
    assert driver.play([ack(R.MAV_RESULT_TEMPORARILY_REJECTED), 0.4]) == []
    resent = driver.wait(0.1)
    assert [m.confirmation for m in resent] == [1]
    driver.feed(ack(R.MAV_RESULT_ACCEPTED))
    assert core.result().result == R.MAV_RESULT_ACCEPTED


def test_temporarily_rejected_until_retries_are_exhausted() -> None:
    core = arm(temp_reject_retries=3, temp_reject_delay=0.5)
    reject = ack(R.MAV_RESULT_TEMPORARILY_REJECTED)
    sent = drive(core, [reject, 0.5, reject, 0.5, reject, 0.5, reject])
    assert [m.confirmation for m in sent] == [0, 1, 2, 3]
    with pytest.raises(CommandError) as raised:
        core.result()
    assert raised.value.result == "MAV_RESULT_TEMPORARILY_REJECTED"
    assert raised.value.command == "MAV_CMD_COMPONENT_ARM_DISARM"


def test_repeated_rejection_of_one_attempt_counts_once() -> None:
    core = arm(temp_reject_retries=1, temp_reject_delay=0.5)
    reject = ack(R.MAV_RESULT_TEMPORARILY_REJECTED)
    drive(core, [reject, reject, 0.5, ack(R.MAV_RESULT_ACCEPTED)])
    assert core.result().result == R.MAV_RESULT_ACCEPTED


def test_retry_after_rejection_gets_fresh_resends() -> None:
    core = arm(retries=1, temp_reject_delay=0.5)
    sent = drive(core, [0.9, ack(R.MAV_RESULT_TEMPORARILY_REJECTED), 0.5, 1.9])
    # Sent at 0, rejected at 0.9, retried at 1.4; with retries=1 that retry still gets its
    # own resend at 2.4 instead of inheriting the first attempt's used-up budget.
    assert [m.confirmation for m in sent] == [0, 1, 2]
    assert not core.finished


@pytest.mark.parametrize(
    ("result", "name"),
    [
        (R.MAV_RESULT_DENIED, "MAV_RESULT_DENIED"),
        (R.MAV_RESULT_UNSUPPORTED, "MAV_RESULT_UNSUPPORTED"),
        (R.MAV_RESULT_FAILED, "MAV_RESULT_FAILED"),
        (6, "MAV_RESULT_CANCELLED"),
        (R.MAV_RESULT_COMMAND_LONG_ONLY, "MAV_RESULT_COMMAND_LONG_ONLY"),
        (R.MAV_RESULT_COMMAND_INT_ONLY, "MAV_RESULT_COMMAND_INT_ONLY"),
        (42, "MAV_RESULT(42)"),
    ],
)
def test_refusals_surface_the_result_by_name(result: int, name: str) -> None:
    core = arm()
    sent = drive(core, [ack(result)])
    assert types(sent) == ["COMMAND_LONG"]
    with pytest.raises(CommandError, match=re.escape(name)) as raised:
        core.result()
    assert (raised.value.command, raised.value.result) == ("MAV_CMD_COMPONENT_ARM_DISARM", name)


def test_refusal_detail_carries_result_param2() -> None:
    core = arm()
    drive(core, [ack(R.MAV_RESULT_DENIED, result_param2=3)])
    with pytest.raises(CommandError, match="result_param2=3"):
        core.result()


def test_acks_not_for_this_command_or_not_for_us_are_ignored() -> None:
    accepted = R.MAV_RESULT_ACCEPTED
    core = arm()
    drive(
        core,
        [
            ack(accepted, command=mavlink.MAV_CMD_NAV_TAKEOFF),
            ack(accepted, src=(2, 1)),
            ack(accepted, src=(1, 2)),
            ack(accepted, target_system=2),
            ack(accepted, target_component=190),
            ap("HEARTBEAT"),
        ],
    )
    assert not core.finished
    core = arm()
    drive(core, [ack(accepted, target_system=0, target_component=0)])
    assert core.result().result == accepted


def test_command_int_resends_the_identical_message() -> None:
    core = CommandInt(
        REPOSITION, mavlink.MAV_FRAME_GLOBAL, [-1, 1], 473977420, 85455940, 30.5, 1, 1
    )
    sent = drive(core, [1.0, ack(R.MAV_RESULT_ACCEPTED, command=REPOSITION)])
    assert types(sent) == ["COMMAND_INT", "COMMAND_INT"]
    assert sent[0].to_dict() == sent[1].to_dict()
    msg = sent[0]
    assert (msg.frame, msg.x, msg.y, msg.z) == (mavlink.MAV_FRAME_GLOBAL, 473977420, 85455940, 30.5)
    assert [msg.param1, msg.param2, msg.param3, msg.param4] == [-1.0, 1.0, 0.0, 0.0]
    assert core.result().result == R.MAV_RESULT_ACCEPTED


def test_command_int_refusal() -> None:
    core = CommandInt(REPOSITION, mavlink.MAV_FRAME_GLOBAL, [], 0, 0, 0.0, 1, 1)
    drive(core, [ack(R.MAV_RESULT_COMMAND_LONG_ONLY, command=REPOSITION)])
    with pytest.raises(CommandError, match="MAV_CMD_DO_REPOSITION refused"):
        core.result()


def test_result_before_the_end_is_a_usage_error() -> None:
    core = arm()
    drive(core, [])
    with pytest.raises(RuntimeError, match="not finished"):
        core.result()


def test_too_many_params_is_rejected() -> None:
    with pytest.raises(ValueError, match="at most 7"):
        CommandLong(ARM, [0] * 8, 1, 1)


# --- property tests ------------------------------------------------------------------

RESULTS = st.one_of(
    st.sampled_from(
        [R.MAV_RESULT_ACCEPTED, R.MAV_RESULT_TEMPORARILY_REJECTED, R.MAV_RESULT_IN_PROGRESS]
    ),
    st.integers(0, 9),
    st.integers(0, 255),
)
COMMANDS = st.sampled_from([ARM, ARM, mavlink.MAV_CMD_NAV_TAKEOFF])
ACKS = [
    addressed("COMMAND_ACK", command=COMMANDS, result=RESULTS),
    addressed("COMMAND_ACK", command=COMMANDS, result=RESULTS),
    messages("COMMAND_ACK", command=COMMANDS, result=RESULTS),
    messages("HEARTBEAT"),
    messages("MISSION_ACK"),
    messages("COMMAND_LONG"),
]


def _is_ours(msg: object) -> bool:
    return (
        msg.get_type() == "COMMAND_ACK"
        and (msg.get_srcSystem(), msg.get_srcComponent()) == AUTOPILOT
        and msg.command == ARM
        and msg.target_system in (0, OWN[0])
        and msg.target_component in (0, OWN[1])
    )


def _check_outcome(core: CommandLong | CommandInt, driver: Driver) -> None:
    acks = [m.result for m in driver.received if _is_ours(m)]
    try:
        value = core.result()
    except CommandError as exc:
        assert exc.command == "MAV_CMD_COMPONENT_ARM_DISARM"
        final = {R.MAV_RESULT_ACCEPTED, R.MAV_RESULT_IN_PROGRESS}
        assert exc.result in {result_name(r) for r in acks if r not in final}
    except ProtocolTimeout:
        pass
    else:
        assert isinstance(value, CommandAck)
        last = driver.received[-1]
        assert _is_ours(last) and last.result == R.MAV_RESULT_ACCEPTED, "success, but not by ACK"


@settings(max_examples=300, deadline=None)
@given(scripts(*ACKS), st.booleans())
def test_random_acks_end_in_a_documented_outcome(script: list, use_int: bool) -> None:
    options = {"retries": 2, "temp_reject_retries": 2}
    core = CommandInt(ARM, 0, [], 0, 0, 0.0, 1, 1, **options) if use_int else arm(**options)
    driver = Driver(core)
    driver.start()
    driver.play(script)
    # Once the autopilot is silent: at most one pending retry, then every resend times out.
    driver.run_out(max_ticks=options["retries"] + 2)
    _check_outcome(core, driver)
    sends = [m for m in driver.sent if m.get_type() in ("COMMAND_LONG", "COMMAND_INT")]
    assert len(sends) <= (options["retries"] + 1) * (options["temp_reject_retries"] + 1)
    if not use_int:
        assert [m.confirmation for m in sends] == list(range(len(sends)))


@settings(max_examples=200, deadline=None)
@given(raw_frames(["COMMAND_ACK", "HEARTBEAT", "COMMAND_LONG"]))
def test_whatever_decodes_from_raw_bytes_never_crashes_the_core(data: bytes) -> None:
    core = arm(retries=1)
    driver = Driver(core)
    driver.start()
    decoded = decode_stream(data)
    driver.play(decoded)
    driver.run_out(max_ticks=4)
    _check_outcome(core, driver)
