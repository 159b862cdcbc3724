"""Order intake: signed orders verified, queued durably and answered, by the control socket
and over MQTT; hostile submissions refused with their reason; the queue surviving a restart
and reporting what a dead daemon was flying."""

from __future__ import annotations

import contextlib
import json
import socket
import stat
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from companion.intake.control import ControlError, ControlServer, submit_order
from companion.intake.downlink import subscribe_orders
from companion.intake.intake import OrderAck, OrderIntake
from companion.intake.queue import (
    DONE,
    FLYING,
    INTERRUPTED,
    QUEUED,
    DuplicateOrder,
    OrderQueue,
)
from companion.security.orders import NonceStore, create_order
from companion.telemetry.transport import PahoTransport
from sim.mqtt_broker import Broker
from tests.waiting import wait_until

DRONE = "sky-1"
DISPATCHER = Ed25519PrivateKey.generate()
SEAL = X25519PrivateKey.generate()


def signed(order_id: str = "o-1", **changes: object) -> bytes:
    now = int(time.time())
    args: dict = {
        "drone_id": DRONE,
        "seal_public": SEAL.public_key(),
        "order_id": order_id,
        "lat": -35.3601,
        "lon": 149.1691,
        "template": np.zeros((2, 128), dtype=np.float32),
        "not_before": now - 10,
        "expires": now + 3600,
    }
    args.update(changes)
    signer = args.pop("signer", DISPATCHER)
    return create_order(signer, **args)  # type: ignore[arg-type]


@pytest.fixture
def intake(tmp_path: Path) -> tuple[OrderIntake, list[object]]:
    published: list[object] = []
    queue = OrderQueue(tmp_path / "orders.db")
    made = OrderIntake(
        queue,
        dispatcher_public=DISPATCHER.public_key(),
        drone_id=DRONE,
        nonces=NonceStore(tmp_path / "nonces.json"),
        publish=published.append,
    )
    yield made, published
    queue.close()


def test_a_signed_order_is_queued_then_answered_and_published(intake) -> None:
    made, published = intake
    blob = signed("o-1")
    ack = made.submit(blob, "test")
    assert ack.accepted and ack.reason == "accepted" and ack.order_id == "o-1"
    assert published == [ack]
    queued = made.queue.next_queued()
    assert queued is not None and queued.order_id == "o-1" and queued.state == QUEUED
    assert queued.blob == blob  # the signed bytes as received, for the record
    assert queued.digest == ack.digest and queued.source == "test"


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (lambda: signed("o-2", signer=Ed25519PrivateKey.generate()), "signature"),
        (lambda: signed("o-3", drone_id="sky-2"), "wrong-drone"),
        (
            lambda: signed(
                "o-4", not_before=int(time.time()) - 7200, expires=int(time.time()) - 3600
            ),
            "expired",
        ),
        (lambda: b"{not json", "malformed"),
        (lambda: b"\xff" * 40_000, "malformed"),
        (lambda: signed("o-5").replace(b'"o-5"', b'"o-6"'), "signature"),
    ],
)
def test_hostile_orders_are_refused_with_their_reason_and_not_queued(
    intake, blob, reason: str
) -> None:
    made, published = intake
    ack = made.submit(blob(), "test")
    assert not ack.accepted and ack.reason == reason, ack
    assert published == [ack]
    assert made.queue.next_queued() is None


def test_a_replay_and_a_reused_order_id_are_refused(intake) -> None:
    made, _ = intake
    first = signed("o-7")
    assert made.submit(first, "test").accepted
    assert made.submit(first, "test").reason == "replay"
    again = made.submit(signed("o-7"), "test")  # a new nonce, the same order id
    assert not again.accepted and again.reason == "duplicate"
    assert "already in the queue (queued)" in again.message


def test_without_a_dispatcher_key_every_order_is_refused_saying_so(tmp_path: Path) -> None:
    with OrderQueue(tmp_path / "q.db") as queue:
        made = OrderIntake(queue, dispatcher_public=None, drone_id=DRONE,
                           nonces=NonceStore(None), publish=lambda _: None)  # fmt: skip
        ack = made.submit(signed("o-8"), "test")
    assert not ack.accepted and ack.reason == "no-dispatcher-key" and ack.order_id == "o-8"


def test_the_queue_survives_a_restart_and_reports_what_was_flying(tmp_path: Path) -> None:
    path = tmp_path / "orders.db"
    with OrderQueue(path) as queue:
        queue.add("a", "d-a", b"A", "test")
        queue.add("b", "d-b", b"B", "test")
        queue.mark("a", FLYING)
        with pytest.raises(DuplicateOrder):
            queue.add("a", "d-a", b"A", "test")
    with OrderQueue(path) as queue:  # the daemon died with "a" in the air
        assert queue.interrupt_flying() == ["a"]
        assert queue.get("a").state == INTERRUPTED  # type: ignore[union-attr]
        assert queue.next_queued().order_id == "b"  # type: ignore[union-attr]
        queue.mark("b", DONE, "delivered")
        assert queue.counts() == {INTERRUPTED: 1, DONE: 1}
        assert queue.next_queued() is None


def test_the_control_socket_answers_each_request_and_keeps_its_permissions(
    intake, tmp_path: Path
) -> None:
    made, _ = intake
    path = tmp_path / "run" / "control.sock"
    server = ControlServer(path, made.submit).start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        answer = submit_order(path, signed("o-9"))
        assert answer["accepted"] is True and answer["order_id"] == "o-9"
        assert submit_order(path, b"nonsense")["reason"] == "malformed"
        for request, error in (
            (b"not json\n", "not a JSON request"),
            (b'{"op": "fly"}\n', 'expected {"op": "submit"'),
            (b'{"op": "submit", "order": 7}\n', "'order' must be the order file's text"),
            (b"x" * 300_000, "request longer than"),
        ):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(path))
                # The server answers an oversized request and hangs up before reading it all:
                # the rest of the send may then fail, the answer is there to read anyway.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    s.sendall(request)
                reply = json.loads(s.makefile("rb").readline())
            assert error in reply["error"], reply
        # Still serving after the bad clients.
        assert submit_order(path, signed("o-10"))["accepted"] is True
    finally:
        server.stop()
    assert not path.exists()
    with pytest.raises(ControlError, match="no daemon answers"):
        submit_order(path, signed("o-11"))


def test_orders_over_mqtt_are_verified_and_answered(intake, mosquitto: Broker) -> None:
    made, published = intake
    transport = PahoTransport(
        mosquitto.host, mosquitto.port, "drone-orders", keepalive_s=5, reconnect_min_s=0.1,
        reconnect_max_s=0.5,
    )  # fmt: skip
    try:
        topic = subscribe_orders(transport, DRONE, made.submit)
        assert topic == f"skycourier/v1/{DRONE}/orders"
        transport.connect()
        wait_until(lambda: transport.connected, "the drone's transport to connect", 10)
        ground = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dispatcher")
        ground.connect(mosquitto.host, mosquitto.port)
        ground.loop_start()
        try:
            time.sleep(0.5)  # the drone's subscription is made on its connection
            ground.publish(topic, signed("o-12"), qos=1).wait_for_publish(10)
            ground.publish(topic, signed("o-13", drone_id="other"), qos=1).wait_for_publish(10)
            wait_until(lambda: len(published) == 2, "both orders answered", 10)
        finally:
            ground.loop_stop()
            ground.disconnect()
    finally:
        transport.close()
    acks = [a for a in published if isinstance(a, OrderAck)]
    assert [(a.order_id, a.accepted, a.reason) for a in acks] == [
        ("o-12", True, "accepted"),
        ("o-13", False, "wrong-drone"),
    ]
    assert acks[0].source == f"mqtt:skycourier/v1/{DRONE}/orders"


def test_an_operators_pin_is_checked_against_the_order_in_flight_only(tmp_path: Path) -> None:
    from companion.config import Config
    from companion.intake.flights import OrderFlights
    from companion.mission.inputs import GroundStatus

    checked: list[object] = []

    class Runner:
        """Stands in for the mission runner: asks the PIN check what it would answer."""

        def run(self, plan: object) -> str:
            checked.append(flights.pin_check("4711"))
            checked.append(flights.pin_check("0000"))
            return "delivered"

    updates: list[object] = []
    with OrderQueue(tmp_path / "q.db") as queue:
        made = OrderIntake(queue, dispatcher_public=DISPATCHER.public_key(), drone_id=DRONE,
                           nonces=NonceStore(None), publish=updates.append)  # fmt: skip
        assert made.submit(signed("o-20", pin="4711"), "test").accepted
        flights = OrderFlights(
            queue, Config(), lambda _systems: Runner(), lambda _order: GroundStatus,
            updates.append,
        )  # fmt: skip
        assert flights.pin_check("4711") is None  # nothing flying
        flights.start()
        try:
            wait_until(lambda: queue.get("o-20").state == DONE, "the order flown", 10)  # type: ignore[union-attr]
        finally:
            flights.stop()
        assert checked == [("o-20", True), ("o-20", False)]
        assert flights.pin_check("4711") is None
        assert queue.get("o-20").outcome == "delivered"  # type: ignore[union-attr]
    states = [(u.state, u.outcome) for u in updates if type(u).__name__ == "OrderUpdate"]
    assert states == [("flying", None), ("done", "delivered")]
