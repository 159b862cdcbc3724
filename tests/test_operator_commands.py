"""Operator commands (hold, resume, abort, return, land) from the dispatcher and the control
socket: the signed format and its verifier, hostile payloads refused with their reason (also
under hypothesis), the intake that hands accepted commands to the flying mission and answers
each one, the answers going up a real telemetry uplink through mosquitto, the control socket,
`skycourier command`, and a signed hold that stops a drone flying the built-in vehicle until
a local resume sends it on."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.bus import Bus
from companion.cli import main
from companion.config import load_config
from companion.intake.commands import CommandAck, CommandIntake
from companion.intake.control import ControlError, ControlServer, send_command
from companion.intake.downlink import subscribe_commands
from companion.intake.intake import OrderAck
from companion.intake.service import control_command, listen_on
from companion.mission.events import MissionEvent, Phase
from companion.mission.inputs import OperatorAction, OperatorCommand
from companion.mission.journal import FINISHED_EVENT
from companion.security.audit import AuditTrail, verify_audit
from companion.security.encoding import b64url, canonical_json
from companion.security.keys import KeyStore
from companion.security.orders import SIGNATURE_DOMAIN as ORDER_DOMAIN
from companion.security.orders import NonceStore
from companion.security.signed_commands import (
    MAX_COMMAND_BYTES,
    REASONS,
    SIGNATURE_DOMAIN,
    CommandError,
    SignedCommand,
    decode_command,
    sign_command,
    verify_command,
)
from companion.telemetry import schema
from companion.telemetry.uplink import open_uplink
from sim.mqtt_broker import Broker
from tests.test_mission_runner import flight, plan
from tests.waiting import wait_until

DRONE = "sky-1"
DISPATCHER = Ed25519PrivateKey.generate()
TOPIC = f"skycourier/v1/{DRONE}/commands"
NOW = 1_767_225_600


def signed(command: str = "hold", **changes: Any) -> bytes:
    args: dict[str, Any] = {"drone_id": DRONE, "command": command, "issued_at": int(time.time())}
    args.update(changes)
    signer = args.pop("signer", DISPATCHER)
    return sign_command(signer, **args)


def resign(doc: dict[str, Any], domain: bytes = SIGNATURE_DOMAIN) -> bytes:
    """`doc` (with any body at all) signed again by the dispatcher over `domain`."""
    signature = DISPATCHER.sign(domain + canonical_json({"cmd": doc["cmd"], "v": doc["v"]}))
    return canonical_json({**doc, "sig": b64url(signature)})


def verify(blob: bytes, *, now: float = NOW, nonces: NonceStore | None = None) -> SignedCommand:
    return verify_command(
        blob,
        dispatcher_public=DISPATCHER.public_key(),
        drone_id=DRONE,
        now=now,
        nonces=nonces if nonces is not None else NonceStore(None),
    )


def refusal(blob: bytes, **kwargs: Any) -> CommandError:
    with pytest.raises(CommandError) as info:
        verify(blob, **kwargs)
    return info.value


# -- the signed format -----------------------------------------------------------------------


def test_a_signed_command_round_trips_and_its_nonce_is_used_up(tmp_path: Path) -> None:
    blob = signed("return", issued_at=NOW, valid_for_s=90, order_id="o-7")
    nonces = NonceStore(tmp_path / "nonces.json")
    command = verify(blob, nonces=nonces)
    assert (command.command, command.drone_id, command.order_id) == ("return", DRONE, "o-7")
    assert (command.issued_at, command.valid_for_s, command.expires) == (NOW, 90, NOW + 90)
    assert command.command_id == b64url(command.nonce) and len(command.nonce) == 16
    assert command.summary()["command_id"] == command.command_id
    assert command.nonce in nonces
    # Also after a restart: the store is on disk.
    assert refusal(blob, nonces=NonceStore(tmp_path / "nonces.json")).reason == "replay"
    decoded, _, _ = decode_command(blob)
    assert decoded == command and "order_id" not in json.loads(signed())["cmd"]


@pytest.mark.parametrize(
    ("blob", "reason", "words"),
    [
        (lambda: signed(signer=Ed25519PrivateKey.generate()), "signature", "does not verify"),
        (lambda: signed().replace(b'"hold"', b'"land"'), "signature", "does not verify"),
        (lambda: signed(drone_id="sky-2"), "wrong-drone", "'sky-2'"),
        (lambda: signed(issued_at=NOW - 61, valid_for_s=60), "expired", "1 s ago"),
        (lambda: signed(issued_at=NOW + 61), "not-yet-valid", "check the clocks"),
        (lambda: b"{not json", "malformed", "not JSON"),
        (lambda: b"\xff\xfe", "malformed", "not UTF-8"),
        (lambda: b"[1, 2]", "malformed", "a JSON object"),
        (lambda: b'{"cmd":{},"v":1}', "unsigned", "no signature"),
        (lambda: b'{"cmd":{},"sig":"x","v":2}', "version", "version 2"),
        (lambda: b'{"cmd":{},"sig":"x","v":true}', "version", "True"),
        (lambda: signed() + b" ", "malformed", "canonical"),
        (lambda: b"{" + b" " * MAX_COMMAND_BYTES + b"}", "malformed", "byte limit"),
    ],
)
def test_hostile_commands_are_refused_with_their_reason(blob, reason: str, words: str) -> None:
    error = refusal(blob())
    assert error.reason == reason, error
    assert words in error.message, error.message


def test_the_clock_skew_and_the_validity_window_are_bounded() -> None:
    assert verify(signed(issued_at=NOW + 60)).issued_at == NOW + 60  # within the skew
    assert verify(signed(issued_at=NOW - 59, valid_for_s=60), now=NOW).command == "hold"
    assert refusal(signed(issued_at=NOW - 60, valid_for_s=60)).reason == "expired"


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("valid_for_s", 121, "valid_for_s: must be an integer in [1, 120]"),
        ("valid_for_s", 0, "valid_for_s"),
        ("valid_for_s", "60", "valid_for_s"),
        ("issued_at", -1, "issued_at"),
        ("command", "fly", "cmd.command: must be one of"),
        ("order_id", "o 7", "cmd.order_id"),
        ("nonce", "AAAA", "cmd.nonce: must be 16 bytes"),
        ("drone_id", 7, "cmd.drone_id"),
        ("extra", 1, "unknown field(s) extra"),
    ],
)
def test_malformed_fields_are_named_even_when_signed(field: str, value: Any, words: str) -> None:
    doc = json.loads(signed(issued_at=NOW))
    doc["cmd"][field] = value
    error = refusal(resign(doc))
    assert error.reason == "malformed" and words in error.message, error.message


def test_a_missing_field_is_named() -> None:
    doc = json.loads(signed(issued_at=NOW))
    del doc["cmd"]["nonce"]
    assert "cmd: missing nonce" in refusal(resign(doc)).message


def test_an_order_signature_never_verifies_as_a_command() -> None:
    """The signature domains differ: bytes the dispatcher signed as an order are no command."""
    doc = json.loads(signed(issued_at=NOW))
    assert refusal(resign(doc, ORDER_DOMAIN)).reason == "signature"
    assert verify(resign(doc)).command == "hold"


def test_an_unwritable_nonce_store_refuses_the_command(tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "nonces.json")
    (tmp_path / "nonces.json.tmp").mkdir()  # where the new file is written first
    error = refusal(signed(issued_at=NOW), nonces=store)
    assert error.reason == "nonce-store" and "cannot be written" in error.message
    assert len(store) == 0


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"command": "rtl"}, "cmd.command"),
        ({"valid_for_s": 600}, "valid_for_s"),
        ({"order_id": ""}, "order_id"),
        ({"drone_id": "a/b"}, "drone_id"),
    ],
)
def test_sign_command_refuses_bad_arguments(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        signed(**changes)


def _refused_or_verified(blob: bytes) -> SignedCommand | None:
    try:
        return verify(blob)
    except CommandError as exc:
        assert exc.reason in REASONS, exc
        return None


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=2 * MAX_COMMAND_BYTES))
def test_arbitrary_bytes_are_refused_with_a_command_error(blob: bytes) -> None:
    assert _refused_or_verified(blob) is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_commands_are_refused_unless_unchanged(data: st.DataObject) -> None:
    original = signed(issued_at=NOW)
    blob = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        if not blob:
            break
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, len(blob) - 1))
        if op == "flip":
            blob[i] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            blob[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del blob[i : i + data.draw(st.integers(1, 8))]
        else:
            del blob[i:]
    result = _refused_or_verified(bytes(blob))
    assert result is None or bytes(blob) == original


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(
        ["cmd", "command", "drone_id", "issued_at", "valid_for_s", "nonce", "order_id", "x"]
    ),
    value=_json_values,
)
def test_signed_commands_with_any_field_value_verify_or_are_malformed(
    field: str, value: Any
) -> None:
    """Re-signed by the dispatcher, so the field checks themselves are what is tested."""
    doc = json.loads(signed(issued_at=NOW))
    if field == "cmd":
        doc["cmd"] = value
    else:
        doc["cmd"][field] = value
    try:
        command = verify(resign(doc))
    except CommandError as exc:
        assert exc.reason in ("malformed", "wrong-drone", "expired", "not-yet-valid"), exc
    else:
        assert command.command in ("abort", "return", "hold", "resume", "land")


# -- the intake ------------------------------------------------------------------------------


class Intake:
    """A `CommandIntake` on its own bus, recording what it publishes and audits."""

    def __init__(self, tmp_path: Path, **kwargs: Any) -> None:
        self.bus = Bus()
        self.acks: list[CommandAck] = []
        self.acted: list[OperatorCommand] = []
        self.audited: list[tuple[str, dict[str, Any]]] = []
        self.bus.subscribe(CommandAck, self.acks.append)
        self.bus.subscribe(OperatorCommand, self.acted.append)
        args: dict[str, Any] = {
            "dispatcher_public": DISPATCHER.public_key(),
            "drone_id": DRONE,
            "nonces": NonceStore(tmp_path / "nonces.json"),
            "audit": lambda kind, data: self.audited.append((kind, data)),
        }
        args.update(kwargs)
        self.commands = CommandIntake(self.bus, **args)

    def mission(self, mission_id: str = "o-1", event: str = "enter") -> None:
        self.bus.publish(MissionEvent(mission_id, Phase.CRUISE, event, {}, 10.0, time.time()))


def test_an_accepted_command_reaches_the_mission_and_is_answered_and_audited(
    tmp_path: Path,
) -> None:
    intake = Intake(tmp_path)
    intake.mission("o-1")
    blob = signed("hold", order_id="o-1")
    ack = intake.commands.submit(blob, "mqtt:" + TOPIC)
    assert (ack.accepted, ack.reason, ack.command) == (True, "accepted", "hold")
    assert ack.mission_id == ack.order_id == "o-1"
    assert ack.command_id == decode_command(blob)[0].command_id
    assert intake.acks == [ack]
    assert intake.acted == [OperatorCommand(OperatorAction.HOLD, "mqtt:" + TOPIC)]
    ((kind, data),) = intake.audited
    assert kind == "command-accepted"
    assert data["command_id"] == ack.command_id and data["source"] == "mqtt:" + TOPIC
    assert data["digest"] == hashlib.sha256(blob).hexdigest()
    assert (data["order_id"], data["valid_for_s"]) == ("o-1", 60)


@pytest.mark.parametrize(
    ("command", "action"),
    [
        ("abort", OperatorAction.ABORT),
        ("return", OperatorAction.ABORT),
        ("land", OperatorAction.LAND),
        ("hold", OperatorAction.HOLD),
        ("resume", OperatorAction.RESUME),
    ],
)
def test_each_command_maps_to_the_missions_action(
    tmp_path: Path, command: str, action: OperatorAction
) -> None:
    intake = Intake(tmp_path)
    intake.mission()
    assert intake.commands.submit(signed(command), "mqtt:" + TOPIC).accepted
    assert intake.commands.local(command, None).accepted
    assert [c.action for c in intake.acted] == [action, action]
    assert [c.source for c in intake.acted] == ["mqtt:" + TOPIC, "control"]


def test_without_a_flying_mission_a_command_is_answered_not_dropped(tmp_path: Path) -> None:
    intake = Intake(tmp_path)
    ack = intake.commands.submit(signed("abort"), "mqtt:" + TOPIC)
    assert (ack.accepted, ack.reason) == (False, "no-mission")
    assert ack.message == "no mission flying: nothing done" and ack.command_id
    intake.mission("o-1")
    intake.mission("o-1", FINISHED_EVENT)  # it has ended since
    assert intake.commands.local("hold", None).reason == "no-mission"
    assert intake.acted == [] and [a.reason for a in intake.acks] == ["no-mission"] * 2
    # Authenticated refusals are the dispatcher's or the operator's business: audited.
    assert [kind for kind, _ in intake.audited] == ["command-refused"] * 2


def test_a_command_for_another_order_is_refused(tmp_path: Path) -> None:
    intake = Intake(tmp_path)
    intake.mission("o-2")
    ack = intake.commands.submit(signed("abort", order_id="o-1"), "mqtt:" + TOPIC)
    assert (ack.accepted, ack.reason, ack.order_id, ack.mission_id) == (
        False, "wrong-order", "o-1", "o-2",
    )  # fmt: skip
    assert "'o-1'" in ack.message and "'o-2'" in ack.message
    assert intake.commands.local("abort", "o-1").reason == "wrong-order"
    assert intake.acted == []
    assert intake.commands.local("abort", "o-2").accepted


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (lambda: b"\x00" * (MAX_COMMAND_BYTES + 1), "malformed"),
        (lambda: b"{not json", "malformed"),
        (lambda: b'{"cmd":{"command":7},"sig":"AA","v":1}', "malformed"),
        (lambda: signed(signer=Ed25519PrivateKey.generate()), "signature"),
        (lambda: signed().replace(b'"hold"', b'"land"'), "signature"),
        (lambda: b'{"cmd":{},"v":1}', "unsigned"),
        (lambda: signed(drone_id="other"), "wrong-drone"),
        (lambda: signed(issued_at=int(time.time()) - 200, valid_for_s=120), "expired"),
    ],
)
def test_hostile_payloads_are_refused_by_the_intake_never_crash_it(
    tmp_path: Path, blob, reason: str
) -> None:
    intake = Intake(tmp_path)
    intake.mission()
    ack = intake.commands.submit(blob(), "mqtt:" + TOPIC)
    assert (ack.accepted, ack.reason) == (False, reason), ack
    assert intake.acted == [] and intake.acks == [ack]
    # Only what the dispatcher's key vouches for reaches the signed audit trail.
    vouched = reason in ("wrong-drone", "expired")
    assert [kind for kind, _ in intake.audited] == (["command-refused"] if vouched else [])


def test_a_replayed_command_is_refused_and_acted_on_once(tmp_path: Path) -> None:
    intake = Intake(tmp_path)
    intake.mission()
    blob = signed("land")
    first, again = (intake.commands.submit(blob, "mqtt:" + TOPIC) for _ in range(2))
    assert first.accepted and (again.accepted, again.reason) == (False, "replay")
    assert first.command_id == again.command_id  # the answer names the command either way
    assert (again.command, again.order_id) == ("land", None)
    assert len(intake.acted) == 1


def test_without_a_dispatcher_key_only_local_commands_work(tmp_path: Path) -> None:
    intake = Intake(tmp_path, dispatcher_public=None)
    intake.mission()
    ack = intake.commands.submit(signed("hold"), "mqtt:" + TOPIC)
    assert (ack.accepted, ack.reason) == (False, "no-dispatcher-key")
    assert intake.commands.local("hold", None).accepted


def test_without_a_nonce_store_signed_commands_are_refused_after_every_other_check(
    tmp_path: Path,
) -> None:
    intake = Intake(tmp_path, nonces=None, nonce_problem="nonces.json: corrupt")
    intake.mission()
    assert intake.commands.submit(b"junk", "mqtt:" + TOPIC).reason == "malformed"
    ack = intake.commands.submit(signed("hold"), "mqtt:" + TOPIC)
    assert (ack.reason, ack.message) == ("nonce-store", "nonces.json: corrupt")
    assert intake.acted == [] and intake.commands.local("resume", None).accepted


def test_bad_local_commands_are_named(tmp_path: Path) -> None:
    intake = Intake(tmp_path)
    intake.mission()
    ack = intake.commands.local("fly", None)
    assert (ack.reason, ack.command) == ("malformed", None)
    assert "unknown command 'fly'" in ack.message
    ack = intake.commands.local("hold", "o/1")
    assert ack.reason == "malformed" and "order id 'o/1'" in ack.message
    assert intake.acted == [] and ack.command_id.startswith("control-")


def test_a_failing_audit_trail_does_not_stop_a_command(tmp_path: Path) -> None:
    def broken(kind: str, data: dict[str, Any]) -> None:
        raise OSError("disk full")

    intake = Intake(tmp_path, audit=broken)
    intake.mission()
    assert intake.commands.submit(signed("abort"), "mqtt:" + TOPIC).accepted
    assert intake.acted == [OperatorCommand(OperatorAction.ABORT, "mqtt:" + TOPIC)]


def test_the_local_answer_carries_the_missions_reaction(tmp_path: Path) -> None:
    intake = Intake(tmp_path)
    intake.mission("o-1")

    stop = intake.bus.subscribe(OperatorCommand, _mission_reacts(intake.bus, "o-1"))
    answer = intake.commands.control("hold", "o-1", wait_s=5.0)
    assert answer["accepted"] is True
    assert answer["reaction"] == {
        "mission_id": "o-1", "phase": "cruise", "event": "hold",
        "detail": {"reason": "operator hold (control)"},
    }  # fmt: skip
    # A mission that does not answer: the answer says so (None) after the wait.
    stop()
    assert intake.commands.control("resume", None, wait_s=0.05)["reaction"] is None
    assert intake.commands.control("fly", None, wait_s=5.0)["reason"] == "malformed"


# -- the control socket and the command line -------------------------------------------------


def _mission_reacts(bus: Bus, mission_id: str) -> Any:
    """Stands in for the mission core: journals each operator command as it would."""

    def react(command: OperatorCommand) -> None:
        reason = f"operator {command.action.value} ({command.source})"
        bus.publish(MissionEvent(mission_id, Phase.CRUISE, "hold", {"reason": reason}, 11.0))

    return react


def _orders_refused(_blob: bytes, source: str) -> OrderAck:
    return OrderAck(False, "queue", "no orders here", source)


def test_the_control_socket_takes_local_commands_and_refuses_bad_requests(
    tmp_path: Path, capsys
) -> None:
    import socket as sockets

    intake = Intake(tmp_path)
    path = tmp_path / "control.sock"
    server = ControlServer(path, _orders_refused, command=control_command(intake.commands))
    server.start()
    try:
        refused = send_command(path, "hold")
        assert (refused["accepted"], refused["reason"]) == (False, "no-mission")
        intake.mission("o-3")
        intake.bus.subscribe(OperatorCommand, _mission_reacts(intake.bus, "o-3"))
        answer = send_command(path, "return", "o-3")
        assert (answer["accepted"], answer["command"]) == (True, "return")
        assert answer["mission_id"] == "o-3"
        assert answer["reaction"]["detail"] == {"reason": "operator abort (control)"}
        assert intake.acted == [OperatorCommand(OperatorAction.ABORT, "control")]
        for request, error in (
            (b'{"op": "command", "command": 7}\n', "'command' must be the command's name"),
            (b'{"op": "command", "command": "hold", "order_id": 1}\n', "'order_id' must be"),
            (b'{"op": "fly"}\n', '{"op": "command"'),
        ):
            with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as s:
                s.connect(str(path))
                s.sendall(request)
                reply = json.loads(s.makefile("rb").readline())
            assert error in reply["error"], reply
        assert main(["command", "land", "--order", "o-9", "--socket", str(path)]) == 1
        out = json.loads(capsys.readouterr().out)
        assert (out["reason"], out["command"]) == ("wrong-order", "land")
        assert main(["command", "hold", "--socket", str(path)]) == 0
        assert json.loads(capsys.readouterr().out)["accepted"] is True
    finally:
        server.stop()
    assert main(["command", "hold", "--socket", str(path)]) == 1
    assert "no daemon answers" in capsys.readouterr().err
    with pytest.raises(ControlError):
        send_command(path, "hold")


def test_command_sign_makes_a_command_the_drone_verifies(tmp_path: Path, capsys) -> None:
    keys = KeyStore(tmp_path / "dispatcher")
    public = keys.init_dispatcher()
    base = ["command", "sign", "--dispatcher-keys", str(keys.path), "--drone", DRONE]
    assert main([*base, "abort", "--order", "o-4", "--valid-for", "30"]) == 0
    blob = capsys.readouterr().out.strip().encode()
    command = verify_command(blob, dispatcher_public=public, drone_id=DRONE, now=time.time(),
                             nonces=NonceStore(None))  # fmt: skip
    assert (command.command, command.order_id, command.valid_for_s) == ("abort", "o-4", 30)
    out = tmp_path / "hold.json"
    assert main([*base, "hold", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["command"] == "hold"
    assert decode_command(out.read_bytes())[0].command == "hold"  # exactly the signed bytes
    assert main([*base, "hold", "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main([*base, "hold", "--valid-for", "600"]) == 1
    assert "valid_for_s" in capsys.readouterr().err
    assert main(["command", "sign", "--dispatcher-keys", str(tmp_path), "--drone", DRONE,
                 "hold"]) == 1  # fmt: skip
    assert capsys.readouterr().err.startswith("skycourier command sign: ")


# -- over MQTT: a real broker and the real telemetry uplink ------------------------------------


class FakeTransport:
    """Delivers messages to the subscriptions, as a transport's receive thread does."""

    def __init__(self) -> None:
        self.subscriptions: dict[str, Any] = {}

    def subscribe(self, topic: str, callback: Any) -> None:
        self.subscriptions[topic] = callback

    def deliver(self, topic: str, payload: bytes) -> None:
        self.subscriptions[topic](topic, payload)


def test_the_downlink_subscription_bounds_what_it_reads(tmp_path: Path) -> None:
    intake = Intake(tmp_path)
    intake.mission()
    transport = FakeTransport()
    assert subscribe_commands(transport, DRONE, intake.commands.submit) == TOPIC  # type: ignore[arg-type]
    transport.deliver(TOPIC, signed("hold") + b" " * 100_000)
    transport.deliver(TOPIC, signed("resume"))
    assert [(a.reason, a.source) for a in intake.acks] == [
        ("malformed", "mqtt:" + TOPIC), ("accepted", "mqtt:" + TOPIC),
    ]  # fmt: skip
    assert "over the 1024-byte limit" in intake.acks[0].message


def test_commands_over_mosquitto_are_answered_on_the_uplink(
    tmp_path: Path, mosquitto: Broker
) -> None:
    """The daemon's own wiring (`open_uplink` on the ip transport, `listen_on`): signed
    commands published by the ground side reach the mission, and every one, good or hostile,
    is answered by a `command-accepted`/`command-refused` event on the events topic."""
    config = load_config(None).updated(
        "test",
        telemetry={
            "transport": "ip",
            "broker": f"tcp://{mosquitto.host}:{mosquitto.port}",
            "drone_id": DRONE,
            "queue_path": str(tmp_path / "telemetry.db"),
        },
    )
    intake = Intake(tmp_path)
    received: list[schema.Event] = []
    ground = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ground-service")

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        for record in schema.decode_message(message.topic, message.payload):
            if isinstance(record, schema.Event) and record.kind.startswith("command-"):
                received.append(record)

    ground.on_message = on_message
    ground.connect(mosquitto.host, mosquitto.port)
    ground.subscribe(schema.topic(DRONE, "events"), qos=1)
    ground.loop_start()
    uplink = open_uplink(config.modem, config.telemetry, intake.bus)
    assert uplink is not None
    try:
        listen_on(uplink, config, None, lambda _digits: None, intake.commands)

        def answered(probe: bytes) -> bool:  # the drone's subscription is made on its connection
            ground.publish(TOPIC, probe, qos=1).wait_for_publish(10)
            time.sleep(0.2)
            return bool(received)

        wait_until(lambda: answered(b'{"probe":1}'), "the drone answering on the uplink", 30)
        intake.mission("o-5")
        good = signed("hold", order_id="o-5")
        payloads = [
            good,
            good,  # replayed
            signed("abort", drone_id="sky-9"),
            good.replace(b'"hold"', b'"land"'),  # tampered
            b"\x00\xff not json",
            signed("abort", issued_at=int(time.time()) - 600),
            b"x" * 5000,
            signed("return", order_id="o-6"),
            signed("resume"),
        ]
        for payload in payloads:
            ground.publish(TOPIC, payload, qos=1).wait_for_publish(10)

        def answers() -> list[schema.Event]:  # in the drone's order, less the probes
            got = [r for r in received if r.detail["message"] != 'no version ("v")']
            return sorted(got, key=lambda r: r.seq)

        wait_until(lambda: len(answers()) == len(payloads), "every command answered", 30)
    finally:
        uplink.close()
        ground.loop_stop()
        ground.disconnect()
    events = answers()
    answered_as = [(r.kind, r.detail["reason"]) for r in events]
    assert answered_as == [
        ("command-accepted", "accepted"),
        ("command-refused", "replay"),
        ("command-refused", "wrong-drone"),
        ("command-refused", "signature"),
        ("command-refused", "malformed"),
        ("command-refused", "expired"),
        ("command-refused", "malformed"),
        ("command-refused", "wrong-order"),
        ("command-accepted", "accepted"),
    ]
    hold = events[0]
    assert hold.mission_id == "o-5" and hold.detail["source"] == f"mqtt:{TOPIC}"
    assert hold.detail["command_id"] == decode_command(good)[0].command_id
    assert [c.action for c in intake.acted] == [OperatorAction.HOLD, OperatorAction.RESUME]


# -- on a flying mission: the built-in vehicle -----------------------------------------------


def _speed(velocity_ned: tuple[float, float, float]) -> float:
    return math.hypot(velocity_ned[0], velocity_ned[1])


def test_a_signed_hold_stops_the_flying_drone_and_a_local_resume_sends_it_on(
    tmp_path: Path,
) -> None:
    """The whole path on the runner: a signed hold arrives on the downlink during the
    cruise, the vehicle stops where it is (once it has settled, 15 simulated seconds on: still
    GUIDED, no horizontal speed, no drift for 5 more seconds), a resume through the real
    control socket sends it on and its answer carries the mission's reaction; the delivery
    then completes. Both commands are in the signed audit trail."""
    trail_key = Ed25519PrivateKey.generate()
    trail = AuditTrail(tmp_path / "audit.jsonl", trail_key)
    result: dict[str, Any] = {}
    socket_path = tmp_path / "control.sock"
    with flight(tmp_path) as f:
        commands = CommandIntake(
            f.bus,
            dispatcher_public=DISPATCHER.public_key(),
            drone_id=DRONE,
            nonces=NonceStore(tmp_path / "nonces.json"),
            audit=lambda kind, data: trail.append(kind, **data),
        )
        acks: list[CommandAck] = []
        f.bus.subscribe(CommandAck, acks.append)
        transport = FakeTransport()
        subscribe_commands(transport, DRONE, commands.submit)  # type: ignore[arg-type]
        server = ControlServer(socket_path, _orders_refused, command=control_command(commands))
        server.start()

        def operator() -> None:
            try:
                wait_until(lambda: _speed(f.server.state.velocity_ned) > 2.0, "cruising", 60)
                result["before"] = f.server.state
                transport.deliver(TOPIC, signed("hold", order_id="m-1"))
                wait_until(lambda: any(e.event == "hold" for e in f.events), "the hold", 30)
                held_at = f.server.sim_time
                wait_until(lambda: f.server.sim_time > held_at + 15.0, "15 s held", 60)
                first = f.server.state
                wait_until(lambda: f.server.sim_time > first.time_s + 5.0, "5 s more", 60)
                result["held"] = (first, f.server.state)
                result["resume"] = send_command(socket_path, "resume", "m-1")
            except Exception as exc:  # reported by the test below
                result["error"] = exc
            finally:
                if "resume" not in result:  # never leave the mission held for ever
                    f.bus.publish(OperatorCommand(OperatorAction.ABORT, "test-failsafe"))

        f.on(Phase.CRUISE, lambda _f: threading.Thread(target=operator, daemon=True).start())
        try:
            outcome = f.fly(plan(400.0))
        finally:
            server.stop()
            commands.close()
        story = f.story()
    trail.close()
    assert "error" not in result, result.get("error")
    assert outcome == "delivered"
    assert (Phase.CRUISE, "hold") in story and (Phase.CRUISE, "resume") in story
    assert story.index((Phase.CRUISE, "hold")) < story.index((Phase.CRUISE, "resume"))
    first, second = result["held"]
    for state in (first, second):
        assert state.armed and state.mode == "GUIDED" and _speed(state.velocity_ned) < 0.3
    drift = math.hypot(second.north_m - first.north_m, second.east_m - first.east_m)
    assert drift < 0.5, drift
    before = result["before"]  # it stopped where it was told to (braking from cruise)
    assert math.hypot(first.north_m - before.north_m, first.east_m - before.east_m) < 3.0
    assert abs(second.alt_rel_m - 15.0) < 1.5
    resume = result["resume"]
    assert resume["accepted"] is True and resume["source"] == "control"
    assert resume["reaction"]["event"] == "resume" and resume["reaction"]["phase"] == "cruise"
    assert [(a.command, a.source, a.accepted) for a in acks] == [
        ("hold", "mqtt:" + TOPIC, True), ("resume", "control", True),
    ]  # fmt: skip
    report = verify_audit(tmp_path / "audit.jsonl", trail_key.public_key())
    assert report.ok, report
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["data"]["command"], r["data"]["source"]) for r in records] == [
        ("command-accepted", "hold", "mqtt:" + TOPIC),
        ("command-accepted", "resume", "control"),
    ]


# -- the daemon's wiring -----------------------------------------------------------------------


def test_the_daemon_takes_commands_on_its_socket_and_downlink_and_audits_them(
    tmp_path: Path, mosquitto: Broker, capsys
) -> None:
    """`skycourier run` as the systemd unit starts it: a local command through
    `skycourier command` and a signed one over MQTT are both answered (no mission flies:
    "no-mission"), to the client and on the uplink, and both go into the drone's audit
    trail."""
    from companion.daemon import run_daemon
    from companion.security.keys import dispatcher_public_json
    from sim.vehicle import DEFAULT_HOME, VehicleServer

    keys = KeyStore(tmp_path / "keys")
    keys.init_drone(DRONE)
    pub = tmp_path / "dispatcher.pub.json"
    pub.write_bytes(dispatcher_public_json(DISPATCHER.public_key()))
    socket_path = tmp_path / "control.sock"
    refusals: list[schema.Event] = []
    ground = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ground-daemon-test")

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        for record in schema.decode_message(message.topic, message.payload):
            if isinstance(record, schema.Event) and record.kind == "command-refused":
                refusals.append(record)

    ground.on_message = on_message
    ground.connect(mosquitto.host, mosquitto.port)
    ground.subscribe(schema.topic(DRONE, "events"), qos=1)
    ground.loop_start()
    with VehicleServer(DEFAULT_HOME, speedup=5.0, port=0) as server:
        config = load_config(None).updated(
            "test",
            vehicle={"connection": f"tcp:127.0.0.1:{server.port}"},
            journal={"path": str(tmp_path / "journal.db")},
            security={
                "keys_dir": str(keys.path),
                "audit_path": str(tmp_path / "audit.jsonl"),
                "dispatcher_pub": str(pub),
                "nonce_path": str(tmp_path / "nonces.json"),
                "command_nonce_path": str(tmp_path / "command-nonces.json"),
            },
            intake={"queue_path": str(tmp_path / "orders.db"), "socket_path": str(socket_path)},
            telemetry={
                "transport": "ip",
                "broker": f"tcp://{mosquitto.host}:{mosquitto.port}",
                "drone_id": DRONE,
                "queue_path": str(tmp_path / "telemetry.db"),
            },
        )
        stop = threading.Event()
        result: list[int] = []
        daemon = threading.Thread(target=lambda: result.append(run_daemon(config, stop)))
        daemon.start()
        try:
            wait_until(socket_path.exists, "the control socket", 60)
            assert main(["command", "hold", "--socket", str(socket_path)]) == 1
            assert json.loads(capsys.readouterr().out)["reason"] == "no-mission"

            def answered() -> bool:  # the drone subscribes once its link is up
                blob = signed("abort")
                ground.publish(TOPIC, blob, qos=1).wait_for_publish(10)
                time.sleep(0.3)
                named = decode_command(blob)[0].command_id
                return any(r.detail["command_id"] == named for r in refusals)

            wait_until(answered, "a signed command answered on the uplink", 60)
        finally:
            stop.set()
            daemon.join(60)
            ground.loop_stop()
            ground.disconnect()
    assert result == [0]
    assert {(r.detail["reason"], r.detail["source"]) for r in refusals} == {
        ("no-mission", "control"),
        ("no-mission", f"mqtt:{TOPIC}"),
    }
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    sources = [(r["kind"], r["data"]["command"], r["data"]["source"]) for r in records]
    assert sources[0] == ("command-refused", "hold", "control")
    assert set(sources[1:]) == {("command-refused", "abort", f"mqtt:{TOPIC}")}
    assert verify_audit(tmp_path / "audit.jsonl", keys.drone_public().identity).ok
