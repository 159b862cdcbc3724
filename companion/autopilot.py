"""The companion's link to its autopilot, opened from the configuration."""

from __future__ import annotations

import time
from collections.abc import Callable

from companion.config import Config
from firmware_bridge.vehicle import Vehicle


def connect_autopilot(
    config: Config,
    publish: Callable[[object], None],
    *,
    connection: str | None = None,
    heartbeat_interval_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    signing_secret: bytes | None = None,
) -> Vehicle:
    """Open the autopilot link with every setting of `[vehicle]` and `[companion]`, so the
    daemon and the simulator cannot drift apart; `connection` overrides the configured one
    (the simulator's own autopilot), `heartbeat_interval_s` the configured rate, and `clock`
    the monotonic clock (a simulator's, in simulated time). With `signing_secret` (the key
    store's `mavlink_signing_secret()`) MAVLink 2 signing is set up before anything else is
    asked of the autopilot (`Vehicle.connect`)."""
    vc, cc = config.vehicle, config.companion
    return Vehicle.connect(
        connection or vc.connection,
        publish=publish,
        target_system=vc.target_system,
        target_component=vc.target_component,
        own_system=cc.system_id,
        own_component=cc.component_id,
        connect_timeout_s=vc.connect_timeout_s,
        heartbeat_timeout_s=vc.heartbeat_timeout_s,
        heartbeat_interval_s=heartbeat_interval_s or 1.0 / cc.heartbeat_hz,
        command_timeout_s=vc.command_timeout_s,
        command_retries=vc.command_retries,
        clock=clock,
        signing_secret=signing_secret,
    )
