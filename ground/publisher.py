"""The ground's link for sending to drones: an MQTT 5 client that publishes an order or a
command at QoS 1 and says whether the broker took it.

The drone reads ``skycourier/v1/<drone_id>/orders`` and ``.../commands`` (`schema.topic`)
through its modem's MQTT stack, with a persistent session, so a message the broker took
reaches the drone when it is next connected. What the broker took is all the ground can
know at send time; the drone's own answer (``order-accepted``, ``command-accepted``, ...)
comes back as an event and is what the page shows as confirmed.

A message is only handed to the client while it is connected (`Publisher.publish` refuses
otherwise, so nothing is queued to go out later unseen). One that was handed over but not
acknowledged within the timeout is reported as unconfirmed, not as lost: the client may
still deliver it after a reconnect, and the drone's answer then settles it.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any, Protocol

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

#: How long a publish waits for the broker's PUBACK.
PUBLISH_TIMEOUT_S = 10.0


class NotConnected(RuntimeError):
    """The broker is not connected: nothing was sent."""


class Publisher(Protocol):
    @property
    def connected(self) -> bool:
        """Whether a message handed over now would go out (the broker is connected)."""
        ...

    def publish(self, topic: str, payload: bytes) -> str | None:
        """Send `payload` at QoS 1: None once the broker acknowledged it, else why not
        (unconfirmed). NotConnected if it could not even be handed over."""
        ...


class MqttPublisher:
    """A publishing-only MQTT 5 client for `client_id` on `host`:`port` (signed in as
    `username`, over `tls` when given), reconnecting by itself; `start()` connects in the
    background, `stop()` disconnects."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        timeout_s: float = PUBLISH_TIMEOUT_S,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.timeout_s = timeout_s
        self._connected = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if tls is not None:
            self._client.tls_set_context(tls)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)

    def start(self) -> None:
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes) -> str | None:
        if not self._connected.is_set():
            raise NotConnected(f"the broker {self.host}:{self.port} is not connected")
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise NotConnected(f"the broker {self.host}:{self.port}: {mqtt.error_string(info.rc)}")
        try:
            info.wait_for_publish(self.timeout_s)
        except (RuntimeError, ValueError) as exc:
            return f"the broker did not confirm it: {exc}"
        if not info.is_published():
            return f"the broker did not confirm it within {self.timeout_s:g} s"
        return None

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("broker %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        log.warning("broker %s:%d disconnected: %s", self.host, self.port, reason)
