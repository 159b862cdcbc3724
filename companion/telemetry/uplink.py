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
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from companion.bus import Bus
from companion.config import ModemConfig, TelemetryConfig
from companion.mission.events import MissionEvent, Phase
from companion.modem.channel import AtChannel
from companion.modem.mqtt_at import AtMqttTransport
from companion.modem.operator_sms import (
    CommandAuthenticator,
    CounterStore,
    OperatorSms,
    SmsAuthError,
    load_key,
)
from companion.modem.sms import SmsClient, SmsFallback, number_is_one_of
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
    """The running chain; `close()` stops everything, in the reverse order of starting."""

    publisher: TelemetryPublisher
    store: Store
    transport: Transport
    supervisor: ModemSupervisor | None = None
    channel: AtChannel | None = None
    modem_states: list[ModemState] = field(default_factory=list)
    sms: SmsClient | None = None
    sms_fallback: SmsFallback | None = None
    running: ExitStack = field(default_factory=ExitStack, repr=False)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued record is acknowledged; False if time ran out."""
        deadline = time.monotonic() + timeout_s
        while self.store.pending() > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self.running.close()

    @property
    def alive(self) -> bool:
        """Whether the publisher's threads and the modem's supervisor (if any) still run."""
        modem = self.supervisor is None or self.supervisor.running
        return self.publisher.running and modem

    def summary(self) -> dict[str, Any]:
        """The report section: what was queued and delivered, and how the modem fared."""
        stats = self.publisher.stats()
        summary: dict[str, Any] = {
            "queued": stats.queued,
            "published": stats.published,
            "messages": stats.messages,
            "pending": stats.pending,
            "retried": stats.retried,
            "thinned": stats.thinned,
            "set_aside": stats.set_aside,
            "last_set_aside": stats.last_set_aside,
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
    `modem.power_key_command` (the emulator's power key). If any part fails to start, the
    parts already started are stopped before the error propagates."""
    client_id = telemetry.drone_id
    supervisor = channel = sms = fallback = None
    states: list[ModemState] = []
    transport: Transport
    with ExitStack() as running:
        if telemetry.transport == "modem":
            port = port or modem.port
            if port is None:
                return None
            channel = AtChannel(port, baud=modem.baud).start()
            running.callback(channel.stop)
            supervisor = ModemSupervisor(
                channel,
                bus.publish,
                apn=modem.apn,
                pin=modem.pin,
                power_key=power_key or power_key_hook(modem.power_key_command),
            )
            running.callback(supervisor.stop)
            bus.subscribe(ModemState, states.append)  # kept after close: the report reads it
            transport = AtMqttTransport(
                supervisor,
                client_id=client_id,
                broker=telemetry.broker,
                keepalive_s=telemetry.keepalive_s,
                tls_ca=telemetry.tls_ca,
            )
            running.callback(transport.close)
            supervisor.start()
            sms, fallback = _start_sms(modem, telemetry.drone_id, channel, transport, bus, running)
        else:
            host, broker_port = telemetry.broker_address
            tls = None
            if telemetry.tls_ca is not None:
                tls = ssl.create_default_context(cafile=str(telemetry.tls_ca))
            transport = PahoTransport(
                host, broker_port, client_id, keepalive_s=telemetry.keepalive_s, tls=tls
            )
            running.callback(transport.close)
        store = Store(
            queue_path or telemetry.queue_path,
            max_bytes=int(telemetry.queue_max_mb * 1024 * 1024),
        )
        running.callback(store.close)
        publisher = TelemetryPublisher(
            bus,
            store,
            transport,
            telemetry.drone_id,
            clock,
            rates_from_config(telemetry),
            status_period_s=telemetry.status_period_s,
            linger_s=telemetry.batch_linger_s,
        )
        publisher.start()
        running.callback(publisher.stop)
        return TelemetryUplink(
            publisher,
            store,
            transport,
            supervisor,
            channel,
            states,
            sms,
            fallback,
            running.pop_all(),
        )


def _start_sms(
    modem: ModemConfig,
    drone_id: str,
    channel: AtChannel,
    transport: Transport,
    bus: Bus,
    running: ExitStack,
) -> tuple[SmsClient, SmsFallback | None]:
    """SMS on the same module: operators' commands, authenticated, acted on through the bus
    (`OperatorCommand`, which the flying mission takes) and answered; and how each mission
    ended by SMS while the data link is down. Each part started is pushed onto `running`,
    which stops it.

    Only the `sms_operators` numbers' messages are decoded; everything else is logged and
    deleted. Without a usable key file (or counter file) commands are refused, saying why:
    the drone never acts on an SMS it cannot authenticate, and never twice on one."""
    operators = [n.strip() for n in modem.sms_operators.split(",") if n.strip()]
    sms = SmsClient(channel, accept=number_is_one_of(operators), storage=modem.sms_storage)
    if operators:
        handler = OperatorSms(
            bus=bus,
            authenticator=_authenticator(modem, drone_id),
            send=sms.send,
            drone_id=drone_id,
        )
        running.callback(handler.close)
        sms.on_message = handler
    sms.start()
    running.callback(sms.stop)
    if modem.sms_fallback_to is None:
        return sms, None
    fallback = SmsFallback(
        sms,
        numbers=[modem.sms_fallback_to],
        link_up=lambda: transport.connected,
        drone_id=drone_id,
    ).start()
    running.callback(fallback.stop)
    running.callback(forward_endings(bus, fallback))
    return sms, fallback


def _authenticator(modem: ModemConfig, drone_id: str) -> CommandAuthenticator | None:
    """The SMS command authenticator, or None (commands refused) with the reason logged."""
    if modem.sms_key_file is None:
        log.warning("SMS commands will be refused: [modem] sms_key_file is not set")
        return None
    try:
        return CommandAuthenticator(
            key=load_key(modem.sms_key_file),
            drone_id=drone_id,
            counters=CounterStore(modem.sms_counter_path),
            validity_s=modem.sms_validity_s,
        )
    except SmsAuthError as exc:
        log.error("SMS commands will be refused: %s", exc)
        return None


#: Abort actions that leave the drone away from home or out of the companion's hands: the
#: drone lands where it is (LAND), or the autopilot's failsafe or a lost link decides.
EMERGENCY_ACTIONS = frozenset({"LAND", "FAILSAFE", "AUTOPILOT"})
#: Transitions during an abort that make it an emergency: the return home refused (the core
#: falls back to LAND) or the landing refused, a failsafe taking over, a drone still armed
#: when the abort gave up waiting.
EMERGENCY_EVENTS = frozenset({"abort-action-failed", "autopilot", "still-armed"})


def forward_endings(bus: Bus, fallback: SmsFallback) -> Callable[[], None]:
    """Hand how each mission ends to `fallback`: "delivered", "aborted" (coming home), or
    "emergency" (an abort with an action in `EMERGENCY_ACTIONS`, or one of
    `EMERGENCY_EVENTS` during an abort). Returns the unsubscribe function.

    `MissionEvent.ending` marks the one event that decides the ending, whatever the phase
    entries around it. The publisher is the mission's thread, and `notify` only queues, so
    this never makes the mission wait for the modem.
    """

    def on_event(event: MissionEvent) -> None:
        if event.ending is not None:
            action = event.detail.get("action")
            kind = "emergency" if action in EMERGENCY_ACTIONS else event.ending
            fallback.notify(kind, _ending_detail(event))
        elif event.phase is Phase.ABORT and event.event in EMERGENCY_EVENTS:
            fallback.notify("emergency", _emergency_detail(event))

    return bus.subscribe(MissionEvent, on_event)


def _emergency_detail(event: MissionEvent) -> str:
    """The SMS's detail for an emergency during an abort: what happened, from the journal."""
    detail = event.detail
    if event.event == "abort-action-failed":
        what = f"{detail.get('action')} refused ({detail.get('error')})"
        if detail.get("action") == "RTL":
            what += ", landing where it is"
    elif event.event == "autopilot":
        what = f"autopilot failsafe in {detail.get('mode')}: {detail.get('text')}"
    else:
        what = f"still armed after {detail.get('waited_s')} s"
    return f"mission {event.mission_id}: {what}"


def _ending_detail(event: MissionEvent) -> str:
    """The SMS's detail: the mission, and for an abort its reason and the action taken."""
    detail = f"mission {event.mission_id}"
    reason, action = event.detail.get("reason"), event.detail.get("action")
    if reason:
        detail += f": {reason}"
    if action:
        detail += f" ({action})"
    return detail
