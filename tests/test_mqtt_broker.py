"""The MQTT codec (sans-I/O, fuzzed), and both brokers `start_broker` can give — mosquitto and
the embedded one — driven by paho-mqtt clients and by raw packets from the codec, with the
same tests, so the embedded broker is held to what the real one does."""

from __future__ import annotations

import itertools
import logging
import queue
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.mqtt_broker import BrokerError, find_mosquitto, start_broker, start_mosquitto
from sim.mqtt_codec import (
    REFUSED_IDENTIFIER,
    REFUSED_PROTOCOL_VERSION,
    ConnAck,
    Connect,
    Disconnect,
    MqttProtocolError,
    Packet,
    PacketReader,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
    encode_remaining_length,
    topic_filter_error,
    topic_matches,
)
from sim.mqtt_embedded import EmbeddedBroker

#: Generous bound for anything that must happen; never a timing assertion.
WAIT_S = 10.0

# --- codec ------------------------------------------------------------------------------

text = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=20)
topic_names = text.filter(lambda t: t and "+" not in t and "#" not in t)
packet_ids = st.integers(1, 0xFFFF)


def _connect_with(credentials: tuple[str | None, bytes | None], **kwargs: Any) -> Connect:
    return Connect(**kwargs, username=credentials[0], password=credentials[1])


packets = st.one_of(
    st.builds(
        _connect_with,
        client_id=text,
        clean_session=st.booleans(),
        keepalive=st.integers(0, 0xFFFF),
        will=st.none()
        | st.builds(Will, topic_names, st.binary(max_size=30), st.integers(0, 2), st.booleans()),
        credentials=st.tuples(st.none(), st.none())
        | st.tuples(text, st.none() | st.binary(max_size=10)),
        protocol_name=st.sampled_from(["MQTT", "MQIsdp"]),
        protocol_level=st.integers(0, 255),
    ),
    st.builds(ConnAck, st.booleans(), st.integers(0, 5)),
    st.integers(0, 2).flatmap(
        lambda qos: st.builds(
            Publish,
            topic_names,
            st.binary(max_size=300),
            st.just(qos),
            st.booleans(),
            st.booleans() if qos else st.just(False),
            packet_ids if qos else st.none(),
        )
    ),
    *(st.builds(cls, packet_ids) for cls in (PubAck, PubRec, PubRel, PubComp, UnsubAck)),
    st.builds(
        Subscribe, packet_ids, st.lists(st.tuples(text, st.integers(0, 2)), min_size=1).map(tuple)
    ),
    st.builds(
        SubAck, packet_ids, st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1).map(tuple)
    ),
    st.builds(Unsubscribe, packet_ids, st.lists(text, min_size=1).map(tuple)),
    st.builds(PingReq),
    st.builds(PingResp),
    st.builds(Disconnect),
)


def feed_in_pieces(reader: PacketReader, data: bytes, cuts: list[int]) -> list[Packet]:
    out: list[Packet] = []
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        out += reader.feed(data[start:cut])
        start = max(start, cut)
    return out


@given(st.lists(packets, max_size=8), st.lists(st.integers(0, 10_000), max_size=10))
def test_packets_survive_encode_and_any_split(sent: list[Packet], cuts: list[int]) -> None:
    reader = PacketReader()
    received = feed_in_pieces(reader, b"".join(encode(p) for p in sent), cuts)
    assert received == sent
    assert reader.pending == 0


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=80), max_size=10))
def test_arbitrary_bytes_give_packets_or_a_protocol_error_and_bounded_buffer(
    chunks: list[bytes],
) -> None:
    reader = PacketReader(max_packet=64)
    for chunk in chunks:
        try:
            reader.feed(chunk)
        except MqttProtocolError as exc:
            assert str(exc)
            with pytest.raises(MqttProtocolError):
                reader.feed(b"\xc0\x00")  # a finished reader stays finished
            return
        assert reader.pending < 64


@pytest.mark.parametrize(
    ("length", "varint"),
    [
        (0, b"\x00"),  # §2.2.3 table 2.4: the boundaries of 1..4-byte lengths
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_varint_at_its_boundaries(length: int, varint: bytes) -> None:
    assert encode_remaining_length(length) == varint
    reader = PacketReader(max_packet=1 << 30)
    if length:
        assert reader.feed(b"\x30" + varint) == []  # header read, body awaited
        assert reader.pending == 1 + len(varint)
    else:
        assert reader.feed(b"\xc0" + varint) == [PingReq()]


def test_remaining_length_is_decoded_across_reads() -> None:
    data = encode(Publish("a/b", b"x" * 200, 1, packet_id=7))
    reader = PacketReader()
    assert reader.feed(data[:2]) == []  # inside the two-byte remaining length
    assert reader.feed(data[2:]) == [Publish("a/b", b"x" * 200, 1, packet_id=7)]


def test_oversize_packet_is_refused_from_its_header_alone() -> None:
    reader = PacketReader(max_packet=1024)
    with pytest.raises(MqttProtocolError, match="exceeds the limit of 1024"):
        reader.feed(b"\x30\x80\x80\x01")  # PUBLISH announcing 16 KiB: no body needed to refuse
    assert reader.pending == 0


def _connect_bytes(flags: int, name: bytes = b"\x00\x04MQTT", tail: bytes = b"") -> bytes:
    body = name + bytes([4, flags]) + b"\x00\x3c" + b"\x00\x01c" + tail
    return bytes([0x10, len(body)]) + body


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x30\xff\xff\xff\xff\x01", "longer than 4 bytes"),
        (b"\x00\x00", "reserved control packet type 0"),
        (b"\xf0\x00", "reserved control packet type 15"),
        (b"\x80\x05\x00\x01\x00\x01a", r"SUBSCRIBE: fixed-header flags 0b0000"),
        (b"\x36\x03\x00\x01a", "QoS 3"),
        (b"\x38\x03\x00\x01a", "DUP set on a QoS 0"),
        (b"\x32\x05\x00\x01a\x00\x00", "packet identifier 0"),
        (b"\x30\x04\x00\x02\xc3\x28", "not UTF-8"),
        (b"\x30\x03\x00\x01\x00", "U\\+0000"),
        (b"\x30\x05\x00\x03a/+", "wildcard in topic name"),
        (b"\x30\x02\x00\x00", "empty topic name"),
        (b"\x82\x02\x00\x01", "no topic filter"),
        (b"\x82\x06\x00\x01\x00\x01a\x03", "requested QoS byte"),
        (b"\xa2\x02\x00\x01", "UNSUBSCRIBE: no topic filter"),
        (b"\x40\x03\x00\x01\x00", "unexpected bytes"),
        (b"\x40\x01\x00", "body ends inside packet identifier"),
        (b"\x30\x04\x00\x09ab", "body ends inside topic name"),
        (_connect_bytes(0x02, name=b"\x00\x04MQTX"), "unknown protocol name 'MQTX'"),
        (_connect_bytes(0x03), "reserved flag bit 0"),
        (_connect_bytes(0x42, tail=b"\x00\x01p"), "password without a user name"),
        (_connect_bytes(0x1E, tail=b"\x00\x01t\x00\x00"), "will QoS 3"),
        (_connect_bytes(0x22), "will QoS/retain set without the will flag"),
        (_connect_bytes(0x06, tail=b"\x00\x01#\x00\x00"), "will topic: wildcard"),
    ],
)
def test_malformed_packets_are_named(data: bytes, reason: str) -> None:
    with pytest.raises(MqttProtocolError, match=reason):
        PacketReader().feed(data)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("sport/tennis/player1/#", "sport/tennis/player1", True),  # §4.7.1.2 examples
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),
        ("#", "sport/tennis", True),
        ("sport/tennis/+", "sport/tennis/player1", True),  # §4.7.1.3 examples
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("#", "$SYS/broker", False),  # §4.7.2
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("$SYS/#", "$SYS/broker", True),
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/b", "a/b/c", False),
    ],
)
def test_topic_matching_follows_the_spec_examples(
    topic_filter: str, topic: str, matches: bool
) -> None:
    assert topic_filter_error(topic_filter) is None
    assert topic_matches(topic_filter, topic) is matches


@pytest.mark.parametrize("bad", ["", "sport/tennis#", "sport/tennis/#/ranking", "sport+", "a/+b"])
def test_invalid_topic_filters_are_named(bad: str) -> None:
    assert topic_filter_error(bad)


# --- helpers for the broker tests --------------------------------------------------------

_ids = itertools.count()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}-{next(_ids)}"


class RawClient:
    """A client that speaks through the codec, for what paho will not do (abrupt ends,
    silence past the keep-alive, malformed bytes)."""

    def __init__(self, broker: Any) -> None:
        self.sock = socket.create_connection((broker.host, broker.port), timeout=WAIT_S)
        self.reader = PacketReader()
        self.packets: deque[Packet] = deque()

    def send(self, *packets: Packet) -> None:
        self.sock.sendall(b"".join(encode(p) for p in packets))

    def connect(self, client_id: str, **kwargs: Any) -> ConnAck:
        self.send(Connect(client_id, **kwargs))
        ack = self.expect()
        assert isinstance(ack, ConnAck)
        return ack

    def expect(self) -> Packet:
        """The next packet; fails if the broker closes first or nothing comes within WAIT_S."""
        while not self.packets:
            data = self.sock.recv(65536)
            assert data, "broker closed the connection"
            self.packets.extend(self.reader.feed(data))
        return self.packets.popleft()

    def closed_by_broker(self) -> bool:
        """Whether the broker closes the connection within WAIT_S (packets before are read)."""
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


class Watcher:
    """A paho-mqtt subscriber collecting what arrives."""

    def __init__(self, broker: Any, topics: list[tuple[str, int]], **kwargs: Any) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=unique("watch"), **kwargs
        )
        subscribed = threading.Event()
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe(topics)
        assert subscribed.wait(WAIT_S), "no SUBACK"

    def next(self) -> paho.MQTTMessage:
        try:
            return self.messages.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError("no message arrived") from None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(broker: Any, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
    """Publish from a fresh paho client and wait for the broker's acknowledgement."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=unique("pub"))
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT_S)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(
        "mosquitto" if request.param == "mosquitto" else "embedded_mqtt_broker"
    )


@pytest.fixture
def embedded(embedded_mqtt_broker: Any) -> Any:
    return embedded_mqtt_broker


@pytest.fixture
def prefix() -> str:
    """A topic root of the test's own: the brokers (and their retained messages) are shared."""
    return unique("t")


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    made: list[Watcher] = []
    yield made
    for watcher in made:
        watcher.close()


# --- both brokers --------------------------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_reaches_a_subscriber(broker, prefix, watchers, qos: int) -> None:
    watchers.append(watcher := Watcher(broker, [(f"{prefix}/x", 1)]))
    publish(broker, f"{prefix}/x", b"\x00payload\r\n", qos=qos)
    message = watcher.next()
    assert (message.topic, message.payload, message.retain) == (
        f"{prefix}/x",
        b"\x00payload\r\n",
        False,
    )
    assert message.qos == min(qos, 1)
    publish(broker, f"{prefix}/x", b"marker", qos=1)
    assert watcher.next().payload == b"marker"  # QoS 2 was delivered once


def test_delivery_qos_is_the_lower_of_message_and_grant(broker, prefix, watchers) -> None:
    watchers.append(watcher := Watcher(broker, [(f"{prefix}/x", 0)]))
    publish(broker, f"{prefix}/x", b"m", qos=1)
    assert watcher.next().qos == 0


def test_wildcards(broker, prefix, watchers) -> None:
    watchers.append(plus := Watcher(broker, [(f"{prefix}/+/t", 1)]))
    watchers.append(hash_ := Watcher(broker, [(f"{prefix}/a/#", 1)]))
    for topic in ("a/t", "b/t", "a/b/t", "a"):
        publish(broker, f"{prefix}/{topic}", topic.encode())
    publish(broker, f"{prefix}/end/t", b"end")
    publish(broker, f"{prefix}/a/end", b"end")
    assert [plus.next().payload for _ in range(3)] == [b"a/t", b"b/t", b"end"]
    assert [hash_.next().payload for _ in range(4)] == [b"a/t", b"a/b/t", b"a", b"end"]


def test_overlapping_subscriptions_do_not_lose_the_message(broker, prefix, watchers) -> None:
    watchers.append(watcher := Watcher(broker, [(f"{prefix}/#", 1), (f"{prefix}/x", 1)]))
    publish(broker, f"{prefix}/x", b"m")
    assert watcher.next().payload == b"m"


def test_retained_message_goes_to_late_subscribers_until_cleared(broker, prefix, watchers) -> None:
    topic = f"{prefix}/status"
    publish(broker, topic, b"online", retain=True)
    watchers.append(late := Watcher(broker, [(topic, 1)]))
    message = late.next()
    assert (message.payload, message.retain) == (b"online", True)

    publish(broker, topic, b"", retain=True)  # §3.3.1.3: empty retained payload clears
    assert late.next().payload == b""  # ... and is forwarded to present subscribers
    watchers.append(later := Watcher(broker, [(topic, 1)]))
    publish(broker, topic, b"marker")
    assert later.next().payload == b"marker"


def test_unsubscribe_stops_delivery(broker, prefix) -> None:
    client = RawClient(broker)
    client.connect(unique("raw"))
    client.send(Subscribe(1, ((f"{prefix}/a", 1), (f"{prefix}/b", 0))))
    assert client.expect() == SubAck(1, (1, 0))
    client.send(Unsubscribe(2, (f"{prefix}/a",)))
    assert client.expect() == UnsubAck(2)
    publish(broker, f"{prefix}/a", b"gone")
    publish(broker, f"{prefix}/b", b"kept")
    message = client.expect()
    assert isinstance(message, Publish)
    assert (message.topic, message.payload) == (f"{prefix}/b", b"kept")
    client.close()


def test_qos1_publish_is_acknowledged_and_ping_answered(broker, prefix) -> None:
    client = RawClient(broker)
    client.connect(unique("raw"))
    client.send(Publish(f"{prefix}/x", b"m", 1, packet_id=42), PingReq())
    assert client.expect() == PubAck(42)
    assert client.expect() == PingResp()
    client.send(Publish(f"{prefix}/x", b"m", 2, packet_id=43))
    assert client.expect() == PubRec(43)
    client.send(PubRel(43))
    assert client.expect() == PubComp(43)
    client.close()


def _will_client(broker: Any, topic: str, keepalive: int = 30) -> RawClient:
    client = RawClient(broker)
    will = Will(topic, b"gone", qos=1, retain=False)
    assert client.connect(unique("will"), will=will, keepalive=keepalive).return_code == 0
    return client


def test_last_will_on_abrupt_socket_close(broker, prefix, watchers) -> None:
    watchers.append(watcher := Watcher(broker, [(f"{prefix}/will", 1)]))
    client = _will_client(broker, f"{prefix}/will")
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()  # RST, no DISCONNECT
    assert watcher.next().payload == b"gone"


def test_no_will_after_disconnect(broker, prefix, watchers) -> None:
    watchers.append(watcher := Watcher(broker, [(f"{prefix}/will", 1)]))
    client = _will_client(broker, f"{prefix}/will")
    client.send(Disconnect())
    assert client.closed_by_broker()
    publish(broker, f"{prefix}/will", b"marker")
    assert watcher.next().payload == b"marker"


def test_keepalive_expiry_closes_the_connection_and_sends_the_will(
    broker, prefix, watchers
) -> None:
    watchers.append(watcher := Watcher(broker, [(f"{prefix}/will", 1)]))
    client = _will_client(broker, f"{prefix}/will", keepalive=1)
    assert client.closed_by_broker()  # silent past 1.5 x 1 s
    assert watcher.next().payload == b"gone"


def test_same_client_id_takes_over(broker, prefix, watchers) -> None:
    client_id = unique("dup")
    watchers.append(watcher := Watcher(broker, [(f"{prefix}/will", 1)]))
    first = _will_client_with_id(broker, client_id, f"{prefix}/will")
    second = RawClient(broker)
    assert second.connect(client_id).return_code == 0
    assert first.closed_by_broker()
    assert watcher.next().payload == b"gone"  # the first one ended without DISCONNECT
    second.send(PingReq())
    assert second.expect() == PingResp()
    second.close()


def _will_client_with_id(broker: Any, client_id: str, topic: str) -> RawClient:
    client = RawClient(broker)
    assert client.connect(client_id, will=Will(topic, b"gone", 1)).return_code == 0
    return client


def test_persistent_session_keeps_subscriptions_and_queues_qos1(broker, prefix) -> None:
    client_id = unique("persist")
    client = RawClient(broker)
    assert client.connect(client_id, clean_session=False).session_present is False
    client.send(Subscribe(1, ((f"{prefix}/q", 1),)))
    assert client.expect() == SubAck(1, (1,))
    client.send(Disconnect())
    assert client.closed_by_broker()

    publish(broker, f"{prefix}/q", b"while away", qos=1)
    client = RawClient(broker)
    assert client.connect(client_id, clean_session=False).session_present is True
    message = client.expect()
    assert isinstance(message, Publish)
    assert (message.payload, message.qos) == (b"while away", 1)
    client.send(PubAck(message.packet_id or 0), Disconnect())
    client.close()
    ack = (cleaner := RawClient(broker)).connect(client_id, clean_session=True)
    assert ack.session_present is False
    cleaner.close()


def test_unacknowledged_message_is_resent_with_dup_on_reconnect(broker, prefix) -> None:
    client_id = unique("unacked")
    client = RawClient(broker)
    client.connect(client_id, clean_session=False)
    client.send(Subscribe(1, ((f"{prefix}/q", 1),)))
    assert client.expect() == SubAck(1, (1,))
    publish(broker, f"{prefix}/q", b"once", qos=1)
    first = client.expect()
    assert isinstance(first, Publish)
    assert first.dup is False
    client.close()  # no PUBACK

    client = RawClient(broker)
    assert client.connect(client_id, clean_session=False).session_present is True
    again = client.expect()
    assert isinstance(again, Publish)
    assert (again.payload, again.dup, again.packet_id) == (b"once", True, first.packet_id)
    client.send(PubAck(again.packet_id or 0), Disconnect())
    client.close()


def test_mqtt_3_1_is_accepted(broker, prefix, watchers) -> None:
    watchers.append(watcher := Watcher(broker, [(f"{prefix}/x", 1)], protocol=paho.MQTTv31))
    publish(broker, f"{prefix}/x", b"m")
    assert watcher.next().payload == b"m"


@pytest.mark.parametrize(
    ("connect", "code"),
    [
        (Connect("c", protocol_level=3), REFUSED_PROTOCOL_VERSION),
        (Connect("", clean_session=False), REFUSED_IDENTIFIER),
    ],
)
def test_refused_connect_gets_a_return_code_then_close(broker, connect, code: int) -> None:
    client = RawClient(broker)
    client.send(connect)
    assert client.expect() == ConnAck(False, code)
    assert client.closed_by_broker()


@pytest.mark.parametrize(
    "data",
    [
        b"\x30\x05\x00\x03a/+",  # PUBLISH to a wildcard topic
        b"\x36\x03\x00\x01a",  # QoS 3
        b"\x30\xff\xff\xff\xff\x01",  # 5-byte remaining length
        encode(Connect("again")),  # second CONNECT
    ],
)
def test_malformed_packet_closes_only_that_connection(broker, data: bytes) -> None:
    bad = RawClient(broker)
    bad.connect(unique("bad"))
    bad.sock.sendall(data)
    assert bad.closed_by_broker()
    good = RawClient(broker)
    assert good.connect(unique("good")).return_code == 0
    good.close()


def test_packet_before_connect_closes(broker) -> None:
    client = RawClient(broker)
    client.send(PingReq())
    assert client.closed_by_broker()


# --- embedded broker only ----------------------------------------------------------------


def test_embedded_broker_logs_why_it_closed_a_connection(embedded, caplog) -> None:
    caplog.set_level(logging.INFO, logger="sim.mqtt_embedded")
    client = RawClient(embedded)
    client_id = unique("logged")
    client.connect(client_id)
    client.sock.sendall(b"\x36\x03\x00\x01a")
    assert client.closed_by_broker()
    assert any(client_id in r.getMessage() and "QoS 3" in r.getMessage() for r in caplog.records), (
        caplog.text
    )


def test_embedded_broker_bounds_packet_size(caplog) -> None:
    caplog.set_level(logging.INFO, logger="sim.mqtt_embedded")
    broker = EmbeddedBroker(max_packet=256)
    broker.start()
    try:
        client = RawClient(broker)
        client.connect(unique("big"))
        client.send(Publish("t", b"x" * 300))
        assert client.closed_by_broker()
        assert "exceeds the limit of 256" in caplog.text
    finally:
        broker.stop()


def test_embedded_broker_flow_control_and_bounded_queue(caplog) -> None:
    broker = EmbeddedBroker(max_inflight=2, max_queued=3)
    broker.start()
    try:
        client = RawClient(broker)
        client.connect("slow")
        client.send(Subscribe(1, (("q", 1),)))
        assert client.expect() == SubAck(1, (1,))
        for n in range(6):
            publish(broker, "q", b"%d" % n)
        # 2 in flight (0, 1); 2..5 queued in 3 places: 2 dropped, with a warning
        got = [client.expect(), client.expect()]
        assert [p.payload for p in got if isinstance(p, Publish)] == [b"0", b"1"]
        # The broker thread may still be taking the last publishes: wait for its warning.
        deadline = time.monotonic() + 10.0
        while "queue full (3 messages), dropped the oldest" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.02)
        for message in got:
            client.send(PubAck(message.packet_id))  # type: ignore[union-attr]
        rest = []
        for _ in range(3):  # each PUBACK frees the place for the next queued one
            message = client.expect()
            assert isinstance(message, Publish)
            rest.append(message.payload)
            client.send(PubAck(message.packet_id or 0))
        assert rest == [b"3", b"4", b"5"]
        client.close()
    finally:
        broker.stop()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)  # `embedded` is the session's broker: meant to be shared by every example
@given(st.binary(max_size=200), st.booleans())
def test_embedded_broker_survives_arbitrary_bytes(embedded, data, connect_first) -> None:
    client = RawClient(embedded)
    if connect_first:
        client.connect(unique("fuzz"))
    client.sock.sendall(data)
    client.close()
    good = RawClient(embedded)
    assert good.connect(unique("good")).return_code == 0
    good.send(PingReq())
    assert good.expect() == PingResp()
    good.close()


def test_embedded_broker_refuses_an_invalid_filter_but_keeps_the_rest(embedded) -> None:
    client = RawClient(embedded)
    client.connect(unique("filters"))
    client.send(Subscribe(5, (("a/#/b", 1), ("ok/+", 2))))
    assert client.expect() == SubAck(5, (0x80, 1))  # QoS 2 granted as 1 (documented)
    client.close()


# --- start_broker ----------------------------------------------------------------------


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown broker kind 'rabbit'"):
        start_broker("rabbit")


def test_stopped_broker_refuses_connections() -> None:
    broker = start_broker("embedded")
    host, port = broker.host, broker.port
    broker.stop()
    broker.stop()  # twice is harmless
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=WAIT_S).close()


needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None, reason="install mosquitto (apt install mosquitto)"
)


@needs_mosquitto
def test_mosquitto_on_a_taken_port_is_a_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"could not listen on 127.0.0.1:{port}"):
            start_mosquitto(find_mosquitto(), port)  # type: ignore[arg-type]


@needs_mosquitto
def test_mosquitto_stops_on_exit() -> None:
    with start_broker("mosquitto") as broker:
        assert broker.kind == "mosquitto"
        RawClient(broker).connect(unique("c"))
    with pytest.raises(OSError):
        socket.create_connection((broker.host, broker.port), timeout=WAIT_S).close()


@needs_mosquitto
def test_a_persistent_mosquitto_restarted_keeps_sessions_and_queued_messages() -> None:
    """What the HIL rig's broker restart relies on: a subscriber with a persistent session
    gets, after the restart, what was published while it was away, and the broker is back
    on the same port."""
    topic = "skycourier/v1/d1/events"
    with start_broker("mosquitto", persistent=True) as broker:
        sub_id = unique("sub")
        sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=sub_id, clean_session=False)
        sub.connect(broker.host, broker.port)
        sub.loop_start()
        sub.subscribe(topic, qos=1)[1]
        time.sleep(0.5)  # the SUBACK: the broker holds the subscription
        sub.disconnect()
        sub.loop_stop()
        port = broker.port
        broker.restart(down_s=0.2)
        assert broker.port == port
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=unique("pub"))
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        pub.publish(topic, b"while away", qos=1).wait_for_publish(WAIT_S)
        pub.disconnect()
        pub.loop_stop()
        received: queue.Queue[bytes] = queue.Queue()
        again = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=sub_id, clean_session=False)
        again.on_message = lambda _c, _u, m: received.put(bytes(m.payload))
        again.connect(broker.host, broker.port)
        again.loop_start()
        try:
            assert received.get(timeout=WAIT_S) == b"while away"
        finally:
            again.disconnect()
            again.loop_stop()


def test_the_embedded_broker_cannot_restart() -> None:
    with (
        start_broker("embedded") as broker,
        pytest.raises(BrokerError, match="cannot be restarted"),
    ):
        broker.restart()


def test_a_binary_that_is_not_a_broker_is_a_clear_error(tmp_path) -> None:
    fake = tmp_path / "mosquitto"
    fake.write_text("#!/bin/sh\necho 'Error: no such option' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerError, match=r"exited with status 3(.|\n)*no such option"):
        start_mosquitto(fake)


def test_without_mosquitto_the_embedded_broker_serves(monkeypatch) -> None:
    """A fresh machine with no broker installed: `skycourier sim` still gets one."""
    import sim.mqtt_broker as mqtt_broker

    monkeypatch.setattr(mqtt_broker, "find_mosquitto", lambda: None)
    with start_broker() as broker:
        assert broker.kind == "embedded"
        received: queue.Queue[bytes] = queue.Queue()
        sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=unique("sub"))
        sub.on_message = lambda _c, _u, m: received.put(bytes(m.payload))
        sub.connect(broker.host, broker.port)
        sub.subscribe("skycourier/v1/d1/telemetry", qos=1)
        sub.loop_start()
        try:
            pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=unique("pub"))
            pub.connect(broker.host, broker.port)
            pub.loop_start()
            deadline = time.monotonic() + 10.0
            while received.empty():
                assert time.monotonic() < deadline, "no message through the embedded broker"
                pub.publish("skycourier/v1/d1/telemetry", b"hello", qos=1)
                time.sleep(0.2)
            assert received.get() == b"hello"
            pub.loop_stop()
            pub.disconnect()
        finally:
            sub.loop_stop()
            sub.disconnect()
