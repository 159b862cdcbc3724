"""The telemetry path over the A7670's own MQTT stack, at its seams.

- Older firmware that refuses ``AT+CMQTTCFG="version",0,4`` (the SIM7500/SIM7600 manual
  V3.00's CMQTTCFG has no "version" parameter): checked first against a module scripted
  from the manual's and the transcript's byte forms (independent of our emulator), then
  through the emulator emulating such firmware under the supervisor, against mosquitto: the
  link comes up on MQTT 3.1, once, and is never power-cycled for it.
- A payload the module refuses as "length out of range" is a `MessageRejected` (no retry).
- The uplink keeps up: an LTE outage's backlog (60 s of 5 Hz hand-over telemetry and its
  events) replays through the emulator in few messages and few AT commands; replayed on
  the manual's and the logs' own delays and the UART's wire time at 115200 it takes a
  fraction of the outage (computed from what crossed the wire, not timed: the bench,
  bench/telemetry.py, measures records per second on the emulator's real-time delays).
- The UART wire model of the emulator's pty runner (bytes no faster than 10 bits each).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from paho.mqtt.client import CallbackAPIVersion, Client

from companion.bus import Bus
from companion.mission.events import MissionEvent, Phase
from companion.modem.at_engine import AtCommand, AtEngine, AtResponse, MqttMessage, Urc
from companion.modem.channel import AtChannel
from companion.modem.mqtt_at import AtMqttLimitError, AtMqttTransport
from companion.modem.supervisor import ModemSupervisor
from companion.telemetry import schema
from companion.telemetry.publisher import TelemetryPublisher
from companion.telemetry.store import Store
from companion.telemetry.transport import MessageRejected
from firmware_bridge.state import GpsInfo, Position, VehicleState
from sim.modem.a7670 import A7670
from sim.modem.mqtt_bridge import PahoBridge
from sim.modem.pty_runner import A7670Pty, _Wire
from tests.waiting import wait_until


def framed(*lines: str) -> bytes:
    """Response lines as the module frames them (<CR><LF>line<CR><LF>, §1.4)."""
    return b"".join(b"\r\n" + line.encode() + b"\r\n" for line in lines)


#: The module's answers, from the AT manual (§18.2) and [LOG-AZ]; "ERROR" for CFG "version"
#: as firmware without the parameter answers it. Unknown commands are answered ERROR.
OLD_FIRMWARE = {
    "AT+CMQTTDISC?": framed("+CMQTTDISC: 0,1", "+CMQTTDISC: 1,1", "OK"),
    "AT+CMQTTSTART": framed("OK", "+CMQTTSTART: 0"),
    'AT+CMQTTACCQ=0,"drone-7"': framed("OK"),
    'AT+CMQTTCFG="version",0,4': framed("ERROR"),
    'AT+CMQTTCONNECT=0,"tcp://10.0.0.1:1883",60,1': framed("OK", "+CMQTTCONNECT: 0,0"),
    "AT+CMQTTTOPIC=0,31": framed("OK"),
    "AT+CMQTTPUB=0,1,30,0": framed("OK", "+CMQTTPUB: 0,0"),
}


class ScriptedChannel:
    """The parts of `AtChannel` the transport uses, answering from a script through a real
    `AtEngine` (echo off), so the transport sees genuine responses."""

    is_open = True

    def __init__(self, script: dict[str, bytes | Callable[[AtCommand], bytes]]) -> None:
        self.script = script
        self.engine = AtEngine(echo_expected=False)
        self.now = 0.0
        self.lines: list[str] = []

    def subscribe_urc(self, callback: Callable[[Urc], None]) -> None:
        pass

    def unsubscribe_urc(self, callback: Callable[[Urc], None]) -> None:
        pass

    def subscribe_mqtt(self, callback: Callable[[MqttMessage], None]) -> None:
        pass

    def unsubscribe_mqtt(self, callback: Callable[[MqttMessage], None]) -> None:
        pass

    def call(self, command: AtCommand) -> AtResponse:
        self.lines.append(command.line)
        self.now += 0.05
        self.engine.submit(command)
        self.engine.outgoing(self.now)
        answer = self.script.get(command.line, framed("ERROR"))
        reply = answer(command) if callable(answer) else answer
        if command.data is not None and reply != framed("ERROR"):
            self.engine.receive(b"\r\n>", self.now)  # the data prompt (§18.2.5, [LOG-AZ])
            self.engine.outgoing(self.now)
        if not reply:  # silence: the engine times the command out
            self.now += command.timeout_s + command.urc_timeout_s + 1
            (response,) = self.engine.poll(self.now)
            return response
        responses = [e for e in self.engine.receive(reply, self.now) if isinstance(e, AtResponse)]
        assert len(responses) == 1, (command.line, responses)
        return responses[0]


def _transport(channel: ScriptedChannel) -> AtMqttTransport:
    return AtMqttTransport(channel, client_id="drone-7", broker="tcp://10.0.0.1:1883")  # type: ignore[arg-type]


def test_older_firmware_refusing_the_mqtt_version_connects_on_the_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = ScriptedChannel(dict(OLD_FIRMWARE))
    transport = _transport(channel)
    with caplog.at_level(logging.WARNING, "companion.modem.mqtt_at"):
        transport.connect()
    assert transport.connected and transport.connections == 1
    assert "older firmware; connecting with its default, MQTT 3.1" in caplog.text
    assert channel.lines.index('AT+CMQTTCFG="version",0,4') < channel.lines.index(
        'AT+CMQTTCONNECT=0,"tcp://10.0.0.1:1883",60,1'
    )
    # The connection drops; the next one does not ask again (nor warn again).
    transport.link_lost("data")
    caplog.clear()
    channel.lines.clear()
    transport.connect()
    assert transport.connected and transport.connections == 2
    assert 'AT+CMQTTCFG="version",0,4' not in channel.lines and not caplog.text


def test_a_version_command_that_times_out_is_not_taken_for_a_refusal() -> None:
    """Silence is a module in trouble, not old firmware: the bring-up fails (and under a
    supervisor its ladder decides), and the next attempt asks again."""
    script = dict(OLD_FIRMWARE)
    script['AT+CMQTTCFG="version",0,4'] = b""
    channel = ScriptedChannel(script)
    transport = _transport(channel)
    with pytest.raises(MessageRejected.__mro__[1], match=r'CMQTTCFG="version".*no final result'):
        transport.connect()
    assert not transport.connected
    script['AT+CMQTTCFG="version",0,4'] = framed("OK")
    transport.connect()
    assert transport.connected


def test_a_payload_the_module_refuses_as_out_of_range_is_rejected_for_good() -> None:
    script = dict(OLD_FIRMWARE)
    script["AT+CMQTTPAYLOAD=0,5"] = framed("+CMQTTPAYLOAD: 0,22", "ERROR")
    channel = ScriptedChannel(script)
    transport = _transport(channel)
    transport.connect()
    with pytest.raises(AtMqttLimitError, match=r"the modem refused AT\+CMQTTPAYLOAD=0,5") as info:
        transport.publish("skycourier/v1/drone-7/telemetry", b"hello")
    assert isinstance(info.value, MessageRejected) and "length out of range" in str(info.value)


# -- through the emulator ------------------------------------------------------------------


@contextlib.contextmanager
def modem_chain(
    broker: object, emulator: A7670, client_id: str = "drone-7"
) -> Iterator[tuple[AtMqttTransport, ModemSupervisor, A7670Pty, AtChannel]]:
    """The emulator on a pty bridged to `broker`, the driver and transport on top."""
    host, port = broker.host, broker.port  # type: ignore[attr-defined]
    with contextlib.ExitStack() as stack:
        stack.callback(emulator.bridge.close)  # type: ignore[union-attr]
        runner = A7670Pty(emulator).start()
        stack.callback(runner.stop)
        assert runner.path is not None
        channel = AtChannel(runner.path).start()
        stack.callback(channel.stop)
        supervisor = ModemSupervisor(channel, lambda _state: None, apn="internet")
        transport = AtMqttTransport(supervisor, client_id=client_id, broker=f"tcp://{host}:{port}")
        stack.callback(supervisor.stop)
        stack.callback(transport.close)
        supervisor.start()
        yield transport, supervisor, runner, channel


class Ground:
    """A subscriber on the broker recording every message, in arrival order."""

    def __init__(self, broker: object, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = Client(CallbackAPIVersion.VERSION2, client_id="ground")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect(broker.host, broker.port)  # type: ignore[attr-defined]
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(10.0)

    def _on_message(self, _c: object, _u: object, message: object) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload)))  # type: ignore[attr-defined]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_older_firmware_through_the_emulator_comes_up_once_and_publishes(mosquitto) -> None:
    emulator = A7670(bridge=PahoBridge(), time_scale=0.05)
    emulator.cfg_version_supported = False
    ground = Ground(mosquitto, "skycourier/v1/drone-7/#")
    try:
        with modem_chain(mosquitto, emulator) as (transport, supervisor, runner, _channel):
            wait_until(lambda: transport.connected, "MQTT up on the default version")
            transport.publish("skycourier/v1/drone-7/telemetry", b"on MQTT 3.1")
            wait_until(lambda: ground.messages, "the message at the broker")
            assert supervisor.state.recoveries == 0 and supervisor.state.error is None
            with runner.locked() as module:
                assert module._clients[0].version == 3  # the bridge spoke MQTT 3.1
    finally:
        ground.close()
    assert ground.messages == [("skycourier/v1/drone-7/telemetry", b"on MQTT 3.1")]


#: What the logs and the manual say an exchange costs on a real module, independent of the
#: emulator's own reading: a query round trip at 115200 is 40-90 ms ([ISS#11]), so each `>`
#: prompt and each final result is charged 90 ms; a QoS 1 PUB's result needs the broker's
#: PUBACK over LTE, charged 300 ms. The UART's wire time is added from the bytes counted.
EXCHANGE_S = 0.090
PUBACK_S = 0.300
OUTAGE_S = 60.0


def _state() -> VehicleState:
    return VehicleState(
        wall_time=time.time(),
        armed=True,
        mode="GUIDED",
        position=Position(-35.363261, 149.16523, 634.2, 12.5),
        velocity_ned_mps=(0.3, 0.2, 0.8),
        heading_deg=271.6,
        gps=GpsInfo(fix_type=3, satellites=14),
    )


def test_an_outage_backlog_replays_in_a_fraction_of_the_outage(mosquitto, tmp_path: Path) -> None:
    """60 s of hand-over telemetry (5 Hz) and its events, queued while the link was down,
    then replayed through the emulator: every record arrives once, in order, in batches; the
    AT commands and the bytes on the wire, priced at the logs' delays and 115200 baud, add
    up to well under the 60 s it took to record them."""
    bus = Bus()
    store = Store(tmp_path / "queue.db")
    emulator = A7670(bridge=PahoBridge(), time_scale=0.05)
    ground = Ground(mosquitto, "skycourier/v1/drone-7/#")
    try:
        with modem_chain(mosquitto, emulator) as (transport, _sup, runner, channel):
            publisher = TelemetryPublisher(bus, store, transport, "drone-7", lambda: 0.0)
            publisher.attach()
            bus.publish(_state())
            bus.publish(MissionEvent("m-1", Phase.DESCEND, "enter"))
            for i in range(int(OUTAGE_S * 5)):
                publisher.tick(i * 0.201)
                if i == 150:
                    bus.publish(MissionEvent("m-1", Phase.RELEASE, "enter"))
            queued = [schema.decode_for(r.topic, r.payload) for r in store.peek(10_000)]
            wait_until(lambda: transport.connected, "MQTT up", within_s=60.0)
            sent_before = len(channel_lines := _spy(channel))
            wire_before = sum(runner.wire_bytes)
            publisher.start()
            try:
                wait_until(lambda: store.pending() == 0, "the backlog replayed", within_s=120.0)
            finally:
                publisher.stop()
            commands = channel_lines[sent_before:]
            wire = sum(runner.wire_bytes) - wire_before
        wait_until(lambda: _records(ground) == queued, "every record at the broker")
    finally:
        ground.close()
        store.close()
    messages = sum(1 for line in commands if line.startswith("AT+CMQTTPUB="))
    mqtt = [line for line in commands if line.startswith("AT+CMQTT")]
    others = len(commands) - len(mqtt)  # the supervisor's signal and registration polls
    assert len(queued) >= 302 and messages <= len(queued) / 15, (len(queued), messages)
    assert len(mqtt) == 3 * messages  # TOPIC, PAYLOAD, PUB: nothing else per message
    replay_s = messages * (5 * EXCHANGE_S + PUBACK_S) + others * EXCHANGE_S + wire * 10 / 115_200
    assert replay_s < OUTAGE_S / 2, (replay_s, messages, others, wire)


def _spy(channel: AtChannel) -> list[str]:
    """Record every command line the transport sends through `channel` from now on."""
    lines: list[str] = []
    call = channel.call

    def spying(command: AtCommand) -> AtResponse:
        lines.append(command.line)
        return call(command)

    channel.call = spying  # type: ignore[method-assign]
    return lines


def _records(ground: Ground) -> list[schema.Record]:
    """Every record the ground got, de-duplicated by id, statuses left out."""
    with ground.lock:
        messages = list(ground.messages)
    seen: dict[str, schema.Record] = {}
    for topic, payload in messages:
        for record in schema.decode_message(topic, payload):
            if not isinstance(record, schema.Status):
                seen.setdefault(record.id, record)
    return list(seen.values())


# -- the UART wire -------------------------------------------------------------------------


def test_the_wire_carries_ten_bits_a_byte_and_banks_no_idle_time() -> None:
    wire = _Wire(10 / 115_200)
    byte_s = 10 / 115_200
    wire.send(b"x" * 1152, now=100.0)  # 0.1 s of bytes at 115200 8N1
    assert wire.arrived(100.0) == b""
    assert len(wire.arrived(100.0 + 0.05 + byte_s / 2)) == 576
    assert len(wire.arrived(100.2)) == 576 and wire.carried == 1152
    wire.send(b"y" * 10, now=500.0)  # after a long idle: no burst from banked time
    assert wire.arrived(500.0 + 5 * byte_s + byte_s / 2) == b"y" * 5
    assert _Wire(0.0).arrived(0.0) == b""
    instant = _Wire(0.0)
    instant.send(b"abc", now=1.0)
    assert instant.arrived(1.0) == b"abc"  # time_scale 0: no wire time
