"""MQTT over the A7670's own stack (AT+CMQTT*): a `Transport` for the telemetry layer.

The module speaks MQTT 3.1.1 itself; the host only drives it with AT commands
(A76XX AT Command Manual V1.09 ch. 18, MQTT(S) Application Note V1.02):

    CMQTTSTART -> CMQTTACCQ -> CMQTTCFG "version",4 -> [CMQTTSSLCFG] -> [WILLTOPIC/WILLMSG]
    -> CMQTTCONNECT (OK, then +CMQTTCONNECT: 0,<err>) -> CMQTTSUB per topic
    publish: CMQTTTOPIC (> topic) -> CMQTTPAYLOAD (> payload) -> CMQTTPUB (OK, +CMQTTPUB: 0,0)

MQTT version: ``AT+CMQTTCFG="version",<idx>,4`` asks for MQTT 3.1.1 (the module's default is
3, MQTT 3.1; §18.2.11). Older MQTT stacks have no "version" parameter (the SIM7500/SIM7600
manual V3.00 §16.2.17 lists only checkUTF8, optimeout and aliauth) and answer ERROR: that is
no fault of the link, so the transport goes on with the default version (logged once, not
asked again) instead of failing the bring-up, which under a supervisor would climb the
recovery ladder to a power cycle every minute. MQTT 3.1 allows client ids of at most 23
characters, and the broker must accept 3.1 (mosquitto does).

`publish` returns only after `+CMQTTPUB: <idx>,0`, which at QoS 1 the module reports once the
broker's PUBACK arrived, so the caller may forget the record; every other outcome raises
`TransportError` naming the command and the module's reason. TOPIC, PAYLOAD and PUB of one
message are sent under one lock so two publishers never interleave their buffers.

With a `ModemSupervisor` the transport is its `LinkClient`: the supervisor connects it after
NETOPEN and tells it what was lost (`+CMQTTCONNLOST` -> CONNECT again; `+CMQTTNONET` and the
data-context URCs -> START and ACCQ again), and `connected` is `ModemState.mqtt_up`. With a
bare `AtChannel`, `connect()` is explicit and a lost connection is re-established at the
next publish.

Limits of the module that the caller must know: topics 1..1024 bytes, payloads 1..10240 bytes
(§18.2.5-6; larger or empty raises `AtMqttLimitError`, a `MessageRejected`: no retry sends it,
nor one the module refuses as "length out of range" or "bad UTF-8 string"), and the will
cannot be retained
(AT+CMQTTWILLMSG has no retain flag, §18.2.7): a retained will is sent as a plain one, with a
warning in the log.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from paho.mqtt.client import topic_matches_sub

from companion.modem.at_engine import AtCommand, AtResponse, MqttMessage, Urc
from companion.modem.channel import AtChannel, ChannelError
from companion.modem.responses import describe
from companion.modem.supervisor import LinkSetupError, ModemSupervisor
from companion.telemetry.transport import MessageRejected, TransportError

log = logging.getLogger(__name__)

MAX_TOPIC = 1024
MAX_PAYLOAD = 10240
MAX_CERT = 10240

#: +CMQTTCONNECT <err> values with which the broker itself said no (CONNACK 1-5, §18.3.1).
BROKER_REFUSALS = range(27, 32)
_NO_CONNECTION = {11, 26}  # "no connection", "socket is closed by server"
#: <err> values that condemn the message, not the link: "bad UTF-8 string", "length out of
#: range" (§18.3.1).
_MESSAGE_REFUSED = {2, 22}
_BROKER_RE = re.compile(r"^tcp://[^\s\"/:]+(:\d{1,5})?$")


class AtMqttLimitError(MessageRejected, ValueError):
    """A topic or payload the module cannot carry (empty, too long, wildcard in a publish,
    or refused by the module as such). Retrying cannot help: the caller must change the
    message."""


class AtMqttTransport:
    """MQTT through the modem's AT stack; implements `companion.telemetry.transport.Transport`.

    `broker` is "tcp://host:port" (the module wants that form even for TLS). `tls_ca` is the
    path of a CA certificate (PEM) on this computer: it is downloaded to the module
    (AT+CCERTDOWN) and the connection is made with server authentication (AT+CSSLCFG,
    AT+CMQTTSSLCFG, §19.2). `command_timeout_s` bounds each step of a publish (TOPIC,
    PAYLOAD, PUB's OK); the default is the manual's 9 s.
    """

    def __init__(
        self,
        link: ModemSupervisor | AtChannel,
        *,
        client_id: str,
        broker: str = "tcp://127.0.0.1:1883",
        keepalive_s: int = 60,
        clean_session: bool = True,
        tls_ca: str | Path | None = None,
        username: str | None = None,
        password: str | None = None,
        client_index: int = 0,
        command_timeout_s: float = 9.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= len(client_id.encode()) <= 128 or '"' in client_id:
            raise ValueError(f"MQTT client id must be 1-128 bytes without quotes: {client_id!r}")
        if not (9 <= len(broker) <= 256 and _BROKER_RE.match(broker)):
            raise ValueError(f"broker must look like tcp://host:port (9-256 chars): {broker!r}")
        if not 1 <= keepalive_s <= 64800:
            raise ValueError(f"keepalive must be 1-64800 s, got {keepalive_s}")
        if client_index not in (0, 1):
            raise ValueError(f"client index must be 0 or 1, got {client_index}")
        for name, value in (("user name", username), ("password", password)):
            if value is not None and (not 1 <= len(value) <= 256 or '"' in value):
                raise ValueError(f"MQTT {name} must be 1-256 characters without quotes")
        self.client_id = client_id
        self.broker = broker
        self.keepalive_s = keepalive_s
        self.clean_session = clean_session
        self.username = username
        self.password = password
        self.index = client_index
        self.command_timeout_s = command_timeout_s
        self.clock = clock
        self._ca = Path(tls_ca) if tls_ca is not None else None
        if self._ca is not None and not self._ca.name.endswith((".pem", ".der")):
            raise ValueError(f"CA certificate must be a .pem or .der file: {self._ca}")
        if isinstance(link, ModemSupervisor):
            self.supervisor: ModemSupervisor | None = link
            self.channel = link.channel
        else:
            self.supervisor = None
            self.channel = link
        self._will: tuple[bytes, bytes, int] | None = None
        self._subscriptions: dict[str, Callable[[str, bytes], None]] = {}
        self._lock = threading.RLock()
        self._up = False
        self._started = False
        self._acquired = False
        self._closed = False
        self._version_refused = False  # older firmware: no AT+CMQTTCFG="version"
        self._connections = 0
        self.last_error: str | None = None
        self._inbox: queue.Queue[MqttMessage | None] = queue.Queue()
        self._deliverer = threading.Thread(
            target=self._deliver, name=f"mqtt-at {client_id}", daemon=True
        )
        self._deliverer.start()
        self.channel.subscribe_mqtt(self._on_message)
        if self.supervisor is not None:
            self.supervisor.attach(self)
        else:
            self.channel.subscribe_urc(self._on_urc)

    # -- Transport -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        if self.supervisor is not None:
            return self._up and self.supervisor.state.mqtt_up
        return self._up

    @property
    def connections(self) -> int:
        """Successful CONNECTs so far (a user re-announces "online" when this changes)."""
        return self._connections

    def set_will(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = True) -> None:
        """The will the broker publishes if the drone vanishes; used from the next CONNECT."""
        _check_topic(topic, "will topic")
        if not 1 <= len(payload) <= MAX_TOPIC:
            raise AtMqttLimitError(
                f"will message must be 1-{MAX_TOPIC} bytes (AT+CMQTTWILLMSG), got {len(payload)}"
            )
        _check_qos(qos)
        if retain:
            log.warning(
                "A76xx MQTT cannot retain a will (AT+CMQTTWILLMSG has no retain flag): "
                "the will on %s will be delivered, but not retained",
                topic,
            )
        self._will = (topic.encode(), bytes(payload), qos)

    def connect(self) -> None:
        """Connect now (bare-channel use; under a supervisor it connects by itself)."""
        try:
            self.establish()
        except LinkSetupError as exc:
            raise TransportError(str(exc)) from exc

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        """Publish and return once the module reports `+CMQTTPUB: <idx>,0`."""
        _check_topic(topic, "topic")
        if "+" in topic or "#" in topic:
            raise AtMqttLimitError(f"cannot publish to a wildcard topic: {topic!r}")
        if not 1 <= len(payload) <= MAX_PAYLOAD:
            raise AtMqttLimitError(
                f"payload must be 1-{MAX_PAYLOAD} bytes for AT+CMQTTPAYLOAD, got {len(payload)}"
            )
        _check_qos(qos)
        deadline = self.clock() + timeout_s
        self._ensure_connected()
        if not self._lock.acquire(timeout=max(0.0, deadline - self.clock())):
            raise TransportError(f"publish to {topic!r}: modem busy for {timeout_s:g} s")
        try:
            i = self.index
            self._send(f"AT+CMQTTTOPIC={i},{len(topic.encode())}", topic, data=topic.encode())
            self._send(f"AT+CMQTTPAYLOAD={i},{len(payload)}", topic, data=bytes(payload))
            pub_timeout = int(max(1, min(180, deadline - self.clock())))
            self._send(
                f"AT+CMQTTPUB={i},{qos},{pub_timeout},{int(retain)}",
                topic,
                result_urc="+CMQTTPUB",
                urc_timeout_s=pub_timeout + 5.0,
            )
        finally:
            self._lock.release()

    def subscribe(self, topic: str, callback: Callable[[str, bytes], None]) -> None:
        """Deliver messages matching `topic` (wildcards allowed) to `callback(topic, payload)`,
        on this transport's own thread. Subscribed now if connected, else at connection."""
        _check_topic(topic, "subscription")
        self._subscriptions[topic] = callback
        if self.connected:
            with self._lock:
                self._subscribe(topic)

    def close(self) -> None:
        """Disconnect, release the client and stop the MQTT service (best effort)."""
        if self._closed:
            return
        self._closed = True
        if self.supervisor is not None:
            self.supervisor.detach(self)
        else:
            self.channel.unsubscribe_urc(self._on_urc)
        self.channel.unsubscribe_mqtt(self._on_message)
        with self._lock:
            if self._up:
                self._quiet(f"AT+CMQTTDISC={self.index},10", result_urc="+CMQTTDISC")
            if self._acquired:
                self._quiet(f"AT+CMQTTREL={self.index}")
            if self._started:
                self._quiet("AT+CMQTTSTOP", result_urc="+CMQTTSTOP")
            self._up = self._acquired = self._started = False
        self._inbox.put(None)
        self._deliverer.join(5.0)

    # -- LinkClient (the supervisor's thread) ------------------------------------------------

    def establish(self) -> None:
        """Bring the MQTT connection up from wherever it is; raises `LinkSetupError`."""
        if self._closed:
            raise LinkSetupError("MQTT transport closed")
        with self._lock:
            try:
                self._establish()
            except LinkSetupError as exc:
                self.last_error = str(exc)
                raise
            self.last_error = None
        log.info("MQTT via modem connected to %s as %s", self.broker, self.client_id)

    def link_lost(self, scope: str) -> None:
        """`scope`: "connection" (CONNECT again), "data"/"module" (START and ACCQ again)."""
        self._up = False
        if scope != "connection":
            self._started = self._acquired = False

    # -- internals -------------------------------------------------------------------------

    def _establish(self) -> None:
        i = self.index
        if self._still_connected():
            # A loss reported for something else (+IPCLOSE of a socket, a ladder step that
            # spared the session): the broker still has us, and CFG would fail on a
            # connected client.
            log.info("MQTT client %d is still connected; nothing to re-establish", i)
            self._up = True
            return
        if not self._started:
            r = self._call(
                AtCommand("AT+CMQTTSTART", 12.0, result_urc="+CMQTTSTART", urc_timeout_s=12.0)
            )
            # ERROR alone: already started (§18.2.1); +CMQTTSTART: 23: network is opened.
            if not (r.ok or _plain_error(r) or _result_code(r) == 23):
                raise _setup_error("AT+CMQTTSTART", r)
            self._started = True
        if not self._acquired:
            server_type = ",1" if self._ca is not None else ""
            r = self._call(AtCommand(f'AT+CMQTTACCQ={i},"{self.client_id}"{server_type}'))
            if not (r.ok or _line_code(r, "+CMQTTACCQ") == 19):  # 19: client is used (ours)
                raise _setup_error("AT+CMQTTACCQ", r)
            self._acquired = True
        if not self._version_refused:
            self._ask_for_mqtt_311()
        if self._ca is not None:
            self._configure_tls()
        if self._will is not None:
            topic, message, qos = self._will
            self._must(AtCommand(f"AT+CMQTTWILLTOPIC={i},{len(topic)}", data=topic))
            self._must(AtCommand(f"AT+CMQTTWILLMSG={i},{len(message)},{qos}", data=message))
        credentials = ""
        if self.username is not None:
            credentials = f',"{self.username}"'
            if self.password is not None:
                credentials += f',"{self.password}"'
        line = (
            f'AT+CMQTTCONNECT={i},"{self.broker}",{self.keepalive_s},'
            f"{int(self.clean_session)}{credentials}"
        )
        r = self._call(AtCommand(line, 30.0, result_urc="+CMQTTCONNECT", urc_timeout_s=30.0))
        if not r.ok and _line_code(r, "+CMQTTCONNECT") == 19:
            log.info("MQTT client %d was still connected (+CMQTTCONNECT: %d,19)", i, i)
        elif not r.ok:
            code = _result_code(r)
            if code is not None and code in BROKER_REFUSALS:
                raise LinkSetupError(
                    f"broker {self.broker} refused the connection: {describe(r)}", "refused"
                )
            # Start over with a fresh client next time: REL clears CFG/WILL, ACCQ re-applies.
            self._quiet(f"AT+CMQTTDISC={i},10", result_urc="+CMQTTDISC")
            self._quiet(f"AT+CMQTTREL={i}")
            self._acquired = False
            raise _setup_error(f"connect to {self.broker}", r)
        for topic in list(self._subscriptions):
            self._subscribe(topic)
        self._up = True
        self._connections += 1

    def _ask_for_mqtt_311(self) -> None:
        """CFG "version" 4; a refusal (ERROR, +CME ERROR) means firmware without the
        parameter: carry on with its default, MQTT 3.1 (module doc). A timeout is not a
        refusal: the module is unwell, and the bring-up fails as for any other step."""
        r = self._call(AtCommand(f'AT+CMQTTCFG="version",{self.index},4'))
        if r.ok:
            return
        assert r.error is not None
        if r.error.kind in ("timeout", "reset"):
            raise _setup_error('AT+CMQTTCFG="version"', r)
        self._version_refused = True
        log.warning(
            'the modem refused AT+CMQTTCFG="version",%d,4 (%s): older firmware; connecting '
            "with its default, MQTT 3.1 (client id %r: at most 23 characters there)",
            self.index,
            describe(r),
            self.client_id,
        )

    def _still_connected(self) -> bool:
        """`AT+CMQTTDISC?` -> `+CMQTTDISC: <idx>,<state>`, state 0 = connected (§18.2.4);
        ERROR while the MQTT service is stopped."""
        r = self._call(AtCommand("AT+CMQTTDISC?"))
        connected = f"+CMQTTDISC:{self.index},0"
        return r.ok and connected in (line.replace(" ", "") for line in r.lines)

    def _configure_tls(self) -> None:
        assert self._ca is not None
        try:
            pem = self._ca.read_bytes()
        except OSError as exc:
            raise LinkSetupError(
                f"cannot read CA certificate {self._ca}: {exc}", "refused"
            ) from exc
        if not 1 <= len(pem) <= MAX_CERT:
            raise LinkSetupError(f"CA certificate {self._ca} must be 1-{MAX_CERT} bytes", "refused")
        name = self._ca.name
        self._must(AtCommand(f'AT+CCERTDOWN="{name}",{len(pem)}', 120.0, data=pem))
        self._must(AtCommand('AT+CSSLCFG="sslversion",0,4'))
        self._must(AtCommand('AT+CSSLCFG="authmode",0,1'))
        self._must(AtCommand(f'AT+CSSLCFG="cacert",0,"{name}"'))
        self._must(AtCommand('AT+CSSLCFG="enableSNI",0,1'))
        self._must(AtCommand(f"AT+CMQTTSSLCFG={self.index},0"))

    def _subscribe(self, topic: str) -> None:
        data = topic.encode()
        command = AtCommand(
            f"AT+CMQTTSUB={self.index},{len(data)},1",
            data=data,
            result_urc="+CMQTTSUB",
            urc_timeout_s=30.0,
        )
        r = self._call(command)
        if not r.ok:
            raise _setup_error(f"subscribe to {topic!r}", r)

    def _ensure_connected(self) -> None:
        if self._closed:
            raise TransportError(f"MQTT transport to {self.broker} is closed")
        if self.connected:
            return
        if self.supervisor is None:
            self.connect()
            return
        state = self.supervisor.state
        reason = state.error or f"modem stage {state.stage}"
        raise TransportError(f"MQTT via modem to {self.broker} not connected ({reason})")

    def _send(
        self,
        line: str,
        topic: str,
        *,
        data: bytes | None = None,
        result_urc: str | None = None,
        urc_timeout_s: float = 30.0,
    ) -> None:
        """One step of a publish; a failure raises TransportError and reports what it means
        for the link (a module that stopped answering, a connection that is gone)."""
        command = AtCommand(
            line,
            self.command_timeout_s,
            data=data,
            result_urc=result_urc,
            urc_timeout_s=urc_timeout_s,
        )
        try:
            r = self.channel.call(command)
        except ChannelError as exc:
            raise TransportError(f"publish to {topic!r} via modem: {exc}") from exc
        if r.ok:
            return
        assert r.error is not None
        if r.error.kind in ("timeout", "reset") and self.supervisor is not None:
            self.supervisor.report_unresponsive(f"{line.split('=')[0]} {r.error.kind}")
        code = _result_code(r)
        if code is None:
            code = _line_code(r, line[2:].split("=")[0])
        if code in _NO_CONNECTION:
            self._up = False
            if self.supervisor is not None:
                self.supervisor.report_lost("connection", f"{line.split('=')[0]}: {describe(r)}")
        if code in _MESSAGE_REFUSED:
            raise AtMqttLimitError(f"publish to {topic!r}: the modem refused {line}: {describe(r)}")
        raise TransportError(f"publish to {topic!r} via modem failed: {line}: {describe(r)}")

    def _call(self, command: AtCommand) -> AtResponse:
        try:
            return self.channel.call(command)
        except ChannelError as exc:
            raise LinkSetupError(f"{command.line.split('=')[0]}: {exc}", "timeout") from exc

    def _must(self, command: AtCommand) -> None:
        r = self._call(command)
        if not r.ok:
            raise _setup_error(command.line.split("=")[0], r)

    def _quiet(self, line: str, *, result_urc: str | None = None) -> None:
        """A clean-up command whose failure changes nothing (the state is reset anyway)."""
        with contextlib.suppress(ChannelError):
            r = self.channel.call(AtCommand(line, 12.0, result_urc=result_urc, urc_timeout_s=12.0))
            if not r.ok:
                log.debug("%s: %s", line, describe(r))

    def _on_urc(self, urc: Urc) -> None:
        """Bare-channel mode (port thread): note what was lost; the next publish reconnects."""
        if urc.name == "+CMQTTCONNLOST":
            self.link_lost("connection")
        elif urc.name in ("+CMQTTNONET", "+CMQTTSTOP"):
            self.link_lost("data")

    def _on_message(self, message: MqttMessage) -> None:
        """Port thread: hand over to the delivery thread (callbacks may publish)."""
        if message.client == self.index:
            self._inbox.put(message)

    def _deliver(self) -> None:
        while (message := self._inbox.get()) is not None:
            matched = False
            for pattern, callback in list(self._subscriptions.items()):
                if topic_matches_sub(pattern, message.topic):
                    matched = True
                    try:
                        callback(message.topic, message.payload)
                    except Exception:
                        log.exception("subscriber of %s failed on %s", pattern, message.topic)
            if not matched:
                log.warning("MQTT message on %s matches no subscription; ignored", message.topic)


def _check_topic(topic: str, what: str) -> None:
    size = len(topic.encode())
    if not 1 <= size <= MAX_TOPIC:
        raise AtMqttLimitError(f"{what} must be 1-{MAX_TOPIC} bytes, got {size}")


def _check_qos(qos: int) -> None:
    if qos not in (0, 1, 2):
        raise AtMqttLimitError(f"QoS must be 0, 1 or 2, got {qos}")


def _plain_error(r: AtResponse) -> bool:
    return r.error is not None and r.error.kind == "error" and r.result_line is None


def _result_code(r: AtResponse) -> int | None:
    if r.error is not None and r.error.kind == "result":
        return r.error.code
    return None


def _line_code(r: AtResponse, prefix: str) -> int | None:
    """<err> of a `+CMQTTxxx: <idx>,<err>` line that came before ERROR."""
    for line in (*r.lines, r.result_line or ""):
        if line.startswith(prefix + ":"):
            tail = line.split(",")[-1].strip()
            if tail.isdigit():
                return int(tail)
    return r.error.code if r.error is not None and r.error.kind == "result" else None


def _setup_error(what: str, r: AtResponse) -> LinkSetupError:
    kind = "timeout" if r.error is not None and r.error.kind in ("timeout", "reset") else "failed"
    return LinkSetupError(f"MQTT via modem: {what}: {describe(r)}", kind)
