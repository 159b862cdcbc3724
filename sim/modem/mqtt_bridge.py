"""The emulated A7670's MQTT stack, done for real: its `AT+CMQTT*` commands become paho-mqtt
sessions against a real broker.

The emulator core (`sim.modem.a7670.A7670`) stays sans-I/O: it calls the bridge's request
methods (`connect`, `publish`, ...) which return at once, and on its next `output()` drains
`events()` to turn the broker's answers into URCs (`+CMQTTCONNECT: 0,0`, `+CMQTTPUB: 0,0`,
`+CMQTTRXSTART...`). The answers arrive on one network thread per client, so the only
shared state is a thread-safe queue.

Error numbers are the module's own (A76XX AT Command Manual V1.09 §18.3.1): a refused
CONNACK maps to 27-31, a refused TCP connection to 3 ("sock connect fail"), a name that does
not resolve to 25 ("DNS error").
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

#: +CMQTT* <err> numbers used by the bridge (A76XX AT Command Manual V1.09 §18.3.1).
ERR_OK = 0
ERR_FAILED = 1
ERR_SOCK_CONNECT = 3
ERR_SOCK_CLOSED_BY_SERVER = 26
ERR_DNS = 25

#: paho 2.x reports an MQTT 3.1/3.1.1 CONNACK return code as the MQTT 5 reason code it maps
#: to; the module reports the 3.1.1 refusal as <err> 27-31.
_CONNACK_TO_ERR = {
    132: 27,  # 0x01 unacceptable protocol version
    133: 28,  # 0x02 identifier rejected
    136: 29,  # 0x03 server unavailable
    134: 30,  # 0x04 bad user name or password
    135: 31,  # 0x05 not authorized
}


@dataclass(frozen=True)
class ConnectRequest:
    """What AT+CMQTTACCQ/WILLTOPIC/WILLMSG/CFG/CONNECT configured for one client."""

    client_id: str
    host: str
    port: int
    keepalive_s: int
    clean_session: bool
    mqtt_version: int = 3  # AT+CMQTTCFG="version": 3 = MQTT 3.1 (module default), 4 = 3.1.1
    username: str | None = None
    password: str | None = None
    will_topic: str | None = None
    will_payload: bytes | None = None
    will_qos: int = 0
    tls: bool = False


@dataclass(frozen=True)
class Connected:
    """The broker answered CONNECT (err 0) or the attempt failed (err != 0)."""

    client: int
    err: int


@dataclass(frozen=True)
class Published:
    client: int
    err: int


@dataclass(frozen=True)
class Subscribed:
    client: int
    err: int


@dataclass(frozen=True)
class Unsubscribed:
    client: int
    err: int


@dataclass(frozen=True)
class Disconnected:
    """The answer to a requested (graceful) disconnect."""

    client: int
    err: int


@dataclass(frozen=True)
class ConnectionLost:
    """The broker side went away without being asked: +CMQTTCONNLOST <cause> 1."""

    client: int
    cause: int


@dataclass(frozen=True)
class Message:
    client: int
    topic: str
    payload: bytes


BridgeEvent = (
    Connected | Published | Subscribed | Unsubscribed | Disconnected | ConnectionLost | Message
)


class MqttBridge(Protocol):
    """What the emulator needs from an MQTT network; every call returns immediately."""

    def connect(self, client: int, request: ConnectRequest) -> None: ...
    def publish(self, client: int, topic: str, payload: bytes, qos: int, retain: bool) -> None: ...
    def subscribe(self, client: int, topics: list[tuple[str, int]]) -> None: ...
    def unsubscribe(self, client: int, topics: list[str]) -> None: ...
    def disconnect(self, client: int, *, graceful: bool) -> None:
        """graceful: MQTT DISCONNECT (no will). Not graceful: the TCP connection just dies
        (radio lost, module reset), so the broker publishes the will."""

    def events(self) -> list[BridgeEvent]: ...


class PahoBridge:
    """`MqttBridge` over paho-mqtt 2.x; one paho client and network thread per module client.

    The network loop is our own thread calling `Client.loop`, not `loop_start`, because
    paho's loop reconnects by itself and a module does not: after a lost connection the
    host must send AT+CMQTTCONNECT again.
    """

    def __init__(self, host: str | None = None, port: int | None = None) -> None:
        #: When set, every CONNECT goes here whatever "tcp://host:port" the host asked for
        #: (a test broker on a random port standing in for the real server).
        self.host_override = host
        self.port_override = port
        self._events: queue.SimpleQueue[BridgeEvent] = queue.SimpleQueue()
        self._sessions: dict[int, _Session] = {}
        self._lock = threading.Lock()

    def connect(self, client: int, request: ConnectRequest) -> None:
        host = self.host_override or request.host
        port = self.port_override or request.port
        session = _Session(client, request, host, port, self._events.put)
        with self._lock:
            old = self._sessions.pop(client, None)
            self._sessions[client] = session
        if old is not None:
            old.abort()
        session.start()

    def publish(self, client: int, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        session = self._session(client)
        if session is None:
            self._events.put(Published(client, 11))  # no connection
        else:
            session.publish(topic, payload, qos, retain)

    def subscribe(self, client: int, topics: list[tuple[str, int]]) -> None:
        session = self._session(client)
        if session is None:
            self._events.put(Subscribed(client, 11))
        else:
            session.subscribe(topics)

    def unsubscribe(self, client: int, topics: list[str]) -> None:
        session = self._session(client)
        if session is None:
            self._events.put(Unsubscribed(client, 11))
        else:
            session.unsubscribe(topics)

    def disconnect(self, client: int, *, graceful: bool) -> None:
        with self._lock:
            session = self._sessions.pop(client, None)
        if session is None:
            if graceful:
                self._events.put(Disconnected(client, 11))
            return
        if graceful:
            session.disconnect()
        else:
            session.abort()

    def events(self) -> list[BridgeEvent]:
        out: list[BridgeEvent] = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self._events.get_nowait())
        return out

    def close(self) -> None:
        """Drop every connection (as a power cut would) and stop the threads."""
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.abort()
            session.join()

    def _session(self, client: int) -> _Session | None:
        with self._lock:
            return self._sessions.get(client)


class _Session:
    """One MQTT connection; its events go to `emit` tagged with the module client index."""

    def __init__(
        self,
        index: int,
        request: ConnectRequest,
        host: str,
        port: int,
        emit: Callable[[BridgeEvent], None],
    ) -> None:
        self.index = index
        self.request = request
        self.host = host
        self.port = port
        self._emit = emit
        self._stop = threading.Event()
        self._graceful = False
        self._connected = False
        self._reported_end = False
        protocol = paho.MQTTv311 if request.mqtt_version == 4 else paho.MQTTv31
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=request.client_id,
            clean_session=request.clean_session,
            protocol=protocol,
        )
        if request.username is not None:
            self.client.username_pw_set(request.username, request.password)
        if request.will_topic is not None:
            self.client.will_set(
                request.will_topic, request.will_payload or b"", request.will_qos, retain=False
            )
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self._thread = threading.Thread(target=self._run, name=f"a7670-mqtt-{index}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self._emit(Published(self.index, 11))

    def subscribe(self, topics: list[tuple[str, int]]) -> None:
        rc, _ = self.client.subscribe(topics)
        if rc != paho.MQTT_ERR_SUCCESS:
            self._emit(Subscribed(self.index, 11))

    def unsubscribe(self, topics: list[str]) -> None:
        rc, _ = self.client.unsubscribe(topics)
        if rc != paho.MQTT_ERR_SUCCESS:
            self._emit(Unsubscribed(self.index, 11))

    def disconnect(self) -> None:
        self._graceful = True
        if self._connected:
            self.client.disconnect()  # the loop thread sends it and ends in _on_disconnect
        else:
            self._stop.set()
            self._emit(Disconnected(self.index, ERR_OK))

    def abort(self) -> None:
        """The link dies under the connection: no DISCONNECT packet, so the will fires."""
        self._reported_end = True
        self._stop.set()

    # -- network thread --

    def _run(self) -> None:
        try:
            self.client.connect(self.host, self.port, keepalive=self.request.keepalive_s)
        except socket.gaierror:
            self._emit(Connected(self.index, ERR_DNS))
            return
        except OSError:
            self._emit(Connected(self.index, ERR_SOCK_CONNECT))
            return
        while not self._stop.is_set():
            rc = self.client.loop(timeout=0.05)
            if rc != paho.MQTT_ERR_SUCCESS and not self._stop.is_set():
                self._lost(ERR_FAILED)
                break
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _lost(self, cause: int) -> None:
        if self._reported_end:
            return
        self._reported_end = True
        self._stop.set()
        if self._connected:
            self._emit(ConnectionLost(self.index, cause))
        else:
            self._emit(Connected(self.index, ERR_SOCK_CONNECT))

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            self._reported_end = True
            self._stop.set()
            self._emit(Connected(self.index, _CONNACK_TO_ERR.get(reason_code.value, 1)))
        else:
            self._connected = True
            self._emit(Connected(self.index, ERR_OK))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self._emit(Published(self.index, 1 if reason_code.is_failure else ERR_OK))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        failed = any(code.is_failure for code in reason_codes)
        self._emit(Subscribed(self.index, 1 if failed else ERR_OK))

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        self._emit(Unsubscribed(self.index, ERR_OK))

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        self._emit(Message(self.index, message.topic, bytes(message.payload)))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if self._graceful and not self._reported_end:
            self._reported_end = True
            self._stop.set()
            self._emit(Disconnected(self.index, ERR_OK))
        else:
            self._lost(ERR_FAILED)
