"""The built-in simulated vehicle: a MAVLink multirotor that behaves like ArduCopter for
everything the bridge uses, listening on TCP like ArduPilot SITL.

    with VehicleServer(speedup=20, port=0) as server:
        connect to f"tcp:127.0.0.1:{server.port}"

Module map: `server` (sockets, thread, time), `copter` (vehicle state machine), `commands`
(incoming messages), `failsafes` (GCS, battery, fence, companion watchdog), `controllers`
and `auto_mission` (what each mode flies), `kinematics`
(ArduCopter's command shaping), `telemetry`, `params`, `mission_store`, `fence`, `gripper`,
`battery`, `modes`, `geo`, `outbox`.
"""

from .copter import VehicleSnapshot
from .server import DEFAULT_HOME, VehicleServer

__all__ = ["DEFAULT_HOME", "VehicleServer", "VehicleSnapshot"]
