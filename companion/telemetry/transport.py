"""How telemetry leaves the drone: the `Transport` protocol, and paho-mqtt over IP.

The telemetry layer only needs four things from a link: publish with a broker acknowledgement,
subscribe, a last will, and whether it is connected. Two implementations exist: `PahoTransport`
here (paho-mqtt over any IP interface: a modem in PPP/ECM mode, Wi-Fi, Ethernet) and the
modem's own MQTT stack over AT commands (`companion.modem.mqtt_at.AtMqttTransport`). The
publisher does not know which one it has.

`publish` returns only once the broker has the message (QoS 1: PUBACK), so the caller may
forget the record; anything else raises `TransportError` whose message says which broker and
why, e.g. ``broker 127.0.0.1:1883 refused the connection: Not authorized``, or its subclass
`MessageRejected` for a message that no retry will send.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


class TransportError(Exception):
    """A publish or subscribe that did not happen; the message says what failed and why."""


class MessageRejected(TransportError):
    """This message can never be sent as it is (too large for the link, a topic it cannot
    carry): retrying cannot help, so the caller must not retry it for ever. Any other
    `TransportError` is about the link and worth retrying."""


class Transport(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def connections(self) -> int:
        """Successful connections so far. The broker publishes the last will whenever a
        connection dies, so a user re-announces "online" each time this changes, even for a
        reconnect so quick that `connected` was never seen False."""

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        """Return once the broker acknowledged (QoS 1 PUBACK); TransportError otherwise,
        `MessageRejected` for a message that no retry can send."""

    def subscribe(self, topic: str, callback: Callable[[str, bytes], None]) -> None: ...

    def set_will(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = True
    ) -> None: ...

    def close(self) -> None: ...


class _Client(mqtt.Client):
    """paho's client, remembering why the last connection attempt failed: its reconnect loop
    swallows the OSError, and "connection refused" vs "no route" is what an operator needs."""

    last_connect_error: OSError | None = None

    def reconnect(self) -> mqtt.MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_connect_error = exc
            raise


def _describe_os_error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listening on that port?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    return exc.strerror or str(exc) or type(exc).__name__


def _valid_filter(topic: str) -> bool:
    levels = topic.split("/")
    return (
        bool(topic)
        and all(level in ("+", "#") or ("+" not in level and "#" not in level) for level in levels)
        and "#" not in levels[:-1]
    )


class PahoTransport:
    """MQTT 3.1.1 over TCP (or TLS) with paho-mqtt 2.x: clean session, automatic reconnect
    with backoff, subscriptions restored after each reconnect.

    The connection starts lazily, at the first `publish`/`subscribe` or at `connect()`, so
    that `set_will` can come first (the will is part of CONNECT). A will set later takes
    effect at the next reconnect.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        keepalive_s: int = 30,
        tls: ssl.SSLContext | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.address = f"{host}:{port}"
        self._cond = threading.Condition()
        self._connected = False
        self._generation = 0  # counts connections, so a publish can tell its one was lost
        self._started = False
        self._closed = False
        self._last_error: str | None = None
        self._subscriptions: dict[str, Callable[[str, bytes], None]] = {}
        self._client = _Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self._client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)  # type: ignore[arg-type]
        if tls is not None:
            self._client.tls_set_context(tls)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # -- state ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    @property
    def connections(self) -> int:
        with self._cond:
            return self._generation

    @property
    def last_error(self) -> str | None:
        """Why the link is (or last was) down, as a sentence naming the broker; None if never."""
        with self._cond:
            return self._last_error

    def connect(self) -> None:
        """Start connecting in the background (idempotent); `publish` waits for it."""
        with self._cond:
            if self._closed:
                raise TransportError(f"transport to broker {self.address} is closed")
            if self._started:
                return
            self._started = True
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        self._client.loop_start()

    def wait_connected(self, timeout_s: float) -> bool:
        """True once connected, False if `timeout_s` passed first (see `last_error`)."""
        self.connect()
        with self._cond:
            return self._cond.wait_for(lambda: self._connected or self._closed, timeout_s) and (
                self._connected
            )

    # -- paho callbacks (paho's network thread) ---------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._set_error(f"broker {self.address} refused the connection: {reason}")
            return
        # The snapshot and the flag change together, under the lock `subscribe` also takes:
        # each topic is subscribed exactly once per connection, here or there (a second
        # SUBSCRIBE would deliver its retained message twice).
        with self._cond:
            topics = list(self._subscriptions)
            self._connected = True
            self._generation += 1
            self._cond.notify_all()
        for topic in topics:
            client.subscribe(topic, qos=1)
        log.info("connected to MQTT broker %s as %s", self.address, self.client_id)

    def _on_connect_fail(self, _client: mqtt.Client, _u: Any) -> None:
        exc = self._client.last_connect_error
        cause = _describe_os_error(exc) if exc is not None else "connection failed"
        self._set_error(f"cannot reach broker {self.address}: {cause}")

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._cond:
            was_up = self._connected
            self._connected = False
            self._cond.notify_all()
        if was_up and not self._closed:
            self._set_error(f"connection to broker {self.address} lost: {reason}")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        for pattern, callback in list(self._subscriptions.items()):
            if mqtt.topic_matches_sub(pattern, msg.topic):
                try:
                    callback(msg.topic, bytes(msg.payload))
                except Exception:
                    log.exception("subscriber of %s failed on a message on %s", pattern, msg.topic)

    def _set_error(self, text: str) -> None:
        with self._cond:
            changed = text != self._last_error
            self._last_error = text
        if changed:
            log.warning("%s", text)

    # -- Transport -----------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        """Publish and wait for the broker's acknowledgement (QoS 1 PUBACK; QoS 0: written).

        Raises TransportError when not connected within `timeout_s`, when the connection drops
        before the PUBACK, or when no PUBACK comes within `timeout_s`. A message whose PUBACK
        was lost may still reach the broker later (paho re-sends it after reconnecting): the
        caller re-sends the same record, and receivers de-duplicate by its id.
        """
        deadline = time.monotonic() + timeout_s
        self.connect()
        with self._cond:
            if not self._cond.wait_for(lambda: self._connected or self._closed, timeout_s):
                raise TransportError(
                    f"not connected to broker {self.address} within {timeout_s:g} s: "
                    f"{self._last_error or 'still connecting'}"
                )
            if self._closed:
                raise TransportError(f"transport to broker {self.address} is closed")
            generation = self._generation
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:  # paho: a wildcard or empty topic, a payload over 256 MB
            raise MessageRejected(
                f"broker {self.address}: cannot publish on {topic!r}: {exc}"
            ) from exc
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            raise TransportError(f"connection to broker {self.address} lost before publishing")
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(
                f"broker {self.address}: publish on {topic} failed: {mqtt.error_string(info.rc)}"
            )
        while not info.is_published():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError(
                    f"broker {self.address}: no acknowledgement for {topic} within {timeout_s:g} s"
                )
            with self._cond:
                if self._generation != generation or not self._connected:
                    raise TransportError(
                        f"connection to broker {self.address} lost before the acknowledgement "
                        f"for {topic}: {self._last_error}"
                    )
            info.wait_for_publish(min(remaining, 0.05))

    def subscribe(self, topic: str, callback: Callable[[str, bytes], None]) -> None:
        """Call `callback(topic, payload)` for every message matching `topic` (wildcards
        allowed), on paho's thread; restored after reconnects."""
        if not _valid_filter(topic):
            raise TransportError(
                f"invalid MQTT topic filter {topic!r}: '+' and '#' must be whole levels, "
                "'#' only last (MQTT 3.1.1 §4.7.1)"
            )
        with self._cond:
            self._subscriptions[topic] = callback
            up = self._connected  # else `_on_connect` will subscribe it
        if up:
            self._client.subscribe(topic, qos=1)
        self.connect()

    def set_will(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = True) -> None:
        self._client.will_set(topic, payload, qos=qos, retain=retain)

    def close(self) -> None:
        """Disconnect cleanly (the broker does not send the will) and stop the network thread."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            started = self._started
            self._cond.notify_all()
        if started:
            self._client.disconnect()
            self._client.loop_stop()
