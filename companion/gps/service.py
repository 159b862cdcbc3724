"""Starting the companion's receiver from `[gps]`: one place for the daemon and the simulator.

`start_gps` builds the driver with its UBX start-up configuration, logs its statuses and
integrity alarms, and cross-checks its fixes with the autopilot's GPS on the bus, so the
simulated flight exercises exactly what runs on the drone; only the port and the clock
differ (a pty, and simulated time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from companion.bus import Bus
from companion.config import GpsConfig
from companion.gps import integrity
from companion.gps.driver import GpsDriver, GpsStatus
from companion.gps.integrity import IntegrityAlarm, IntegrityMonitor
from companion.gps.ubx_config import UbxConfigurator

log = logging.getLogger(__name__)


def start_gps(
    gps: GpsConfig,
    bus: Bus,
    *,
    port: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    monitor: IntegrityMonitor | None = None,
    ack_timeout_s: float = 1.0,
) -> GpsDriver | None:
    """Start the driver on `port` (default `gps.port`); None when no receiver is configured.

    `clock` times fixes, statuses and the configuration handshake (`ack_timeout_s` per UBX
    request, in that clock's seconds); `monitor` is the integrity cross-check to run.
    """
    port = port or gps.port
    if port is None:
        return None
    configurator = None
    if gps.configure:
        rate_ms = round(1000 / gps.rate_hz)

        def configurator(current: int) -> UbxConfigurator:
            return UbxConfigurator(
                baud=gps.target_baud,
                current_baud=current,
                meas_rate_ms=rate_ms,
                save=gps.save,
                eeprom=gps.eeprom,
                timeout=ack_timeout_s,
            )

    bus.subscribe(GpsStatus, lambda status: log.info("gps %s: %s", status.state, status.detail))
    bus.subscribe(IntegrityAlarm, lambda alarm: log.error("GPS integrity: %s", alarm.detail))
    integrity.watch(bus, clock, monitor)
    driver = GpsDriver(
        port,
        bus.publish,
        baud=gps.baud,
        configurator=configurator,
        silence_s=gps.silence_s,
        clock=clock,
    )
    return driver.start()
