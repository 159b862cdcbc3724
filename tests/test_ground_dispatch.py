"""Dispatch from the ground: orders and operator commands built, signed, recorded and sent,
and the drone's answers settling them.

The store's half runs on SQLite and PostgreSQL; the dispatcher's signing is checked with the
drone's own verifiers (`verify_order`, `open_template`, `verify_command`), not by reading
the bytes back with the code that made them; the API runs against a real mosquitto, with the
real face models enrolling a real photo, and the drone's answers arrive as the drone sends
them (events on its topic, through the ingest)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

pytest.importorskip("fastapi", reason="install the ground extra: pip install -e '.[ground]'")

from fastapi.testclient import TestClient

from companion.security.keys import KeyStore, raw_public
from companion.security.orders import (
    NonceStore,
    OrderError,
    check_pin,
    open_template,
    verify_order,
)
from companion.security.signed_commands import verify_command
from companion.telemetry import schema
from ground.dispatch import Dispatcher, DispatchError, OrderRequest
from ground.publisher import NotConnected
from ground.store import Store
from ground.web.backend import Accounts
from sim.mqtt_broker import Broker, find_mosquitto, start_broker
from tests.face_images import analyzer, ancelotti, zidane  # noqa: F401
from tests.ground_fixtures import db_url, pg_url  # noqa: F401
from tests.ground_web_fixtures import Clock, event, form_csrf, login, make_web, telemetry
from tests.waiting import wait_until

DRONE = "skycourier-7"
TEMPLATE = np.full((1, 128), 1 / np.sqrt(128), dtype=np.float32)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[KeyStore, KeyStore]:
    """The drone's key store and the dispatcher's."""
    drone, dispatcher = KeyStore(tmp_path / "drone"), KeyStore(tmp_path / "dispatcher")
    drone.init_drone(DRONE)
    dispatcher.init_dispatcher()
    return drone, dispatcher


def register(store: Store, drone: KeyStore) -> None:
    public = drone.drone_public()
    store.register_drone(public.drone_id, raw_public(public.identity), raw_public(public.seal))


class FakePublisher:
    """Keeps what is published; `fail` makes the broker not confirm, `down` not connect."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail: str | None = None
        self.connected = True

    def publish(self, topic: str, payload: bytes) -> str | None:
        if not self.connected:
            raise NotConnected("down")
        self.sent.append((topic, payload))
        return self.fail


# -- the store's half ---------------------------------------------------------------------


def test_registered_keys_are_kept_and_replaced(db_url: str, keys) -> None:  # noqa: F811
    drone, _ = keys
    with Store.open(db_url, Clock()) as store:
        assert store.drone_keys(DRONE) is None and store.registered_drones() == []
        register(store, drone)
        found = store.drone_keys(DRONE)
        assert found is not None
        assert found.seal_public == raw_public(drone.drone_seal_key().public_key())
        store.register_drone(DRONE, b"\1" * 32, b"\2" * 32)  # the drone was re-keyed
        assert store.drone_keys(DRONE).seal_public == b"\2" * 32  # type: ignore[union-attr]
        assert store.registered_drones() == [DRONE]
        for bad in (b"short", "not bytes"):
            with pytest.raises(ValueError, match="32 bytes"):
                store.register_drone(DRONE, bad, b"\2" * 32)  # type: ignore[arg-type]


def test_a_command_is_settled_by_its_own_drones_first_answer(db_url: str) -> None:  # noqa: F811
    clock = Clock()
    with Store.open(db_url, clock) as store:
        store.create_command("c-1", DRONE, "hold", "alice", clock.now, clock.now + 60, "o-1")
        store.mark_command_sent("c-1", True)
        refused = event("other-drone", 1, clock.now, "command-refused", "o-1", command_id="c-1")
        store.ingest([refused])  # another drone cannot answer for this one
        assert store.command("c-1").state == "sent"  # type: ignore[union-attr]
        store.ingest(
            [
                event(DRONE, 2, clock.now + 1, "command-accepted", "o-1", command_id="c-1",
                      reason="accepted", message="holding"),
                event(DRONE, 3, clock.now + 2, "command-refused", "o-1", command_id="c-1",
                      reason="replay", message="seen before"),
            ]
        )  # fmt: skip
        answered = store.command("c-1")
        assert answered is not None
        assert (answered.state, answered.reason, answered.message) == (
            "accepted", "accepted", "holding")  # fmt: skip
        store.mark_command_sent("c-1", False, "late")  # the answer is the later word
        assert store.command("c-1").state == "accepted"  # type: ignore[union-attr]


def test_a_sent_mark_never_overrides_the_drones_answer(db_url: str) -> None:  # noqa: F811
    with Store.open(db_url, Clock()) as store:
        store.create_order("o-1", DRONE, "ab" * 32)
        store.ingest([event(DRONE, 1, Clock().now, "order-accepted", "o-1", accepted=True)])
        store.mark_order_sent("o-1", False, "broker timeout")
        assert store.order("o-1").state == "accepted"  # type: ignore[union-attr]
        store.create_order("o-2", DRONE, "ab" * 32)
        store.mark_order_sent("o-2", False, "the broker did not confirm it")
        order = store.order("o-2")
        assert order is not None and order.state == "unconfirmed"
        assert order.detail == {"error": "the broker did not confirm it"}


# -- the dispatcher -----------------------------------------------------------------------


def test_an_order_verifies_on_the_drone_and_only_its_drone_opens_it(tmp_path: Path, keys) -> None:
    drone, dispatcher_keys = keys
    clock = Clock()
    publisher = FakePublisher()
    with Store.open(f"sqlite:///{tmp_path}/g.db", clock) as store:
        register(store, drone)
        dispatcher = Dispatcher(
            store, dispatcher_keys.dispatcher_signing_key(), publisher, clock, lambda _p: TEMPLATE
        )
        made = dispatcher.create_order(
            OrderRequest(DRONE, 48.1, 11.5, [("a.jpg", b"")], pin="4711", order_id="o-9"),
            "alice",
        )
        assert (made.order_id, made.state, made.created_by) == ("o-9", "sent", "alice")
        [(topic, blob)] = publisher.sent
        assert topic == schema.topic(DRONE, "orders")
        order = verify_order(
            blob,
            dispatcher_public=dispatcher_keys.dispatcher_public(),
            drone_id=DRONE,
            now=clock.now,
            nonces=NonceStore(tmp_path / "nonces.json"),
        )
        assert (order.order_id, round(order.lat, 6), round(order.lon, 6)) == ("o-9", 48.1, 11.5)
        assert np.allclose(open_template(order, drone.drone_seal_key()), TEMPLATE)
        stranger = KeyStore(tmp_path / "stranger")
        stranger.init_drone(DRONE)
        with pytest.raises(OrderError, match="sealed"):
            open_template(order, stranger.drone_seal_key())
        actions = [(a.action, a.target_id) for a in store.audit(target_kind="order")][::-1]
        assert actions == [("order-create", "o-9"), ("order-sent", "o-9")]


def test_refusals_leave_nothing_behind(tmp_path: Path, keys) -> None:
    drone, dispatcher_keys = keys
    publisher = FakePublisher()
    with Store.open(f"sqlite:///{tmp_path}/g.db", Clock()) as store:
        sign = dispatcher_keys.dispatcher_signing_key()
        dispatcher = Dispatcher(store, sign, publisher, Clock(), lambda _p: TEMPLATE)
        with pytest.raises(DispatchError, match="not registered"):
            dispatcher.create_order(OrderRequest(DRONE, 48.1, 11.5, [("a", b"")]), "alice")
        register(store, drone)
        cases = [
            (OrderRequest(DRONE, 91.0, 11.5, [("a", b"")]), "invalid"),
            (OrderRequest(DRONE, 48.1, float("nan"), [("a", b"")]), "invalid"),
            (OrderRequest(DRONE, 48.1, 11.5, [("a", b"")], valid_s=5), "invalid"),
            (OrderRequest(DRONE, 48.1, 11.5, [("a", b"")], order_id="<b>x</b>"), "invalid"),
            (OrderRequest("<script>", 48.1, 11.5, [("a", b"")]), "invalid"),
        ]
        for request, reason in cases:
            with pytest.raises(DispatchError) as refused:
                dispatcher.create_order(request, "alice")
            assert refused.value.reason == reason, request
        publisher.connected = False
        with pytest.raises(DispatchError, match="not connected"):
            dispatcher.create_order(OrderRequest(DRONE, 48.1, 11.5, [("a", b"")]), "alice")
        with pytest.raises(DispatchError, match="not connected"):
            dispatcher.send_command(DRONE, "hold", "alice")
        publisher.connected = True

        def no_face(_photos: Any) -> np.ndarray:
            raise ValueError("a.jpg: no face found")

        faceless = Dispatcher(store, sign, publisher, Clock(), no_face)
        with pytest.raises(DispatchError, match="no face") as refused:
            faceless.create_order(OrderRequest(DRONE, 48.1, 11.5, [("a.jpg", b"")]), "alice")
        assert refused.value.reason == "photo"
        with pytest.raises(DispatchError, match="expected one of"):
            dispatcher.send_command(DRONE, "self-destruct", "alice")
        assert store.orders() == [] and store.commands() == [] and publisher.sent == []


def test_a_command_verifies_on_the_drone_and_an_unconfirmed_one_says_so(
    tmp_path: Path, keys
) -> None:
    drone, dispatcher_keys = keys
    clock = Clock()
    publisher = FakePublisher()
    with Store.open(f"sqlite:///{tmp_path}/g.db", clock) as store:
        register(store, drone)
        dispatcher = Dispatcher(store, dispatcher_keys.dispatcher_signing_key(), publisher, clock)
        sent = dispatcher.send_command(DRONE, "hold", "alice", order_id="o-1")
        [(topic, blob)] = publisher.sent
        assert topic == schema.topic(DRONE, "commands")
        command = verify_command(
            blob,
            dispatcher_public=dispatcher_keys.dispatcher_public(),
            drone_id=DRONE,
            now=clock.now,
            nonces=NonceStore(tmp_path / "nonces.json"),
        )
        assert (command.command, command.order_id, command.command_id) == (
            "hold", "o-1", sent.command_id)  # fmt: skip
        assert sent.state == "sent" and sent.issued_by == "alice"
        publisher.fail = "the broker did not confirm it within 10 s"
        late = dispatcher.send_command(DRONE, "resume", "alice")
        assert (late.state, late.message) == ("unconfirmed", publisher.fail)
        audited = [a.action for a in store.audit(target_kind="command")][::-1]
        assert audited == ["command-hold", "command-resume"]


# -- the API, on a real broker ------------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[Broker]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt install mosquitto)")
    with start_broker("mosquitto") as running:
        yield running


class Listener:
    """A subscriber on the drone's orders and commands topics: what a drone would receive."""

    def __init__(self, broker: Broker) -> None:
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        for channel in ("orders", "commands"):
            self.client.subscribe(schema.topic(DRONE, channel), qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        with self._lock:
            self.received.append((message.topic, bytes(message.payload)))

    def answer(self, seq: int, kind: str, mission: str | None, **detail: Any) -> None:
        """The drone's answer, published as the drone publishes its events."""
        record = event(DRONE, seq, Clock().now, kind, mission, **detail).record
        self.client.publish(schema.topic(DRONE, "events"), schema.encode(record), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_the_api_dispatches_to_a_drone_and_shows_its_answers(
    tmp_path: Path,
    broker: Broker,
    keys,
    zidane,  # noqa: F811
    analyzer,  # noqa: F811
) -> None:
    drone, _ = keys
    web = make_web(
        tmp_path,
        broker=f"{broker.host}:{broker.port}",
        dispatcher_keys=tmp_path / "dispatcher",
    )
    register(web.store, drone)
    listener = Listener(broker)
    ok, photo = cv2.imencode(".jpg", ancelotti(zidane))
    assert ok
    try:
        with TestClient(web.app) as client:
            assert client.get("/api/dispatch").status_code == 401
            assert login(client).status_code == 303
            csrf = form_csrf(client.get("/dispatch").text)
            wait_until(lambda: client.get("/api/dispatch").json()["connected"], "broker")
            info = client.get("/api/dispatch").json()
            assert info["enabled"] and info["drones"] == [DRONE]
            form = {"drone_id": DRONE, "lat": "48.1", "lon": "11.5", "pin": "4711"}
            files = [("photo", ("recipient.jpg", photo.tobytes(), "image/jpeg"))]
            assert client.post("/api/orders", data=form, files=files).status_code == 403
            made = client.post(
                "/api/orders", data={**form, "csrf": csrf}, files=files
            )  # fmt: skip
            assert made.status_code == 201, made.text
            order_id = made.json()["order_id"]
            assert made.json()["state"] == "sent"
            wait_until(lambda: len(listener.received) == 1, "the order at the drone")
            assert listener.received[0][0] == schema.topic(DRONE, "orders")
            blob = listener.received[0][1]
            order = verify_order(
                blob,
                dispatcher_public=KeyStore(tmp_path / "dispatcher").dispatcher_public(),
                drone_id=DRONE,
                now=web.clock(),
                nonces=NonceStore(tmp_path / "n.json"),
            )
            template = open_template(order, drone.drone_seal_key())
            assert template.shape == (1, 128) and check_pin(order, "4711")
            bad = client.post(
                "/api/orders",
                data={**form, "csrf": csrf},
                files=[("photo", ("cat.jpg", b"\xff\xd8\xff not a photo", "image/jpeg"))],
            )
            assert bad.status_code == 422 and "cat.jpg" in bad.json()["detail"]
            for hostile in ({"order_id": "<script>x</script>"}, {"lat": "1; DROP TABLE orders"},
                            {"pin": "' OR 1=1 --"}, {"drone_id": "x' OR '1'='1"}):  # fmt: skip
                refused = client.post(
                    "/api/orders", data={**form, "csrf": csrf, **hostile}, files=files
                )
                assert refused.status_code in (404, 422), (hostile, refused.text)
            assert [o.order_id for o in web.store.orders()] == [order_id]
            listener.answer(1, "order-accepted", order_id, accepted=True, reason="accepted")

            def order_state() -> str:
                return next(o for o in client.get("/api/orders").json()
                            if o["order_id"] == order_id)["state"]  # fmt: skip

            wait_until(lambda: order_state() == "accepted", "the order accepted")

            headers = {"X-CSRF-Token": csrf}
            sent = client.post(
                f"/api/drones/{DRONE}/commands",
                json={"command": "hold", "order_id": order_id},
                headers=headers,
            )
            assert sent.status_code == 201, sent.text
            command_id = sent.json()["command_id"]
            wait_until(lambda: len(listener.received) == 2, "the command at the drone")
            listener.answer(2, "command-accepted", order_id, command_id=command_id,
                            accepted=True, reason="accepted", message="holding")  # fmt: skip

            def command_state() -> str:
                return client.get(f"/api/drones/{DRONE}/commands").json()[0]["state"]

            wait_until(lambda: command_state() == "accepted", "the command accepted")
            unknown = client.post(
                "/api/drones/drone-x/commands", json={"command": "hold"}, headers=headers
            )
            assert unknown.status_code == 404 and "not registered" in unknown.json()["detail"]
            actions = [a.action for a in web.store.audit()]
            assert {"order-create", "order-sent", "command-hold"} <= set(actions)
    finally:
        listener.close()
        web.store.close()


def test_api_tokens_act_without_a_session_and_wrong_ones_are_refused(tmp_path: Path) -> None:
    web = make_web(tmp_path)
    token = Accounts(web.store).issue_token("alice")
    try:
        with TestClient(web.app) as client:
            auth = {"Authorization": f"Bearer {token}"}
            assert client.get("/api/drones", headers=auth).status_code == 200
            web.store.create_order("o-1", DRONE, "ab" * 32)
            link = client.post("/api/tracking-links", json={"order_id": "o-1"}, headers=auth)
            assert link.status_code == 200  # a POST with a token needs no CSRF token
            assert web.store.audit(limit=1)[0].actor == "alice"
            for bad in (f"Bearer {token}x", "Bearer ", f"Basic {token}", "Bearer sct_<script>"):
                refused = client.get("/api/drones", headers={"Authorization": bad})
                assert refused.status_code == 401, bad
            assert web.ground.refused["token"] == 4
            fresh = Accounts(web.store).issue_token("alice")  # a new token replaces the old
            assert client.get("/api/drones", headers=auth).status_code == 401
            auth = {"Authorization": f"Bearer {fresh}"}
            dispatch = client.get("/api/dispatch", headers=auth).json()
            assert dispatch["enabled"] is False  # no broker, no keys: tracking only
    finally:
        web.store.close()


def test_a_drone_is_registered_from_its_public_key_file_and_bad_files_are_refused(
    tmp_path: Path, keys
) -> None:
    drone, dispatcher = keys
    web = make_web(tmp_path)
    try:
        with TestClient(web.app) as client:
            assert login(client).status_code == 303
            csrf = form_csrf(client.get("/dispatch").text)
            pub = drone.drone_public().to_json()

            def upload(data: bytes, name: str = "drone.pub.json") -> Any:
                files = [("public", (name, data, "application/json"))]
                return client.post("/api/drones", data={"csrf": csrf}, files=files)

            assert client.post(
                "/api/drones", files=[("public", ("d.json", pub, "application/json"))]
            ).status_code == 403  # fmt: skip
            done = upload(pub)
            assert done.status_code == 201, done.text
            assert done.json()["drone_id"] == DRONE
            assert web.store.drone_keys(DRONE).seal_public == raw_public(  # type: ignore[union-attr]
                drone.drone_seal_key().public_key()
            )
            entry = web.store.audit(limit=1)[0]
            assert (entry.actor, entry.action, entry.target_id) == (
                "alice",
                "drone-register",
                DRONE,
            )
            for bad, why in (
                (b"{not json", "corrupt"),
                (dispatcher.file("dispatcher.pub.json").read_bytes(), "wrong key type"),
                (pub.replace(DRONE.encode(), b"<script>"), "corrupt"),
                (b" " * 5000, "bytes"),
            ):
                refused = upload(bad, "<b>evil</b>.json")
                assert refused.status_code == 422 and why in refused.json()["detail"], bad[:40]
            assert web.store.registered_drones() == [DRONE]
    finally:
        web.store.close()


def test_registered_only_stores_the_registered_drones_and_refuses_the_others(
    tmp_path: Path, broker: Broker, keys
) -> None:
    drone, _ = keys
    web = make_web(
        tmp_path,
        clock=time.time,
        broker=f"{broker.host}:{broker.port}",
        registered_only=True,
    )
    fleet = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    fleet.connect(broker.host, broker.port)
    fleet.loop_start()

    def send(seq: int) -> None:
        record = telemetry(DRONE, seq, time.time(), 48.1, 11.5).record
        info = fleet.publish(schema.topic(DRONE, "telemetry"), schema.encode(record), qos=1)
        info.wait_for_publish(10)

    try:
        with TestClient(web.app) as client:
            ingestor = web.ground.ingestor
            assert ingestor.wait_connected(20)
            send(1)  # not registered: refused, counted, not stored
            wait_until(lambda: ingestor.stats().refused.get("unknown-drone") == 1, "refused")
            assert web.store.drone(DRONE) is None
            assert login(client).status_code == 303
            csrf = form_csrf(client.get("/dispatch").text)
            files = [("public", ("d.json", drone.drone_public().to_json(), "application/json"))]
            assert client.post("/api/drones", data={"csrf": csrf}, files=files).status_code == 201
            send(2)  # registered here: taken at once
            wait_until(lambda: len(web.store.track(DRONE)) == 1, "the registered drone stored")
            assert [p.seq for p in web.store.track(DRONE)] == [2]
    finally:
        fleet.loop_stop()
        fleet.disconnect()
        web.store.close()
