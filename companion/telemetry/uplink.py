"""The telemetry chain, built from `[modem]` and `[telemetry]`: one path for the daemon and
the simulator.

Bus -> `TelemetryPublisher` -> durable `Store` -> a `Transport`: the A7670's own MQTT stack
(`AtMqttTransport` on a `ModemSupervisor` that keeps the modem registered, the data context up
and climbs the recovery ladder), or paho-mqtt over any IP interface. The simulator differs
only in where the modem's port leads (the emulator's pty) and which clock times the samples.
"""

from __future__ import annotations

import logging
import shlex
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from companion.bus import Bus
from companion.config import ModemConfig, TelemetryConfig
from companion.mission.events import MissionEvent, Phase
from companion.modem.channel import AtChannel
from companion.modem.mqtt_at import AtMqttTransport
from companion.modem.sms import SmsClient, SmsCommandAuthoriser, SmsFallback, SmsMessage
from companion.modem.state import ModemState
from companion.modem.supervisor import ModemSupervisor
from companion.telemetry.publisher import TelemetryPublisher
from companion.telemetry.store import Store
from companion.telemetry.transport import PahoTransport, Transport

log = logging.getLogger(__name__)


def rates_from_config(tc: TelemetryConfig) -> dict[str, float]:
    """Samples per second by mission phase: ground, flight, and the hand-over (descent to the
    recipient and the release, when the operator watches most closely)."""
    flight = {p.value: tc.cruise_hz for p in (Phase.ARM, Phase.TAKEOFF, Phase.CRUISE)}
    flight |= {p.value: tc.cruise_hz for p in (Phase.CLIMB, Phase.RETURN)}
    landing = min(tc.handover_hz, 2 * tc.cruise_hz)
    return {
        "idle": tc.ground_hz,
        Phase.PREFLIGHT.value: tc.ground_hz,
        Phase.DONE.value: tc.ground_hz,
        **flight,
        Phase.DESCEND.value: tc.handover_hz,
        Phase.RELEASE.value: tc.handover_hz,
        Phase.LAND.value: landing,
        Phase.ABORT.value: landing,
    }


def power_key_hook(command: str | None) -> Callable[[], None] | None:
    """The PWRKEY pulse as a command run without a shell (pins differ per board)."""
    if command is None:
        return None
    argv = shlex.split(command)

    def pulse() -> None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode != 0:
            log.error("power key command %s failed (%d): %s", argv[0], done.returncode,
                      done.stderr.strip())  # fmt: skip

    return pulse


@dataclass
class TelemetryUplink:
    """The running chain; `close()` drains what it can, then stops everything."""

    publisher: TelemetryPublisher
    store: Store
    transport: Transport
    supervisor: ModemSupervisor | None = None
    channel: AtChannel | None = None
    modem_states: list[ModemState] = field(default_factory=list)
    sms: SmsClient | None = None

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued record is acknowledged; False if time ran out."""
        deadline = time.monotonic() + timeout_s
        while self.store.pending() > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self.publisher.stop()
        self.transport.close()
        if self.sms is not None:
            self.sms.stop()
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.channel is not None:
            self.channel.stop()
        self.store.close()

    def summary(self) -> dict[str, Any]:
        """The report section: what was queued and delivered, and how the modem fared."""
        stats = self.publisher.stats()
        summary: dict[str, Any] = {
            "queued": stats.queued,
            "published": stats.published,
            "pending": stats.pending,
            "retried": stats.retried,
            "thinned": stats.thinned,
            "last_seq": self.store.last_seq,
            "last_error": stats.last_error,
        }
        if self.supervisor is not None:
            state = self.supervisor.state
            stages: list[str] = []
            for s in self.modem_states:
                if not stages or stages[-1] != s.stage:
                    stages.append(s.stage)
            summary["modem"] = {
                "stage": state.stage,
                "operator": state.operator,
                "rat": state.rat,
                "rssi_dbm": state.rssi_dbm,
                "recoveries": state.recoveries,
                "error": state.error,
                "stages": stages,
            }
        return summary


def open_uplink(
    modem: ModemConfig,
    telemetry: TelemetryConfig,
    bus: Bus,
    *,
    port: str | None = None,
    queue_path: Path | None = None,
    clock: Callable[[], float] = time.monotonic,
    power_key: Callable[[], None] | None = None,
) -> TelemetryUplink | None:
    """Start the chain; None when there is nothing to send through (no modem port with the
    modem transport). `port` overrides `modem.port`, `queue_path` the configured queue,
    `clock` times the samples (a simulator's clock in simulated time), `power_key` replaces
    `modem.power_key_command` (the emulator's power key)."""
    client_id = telemetry.drone_id
    supervisor = channel = sms = None
    states: list[ModemState] = []
    transport: Transport
    if telemetry.transport == "modem":
        port = port or modem.port
        if port is None:
            return None
        channel = AtChannel(port, baud=modem.baud).start()
        supervisor = ModemSupervisor(
            channel,
            bus.publish,
            apn=modem.apn,
            pin=modem.pin,
            power_key=power_key or power_key_hook(modem.power_key_command),
        )
        bus.subscribe(ModemState, states.append)
        transport = AtMqttTransport(
            supervisor,
            client_id=client_id,
            broker=telemetry.broker,
            keepalive_s=telemetry.keepalive_s,
            tls_ca=telemetry.tls_ca,
        )
        supervisor.start()
        sms = _start_sms(modem, telemetry.drone_id, channel, transport, bus)
    else:
        host, broker_port = telemetry.broker_address
        tls = None
        if telemetry.tls_ca is not None:
            tls = ssl.create_default_context(cafile=str(telemetry.tls_ca))
        transport = PahoTransport(
            host, broker_port, client_id, keepalive_s=telemetry.keepalive_s, tls=tls
        )
    store = Store(
        queue_path or telemetry.queue_path, max_bytes=int(telemetry.queue_max_mb * 1024 * 1024)
    )
    publisher = TelemetryPublisher(
        bus, store, transport, telemetry.drone_id, clock, rates_from_config(telemetry)
    )
    publisher.start()
    return TelemetryUplink(publisher, store, transport, supervisor, channel, states, sms)


def _start_sms(
    modem: ModemConfig, drone_id: str, channel: AtChannel, transport: Transport, bus: Bus
) -> SmsClient:
    """SMS on the same module: operators' authorised commands onto the bus (as
    `SmsCommand`), and the delivered/aborted events by SMS while the data link is down."""
    operators = [n.strip() for n in modem.sms_operators.split(",") if n.strip()]
    on_message: Callable[[SmsMessage], object]
    if operators and modem.sms_secret:
        on_message = SmsCommandAuthoriser(
            numbers=operators, secret=modem.sms_secret, on_command=bus.publish
        )
    else:

        def on_message(message: SmsMessage) -> None:
            log.warning("SMS from %s ignored: no [modem] sms_operators/sms_secret set",
                        message.sender)  # fmt: skip

    sms = SmsClient(channel, on_message=on_message).start()
    if modem.sms_fallback_to is not None:
        fallback = SmsFallback(
            sms,
            numbers=[modem.sms_fallback_to],
            link_up=lambda: transport.connected,
            drone_id=drone_id,
        )

        def on_event(event: MissionEvent) -> None:
            if event.phase is Phase.DONE and event.event == "enter":
                fallback.notify("delivered", f"mission {event.mission_id}")
            elif event.phase is Phase.ABORT and event.event == "enter":
                fallback.notify("aborted", f"mission {event.mission_id}: {event.detail}")

        bus.subscribe(MissionEvent, on_event)
    return sms
