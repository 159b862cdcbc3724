"""What the hardware-in-the-loop tests check after every flight, faults or not: the order's
end reached the dispatcher, and nothing was lost on the way, from the telemetry queue, the
mission journal or the audit trail."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from companion.intake.control import daemon_status
from companion.mission.handover import AUDITED_EVENTS
from companion.mission.journal import FINISHED_EVENT, Journal
from companion.security.audit import verify_audit
from companion.security.keys import KeyStore
from companion.telemetry import schema
from companion.telemetry.publisher import SET_ASIDE_EVENT
from sim.harness.hil import HilRig, follow_order
from sim.harness.hil_ground import Received
from tests.waiting import wait_until

PIN = "4711"
#: Bounds on what the rig waits for: generous, since a loaded machine slows everything but
#: the vehicle's flight, which keeps real time.
ANSWER_S = 60.0
FLIGHT_S = 300.0


#: Events of an order the uplink makes itself, which the mission journal does not hold: the
#: order's and commands' answers, the GPS cross-check's alarms (a loaded machine makes the two
#: receivers' times drift apart), records set aside as too large.
UPLINK_ONLY = ("order-", "command-", "gps-integrity-", SET_ASIDE_EVENT)


def phase_entered(phase: str, order_id: str) -> Callable[[Received], bool]:
    """Matches the event of the order's mission entering `phase`."""

    def match(received: Received) -> bool:
        record = received.record
        return (
            isinstance(record, schema.Event)
            and record.kind == "enter"
            and record.phase == phase
            and record.mission_id == order_id
        )

    return match


def deliver(rig: HilRig, order_id: str, mark: int) -> None:
    """Follow the order from the ground's index `mark` to its end, the operator sending the
    PIN by SMS when the drone asks for its recipient; it must be delivered."""
    assert rig.ground is not None
    last = follow_order(
        rig.ground,
        order_id,
        since=mark,
        timeout_s=FLIGHT_S,
        answer_recipient=lambda: rig.send_sms(f"pin {PIN}"),
        check=rig.daemon_problem,
    )
    assert (last.kind, last.detail["outcome"]) == ("order-done", "delivered"), last


def status(rig: HilRig) -> dict[str, Any]:
    """`skycourier status` of the rig's running daemon, over its control socket."""
    assert rig.config is not None
    return daemon_status(rig.config.intake.socket_path)


def wait_status(rig: HilRig, what: str, test: Callable[[dict[str, Any]], bool], timeout_s: float):
    """Wait until the daemon's status passes `test`; returns that status."""
    seen: list[dict[str, Any]] = []

    def check() -> bool:
        problem = rig.daemon_problem()
        assert problem is None, problem
        seen[:] = [status(rig)]
        return test(seen[0])

    wait_until(check, what, timeout_s)
    return seen[0]


def assert_nothing_lost(rig: HilRig, order_id: str, since: int) -> None:
    """After the order's end: every record the daemon had queued by now reaches the broker
    (sequence numbers 1 to the last queued, without a gap: records are queued all the time
    and sent in batches, so "nothing pending" is never a steady state), every mission event
    the dispatcher heard is in the journal in the same order and the mission is closed there,
    and every audited transition of the mission is in the audit trail, whose chain and
    signatures hold."""
    last_seq = status(rig)["uplink"]["last_seq"]
    ground = rig.ground
    assert ground is not None

    def all_arrived() -> bool:
        seqs = {r.record.seq for r in ground.received() if not isinstance(r.record, schema.Status)}
        return set(range(1, last_seq + 1)) <= seqs

    wait_until(all_arrived, f"records 1..{last_seq} at the ground", ANSWER_S)

    with Journal(rig.work / "journal.db") as journal:
        assert order_id not in journal.unfinished()
        recorded = journal.events(order_id)
    heard = [e.kind for e in ground.events(order_id, since=since)]
    heard = [kind for kind in heard if not kind.startswith(UPLINK_ONLY)]
    journaled = [e.event for e in recorded]
    assert journaled[: len(heard)] == heard, (journaled, heard)
    assert recorded[-1].event == FINISHED_EVENT

    drone = KeyStore(rig.work / "keys" / "drone")
    trail = verify_audit(rig.work / "audit.jsonl", drone.drone_identity_key().public_key())
    assert trail.ok, trail
    audited = []
    for line in (rig.work / "audit.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["data"].get("mission") == order_id:
            audited.append(record["kind"])
    expected = [
        e.event
        for e in recorded
        if e.event in AUDITED_EVENTS or e.event in ("abort", FINISHED_EVENT)
    ]
    assert audited == expected, (audited, expected)
