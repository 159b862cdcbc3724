"""The A7670 driver end to end: `AtChannel` on a real pty, the `A7670` emulator behind it,
and for MQTT a real mosquitto broker (through the emulator's paho bridge) watched by a paho
subscriber. Emulator latencies are scaled down (`time_scale`); the driver's timeouts are
shortened to match, never asserted as timings: every wait is a generous upper bound.
"""

from __future__ import annotations

import os
import pty
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from companion.bus import Bus
from companion.mission.inputs import OperatorAction, OperatorCommand
from companion.modem.at_engine import AtCommand, AtResponse, Urc
from companion.modem.channel import AtChannel, ChannelError
from companion.modem.mqtt_at import AtMqttTransport
from companion.modem.operator_sms import (
    CommandAuthenticator,
    CounterStore,
    OperatorSms,
    sign_command,
)
from companion.modem.sms import SmsClient, SmsMessage, number_is_one_of
from companion.modem.state import ModemState
from companion.modem.supervisor import ModemSupervisor, SupervisorTimeouts
from companion.telemetry.transport import TransportError
from sim.modem.a7670 import A7670
from sim.modem.mqtt_bridge import PahoBridge
from sim.modem.pty_runner import A7670Pty
from sim.mqtt_broker import Broker
from tests.waiting import wait_until

SCALE = 0.05  # emulator latencies x 0.05: boot 0.15 s, registration 0.1 s
TIMEOUTS = SupervisorTimeouts(
    probe_s=0.5,
    command_s=1.5,
    boot_s=5.0,
    sim_s=5.0,
    register_s=5.0,
    lost_s=30.0,
    cops_s=5.0,
    cfun_s=3.0,
    reset_s=1.0,
    netopen_s=5.0,
    poll_s=0.5,
    retry_s=0.2,
    failed_retry_s=60.0,
    settle_s=0.1,
)


class States:
    """Collects the published `ModemState`s; waits for a condition on them."""

    def __init__(self) -> None:
        self.items: list[ModemState] = []
        self.lock = threading.Lock()

    def __call__(self, item: object) -> None:
        if isinstance(item, ModemState):
            with self.lock:
                self.items.append(item)

    @property
    def last(self) -> ModemState | None:
        with self.lock:
            return self.items[-1] if self.items else None

    def seen(self, condition: Callable[[ModemState], bool]) -> bool:
        with self.lock:
            return any(condition(s) for s in self.items)

    def wait(
        self, condition: Callable[[ModemState], bool], what: str, timeout: float = 20.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            last = self.last
            if last is not None and condition(last):
                return
            assert time.monotonic() < deadline, f"timed out waiting for {what}; last: {last}"
            time.sleep(0.02)


@dataclass
class Link:
    runner: A7670Pty
    channel: AtChannel
    supervisor: ModemSupervisor
    states: States
    sent: list[str]  # every command line the driver sent, in order


@contextmanager
def modem_link(
    emulator: A7670, *, apn: str = "internet", pin: str | None = None, power_key: bool = False
) -> Iterator[Link]:
    states = States()
    sent: list[str] = []
    with A7670Pty(emulator) as runner:
        assert runner.path is not None
        with AtChannel(runner.path) as channel:
            assert channel.wait_open(5.0), channel.error
            call = channel.call

            def recording(command: AtCommand) -> AtResponse:
                sent.append(command.line)
                return call(command)

            channel.call = recording  # type: ignore[method-assign]
            supervisor = ModemSupervisor(
                channel,
                states,
                apn=apn,
                pin=pin,
                power_key=runner.power_key if power_key else None,
                timeouts=TIMEOUTS,
            )
            with supervisor:
                yield Link(runner, channel, supervisor, states, sent)


def test_bring_up_to_up_through_a_pty() -> None:
    with modem_link(A7670(time_scale=SCALE, pin="1234"), pin="1234") as link:
        link.states.wait(lambda s: s.stage == "up", "stage up")
        state = link.supervisor.state
        assert state.sim == "READY" and state.registered and state.registration == "home"
        assert state.operator == "vodafone UK" and state.rat == "LTE"
        assert state.rssi_dbm is not None and state.rsrp_dbm is not None
        assert state.data_up and state.error is None
        stages = [s.stage for s in link.states.items]
        assert stages.index("booting") < stages.index("sim") < stages.index("registering")
        assert stages.index("registering") < stages.index("data") < stages.index("up")
        assert link.sent.count('AT+CPIN="1234"') == 1
        assert link.sent.index("ATE0") < link.sent.index('AT+CGDCONT=1,"IP","internet"')
        assert link.sent.index('AT+CGDCONT=1,"IP","internet"') < link.sent.index("AT+NETOPEN")


def test_wrong_pin_fails_clearly_and_is_never_retried() -> None:
    with modem_link(A7670(time_scale=SCALE, pin="1234"), pin="9999") as link:
        link.states.wait(lambda s: s.stage == "failed", "failed")
        assert link.supervisor.state.error == "SIM PIN rejected (+CME ERROR: incorrect password)"
        time.sleep(1.0)  # the supervisor stays put: it must not try again
        assert link.supervisor.state.stage == "failed"
        assert link.sent.count('AT+CPIN="9999"') == 1  # one try spent, the PUK is safe


def test_no_sim_fails_clearly() -> None:
    with modem_link(A7670(time_scale=SCALE, sim="absent")) as link:
        link.states.wait(lambda s: s.stage == "failed", "failed")
        assert link.supervisor.state.error == "no SIM card (+CME ERROR: SIM not inserted)"
        assert link.supervisor.state.sim == "absent"


def test_apn_refused_by_the_network_fails_clearly() -> None:
    with modem_link(A7670(time_scale=SCALE, apns={"good.apn"}), apn="bad.apn") as link:
        link.states.wait(lambda s: s.stage == "failed", "failed")
        state = link.supervisor.state
        error = state.error or ""
        assert error.startswith("APN 'bad.apn' refused by the network (+NETOPEN: 1"), error
        assert state.registered and not state.data_up


def test_hung_module_is_recovered_by_the_ladder_up_to_the_power_key() -> None:
    with modem_link(A7670(time_scale=SCALE), power_key=True) as link:
        link.states.wait(lambda s: s.stage == "up", "stage up")
        link.runner.hang()
        link.states.wait(lambda s: s.recovery_step == "power key", "power-key step")
        link.states.wait(lambda s: s.stage == "up", "up again after the power key")
        steps = [s.recovery_step for s in link.states.items if s.recovery_step]
        assert steps.index("re-register") < steps.index("radio toggle")
        assert steps.index("radio toggle") < steps.index("module reset")
        assert steps.index("module reset") < steps.index("power key")
        assert "AT+CRESET" in link.sent
        state = link.supervisor.state
        assert state.recoveries == 4 and state.recovery_step is None and state.data_up


def test_coverage_loss_brings_data_up_again() -> None:
    with modem_link(A7670(time_scale=SCALE)) as link:
        link.states.wait(lambda s: s.stage == "up", "stage up")
        netopens = link.sent.count("AT+NETOPEN")
        link.runner.set_coverage(False)
        link.states.wait(lambda s: not s.data_up and not s.registered, "data and registration lost")
        link.runner.set_coverage(True)
        link.states.wait(lambda s: s.stage == "up" and s.data_up, "data up again")
        assert link.sent.count("AT+NETOPEN") == netopens + 1
        assert link.supervisor.state.recoveries == 0  # back within lost_s: no ladder needed
        assert "AT+CRESET" not in link.sent


def test_channel_survives_the_device_vanishing() -> None:
    master, slave = pty.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    with AtChannel(path) as channel:
        assert channel.wait_open(5.0)
        os.close(master)  # the USB adapter is pulled
        os.close(slave)
        deadline = time.monotonic() + 10
        while channel.is_open or channel.error is None:
            assert time.monotonic() < deadline, "the channel never noticed"
            time.sleep(0.02)
        assert path in channel.error
        with pytest.raises(ChannelError, match=path):
            channel.call(AtCommand("AT"))


def _read_until(fd: int, marker: bytes, within_s: float = 20.0) -> bytes:
    got = b""
    deadline = time.monotonic() + within_s
    while marker not in got:
        assert time.monotonic() < deadline, f"no {marker!r} in {got!r}"
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            got += os.read(fd, 4096)
    return got


def test_a_command_queued_behind_a_slow_one_has_its_own_deadline() -> None:
    """Issue 10 item 4: a command queued behind a slow `AT+COPS?` (here: answered after
    longer than the queued one's timeout plus the channel's margin) used to fail as "port
    thread stalled" and then reach the module anyway, an orphan. Its deadline starts when
    it is sent. The module side is this test, answering when it chooses."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    results: dict[str, AtResponse | Exception] = {}

    def call(command: AtCommand) -> None:
        try:
            results[command.line] = channel.call(command)
        except Exception as exc:
            results[command.line] = exc

    with AtChannel(os.ttyname(slave), echo_expected=False) as channel:
        assert channel.wait_open(5.0)
        slow = threading.Thread(target=call, args=(AtCommand("AT+COPS?", 60.0),))
        slow.start()
        _read_until(master, b"AT+COPS?\r")
        quick = threading.Thread(target=call, args=(AtCommand("AT+CSQ", 0.5),))
        quick.start()
        time.sleep(6.5)  # longer than AT+CSQ's 0.5 s and the channel's 5 s margin together
        assert "AT+CSQ" not in results  # still queued, not failed
        os.write(master, b'\r\n+COPS: 0,0,"vodafone UK",7\r\n\r\nOK\r\n')
        _read_until(master, b"AT+CSQ\r")
        os.write(master, b"\r\n+CSQ: 20,99\r\n\r\nOK\r\n")
        slow.join(10)
        quick.join(10)
    os.close(master)
    os.close(slave)
    csq = results["AT+CSQ"]
    assert isinstance(csq, AtResponse) and csq.ok and csq.lines == ("+CSQ: 20,99",)
    cops = results["AT+COPS?"]
    assert isinstance(cops, AtResponse) and cops.ok


def test_channel_names_a_missing_port() -> None:
    channel = AtChannel("/dev/does-not-exist-a7670")
    with channel:
        assert not channel.wait_open(0.5)
        assert channel.error is not None
        assert "/dev/does-not-exist-a7670" in channel.error and "no such device" in channel.error
        with pytest.raises(ChannelError, match="port not open"):
            channel.call(AtCommand("AT"))


def test_supervisor_reports_a_missing_port_and_keeps_running() -> None:
    states = States()
    with (
        AtChannel("/dev/does-not-exist-a7670") as channel,
        ModemSupervisor(channel, states, apn="internet", timeouts=TIMEOUTS) as supervisor,
    ):
        states.wait(lambda s: "no such device" in (s.error or ""), "port error in the state")
        assert "/dev/does-not-exist-a7670" in (supervisor.state.error or "")
        assert supervisor.state.stage == "off" and supervisor.state.recoveries == 0


def test_sms_send_and_receive_through_the_emulator() -> None:
    received: list[SmsMessage] = []
    got = threading.Event()
    with modem_link(A7670(time_scale=SCALE)) as link:
        runner, channel, states = link.runner, link.channel, link.states
        states.wait(lambda s: s.stage == "up", "stage up")
        sms = SmsClient(
            channel,
            on_message=lambda m: (received.append(m), got.set()),
            accept=number_is_one_of(["+447700900999"]),
        )
        with sms:
            assert sms.send("+447700900123", "drone-7 DELIVERED order 42") >= 0
            assert runner.sent_sms == [("+447700900123", "drone-7 DELIVERED order 42")]
            runner.deliver_sms("+447700900999", "k7Fq2x RTL")
            assert got.wait(10)
    assert received[0].sender == "+447700900999" and received[0].text == "k7Fq2x RTL"
    with runner.locked() as module:
        assert len(module.sms) == 0  # read and deleted


KEY = bytes.fromhex("8d2f5a1c7e3b9046d1a8c5f2e7b3094a6c1d8e2f5b7a9c3d0e4f6a8b1c2d3e4f")
OPERATOR = "+447700900123"
HOSTILE = [
    "OK",
    "ERROR",
    "hi\r\nOK\r\n+CMQTTRXSTART: 0,3,5\r\n+CMQTTRXTOPIC: 0,3\r\nabc\r\n+CMQTTRXEND: 0",
    "+CMQTTCONNLOST: 0,1\nERROR\n+CME ERROR: 13",
    "x" * 400,  # a concatenated message of three parts
    "Grüße \u2713 \u0416 \U0001f681",
]


def test_operator_commands_and_hostile_sms_end_to_end(tmp_path: Path) -> None:
    """Through the pty: hostile bodies from a stranger and from the operator's number, a
    signed command, its captured replay and a stale one. No fake line reaches the engine,
    every message is deleted, and the operator gets one answer per message."""
    bus = Bus()
    commands: list[OperatorCommand] = []
    bus.subscribe(OperatorCommand, commands.append)
    with modem_link(A7670(time_scale=SCALE)) as link:
        runner, channel, states = link.runner, link.channel, link.states
        states.wait(lambda s: s.stage == "up", "stage up")
        urcs: list[Urc] = []
        channel.subscribe_urc(urcs.append)
        sms = SmsClient(channel, accept=number_is_one_of([OPERATOR]), sweep_s=3600.0)
        operator = OperatorSms(
            bus=bus,
            authenticator=CommandAuthenticator(
                key=KEY,
                drone_id="drone-7",
                counters=CounterStore(tmp_path / "counters.json"),
                validity_s=300.0,
            ),
            send=sms.send,
            drone_id="drone-7",
        )
        sms.on_message = operator
        with sms:
            wait_until(lambda: sms.ready, "the set-up")
            now = int(time.time())
            command = sign_command(KEY, "drone-7", OPERATOR, 1, now, "abort")
            stale = sign_command(KEY, "drone-7", OPERATOR, 2, now - 301, "abort")
            for text in HOSTILE:
                runner.deliver_sms("+447700900999", text)
                runner.deliver_sms(OPERATOR, text)
            runner.deliver_sms(OPERATOR, command)
            runner.deliver_sms(OPERATOR, command)  # captured and replayed
            runner.deliver_sms(OPERATOR, stale)

            # The operator's hostile messages (8 with the 3 parts), the replay and the stale
            # command are refused, refusals answered at most 5 times an hour; the command is
            # answered.
            def done() -> bool:
                with runner.locked() as module:
                    handled = operator.accepted + operator.refused == len(HOSTILE) + 2 + 3
                    return handled and len(module.sms) == 0 and len(module.sent_sms) == 6

            wait_until(done, "every SMS handled, deleted and answered", within_s=60)
        operator.close()
    assert commands == [OperatorCommand(OperatorAction.ABORT, f"sms:{OPERATOR}")]
    answers = [text for number, text in runner.sent_sms]
    assert all(number == OPERATOR for number, _ in runner.sent_sms)  # strangers get nothing
    assert "drone-7 ABORT recorded, no mission flying: nothing done" in answers
    assert operator.accepted == 1 and operator.refused == len(HOSTILE) + 2 + 2
    assert not [u for u in urcs if u.name in ("", "+CMQTTCONNLOST") or u.name.startswith("+CME")]
    assert channel.engine.stats.mqtt_messages == 0 and channel.engine.stats.garbage_lines == 0
    assert sms.ignored == len(HOSTILE) + 2  # the stranger's messages (three parts of one)


def test_the_sim_never_fills_up() -> None:
    """80 messages into a 50-slot SIM store, faster than one a second: each is read and
    deleted, so the network never finds the store full."""
    emulator = A7670(time_scale=SCALE)
    with modem_link(emulator) as link:
        runner, channel, states = link.runner, link.channel, link.states
        states.wait(lambda s: s.stage == "up", "stage up")
        sms = SmsClient(channel, accept=number_is_one_of([OPERATOR]), storage="SM")
        got: list[SmsMessage] = []
        sms.on_message = got.append
        with sms:
            wait_until(lambda: sms.ready, "the set-up")
            for n in range(80):
                wait_until(lambda: len(runner.emulator.sms) < 40, "room in the store")
                runner.deliver_sms(OPERATOR, f"message {n}")
            wait_until(lambda: len(got) == 80, "all 80 handled", within_s=60)
        with runner.locked() as module:
            assert len(module.sms) == 0
    assert sorted(int(m.text.split()[1]) for m in got) == list(range(80))


def test_messages_stored_while_the_daemon_was_down_are_read_at_start() -> None:
    emulator = A7670(time_scale=SCALE)
    for n in range(5):
        emulator.deliver_sms(OPERATOR, f"while down {n}")
    with modem_link(emulator) as link:
        link.states.wait(lambda s: s.stage == "up", "stage up")
        got: list[SmsMessage] = []
        with SmsClient(link.channel, on_message=got.append, accept=number_is_one_of([OPERATOR])):
            wait_until(lambda: len(got) == 5, "the stored messages read")
        with link.runner.locked() as module:
            assert len(module.sms) == 0


def test_mqtt_over_the_modem_to_a_real_broker(mosquitto: Broker) -> None:
    bridge = PahoBridge(mosquitto.host, mosquitto.port)
    seen: list[tuple[str, bytes]] = []
    arrived = threading.Event()

    watcher = paho.Client(CallbackAPIVersion.VERSION2, client_id="watcher")

    def on_message(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
        seen.append((msg.topic, bytes(msg.payload)))
        arrived.set()

    watcher.on_message = on_message
    watcher.connect(mosquitto.host, mosquitto.port)
    watcher.subscribe("skycourier/v1/drone-7/#", qos=1)
    watcher.loop_start()
    try:
        with modem_link(A7670(time_scale=SCALE, bridge=bridge)) as link:
            runner, sup, states = link.runner, link.supervisor, link.states
            transport = AtMqttTransport(
                sup, client_id="drone-7", broker=f"tcp://{mosquitto.host}:{mosquitto.port}"
            )
            commands: list[tuple[str, bytes]] = []
            got_command = threading.Event()
            transport.subscribe(
                "skycourier/v1/drone-7/cmd",
                lambda t, p: (commands.append((t, p)), got_command.set()),
            )
            states.wait(lambda s: s.stage == "up" and s.mqtt_up, "MQTT up")
            assert transport.connected
            transport.publish("skycourier/v1/drone-7/telemetry", b'{"seq": 1}')
            assert arrived.wait(10)
            assert ("skycourier/v1/drone-7/telemetry", b'{"seq": 1}') in seen

            watcher.publish("skycourier/v1/drone-7/cmd", b'{"cmd": "rtl"}', qos=1)
            assert got_command.wait(10)
            assert commands == [("skycourier/v1/drone-7/cmd", b'{"cmd": "rtl"}')]

            # a dropped connection is reconnected by the supervisor; publishing works again
            runner.drop_mqtt()
            states.wait(lambda s: not s.mqtt_up, "MQTT connection lost")
            states.wait(lambda s: s.mqtt_up, "MQTT reconnected")
            transport.publish("skycourier/v1/drone-7/telemetry", b'{"seq": 2}')
            deadline = time.monotonic() + 10
            while ("skycourier/v1/drone-7/telemetry", b'{"seq": 2}') not in seen:
                assert time.monotonic() < deadline, seen
                time.sleep(0.02)
            transport.close()
    finally:
        watcher.loop_stop()
        watcher.disconnect()


def test_module_hanging_mid_publish_is_recovered_without_help(mosquitto: Broker) -> None:
    bridge = PahoBridge(mosquitto.host, mosquitto.port)
    emulator = A7670(time_scale=SCALE, bridge=bridge)
    with modem_link(emulator, power_key=True) as link:
        runner, sup, states = link.runner, link.supervisor, link.states
        transport = AtMqttTransport(
            sup,
            client_id="drone-8",
            broker=f"tcp://{mosquitto.host}:{mosquitto.port}",
            command_timeout_s=1.0,
        )
        states.wait(lambda s: s.mqtt_up, "MQTT up")
        transport.publish("skycourier/v1/drone-8/events", b"before")
        runner.hang()
        with pytest.raises(TransportError, match=r"CMQTTTOPIC.*within 1 s"):
            transport.publish("skycourier/v1/drone-8/events", b"during")
        states.wait(lambda s: s.recovery_step == "power key", "power-key step")
        states.wait(lambda s: s.stage == "up" and s.mqtt_up, "MQTT up again", timeout=30)
        transport.publish("skycourier/v1/drone-8/events", b"after")
        transport.close()
