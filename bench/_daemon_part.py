"""One part of the daemon, alone in its own process: the baseline of `bench/daemon_cpu.py`.

    python bench/_daemon_part.py PART --config FILE

PART is one of the parts `companion.daemon` runs, started from the rig's configuration with
the very functions the daemon calls, so it runs exactly as in the daemon, only alone:

- ``autopilot``: `connect_autopilot` (MAVLink 2 signed with the drone's key, as the daemon);
- ``gps``: `start_gps` on the NEO-6M;
- ``telemetry``: `open_uplink` through the A7670 to the broker (no orders subscription: that
  is the intake's, and no vehicle state on its bus, so it sends what an idle uplink sends);
- ``vision``: `start_vision` on the camera (no vehicle, so no OBSTACLE_DISTANCE feed);

or a reference point for memory, nothing started:

- ``interpreter``: the bare interpreter (this script, standard library only);
- ``config``: the configuration loaded and logging set up, what every part pays first;
- ``daemon-imports``: everything `skycourier run` imports before it starts anything.

The script imports only what its part needs. It says ``ready`` on stdout once the part does
its job (the autopilot's telemetry arrived, a GPS fix, the broker connected, a frame
analysed), answers each ``stats`` line on stdin with ``stats {json}`` (the part's counters),
and stops the part and exits 0 at the end of stdin, so it never outlives the bench. A part
that cannot start or does not get ready in time ends it with status 2 and says why on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from companion.bus import Bus
    from companion.config import Config

PARTS = ("interpreter", "config", "daemon-imports", "autopilot", "gps", "telemetry", "vision")
#: How long a part may take to do its job once started (seconds).
READY_TIMEOUT_S = 90.0

Stats = Callable[[], dict[str, Any]]
Stop = Callable[[], None]


class PartError(RuntimeError):
    """The part could not start or never did its job; the message says which and why."""


def _config(path: Path | None) -> Config:
    """The rig's configuration, with logging set up as `skycourier run` sets it up."""
    from companion.config import load_config
    from companion.logging_setup import setup_logging

    if path is None:
        raise PartError("--config is required for this part")
    config = load_config(path)
    setup_logging(config.logging.level, config.logging.format, config.logging.file)
    return config


def _wait(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            raise PartError(f"{what} not within {READY_TIMEOUT_S:g} s")
        time.sleep(0.1)


def _nothing() -> dict[str, Any]:
    return {}


def start_part(part: str, config_path: Path | None) -> tuple[Stats, Stop]:
    """Start `part`, wait until it does its job; its counters and its stop."""
    if part == "interpreter":
        return _nothing, lambda: None
    config = _config(config_path)
    if part == "config":
        return _nothing, lambda: None
    if part == "daemon-imports":
        import companion.cli
        import companion.daemon  # noqa: F401

        return _nothing, lambda: None
    from companion.bus import Bus

    bus = Bus()
    if part == "autopilot":
        return _autopilot(config, bus)
    if part == "gps":
        return _gps(config, bus)
    if part == "telemetry":
        return _telemetry(config, bus)
    if part == "vision":
        return _vision(config, bus)
    raise PartError(f"unknown part {part!r}: one of {', '.join(PARTS)}")


def _autopilot(config: Config, bus: Bus) -> tuple[Stats, Stop]:
    from companion.autopilot import connect_autopilot
    from companion.security.keys import KeyStore

    keys = KeyStore(config.security.keys_dir)
    secret = keys.mavlink_signing_secret() if keys.has_drone() else None
    vehicle = connect_autopilot(config, bus.publish, signing_secret=secret)
    vehicle.wait_until(
        lambda s: s.boot_time_s is not None, config.vehicle.connect_timeout_s, "telemetry"
    )

    def stats() -> dict[str, Any]:
        return {"heartbeats": vehicle.state.heartbeats, "signed": secret is not None}

    return stats, vehicle.close


def _gps(config: Config, bus: Bus) -> tuple[Stats, Stop]:
    from companion.gps.fix import GpsFix
    from companion.gps.service import start_gps

    fixes = [0]

    def on_fix(fix: GpsFix) -> None:
        fixes[0] += 1

    bus.subscribe(GpsFix, on_fix)
    driver = start_gps(config.gps, bus)
    if driver is None:
        raise PartError("gps: no [gps] port configured")
    try:
        _wait(lambda: fixes[0] > 0, "gps: a fix")
    except PartError:
        driver.stop()
        raise
    return (lambda: {"fixes": fixes[0]}), driver.stop


def _telemetry(config: Config, bus: Bus) -> tuple[Stats, Stop]:
    from companion.telemetry.uplink import open_uplink

    uplink = open_uplink(config.modem, config.telemetry, bus)
    if uplink is None:
        raise PartError("telemetry: no [modem] port configured")
    try:
        _wait(lambda: uplink.transport.connected, "telemetry: the broker connection")
    except PartError:
        uplink.close()
        raise

    def stats() -> dict[str, Any]:
        summary = uplink.summary()
        return {"messages": summary["messages"], "published": summary["published"]}

    return stats, uplink.close


def _vision(config: Config, bus: Bus) -> tuple[Stats, Stop]:
    from companion.vision.service import start_vision

    service = start_vision(config.vision, bus, None)
    if service is None:
        raise PartError("vision: could not start (its reason is logged above)")
    try:
        _wait(lambda: service.stats.frames > 0, "vision: a frame analysed")
    except PartError:
        service.stop()
        raise

    def stats() -> dict[str, Any]:
        s = service.stats
        return {"frames": s.frames, "errors": s.errors, "running": s.running}

    return stats, service.stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=PARTS)
    parser.add_argument("--config", type=Path, help="the rig's skycourier.toml")
    args = parser.parse_args(argv)
    try:
        stats, stop = start_part(args.part, args.config)
    except Exception as exc:  # any failure to start is this run's answer, said plainly
        print(f"{args.part}: {exc}", file=sys.stderr)
        return 2
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "stats":
                print("stats " + json.dumps(stats()), flush=True)
    finally:
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
