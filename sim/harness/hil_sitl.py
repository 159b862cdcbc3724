"""ArduPilot SITL as the hardware-in-the-loop rig's flight controller (`skycourier hil --sitl`).

SITL runs in real time (speed-up 1, like the rig's built-in vehicle) with SkyCourier's
shipped parameters and the rig's overrides; the daemon takes its first MAVLink port (TCP
5760 + 10 x instance), as the companion takes TELEM2 on the drone. The rig itself listens on
SITL's second port (+2) for what only the hardware around the flight controller knows: where
the vehicle is, for the NEO-6M emulator beside it. That link signs what it sends with the
drone's secret (it is the drone's own wiring), so it still reaches SITL once the daemon has
turned signing on, and it loads the parcel (a gripper grab while on the ground: SITL's
simulated gripper holds its load only when it closed on the ground).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from companion.security.keys import KeyStore
from firmware_bridge.dialect import mavlink, mavutil
from firmware_bridge.signing import signing_timestamp
from sim.gps.neo6m import Position
from sim.sitl import SitlProcess

log = logging.getLogger(__name__)

#: The rig's MAVLink identity on SITL's second port: not a ground station (255) nor the
#: companion (191), so that neither SITL's GCS failsafe nor the companion watchdog counts it.
RIG_SYSTEM, RIG_COMPONENT = 254, 190
POSITION_HZ = 10.0
GRIPPER_GRAB = 1  # MAVLink GRIPPER_ACTION_GRAB
#: Seconds between requests for the position stream until it flows.
REQUEST_AGAIN_S = 2.0


class SitlWatcher:
    """Follows SITL's GLOBAL_POSITION_INT on `connection` for the GPS emulator. SITL opens
    its second port only once a client took the first (the daemon), so the watcher keeps
    trying to connect, on its own thread; until then there is no position (no fix)."""

    def __init__(self, connection: str, secret: bytes) -> None:
        self.connection = connection
        self._secret = secret
        self._lock = threading.Lock()
        self._position: Position | None = None
        self._conn: mavutil.mavfile | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hil-sitl-watch", daemon=True)

    def start(self) -> SitlWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        if self._conn is not None:
            self._conn.close()

    def position(self, _t: float) -> Position | None:
        with self._lock:
            return self._position

    def _connect(self) -> mavutil.mavfile | None:
        """The link once SITL's second port answers with a heartbeat; None when stopped."""
        while not self._stop.is_set():
            try:
                conn = mavutil.mavlink_connection(
                    self.connection,
                    source_system=RIG_SYSTEM,
                    source_component=RIG_COMPONENT,
                    retries=0,
                )
            except OSError:
                self._stop.wait(1.0)
                continue
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not self._stop.is_set():
                # The autopilot's own heartbeat: SITL also routes the companion's here.
                beat = conn.recv_match(type="HEARTBEAT", blocking=True, timeout=0.5)
                if beat is not None and beat.get_srcComponent() == mavlink.MAV_COMP_ID_AUTOPILOT1:
                    conn.target_system = beat.get_srcSystem()
                    conn.target_component = mavlink.MAV_COMP_ID_AUTOPILOT1
                    return conn
            conn.close()
        return None

    def _run(self) -> None:
        conn = self._conn = self._connect()
        if conn is None:
            return
        # Signed with the drone's secret, so that SITL takes it before and after the daemon
        # turns signing on. SITL starts its own timestamp a minute past the one the daemon
        # gave it and takes a new stream at most a minute older: start half a minute ahead.
        conn.setup_signing(
            self._secret,
            sign_outgoing=True,
            allow_unsigned_callback=lambda *_: True,
            initial_timestamp=signing_timestamp(time.time() + 30.0),
        )
        asked_at = -math.inf
        while not self._stop.is_set():
            if self._position is None and time.monotonic() - asked_at > REQUEST_AGAIN_S:
                self._request(conn)  # until the position flows: a request may be dropped
                asked_at = time.monotonic()
            msg = conn.recv_match(type="GLOBAL_POSITION_INT", blocking=True, timeout=0.5)
            if msg is None or (msg.lat == 0 and msg.lon == 0):
                continue  # nothing yet, or no position before the EKF has an origin
            vn, ve = msg.vx / 100.0, msg.vy / 100.0
            with self._lock:
                self._position = (
                    msg.lat / 1e7,
                    msg.lon / 1e7,
                    msg.alt / 1000.0,
                    math.hypot(vn, ve),
                    math.degrees(math.atan2(ve, vn)) % 360.0,
                )

    @staticmethod
    def _request(conn: mavutil.mavfile) -> None:
        """Ask for the position stream, and load the parcel (on the ground, before any
        position: a grab repeated then is harmless)."""
        target = (conn.target_system, conn.target_component)
        conn.mav.command_long_send(
            *target,
            mavlink.MAV_CMD_SET_MESSAGE_INTERVAL,
            0,
            mavlink.MAVLINK_MSG_ID_GLOBAL_POSITION_INT,
            1e6 / POSITION_HZ,
            0, 0, 0, 0, 0,
        )  # fmt: skip
        conn.mav.command_long_send(
            *target, mavlink.MAV_CMD_DO_GRIPPER, 0, 1, GRIPPER_GRAB, 0, 0, 0, 0, 0
        )


def start_sitl(
    stack: ExitStack,
    binary: Path,
    work: Path,
    home: tuple[float, float, float],
    instance: int,
    params: dict[str, float],
    drone: KeyStore,
) -> tuple[str, Callable[[float], Position | None], Callable[[], float]]:
    """SITL (stopped by `stack`): its connection for the daemon, where it is for the GPS
    emulator, and the GPS emulator's clock (UTC: SITL keeps real time at speed-up 1)."""
    sitl = SitlProcess(
        binary, home=(*home, 0.0), speedup=1.0, instance=instance, workdir=work / "sitl",
        params=params,
    )  # fmt: skip
    sitl.start()
    stack.callback(sitl.stop)
    watcher = SitlWatcher(f"tcp:127.0.0.1:{sitl.port + 2}", drone.mavlink_signing_secret()).start()
    stack.callback(watcher.stop)
    log.info("SITL %s on %s (instance %d)", binary, sitl.connection, instance)
    return sitl.connection, watcher.position, time.time
