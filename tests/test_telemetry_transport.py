"""PahoTransport against a real mosquitto started by the test: acknowledged publish, retained
status and last will, reconnect after the broker restarts, and clear errors for a broker that
refuses or is not there."""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from companion.bus import Bus
from companion.mission.events import MissionEvent, Phase
from companion.telemetry import schema
from companion.telemetry.publisher import TelemetryPublisher
from companion.telemetry.store import Store
from companion.telemetry.transport import MessageRejected, PahoTransport, TransportError
from companion.track import add_arguments, run_track

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
pytestmark = pytest.mark.skipif(
    MOSQUITTO is None, reason="install mosquitto (apt install mosquitto)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """One mosquitto process on a loopback port, restartable on the same port."""

    def __init__(self, folder: Path, *, anonymous: bool = True) -> None:
        self.port = _free_port()
        self.config = folder / f"mosquitto-{self.port}.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            "persistence false\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],  # type: ignore[list-item]
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path)
    server.start()
    yield server
    server.stop()


@contextlib.contextmanager
def _transport(port: int, name: str) -> Iterator[PahoTransport]:
    transport = PahoTransport(
        "127.0.0.1", port, name, keepalive_s=5, reconnect_min_s=0.1, reconnect_max_s=0.5
    )
    try:
        yield transport
    finally:
        transport.close()


def _inbox(transport: PahoTransport, topic: str) -> queue.Queue[tuple[str, bytes]]:
    messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
    transport.subscribe(topic, lambda t, p: messages.put((t, p)))
    assert transport.wait_connected(10), transport.last_error
    return messages


def _settle_subscription(pub: PahoTransport, inbox: queue.Queue, topic: str) -> None:
    """Publish numbered probes until the subscriber gets the newest one sent (its SUBACK has
    no callback here). The broker keeps one publisher's messages in order, so once the newest
    probe is in, no older one is still on its way to arrive after the test's own messages."""
    deadline = time.monotonic() + 10
    for n in itertools.count():
        if time.monotonic() >= deadline:
            break
        probe = f"probe-{n}".encode()
        pub.publish(topic, probe)
        end = time.monotonic() + 0.2
        while (left := end - time.monotonic()) > 0:
            try:
                _topic, payload = inbox.get(timeout=left)
            except queue.Empty:
                break
            if payload == probe:
                return
    raise AssertionError("subscription never delivered")


def test_publish_is_acknowledged_and_delivered_in_order(broker: Mosquitto) -> None:
    with _transport(broker.port, "watcher") as sub, _transport(broker.port, "drone") as pub:
        inbox = _inbox(sub, "skycourier/v1/+/telemetry")
        _settle_subscription(pub, inbox, "skycourier/v1/d1/telemetry")
        for i in range(20):
            pub.publish("skycourier/v1/d1/telemetry", str(i).encode(), qos=1, timeout_s=10)
        got = [inbox.get(timeout=10) for _ in range(20)]
        assert got == [("skycourier/v1/d1/telemetry", str(i).encode()) for i in range(20)]
        assert pub.connected


def test_retained_status_and_last_will(broker: Mosquitto) -> None:
    status = "skycourier/v1/d1/status"
    with _transport(broker.port, "drone") as drone:
        drone.set_will(status, b"offline", retain=True)
        drone.publish(status, b"online", retain=True, timeout_s=10)
        with _transport(broker.port, "late-watcher") as watcher:
            inbox = _inbox(watcher, status)
            assert inbox.get(timeout=10) == (status, b"online")  # retained: seen by a late joiner
            drone._client.socket().shutdown(socket.SHUT_RDWR)  # the drone vanishes, no DISCONNECT
            assert inbox.get(timeout=10) == (status, b"offline")


def test_reconnects_after_broker_restart_and_keeps_subscriptions(broker: Mosquitto) -> None:
    topic = "skycourier/v1/d1/cmd"
    with _transport(broker.port, "watcher") as sub, _transport(broker.port, "drone") as pub:
        inbox = _inbox(sub, topic)
        _settle_subscription(pub, inbox, topic)
        broker.stop()
        with pytest.raises(TransportError, match=f"broker 127.0.0.1:{broker.port}"):
            pub.publish(topic, b"lost", timeout_s=1)
        broker.start()
        assert pub.wait_connected(15), pub.last_error
        assert sub.wait_connected(15), sub.last_error
        _settle_subscription(pub, inbox, topic)  # re-subscribed by the transport itself
        pub.publish(topic, b"after", timeout_s=10)
        assert inbox.get(timeout=10) == (topic, b"after")


def test_nothing_listening_is_a_clear_error() -> None:
    port = _free_port()
    with _transport(port, "drone") as drone:
        with pytest.raises(TransportError) as info:
            drone.publish("skycourier/v1/d1/telemetry", b"x", timeout_s=1.5)
        assert f"not connected to broker 127.0.0.1:{port} within 1.5 s" in str(info.value)
        assert f"cannot reach broker 127.0.0.1:{port}: connection refused" in str(info.value)


def test_refused_connection_is_a_clear_error(tmp_path: Path) -> None:
    server = Mosquitto(tmp_path, anonymous=False)
    server.start()
    try:
        with _transport(server.port, "drone") as drone:
            drone.connect()
            deadline = time.monotonic() + 10
            while drone.last_error is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not drone.connected
            assert drone.last_error is not None
            assert f"broker 127.0.0.1:{server.port} refused the connection: Not authorized" in (
                drone.last_error
            )
            with pytest.raises(TransportError, match="refused the connection: Not authorized"):
                drone.publish("skycourier/v1/d1/telemetry", b"x", timeout_s=0.5)
    finally:
        server.stop()


def test_closed_transport_refuses_work(broker: Mosquitto) -> None:
    with _transport(broker.port, "drone") as drone:
        drone.publish("a/b", b"x", timeout_s=10)
    with pytest.raises(TransportError, match="is closed"):
        drone.publish("a/b", b"x", timeout_s=1)
    with pytest.raises(TransportError, match="invalid MQTT topic filter 'a/#/b'"):
        PahoTransport("127.0.0.1", broker.port, "x").subscribe("a/#/b", lambda t, p: None)


def test_a_message_paho_cannot_send_is_rejected_for_good(broker: Mosquitto) -> None:
    """A topic MQTT forbids in a publish is `MessageRejected` (the uplink sets the record
    aside), not a link error retried for ever; the link itself is fine."""
    with _transport(broker.port, "drone") as drone:
        with pytest.raises(MessageRejected, match=r"cannot publish on 'a/#'"):
            drone.publish("a/#", b"x", timeout_s=10)
        drone.publish("a/b", b"x", timeout_s=10)


def test_publisher_to_track_through_mosquitto(broker: Mosquitto, tmp_path: Path) -> None:
    """The whole IP path: bus -> store -> PahoTransport -> mosquitto -> `skycourier track`,
    with the drone's connection cut mid-stream: every event arrives once, in order."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--broker", f"127.0.0.1:{broker.port}", "--drone", "d1", "--json"])
    out, err, stop = io.StringIO(), io.StringIO(), threading.Event()
    watcher = threading.Thread(target=run_track, args=(args, out, err, stop), daemon=True)

    def lines() -> list[dict]:
        return [json.loads(line) for line in out.getvalue().splitlines()]

    def wait_for(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 15
        while not condition():
            assert time.monotonic() < deadline, f"{what}: {out.getvalue()} {err.getvalue()}"
            time.sleep(0.01)

    with _transport(broker.port, "setup") as setup:  # a retained status tells us track listens
        before = schema.Status("d1", 1, "before", schema.utc_iso(0), "offline")
        setup.publish(schema.topic("d1", "status"), schema.encode(before), retain=True)
    watcher.start()
    wait_for(lambda: len(lines()) == 1, "track subscribed")

    bus = Bus()
    store = Store(tmp_path / "queue.db")
    with _transport(broker.port, "d1") as drone:
        publisher = TelemetryPublisher(bus, store, drone, "d1", backoff_s=(0.05,))
        publisher.start()
        for i in range(20):
            bus.publish(MissionEvent("m1", Phase.CRUISE, f"e{i}"))
        wait_for(lambda: store.pending() == 0, "first half delivered")
        drone._client.socket().shutdown(socket.SHUT_RDWR)  # the link drops
        for i in range(20, 40):
            bus.publish(MissionEvent("m1", Phase.CRUISE, f"e{i}"))
        wait_for(lambda: store.pending() == 0, "second half delivered after reconnecting")
        wait_for(lambda: sum(x["type"] == "event" for x in lines()) >= 40, "track shows all")
        publisher.stop()
        wait_for(lambda: lines()[-1].get("state") == "offline", "offline at stop")
    stop.set()
    watcher.join(10)

    events = [x for x in lines() if x["type"] == "event"]
    assert [x["kind"] for x in events] == [f"e{i}" for i in range(40)]
    assert [x["seq"] for x in events] == list(range(1, 41))
    statuses = [x["state"] for x in lines() if x["type"] == "status"]
    changes = [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]]
    # before, online, the will when the link dropped, online again, offline at stop
    assert changes == ["offline", "online", "offline", "online", "offline"]
