"""Mission upload through the bridge vs a plain pymavlink loop, on the same link.

Both upload the same 200 waypoints to the same built-in vehicle over TCP, interleaved; the
vehicle runs in its own process, as an autopilot would, so that it does not share the
interpreter (and its lock) with the clients being measured. The
baseline is what most scripts do: send MISSION_COUNT, answer each MISSION_REQUEST_INT with
the item, wait for MISSION_ACK. The bridge does more (per-item timeouts, retransmission,
validation of every message) and should not be slower for it. The flight part records a
default delivery's `duration_s / ideal_duration_s` from `skycourier sim`.

    python bench/mission_upload.py [--quick]
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import interleaved, median_ms, write_results
from companion.config import load_config
from companion.geo import offset
from firmware_bridge.dialect import mavlink, mavutil
from firmware_bridge.mission_protocol import MissionItem
from firmware_bridge.vehicle import Vehicle
from sim.harness.simulate import order_from_config, run_simulation
from sim.vehicle import DEFAULT_HOME

N_ITEMS = 200


def mission() -> list[MissionItem]:
    """Home plus 199 waypoints on a spiral around it."""
    lat0, lon0, _ = DEFAULT_HOME
    items = []
    for seq in range(N_ITEMS):
        lat, lon = (lat0, lon0) if seq == 0 else offset(lat0, lon0, 10.0 + seq, seq * 7.0)
        items.append(
            MissionItem(
                seq=seq,
                frame=mavlink.MAV_FRAME_GLOBAL
                if seq == 0
                else mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT,
                command=mavlink.MAV_CMD_NAV_WAYPOINT,
                current=0,
                autocontinue=1,
                param1=0.0,
                param2=0.0,
                param3=0.0,
                param4=0.0,
                x=round(lat * 1e7),
                y=round(lon * 1e7),
                z=30.0,
                mission_type=mavlink.MAV_MISSION_TYPE_MISSION,
            )
        )
    return items


def plain_pymavlink_upload(conn: mavutil.mavfile, items: list[MissionItem]) -> None:
    """The baseline: the loop found in most pymavlink scripts."""
    conn.mav.mission_count_send(1, 1, len(items), mavlink.MAV_MISSION_TYPE_MISSION)
    while True:
        msg = conn.recv_match(
            type=["MISSION_REQUEST_INT", "MISSION_REQUEST", "MISSION_ACK"], blocking=True, timeout=5
        )
        if msg is None:
            raise RuntimeError("baseline: no answer from the vehicle")
        if msg.get_type() == "MISSION_ACK":
            if msg.type != mavlink.MAV_MISSION_ACCEPTED:
                raise RuntimeError(f"baseline: upload refused ({msg.type})")
            return
        conn.mav.send(items[msg.seq].to_msg(1, 1))


@contextmanager
def vehicle_process() -> Iterator[int]:
    """The built-in vehicle in a child process; yields its TCP port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.vehicle", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        found = re.search(r"tcp:[^:]+:(\d+)", proc.stdout.readline())
        if found is None:
            raise RuntimeError("the vehicle process did not say where it listens")
        yield int(found.group(1))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no flight")
    args = parser.parse_args()
    reps = 3 if args.quick else 15
    items = mission()
    with vehicle_process() as port:
        vehicle = Vehicle.connect(f"tcp:127.0.0.1:{port}", streams={})
        plain = mavutil.mavlink_connection(
            f"tcp:127.0.0.1:{port}", source_system=1, source_component=190
        )
        plain.wait_heartbeat(timeout=10)
        try:
            times = interleaved(
                {
                    "bridge": lambda: vehicle.upload_mission(items),
                    "plain_pymavlink": lambda: plain_pymavlink_upload(plain, items),
                },
                reps,
            )
        finally:
            plain.close()
            vehicle.close()
    ours, base = median_ms(times["bridge"]), median_ms(times["plain_pymavlink"])
    figures: dict = {
        "items": N_ITEMS,
        "repetitions": reps,
        "ours_ms_median": round(ours, 1),
        "plain_pymavlink_ms_median": round(base, 1),
    }
    if not args.quick:
        config = load_config(None)
        with tempfile.TemporaryDirectory() as out:
            report = run_simulation(
                config, order_from_config(config), Path(out), show_progress=False
            )
        figures["delivery_outcome"] = report["outcome"]
        figures["delivery_duration_s"] = report["duration_s"]
        figures["delivery_ideal_duration_s"] = report["ideal_duration_s"]
        figures["delivery_duration_over_ideal"] = round(
            report["duration_s"] / report["ideal_duration_s"], 3
        )
    write_results(
        "mission_upload",
        {"vs_plain_pymavlink": base / ours},
        figures,
        {
            "vs_plain_pymavlink": "pymavlink mission_count_send + recv_match loop answering "
            "MISSION_REQUEST_INT, same vehicle, same TCP link kind, interleaved repetitions"
        },
    )


if __name__ == "__main__":
    main()
