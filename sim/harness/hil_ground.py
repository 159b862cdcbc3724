"""The ground side of the hardware-in-the-loop rig: what a dispatcher and an operator do.

`GroundStation` is the dispatcher on the broker: it publishes signed orders on
``skycourier/v1/<drone_id>/orders`` (QoS 1, as a dispatch service would) and reads what the
drone sends back on its events, status and telemetry topics, decoded and de-duplicated as
`skycourier track` does (`companion.track.Tracker`). Tests and `skycourier hil order` wait on
what arrives (`wait_for`), never on time passing.

`make_order` builds an order signed with the dispatcher's key and sealed to the drone, and
`hostile_order` the ones a drone must refuse (unsigned, tampered, misaddressed, signed by a
stranger). `OperatorSigner` makes an operator's signed SMS commands (`skycourier sms sign`),
with counters that only go up across runs, since the drone remembers the last one it took.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from companion.modem.operator_sms import load_key, sign_command
from companion.security.encoding import canonical_json
from companion.security.orders import create_order
from companion.telemetry import schema
from companion.track import Tracker

#: The channels the ground station reads (the orders channel is its own to write).
READ_CHANNELS = ("events", "status", "telemetry")
#: A stand-in face template: the rig's recipients identify themselves by PIN, but a signed
#: order always seals a template (two 128-float rows, unit length, fixed seed).
_TEMPLATE_ROWS = 2
HOSTILE_KINDS = ("unsigned", "tampered", "misaddressed", "stranger")


class GroundError(RuntimeError):
    """Something the ground side waited for did not come; the message says what, and what
    did arrive."""


@dataclass(frozen=True)
class Received:
    """One record as the ground station got it: its place in arrival order, when
    (monotonic), the record, and whether the broker delivered it as a retained message (an
    old status, not a live one)."""

    index: int
    at: float
    record: schema.Record
    retained: bool


def recipient_template(seed: int = 0) -> np.ndarray:
    """A fixed (2, 128) float32 template of unit rows, sealed into every rig order."""
    rows = np.random.default_rng(seed).normal(size=(_TEMPLATE_ROWS, 128))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def make_order(
    signing_key: Ed25519PrivateKey,
    seal_public: X25519PublicKey,
    *,
    drone_id: str,
    order_id: str,
    drop: tuple[float, float],
    pin: str | None = None,
    valid_s: int = 3600,
) -> bytes:
    """An order for `drone_id` to `drop` (lat, lon), valid from a minute ago (clocks differ)
    for `valid_s` seconds, signed with `signing_key` and sealed to `seal_public`."""
    now = int(time.time())
    return create_order(
        signing_key,
        drone_id=drone_id,
        seal_public=seal_public,
        order_id=order_id,
        lat=drop[0],
        lon=drop[1],
        template=recipient_template(),
        not_before=now - 60,
        expires=now + valid_s,
        pin=pin,
    )


def hostile_order(
    kind: str,
    signing_key: Ed25519PrivateKey,
    seal_public: X25519PublicKey,
    *,
    drone_id: str,
    order_id: str,
    drop: tuple[float, float],
) -> bytes:
    """An order the drone must refuse: "unsigned" (its signature removed), "tampered" (the
    drop moved after signing, still canonical JSON), "misaddressed" (properly signed, for
    another drone) or "stranger" (signed by a key that is not the dispatcher's)."""
    if kind not in HOSTILE_KINDS:
        raise ValueError(f"unknown hostile order {kind!r}: one of {', '.join(HOSTILE_KINDS)}")
    if kind == "stranger":
        signing_key = Ed25519PrivateKey.generate()
    addressee = f"{drone_id}-other" if kind == "misaddressed" else drone_id
    blob = make_order(signing_key, seal_public, drone_id=addressee, order_id=order_id, drop=drop)
    if kind not in ("unsigned", "tampered"):
        return blob
    doc = json.loads(blob)
    if kind == "unsigned":
        del doc["sig"]
    else:
        doc["order"]["drop"]["lat_e7"] += 1000  # about 11 m north of where it was signed
    return canonical_json(doc)


class OperatorSigner:
    """An operator's phone: signs commands for `drone_id` from `sender` with the shared SMS
    key. Counters are milliseconds of UTC, raised by one when two commands share one, so
    they only go up across runs and processes (the drone refuses a counter it has seen)."""

    def __init__(self, key_file: Path, drone_id: str, sender: str) -> None:
        self._key = load_key(key_file)
        self.drone_id = drone_id
        self.sender = sender
        self._last = 0
        self._lock = threading.Lock()

    def sign(self, command: str) -> str:
        """The SMS text of `command` ("abort", "pin 4711", ...), signed now."""
        with self._lock:
            self._last = max(self._last + 1, int(time.time() * 1000))
            counter = self._last
        return sign_command(
            self._key, self.drone_id, self.sender, counter, int(time.time()), command
        )


class GroundStation:
    """The dispatcher's MQTT client on the rig's broker, for one drone."""

    def __init__(self, host: str, port: int, drone_id: str) -> None:
        self.host = host
        self.port = port
        self.drone_id = drone_id
        self._tracker = Tracker()
        self._cond = threading.Condition()
        self._received: list[Received] = []
        self.malformed: list[str] = []
        self._subscribed = threading.Event()
        # A persistent session, as a fleet's ground service keeps: what the drone sends while
        # this client is away (a broker restart) waits for it at the broker.
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"hil-ground-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(0.2, 2.0)

    def __enter__(self) -> GroundStation:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, timeout_s: float = 30.0) -> GroundStation:
        """Connect and subscribe to the drone's topics; GroundError if the broker does not
        take the subscription within `timeout_s`."""
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.close()
            raise GroundError(
                f"the broker {self.host}:{self.port} did not take the ground station's "
                f"subscription within {timeout_s:g} s"
            )
        return self

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho's network thread --

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:  # type: ignore[no-untyped-def]
        if not reason_code.is_failure:
            # Subscribed again at every connection: a broker restart forgets us.
            client.subscribe([(schema.topic(self.drone_id, c), 1) for c in READ_CHANNELS])

    def _on_subscribe(self, _client, _userdata, _mid, _reason_codes, _properties) -> None:  # type: ignore[no-untyped-def]
        self._subscribed.set()

    def _on_message(self, _client, _userdata, message: mqtt.MQTTMessage) -> None:  # type: ignore[no-untyped-def]
        try:
            records = self._tracker.receive(message.topic, bytes(message.payload))
        except schema.SchemaError as exc:
            with self._cond:
                self.malformed.append(f"{message.topic}: {exc}")
            return
        now = time.monotonic()
        with self._cond:
            for record in records:
                self._received.append(
                    Received(len(self._received), now, record, bool(message.retain))
                )
            self._cond.notify_all()

    # -- the dispatcher's side --

    def publish_order(self, blob: bytes, timeout_s: float = 30.0) -> None:
        """Publish an order for the drone (QoS 1), returning once the broker has it."""
        info = self._client.publish(schema.topic(self.drone_id, "orders"), blob, qos=1)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise GroundError(f"the broker did not acknowledge the order within {timeout_s:g} s")

    @property
    def mark(self) -> int:
        """How many records have arrived so far: a `since` for `wait_for`."""
        with self._cond:
            return len(self._received)

    def received(self, since: int = 0) -> list[Received]:
        with self._cond:
            return self._received[since:]

    def wait_new(self, since: int, timeout_s: float) -> list[Received]:
        """The records from index `since` on, waiting up to `timeout_s` for one if there
        are none yet (an empty list then)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self._received) <= since:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)
            return self._received[since:]

    def events(self, order_id: str | None = None, since: int = 0) -> list[schema.Event]:
        """The events received (those of `order_id` only, when given), in arrival order."""
        return [
            r.record
            for r in self.received(since)
            if isinstance(r.record, schema.Event)
            and (order_id is None or r.record.mission_id == order_id)
        ]

    def wait_for(
        self,
        match: Callable[[Received], bool],
        what: str,
        timeout_s: float,
        *,
        since: int = 0,
        check: Callable[[], str | None] | None = None,
    ) -> Received:
        """The first record from index `since` on that `match`es, waiting for it up to
        `timeout_s`. `check` is asked at least once a second while waiting; a reason it
        returns (the daemon died) ends the wait at once. GroundError says what did not come
        and lists the last events that did."""
        deadline = time.monotonic() + timeout_s
        seen = since
        with self._cond:
            while True:
                for index in range(seen, len(self._received)):
                    if match(self._received[index]):
                        return self._received[index]
                seen = len(self._received)
                problem = check() if check is not None else None
                left = deadline - time.monotonic()
                if problem is not None or left <= 0:
                    last = self._last_events()
                    break
                self._cond.wait(min(left, 1.0))
        why = problem or f"not within {timeout_s:g} s"
        raise GroundError(f"{what}: {why}; last events: {last}")

    def wait_event(
        self,
        kind: str,
        order_id: str | None,
        timeout_s: float,
        *,
        since: int = 0,
        check: Callable[[], str | None] | None = None,
    ) -> schema.Event:
        """The first event `kind` (of `order_id`, when given) from index `since` on."""

        def match(received: Received) -> bool:
            record = received.record
            return (
                isinstance(record, schema.Event)
                and record.kind == kind
                and (order_id is None or record.mission_id == order_id)
            )

        what = f"event {kind}" + (f" of order {order_id}" if order_id else "")
        found = self.wait_for(match, what, timeout_s, since=since, check=check)
        assert isinstance(found.record, schema.Event)
        return found.record

    def _last_events(self, count: int = 8) -> str:
        """The kinds of the last events received (called with the lock held)."""
        events = [
            f"{r.record.kind}({r.record.mission_id or '-'})"
            for r in self._received
            if isinstance(r.record, schema.Event)
        ]
        return ", ".join(events[-count:]) or "none"
