"""The emulated u-blox NEO-6M: a sans-I/O core (`neo6m`) and its pty runner (`pty_runner`)."""

from sim.gps.neo6m import UBLOX6, UBLOX7, Faults, Jump, MonVer, Neo6m

__all__ = ["UBLOX6", "UBLOX7", "Faults", "Jump", "MonVer", "Neo6m"]
