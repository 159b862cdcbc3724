"""Hardware-in-the-loop: `skycourier run` as its own process, configured as on the drone,
against the built-in vehicle, the NEO-6M and A7670 emulators on ptys and a real mosquitto,
driven from the ground as a dispatcher and an operator would (`sim.harness.hil`).

These tests fly in real time (the vehicle at speed-up 1, so that the daemon's wall-clock
timeouts mean what they mean in the air), so they are slow: marked `hil` (deselect with
``-m "not hil"``), one rig shared by the module, about two and a half minutes in all. Every
wait is for something the rig sees happen (an event on the broker, the vehicle's state), with
a generous bound, and fails at once with the daemon's log if the daemon dies.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from companion.cli import main
from companion.geo import distance_m
from companion.mission.journal import Journal
from companion.modem.operator_sms import CommandAuthenticator, CounterStore, load_key
from companion.security.audit import verify_audit
from companion.security.keys import KeyStore
from companion.telemetry import schema
from sim.harness.hil import OPERATOR, HilRig, follow_order
from tests.conftest import SITL_SKIP, sitl_binary
from tests.hil_checks import ANSWER_S, FLIGHT_S, PIN, phase_entered
from tests.waiting import wait_until

pytestmark = [pytest.mark.hil, pytest.mark.timeout(400)]

#: The SITL instance of the rig's SITL test (TCP 5840-5843), one no other test uses.
SITL_INSTANCE = 8


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HilRig]:
    with HilRig(tmp_path_factory.mktemp("hil")) as started:
        started.wait_ready(120.0)
        yield started
        # Stopped as systemd stops it: SIGTERM, an orderly exit.
        assert started.stop_daemon() == 0, started.daemon.tail()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("unsigned", "unsigned"),
        ("tampered", "signature"),
        ("misaddressed", "wrong-drone"),
        ("stranger", "signature"),
    ],
)
def test_a_hostile_order_over_mqtt_is_refused_with_its_reason_on_the_uplink(
    rig: HilRig, kind: str, reason: str
) -> None:
    order_id = f"bad-{kind}"
    mark = rig.submit_order(rig.hostile_order(kind, order_id))
    # The answer names the order when its signed part could be read (not when unsigned).
    named = None if kind == "unsigned" else order_id
    refused = rig.wait_event("order-refused", named, ANSWER_S, since=mark)
    assert refused.mission_id == named
    assert refused.detail["accepted"] is False
    assert refused.detail["reason"] == reason, refused.detail
    assert refused.detail["message"]  # the reason in words, for the dispatcher
    assert refused.detail["source"] == f"mqtt:{schema.topic(rig.drone_id, 'orders')}"
    with rig.order_queue() as queue:
        assert queue.get(order_id) is None  # nothing of a refused order is kept


def test_a_signed_order_over_mqtt_is_flown_and_delivered_by_the_daemon_process(
    rig: HilRig,
) -> None:
    order_id = "hil-deliver"
    pid = rig.daemon.pid
    mark = rig.submit_order(rig.order(order_id, pin=PIN))
    accepted = rig.wait_event("order-accepted", order_id, ANSWER_S, since=mark)
    assert accepted.detail["source"] == f"mqtt:{schema.topic(rig.drone_id, 'orders')}"
    rig.wait_event("order-flying", order_id, ANSWER_S, since=mark)
    # At the drop the drone hovers and asks for its recipient; the operator, told so on the
    # uplink, sends the recipient's PIN in a signed SMS, which reaches the modem.
    asked = rig.wait_event("verify-recipient", order_id, FLIGHT_S, since=mark)
    assert asked.detail["drop"] == order_id
    rig.send_sms(f"pin {PIN}")
    cleared = rig.wait_event("cleared", order_id, ANSWER_S, since=mark)
    assert cleared.detail["by"] == "pin" and cleared.detail["source"] == f"sms:{OPERATOR}"
    rig.wait_event("released", order_id, ANSWER_S, since=mark)
    done = rig.wait_event("order-done", order_id, FLIGHT_S, since=mark)
    assert done.detail["outcome"] == "delivered"
    # The same process took, flew and reported the order.
    assert rig.daemon.running and rig.daemon.pid == pid
    assert rig.server is not None
    snap = rig.server.state
    assert snap.gripper_released and not snap.load_held
    assert snap.landed and not snap.armed
    assert distance_m(snap.lat, snap.lon, rig.home[0], rig.home[1]) < 5.0
    with rig.order_queue() as queue:
        row = queue.get(order_id)
    assert row is not None and (row.state, row.outcome) == ("done", "delivered")
    # The drone's audit trail holds it all, signed with its identity key and chained.
    drone = KeyStore(rig.work / "keys" / "drone")
    trail = verify_audit(rig.work / "audit.jsonl", drone.drone_identity_key().public_key())
    assert trail.ok, trail


def test_a_daemon_killed_mid_flight_and_restarted_ends_the_order_safely_losing_nothing(
    rig: HilRig,
) -> None:
    order_id = "hil-sigkill"
    mark = rig.submit_order(rig.order(order_id, pin=PIN))
    rig.wait_for(phase_entered("cruise", order_id), "the cruise to the drop", FLIGHT_S, since=mark)
    server = rig.server
    assert server is not None and server.state.armed
    rig.kill_daemon()
    # The flight controller's companion watchdog sees the companion fall silent and flies
    # home on its own, before any restart.
    wait_until(lambda: server.state.mode == "RTL", "the autopilot's watchdog RTL", 60.0)
    restart = rig.ground.mark
    rig.restart_daemon()
    interrupted = rig.wait_event("order-interrupted", order_id, ANSWER_S, since=restart)
    assert interrupted.detail["state"] == "interrupted"
    # The restarted daemon says what it did about the mission it found unfinished.
    recovered = rig.wait_event("abort", order_id, ANSWER_S, since=restart)
    assert "restarted mid-flight" in recovered.detail["reason"]
    assert recovered.detail["action"] == "RTL"
    wait_until(lambda: server.state.landed and not server.state.armed, "landed", FLIGHT_S)
    snap = server.state
    assert distance_m(snap.lat, snap.lon, rig.home[0], rig.home[1]) < 5.0
    with rig.order_queue() as queue:
        row = queue.get(order_id)
    assert row is not None and row.state == "interrupted"
    # Nothing lost from the journal: every mission event the dispatcher heard is there, in
    # order, and the restarted daemon closed the mission saying what it did.
    with Journal(rig.work / "journal.db") as journal:
        assert order_id not in journal.unfinished()
        recorded = journal.events(order_id)
    heard = [e.kind for e in rig.ground.events(order_id, since=mark)]
    heard = [kind for kind in heard if not kind.startswith("order-")]
    assert [e.event for e in recorded[: len(heard)]] == heard
    assert "released" not in [e.event for e in recorded]  # the parcel stayed aboard
    closing = [e for e in recorded if e.event == "abort"]
    assert closing and "restarted mid-flight" in closing[-1].detail["reason"]
    # Nothing lost from the telemetry queue: every record either daemon queued reached the
    # broker (FIFO: those the killed one left unsent were sent first by its successor).
    seqs = {r.record.seq for r in rig.ground.received() if not isinstance(r.record, schema.Status)}
    assert seqs == set(range(1, max(seqs) + 1))


def test_hil_sms_signs_an_operator_command_the_drone_accepts(rig: HilRig, capsys) -> None:
    assert main(["hil", "sms", "--work", str(rig.work), "status"]) == 0
    assert "queued for the rig's modem" in capsys.readouterr().out
    spooled = sorted(rig.sms_spool.glob("*.sms"))
    assert len(spooled) == 1
    text = spooled[0].read_text().strip()
    spooled[0].unlink()
    # What the drone's authenticator makes of it (a scratch counter store: the drone's own
    # counters stay untouched).
    config = rig.config
    assert config is not None and config.modem.sms_key_file is not None
    checker = CommandAuthenticator(
        key=load_key(config.modem.sms_key_file),
        drone_id=rig.drone_id,
        counters=CounterStore(rig.work / "scratch-counters.json"),
        validity_s=60.0,
    )
    assert checker.check(OPERATOR, text).command == "status"


def test_hil_order_publishes_an_order_file_and_reports_the_drones_answer(
    rig: HilRig, capsys
) -> None:
    bad = rig.work / "misaddressed.json"
    bad.write_bytes(rig.hostile_order("misaddressed", "cli-bad"))
    assert main(["hil", "order", "--work", str(rig.work), "--file", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "EVENT order-refused" in out and '"reason":"wrong-drone"' in out


@pytest.mark.sitl
def test_on_sitl_a_signed_order_over_mqtt_is_flown_and_delivered(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    binary = sitl_binary()
    if binary is None:
        pytest.skip(SITL_SKIP)
    work = tmp_path_factory.mktemp("hil-sitl")
    with HilRig(work, sitl=binary, sitl_instance=SITL_INSTANCE) as rig:
        rig.wait_ready(180.0)
        mark = rig.submit_order(rig.order("sitl-deliver", pin=PIN))
        last = follow_order(
            rig.ground,
            "sitl-deliver",
            since=mark,
            timeout_s=FLIGHT_S,
            answer_recipient=lambda: rig.send_sms(f"pin {PIN}"),
            check=rig.daemon_problem,
        )
        assert (last.kind, last.detail["outcome"]) == ("order-done", "delivered"), last
        kinds = [e.kind for e in rig.ground.events("sitl-deliver", since=mark)]
        assert "released" in kinds and "cleared" in kinds
