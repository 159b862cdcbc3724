"""MAVLink link between the companion computer and the ArduPilot flight controller.

The protocol cores (commands, mission, parameters) are sans-I/O state machines: they take
decoded MAVLink messages and a clock reading and return the messages to send. `link.MavLink`
is the one owner of the connection that feeds them; `vehicle.Vehicle` is the API the rest of
the companion uses. `signing` is MAVLink 2 signing with the autopilot
(`Vehicle.connect(..., signing_secret=...)`).
"""
