"""The telemetry chain as the daemon builds it (`open_uplink`) against the A7670 emulator on a
pty: bad SIMs, refused APNs and brokers are clear errors in `ModemState`, the daemon's chain
keeps running and its queue keeps every record; SMS carries the outcome while data is down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from companion.bus import Bus
from companion.config import Config
from companion.mission.events import ABORTED, MissionEvent, Phase
from companion.modem.state import ModemState
from companion.telemetry.uplink import TelemetryUplink, open_uplink, rates_from_config
from firmware_bridge.state import GpsInfo, Position, VehicleState
from sim.modem.a7670 import A7670
from sim.modem.mqtt_bridge import PahoBridge
from sim.modem.pty_runner import A7670Pty
from tests.waiting import wait_until


@contextmanager
def chain(
    tmp_path: Path, emulator: A7670, broker: str = "tcp://127.0.0.1:9", **modem: object
) -> Iterator[tuple[TelemetryUplink, Bus, A7670Pty]]:
    config = Config().updated("test", modem=modem, telemetry={"broker": broker, "ground_hz": 10.0})
    bus = Bus()
    with A7670Pty(emulator) as runner:
        assert runner.path is not None
        link = open_uplink(
            config.modem, config.telemetry, bus, port=runner.path, queue_path=tmp_path / "q.db"
        )
        assert link is not None
        try:
            yield link, bus, runner
        finally:
            link.close()


def _fly(bus: Bus) -> None:
    bus.publish(
        VehicleState(
            wall_time=time.time(),
            position=Position(-35.36, 149.16, 614.0, 30.0),
            gps=GpsInfo(fix_type=3, satellites=10),
        )
    )


def _error(link: TelemetryUplink) -> str:
    assert link.supervisor is not None
    return link.supervisor.state.error or ""


def test_no_sim_is_a_clear_error_and_the_queue_keeps_every_record(tmp_path: Path) -> None:
    with chain(tmp_path, A7670(sim="absent", time_scale=0.05)) as (link, bus, _runner):
        wait_until(lambda: "no SIM" in _error(link), "the no-SIM error")
        _fly(bus)
        wait_until(lambda: link.store.pending() >= 5, "records queued while the link is down")
        assert link.publisher.stats().published == 0
    again = open_link_store(tmp_path)
    assert again >= 5  # nothing was lost: the queue on disk still holds them


def open_link_store(tmp_path: Path) -> int:
    from companion.telemetry.store import Store

    store = Store(tmp_path / "q.db")
    try:
        return store.pending()
    finally:
        store.close()


def test_wrong_pin_is_named_and_never_retried(tmp_path: Path) -> None:
    emulator = A7670(pin="1234", time_scale=0.05)
    with chain(tmp_path, emulator, pin="4321") as (link, _bus, runner):
        wait_until(lambda: "PIN" in _error(link), "the wrong-PIN error")
        time.sleep(0.5)
        with runner.locked() as module:
            assert module._sim_locked != "SIM PUK"  # one try only: the PUK is safe
    assert "incorrect password" in _error(link)


def test_an_apn_the_network_refuses_is_named(tmp_path: Path) -> None:
    emulator = A7670(apns={"operator.apn"}, time_scale=0.05)
    with chain(tmp_path, emulator, apn="wrong.apn") as (link, _bus, _runner):
        wait_until(lambda: "APN" in _error(link), "the refused-APN error")
    assert "wrong.apn" in _error(link)


def test_an_unreachable_broker_is_named_and_records_are_kept(tmp_path: Path) -> None:
    bridge = PahoBridge()
    emulator = A7670(bridge=bridge, time_scale=0.05)
    try:
        # Port 9 (discard): nothing listens, so the module's MQTT connect fails.
        with chain(tmp_path, emulator, broker="tcp://127.0.0.1:9") as (link, bus, _runner):
            wait_until(lambda: "127.0.0.1:9" in _error(link), "the broker error")
            _fly(bus)
            wait_until(lambda: link.store.pending() >= 1, "records kept")
    finally:
        bridge.close()
    assert "sock connect fail" in _error(link)


def test_outcome_goes_by_sms_while_the_data_link_is_down(tmp_path: Path) -> None:
    emulator = A7670(time_scale=0.05)  # no bridge: MQTT never connects, SMS still works
    with chain(tmp_path, emulator, sms_fallback_to="+447700900123") as (link, bus, runner):
        wait_until(lambda: link.supervisor is not None and link.supervisor.state.registered,
              "registration")  # fmt: skip
        bus.publish(MissionEvent("m-9", Phase.DONE, "enter"))
        wait_until(lambda: bool(runner.sent_sms), "an SMS")
    ((number, text),) = runner.sent_sms
    assert number == "+447700900123" and "delivered" in text.lower() and "m-9" in text


def test_an_abort_goes_by_sms_while_the_data_link_is_down(tmp_path: Path) -> None:
    """The mission ends an abort with (ABORT, "abort"), after entering ABORT: only the
    former is the ending, and it used to be the one the fallback missed."""
    emulator = A7670(time_scale=0.05)
    with chain(tmp_path, emulator, sms_fallback_to="+447700900123") as (link, bus, runner):
        wait_until(lambda: link.supervisor is not None and link.supervisor.state.registered,
              "registration")  # fmt: skip
        bus.publish(MissionEvent("m-10", Phase.ABORT, "enter"))
        bus.publish(MissionEvent("m-10", *ABORTED, {"reason": "battery low", "action": "RTL"}))
        fallback = link.sms_fallback
        assert fallback is not None
        wait_until(lambda: fallback.sent + fallback.failed >= 1, "the SMS sent (or failed)")
        assert (fallback.sent, fallback.failed, fallback.dropped) == (1, 0, 0)
    ((number, text),) = runner.sent_sms
    assert number == "+447700900123"
    assert text == "skycourier-1 ABORTED mission m-10: battery low (RTL)"


def test_rates_follow_the_configuration() -> None:
    rates = rates_from_config(Config().telemetry)
    assert rates["idle"] == 0.2 and rates["cruise"] == 1.0 and rates["descend"] == 5.0
    assert all(hz > 0 for hz in rates.values())


def test_modem_state_is_published_on_the_bus(tmp_path: Path) -> None:
    seen: list[ModemState] = []
    with chain(tmp_path, A7670(time_scale=0.05)) as (link, bus, _runner):
        bus.subscribe(ModemState, seen.append)
        wait_until(lambda: link.supervisor is not None and link.supervisor.state.registered,
              "registration")  # fmt: skip
    assert link.modem_states and link.modem_states[-1].operator
