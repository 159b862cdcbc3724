"""The A7670's MQTT AT commands (A76XX AT Command Manual V1.09 ch. 18) and the broker's
answers turned into URCs; mixed into `sim.modem.a7670.A7670`, whose state they use.

Result forms follow §18.2: a command answers `OK` and later `+CMQTT<CMD>: <i>,<err>`, or
`+CMQTT<CMD>: <i>,<err>` then `ERROR` when it cannot start. The network work is done by the
bridge (`sim.modem.mqtt_bridge`), asynchronously: its events arrive through `broker_event`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from sim.modem.at_command import AtCommand, AtSyntaxError, DataWait, ModemError
from sim.modem.mqtt_bridge import (
    BridgeEvent,
    ConnectionLost,
    ConnectRequest,
    Disconnected,
    Message,
    MqttBridge,
    Published,
    Subscribed,
    Unsubscribed,
)
from sim.modem.mqtt_bridge import Connected as BrokerConnected

#: Largest +CMQTTRXPAYLOAD chunk ([LGFORK]: a 2039-byte payload comes as 1500 + 539).
RX_CHUNK = 1500
MQTT_CLIENTS = (0, 1)


@dataclass
class MqttClient:
    """One acquired MQTT client (AT+CMQTTACCQ) and what was configured for it."""

    client_id: str
    tls: bool
    version: int = 3
    will_topic: str | None = None
    will_payload: bytes | None = None
    will_qos: int = 0
    connected: bool = False
    server: str | None = None
    keepalive_s: int = 0
    clean: int = 0
    op_timeout_s: int = 120
    topic: bytes | None = None
    payload: bytes | None = None
    sub_topics: list[tuple[str, int]] = field(default_factory=list)
    unsub_topics: list[str] = field(default_factory=list)
    pending: str | None = None  # "CONNECT" | "PUB" | "SUB" | "UNSUB" | "DISC"
    pending_token: int = 0
    earliest: float = 0.0  # the result URC comes no sooner (the module's own latency)


class MqttCommands:
    """AT+CMQTT* handlers; the state lives in the A7670 that mixes this in."""

    #: False: an MQTT stack without AT+CMQTTCFG="version", as the SIM7500/SIM7600 manual
    #: V3.00 §16.2.17 describes it (its CMQTTCFG=? lists checkUTF8, optimeout and aliauth
    #: only; the A76XX manual's revision history modifies CMQTTCFG in 2020 and 2023): the
    #: parameter is answered ERROR and the client keeps the default, MQTT 3.1. Set on an
    #: instance to emulate older firmware.
    cfg_version_supported: bool = True

    bridge: MqttBridge | None
    _clients: dict[int, MqttClient]
    _mqtt_started: bool
    _rng: random.Random
    _respond: Callable[[float, tuple[str, ...] | list[str], str], None]
    _at: Callable[[float, Callable[[float], None]], None]
    _delay: Callable[[float], float]
    _urc: Callable[[str | bytes], None]
    _prompt: Callable[[float, str, DataWait], None]
    _abort_connection: Callable[[int], None]
    _data_possible: Callable[[], bool]

    def _mqtt_client(self, c: AtCommand, *, acquired: bool = True) -> tuple[int, MqttClient | None]:
        if not self._mqtt_started:
            raise ModemError("ERROR")
        index = c.int_arg(0, 0, 1)
        client = self._clients.get(index)
        if acquired and client is None:
            raise ModemError("ERROR", (f"{c.name}: {index},20",))
        return index, client

    def _busy_check(self, c: AtCommand, index: int, client: MqttClient) -> None:
        if client.pending is not None:
            raise ModemError("ERROR", (f"{c.name}: {index},14",))

    def _cmd_cmqttstart(self, c: AtCommand, now: float) -> None:
        if self._mqtt_started:
            raise ModemError("ERROR")
        self._mqtt_started = True
        self._respond(now, (), "OK")

        def result(_: float) -> None:
            if self._data_possible():
                self._urc("+CMQTTSTART: 0")
            else:
                self._mqtt_started = False
                self._urc("+CMQTTSTART: 7")

        self._at(now + self._delay(self._rng.uniform(0.2, 0.6)), result)
        return None

    def _cmd_cmqttstop(self, c: AtCommand, now: float) -> None:
        if not self._mqtt_started:
            raise ModemError("ERROR")
        if self._clients:
            raise ModemError("ERROR", ("+CMQTTSTOP: 21",))
        self._mqtt_started = False
        self._respond(now, (), "OK")
        self._at(now + self._delay(0.2), lambda _: self._urc("+CMQTTSTOP: 0"))
        return None

    def _cmd_cmqttaccq(self, c: AtCommand, now: float) -> list[str]:
        if c.form == "test":
            return ["+CMQTTACCQ: (0-1),(1-128)[,(0-1)]"]
        if not self._mqtt_started:
            raise ModemError("ERROR")
        if c.form == "read":
            return [
                f'+CMQTTACCQ: {i},"{cl.client_id}",{int(cl.tls)}'
                if (cl := self._clients.get(i))
                else f'+CMQTTACCQ: {i},"",0'
                for i in MQTT_CLIENTS
            ]
        index, client = self._mqtt_client(c, acquired=False)
        client_id = c.str_arg(1)
        if not 1 <= len(client_id.encode()) <= 128:
            raise AtSyntaxError("clientID must be 1-128 bytes")
        tls = c.int_arg(2, 0, 1, default=0) == 1
        if client is not None:
            raise ModemError("ERROR", (f"+CMQTTACCQ: {index},19",))
        self._clients[index] = MqttClient(client_id, tls)
        return []

    def _cmd_cmqttrel(self, c: AtCommand, now: float) -> list[str]:
        if c.form == "test":
            return ["+CMQTTREL: (0-1)"]
        if not self._mqtt_started:
            raise ModemError("ERROR")
        if c.form == "read":
            return []
        index, client = self._mqtt_client(c)
        assert client is not None
        if client.connected or client.pending is not None:
            raise ModemError("ERROR", (f"+CMQTTREL: {index},19",))
        del self._clients[index]
        return []

    def _cmd_cmqttcfg(self, c: AtCommand, now: float) -> list[str]:
        if not self._mqtt_started:
            raise ModemError("ERROR")
        key = c.str_arg(0)
        index = c.int_arg(1, 0, 1)
        client = self._clients.get(index)
        if client is None or client.connected:
            raise ModemError("ERROR")
        if key == "version":
            if not self.cfg_version_supported:
                raise ModemError("ERROR")
            client.version = c.int_arg(2, 3, 4)
        elif key == "checkUTF8":
            c.int_arg(2, 0, 1)
        elif key == "optimeout":
            client.op_timeout_s = c.int_arg(2, 20, 120)
        else:
            raise AtSyntaxError(f"unknown CMQTTCFG {key!r}")
        return []

    def _cmd_cmqttsslcfg(self, c: AtCommand, now: float) -> list[str]:
        if c.form == "read":
            return ["+CMQTTSSLCFG: 0,0", "+CMQTTSSLCFG: 1,0"]
        if c.form == "write":
            c.int_arg(0, 0, 1)
            c.int_arg(1, 0, 9)
        return []

    def _data_command(
        self,
        c: AtCommand,
        now: float,
        limit: int,
        store: Callable[[MqttClient, bytes], None] | None = None,
        then: Callable[[bytes, float], None] | None = None,
    ) -> None:
        """The `>` prompt, exactly <len> bytes, then `store` and OK, or `then` (SUB, UNSUB)."""
        index, client = self._mqtt_client(c)
        assert client is not None
        length = c.int_arg(1, 0, 1 << 20)
        if not 1 <= length <= limit:
            raise ModemError("ERROR", (f"{c.name}: {index},22",))

        def on_data(data: bytes, t: float) -> None:
            if then is not None:
                then(data, t)
                return
            if store is not None:
                store(client, data)
            self._respond(t, (), "OK")

        self._prompt(now, "\r\n>", DataWait(on_data, length))

    def _cmd_cmqttwilltopic(self, c: AtCommand, now: float) -> None:
        def store(client: MqttClient, data: bytes) -> None:
            client.will_topic = data.decode("utf-8", "replace")

        self._data_command(c, now, 1024, store)

    def _cmd_cmqttwillmsg(self, c: AtCommand, now: float) -> None:
        qos = c.int_arg(2, 0, 2)

        def store(client: MqttClient, data: bytes) -> None:
            client.will_payload, client.will_qos = data, qos

        self._data_command(c, now, 1024, store)

    def _cmd_cmqtttopic(self, c: AtCommand, now: float) -> None:
        def store(client: MqttClient, data: bytes) -> None:
            client.topic = data

        self._data_command(c, now, 1024, store)

    def _cmd_cmqttpayload(self, c: AtCommand, now: float) -> None:
        def store(client: MqttClient, data: bytes) -> None:
            client.payload = data

        self._data_command(c, now, 10240, store)

    def _start_op(
        self, index: int, client: MqttClient, op: str, now: float, latency: float, timeout_s: float
    ) -> None:
        """OK now; the result URC when the broker answers, no sooner than `latency`."""
        client.pending = op
        client.pending_token += 1
        token = client.pending_token
        client.earliest = now + self._delay(latency)
        self._respond(now, (), "OK")

        def expire(_: float) -> None:
            if client.pending == op and client.pending_token == token:
                client.pending = None
                if op == "CONNECT":
                    self._abort_connection(index)
                self._urc(f"+CMQTT{op}: {index},17")

        self._at(now + timeout_s, expire)

    def _cmd_cmqttconnect(self, c: AtCommand, now: float) -> list[str] | None:
        if c.form == "read":
            if not self._mqtt_started:
                raise ModemError("ERROR")
            lines = []
            for i in MQTT_CLIENTS:
                cl = self._clients.get(i)
                if cl is not None and cl.connected:
                    lines.append(f'+CMQTTCONNECT: {i},"{cl.server}",{cl.keepalive_s},{cl.clean}')
                else:
                    lines.append(f"+CMQTTCONNECT: {i}")
            return lines
        if c.form == "test":
            return ["+CMQTTCONNECT: (0-1),(9-256),(1-64800),(0-1)[,<user_name>,<pass_word>]"]
        index, client = self._mqtt_client(c)
        assert client is not None
        server = c.str_arg(1)
        keepalive = c.int_arg(2, 1, 64800)
        clean = c.int_arg(3, 0, 1, default=0)
        if not (9 <= len(server) <= 256 and server.startswith("tcp://")):
            raise AtSyntaxError("server address must be tcp://host[:port]")
        host, _, port_text = server[len("tcp://") :].partition(":")
        if not host or (port_text and not port_text.isdigit()):
            raise AtSyntaxError(f"bad server address {server!r}")
        if client.connected:
            raise ModemError("ERROR", (f"+CMQTTCONNECT: {index},19",))
        self._busy_check(c, index, client)
        client.server, client.keepalive_s, client.clean = server, keepalive, clean
        request = ConnectRequest(
            client_id=client.client_id,
            host=host,
            port=int(port_text) if port_text else 1883,
            keepalive_s=keepalive,
            clean_session=clean == 1,
            mqtt_version=client.version,
            username=c.str_arg(4) if c.arg(4) is not None else None,
            password=c.str_arg(5) if c.arg(5) is not None else None,
            will_topic=client.will_topic,
            will_payload=client.will_payload,
            will_qos=client.will_qos,
            tls=client.tls,
        )
        self._start_op(
            index, client, "CONNECT", now, self._rng.uniform(0.8, 2.0), client.op_timeout_s
        )
        if self.bridge is None:
            self._bridge_missing(index, client, "CONNECT", 3)
        else:
            self.bridge.connect(index, request)
        return None

    def _bridge_missing(self, index: int, client: MqttClient, op: str, err: int) -> None:
        """No MQTT network at all: the operation fails as a socket failure would."""
        client.pending = None
        self._at(client.earliest, lambda _: self._urc(f"+CMQTT{op}: {index},{err}"))

    def _cmd_cmqttdisc(self, c: AtCommand, now: float) -> list[str] | None:
        if c.form == "read":
            if not self._mqtt_started:
                raise ModemError("ERROR")
            return [
                f"+CMQTTDISC: {i},{0 if (cl := self._clients.get(i)) and cl.connected else 1}"
                for i in MQTT_CLIENTS
            ]
        if c.form == "test":
            return ["+CMQTTDISC: (0-1),(0,1-180)"]
        index, client = self._mqtt_client(c)
        assert client is not None
        timeout = c.int_arg(1, 0, 180, default=0) or 180
        if not client.connected:
            raise ModemError("ERROR", (f"+CMQTTDISC: {index},11",))
        self._busy_check(c, index, client)
        self._start_op(index, client, "DISC", now, 0.1, timeout)
        if self.bridge is not None:
            self.bridge.disconnect(index, graceful=True)
        return None

    def _connected_client(self, c: AtCommand) -> tuple[int, MqttClient]:
        index, client = self._mqtt_client(c)
        assert client is not None
        if not client.connected:
            raise ModemError("ERROR", (f"{c.name}: {index},11",))
        self._busy_check(c, index, client)
        return index, client

    def _cmd_cmqttpub(self, c: AtCommand, now: float) -> None:
        index, client = self._connected_client(c)
        qos = c.int_arg(1, 0, 2)
        timeout = c.int_arg(2, 1, 180)
        retain = c.int_arg(3, 0, 1, default=0) == 1
        c.int_arg(4, 0, 1, default=0)
        if not client.topic:
            raise ModemError("ERROR", (f"+CMQTTPUB: {index},18",))
        topic = client.topic.decode("utf-8", "replace")
        payload = client.payload or b""
        client.topic = client.payload = None  # cleared by PUB (§18.2.4)
        self._start_op(index, client, "PUB", now, self._rng.uniform(0.1, 0.3), timeout)
        assert self.bridge is not None  # connected implies a bridge
        self.bridge.publish(index, topic, payload, qos, retain)

    def _cmd_cmqttsubtopic(self, c: AtCommand, now: float) -> None:
        qos = c.int_arg(2, 0, 2)

        def store(client: MqttClient, data: bytes) -> None:
            client.sub_topics.append((data.decode("utf-8", "replace"), qos))

        self._data_command(c, now, 1024, store)

    def _cmd_cmqttunsubtopic(self, c: AtCommand, now: float) -> None:
        def store(client: MqttClient, data: bytes) -> None:
            client.unsub_topics.append(data.decode("utf-8", "replace"))

        self._data_command(c, now, 1024, store)

    def _cmd_cmqttsub(self, c: AtCommand, now: float) -> None:
        index, client = self._connected_client(c)
        if len(c.args) <= 2:  # AT+CMQTTSUB=<i>[,<dup>] after AT+CMQTTSUBTOPIC
            if not client.sub_topics:
                raise ModemError("ERROR", (f"+CMQTTSUB: {index},18",))
            topics, client.sub_topics = client.sub_topics, []
            self._subscribe(index, client, topics, now)
            return
        qos = c.int_arg(2, 0, 2)

        def then(data: bytes, t: float) -> None:
            self._subscribe(index, client, [(data.decode("utf-8", "replace"), qos)], t)

        self._data_command(c, now, 1024, then=then)

    def _subscribe(
        self, index: int, client: MqttClient, topics: list[tuple[str, int]], now: float
    ) -> None:
        self._start_op(index, client, "SUB", now, self._rng.uniform(0.1, 0.3), client.op_timeout_s)
        assert self.bridge is not None
        self.bridge.subscribe(index, topics)

    def _cmd_cmqttunsub(self, c: AtCommand, now: float) -> None:
        index, client = self._connected_client(c)
        if len(c.args) <= 2:
            if not client.unsub_topics:
                raise ModemError("ERROR", (f"+CMQTTUNSUB: {index},18",))
            topics, client.unsub_topics = client.unsub_topics, []
            self._unsubscribe(index, client, topics, now)
            return

        def then(data: bytes, t: float) -> None:
            self._unsubscribe(index, client, [data.decode("utf-8", "replace")], t)

        self._data_command(c, now, 1024, then=then)

    def _unsubscribe(self, index: int, client: MqttClient, topics: list[str], now: float) -> None:
        self._start_op(
            index, client, "UNSUB", now, self._rng.uniform(0.1, 0.3), client.op_timeout_s
        )
        assert self.bridge is not None
        self.bridge.unsubscribe(index, topics)

    # broker answers (via the bridge)

    def broker_event(self, event: BridgeEvent, now: float) -> None:
        client = self._clients.get(event.client)
        if client is None:
            return  # a client released or a module rebooted since: the answer is stale
        index = event.client
        due = max(now, client.earliest)  # never ahead of a result URC still to come
        if isinstance(event, Message):
            if client.connected:
                topic, payload = event.topic.encode(), event.payload
                self._at(due, lambda _: self._rx_message(index, topic, payload))
            return
        if isinstance(event, ConnectionLost):
            if client.connected:
                client.connected = False
                lines = [f"+CMQTTCONNLOST: {index},{event.cause}"]
                if client.pending is not None:
                    op, client.pending = client.pending, None
                    lines.insert(0, f"+CMQTT{op}: {index},11")

                def report(_: float) -> None:
                    for line in lines:
                        self._urc(line)

                self._at(due, report)
            return
        op = {
            BrokerConnected: "CONNECT",
            Published: "PUB",
            Subscribed: "SUB",
            Unsubscribed: "UNSUB",
            Disconnected: "DISC",
        }[type(event)]
        if client.pending != op:
            return  # timed out already, or aborted
        client.pending = None
        if op == "CONNECT":
            client.connected = event.err == 0
        elif op == "DISC":
            client.connected = False
        line = f"+CMQTT{op}: {index},{event.err}"
        self._at(due, lambda _: self._urc(line))

    def _rx_message(self, index: int, topic: bytes, payload: bytes) -> None:
        """+CMQTTRXSTART..+CMQTTRXEND (§18.4), sent as one block so nothing interleaves."""
        parts = [f"+CMQTTRXSTART: {index},{len(topic)},{len(payload)}\r\n".encode()]
        for start in range(0, len(topic), RX_CHUNK):
            chunk = topic[start : start + RX_CHUNK]
            parts.append(f"+CMQTTRXTOPIC: {index},{len(chunk)}\r\n".encode() + chunk + b"\r\n")
        for start in range(0, len(payload), RX_CHUNK):
            chunk = payload[start : start + RX_CHUNK]
            parts.append(f"+CMQTTRXPAYLOAD: {index},{len(chunk)}\r\n".encode() + chunk + b"\r\n")
        parts.append(f"+CMQTTRXEND: {index}".encode())
        self._urc(b"".join(parts))
