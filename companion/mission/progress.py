"""Watching a leg make progress towards its target, so a target the autopilot refused,
ignored or lost becomes a named abort within seconds instead of a hover until the phase
timeout.

The watch keeps the smallest distance to go seen so far and when it last shrank by at least
`min_step_m`; `stalled_s(now)` is how long that has not happened. It is restarted whenever the
target is (re)sent and after holds, and starts counting only after `grace_s` (a take-off's
arming delay and spool-up).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ProgressWatch:
    """Progress of one leg towards its target, on the autopilot's clock."""

    min_step_m: float = 0.5
    grace_s: float = 0.0
    _best: float | None = None
    _since: float | None = None

    def restart(self, now: float | None) -> None:
        """Count from `now` (a target was sent, a hold ended)."""
        self._best = None
        self._since = None if now is None else now + self.grace_s

    def update(self, now: float | None, to_go_m: float | None) -> None:
        """Note the distance still to go at `now` (None: unknown, which is no progress)."""
        if now is None:
            return
        if self._since is None:
            self._since = now + self.grace_s
        if to_go_m is None or now < self._since:
            return
        if self._best is None or to_go_m <= self._best - self.min_step_m:
            self._best = to_go_m
            self._since = now

    def stalled_s(self, now: float | None) -> float:
        """Seconds without progress (0 while still in the grace period)."""
        if now is None or self._since is None:
            return 0.0
        return max(0.0, now - self._since)
