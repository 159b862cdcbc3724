"""The modem's condition as the rest of the companion sees it: one frozen snapshot on the bus.

`ModemSupervisor` publishes a new `ModemState` on every change (stage, SIM, registration,
signal, data, MQTT, error, recovery step), so a subscriber never polls the modem and never
sees a half-updated picture. `error` keeps the last clear, specific failure ("SIM PIN rejected
(+CME ERROR: incorrect password)") until a later success replaces the reason with None.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The supervisor's stages, in bring-up order, then the two off-path ones.
STAGES = ("off", "booting", "sim", "registering", "data", "mqtt", "up", "recovering", "failed")

#: The recovery ladder's steps, gentlest first.
RECOVERY_STEPS = ("re-register", "radio toggle", "module reset", "power key")


@dataclass(frozen=True)
class ModemState:
    """A snapshot of the A7670 link (signal values as the module reports them, converted to
    dBm/dB per A76XX AT Command Manual V1.09 §3.2.2 and §4.2.9)."""

    stage: str
    sim: str | None
    registered: bool
    registration: str | None
    operator: str | None
    rat: str | None
    rssi_dbm: int | None
    rsrp_dbm: float | None
    rsrq_db: float | None
    sinr_db: float | None
    data_up: bool
    mqtt_up: bool
    error: str | None
    recovery_step: str | None
    recoveries: int
    at: float


def initial_state(at: float) -> ModemState:
    """The state before the supervisor has heard from the module."""
    return ModemState(
        stage="off",
        sim=None,
        registered=False,
        registration=None,
        operator=None,
        rat=None,
        rssi_dbm=None,
        rsrp_dbm=None,
        rsrq_db=None,
        sinr_db=None,
        data_up=False,
        mqtt_up=False,
        error=None,
        recovery_step=None,
        recoveries=0,
        at=at,
    )
