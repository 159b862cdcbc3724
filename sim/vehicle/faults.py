"""Faults the built-in vehicle can be told to have, so that the companion's handling of a bad
link or an uncooperative autopilot can be tested against a vehicle that really misbehaves.

Each fault is something that happens with real ArduPilot and a real radio or serial link:

- `drop_commands`: that share of incoming COMMAND_LONG / COMMAND_INT is lost on the wire: the
  vehicle never sees it, so it has no effect and gets no COMMAND_ACK. `drop_command_ids`
  (any iterable of MAV_CMD ids, kept as a frozenset) limits the loss to those commands; None
  means every command.
- `drop_setpoints`: that share of SET_POSITION_TARGET_GLOBAL_INT / _LOCAL_NED is lost.
- `refuse_targets`: every destination is rejected the way ModeGuided::set_destination
  rejects one outside the fence: MAV_CMD_DO_REPOSITION is answered MAV_RESULT_FAILED and a
  position setpoint is silently ignored (SET_POSITION_TARGET_* has no acknowledgement).
- `ignore_targets`: DO_REPOSITION is answered MAV_RESULT_ACCEPTED but nothing changes (not
  the target, not the mode), and position setpoints are ignored: a target that never takes
  effect, which only watching the vehicle reveals.

Velocity setpoints are not destinations and are affected by `drop_setpoints` only. Losses
are drawn from `random.Random(seed)`, one draw per message of a kind with a share above 0, so
a run with the same seed and the same traffic loses the same messages.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Faults:
    """What goes wrong, and the seed that makes it reproducible."""

    drop_commands: float = 0.0
    drop_command_ids: frozenset[int] | None = None
    drop_setpoints: float = 0.0
    refuse_targets: bool = False
    ignore_targets: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("drop_commands", "drop_setpoints"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be a share between 0 and 1, got {share!r}")
        if self.refuse_targets and self.ignore_targets:
            raise ValueError("refuse_targets and ignore_targets exclude each other")
        ids: Iterable[int] | None = self.drop_command_ids
        if ids is not None:
            object.__setattr__(self, "drop_command_ids", frozenset(int(i) for i in ids))


class FaultState:
    """The faults in force and the random stream their losses are drawn from."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)

    def drop_command(self, command: int) -> bool:
        """Whether this incoming command is lost."""
        f = self.faults
        if f.drop_commands <= 0.0:
            return False
        if f.drop_command_ids is not None and command not in f.drop_command_ids:
            return False
        return self._rng.random() < f.drop_commands

    def drop_setpoint(self) -> bool:
        """Whether this incoming SET_POSITION_TARGET_* is lost."""
        share = self.faults.drop_setpoints
        return share > 0.0 and self._rng.random() < share
