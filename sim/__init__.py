"""Emulated hardware for SkyCourier: the built-in MAVLink vehicle, the ArduPilot SITL launcher
and the device emulators, so that everything runs and is tested without a drone."""
