"""The built-in simulated vehicle: a MAVLink multirotor that behaves like ArduCopter for
everything the bridge uses, listening on TCP like ArduPilot SITL.

    with VehicleServer(speedup=20, port=0) as server:
        connect to f"tcp:127.0.0.1:{server.port}"

It is the emulated device, so it imports nothing from `companion` or `firmware_bridge`: it
speaks MAVLink through its own `dialect` and keeps its own tables (modes, parameters), checked
against independent sources (ArduPilot's source, pymavlink, SITL) rather than the bridge.

Module map: `server` (sockets, thread, time, step gate), `copter` (vehicle state machine),
`commands` (incoming messages), `failsafes` (GCS, battery, fence, companion watchdog),
`controllers` and `auto_mission` (what each mode flies), `kinematics` (ArduCopter's command
shaping), `telemetry`, `params` and `parm_file` (parameter table and .parm files),
`mission_store`, `fence`, `gripper`, `battery`, `modes`, `geo`, `outbox`, `faults` (injected
faults), `signing` (MAVLink 2 signing as ArduPilot enforces it), `dialect`.
"""

from .copter import VehicleSnapshot
from .faults import Faults
from .parm_file import SHIPPED_PARAM_FILES
from .server import DEFAULT_HOME, VehicleServer

__all__ = ["DEFAULT_HOME", "SHIPPED_PARAM_FILES", "Faults", "VehicleServer", "VehicleSnapshot"]
