"""Cross-check of the companion's own GPS against the flight controller's.

Two independent receivers that disagree mean one of them is wrong: a spoofer or a jammer
(which usually hits both, but rarely identically), a receiver fault, or a bad antenna. The
monitor raises an `IntegrityAlarm` on the bus when

- **divergence**: the horizontal distance between the two positions exceeds what both
  receivers' own accuracy allows, `base_bound_m + k·√(σ_companion² + σ_autopilot²)`, plus
  the distance the vehicle can fly between the two readings, for `persist` checks in a row
  (one noisy epoch is not an attack, a slow drift that keeps growing is);
- **jump**: the companion's consecutive fixes imply a speed the vehicle cannot fly
  (`max_speed_mps` plus both fixes' accuracy), the signature of a spoofer taking over;
- **time**: the two receivers' UTC clocks disagree by more than `time_tolerance_s` once the
  latency of each reading is taken out (a spoofer replaying or delaying signals). A reading
  held up on its way (a busy CPU, a full serial buffer) looks behind by its delay, never
  ahead, so each side's offset is the largest of its last `offset_window_s` seconds: the
  least-delayed reading's. A moment of latency is then not taken for a clock that is wrong;
  a clock that is wrong is wrong in every reading, and is seen at once if it runs ahead and
  within `offset_window_s` if it falls behind.

It is sans-I/O: feed it fixes and autopilot states with a monotonic clock reading; it returns
the alarms to publish. Each alarm kind is raised once per episode and re-armed when the
condition clears, so a persistent fault is one alarm, not one per epoch.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from companion.bus import Bus
from companion.geo import distance_m
from companion.gps.fix import GpsFix
from firmware_bridge.state import VehicleState

#: 1-σ user range error of a single-frequency consumer receiver (m): horizontal 1-σ accuracy
#: is about HDOP × UERE when the receiver does not report an accuracy of its own.
UERE_M = 4.0


@dataclass(frozen=True)
class IntegrityAlarm:
    """Two receivers disagree, or one jumped; `kind` is divergence, jump or time."""

    kind: str
    detail: str
    value: float
    bound: float
    at: float


@dataclass(frozen=True)
class IntegrityCleared:
    """A previously raised `kind` of alarm no longer holds."""

    kind: str
    at: float


@dataclass(frozen=True)
class _Reading:
    lat: float
    lon: float
    sigma_m: float
    at: float
    utc_offset_s: float | None


class _Offsets:
    """One side's recent UTC offsets (UTC minus the local clock at receipt)."""

    def __init__(self) -> None:
        self._recent: deque[tuple[float, float]] = deque()

    def add(self, at: float, offset: float | None, window_s: float) -> float | None:
        """Take in a reading's offset (None: it had no time); the largest of the last
        `window_s` seconds, or None when there is none."""
        if offset is not None:
            self._recent.append((at, offset))
        while self._recent and self._recent[0][0] < at - window_s:
            self._recent.popleft()
        return max((o for _at, o in self._recent), default=None)


class IntegrityMonitor:
    """Compares the companion's GPS fixes with the autopilot's position and time."""

    def __init__(
        self,
        *,
        base_bound_m: float = 5.0,
        k_sigma: float = 3.0,
        max_speed_mps: float = 25.0,
        max_pair_age_s: float = 1.0,
        time_tolerance_s: float = 1.0,
        offset_window_s: float = 5.0,
        persist: int = 3,
        clear_fraction: float = 0.5,
    ) -> None:
        self.base_bound_m = base_bound_m
        self.k_sigma = k_sigma
        self.max_speed_mps = max_speed_mps
        self.max_pair_age_s = max_pair_age_s
        self.time_tolerance_s = time_tolerance_s
        self.offset_window_s = offset_window_s
        self._offsets = {"companion": _Offsets(), "autopilot": _Offsets()}
        self.persist = persist
        self.clear_fraction = clear_fraction
        self._companion: _Reading | None = None
        self._autopilot: _Reading | None = None
        self._over = 0
        self._under = 0
        self._raised: set[str] = set()

    def on_companion_fix(self, fix: GpsFix, now: float) -> list[object]:
        """A new fix from the companion's receiver; invalid fixes are not compared."""
        if not fix.valid or fix.lat is None or fix.lon is None:
            return []
        sigma = (fix.hdop or 2.0) * UERE_M
        offset = None if fix.time is None else fix.time.timestamp() - fix.received_at
        offset = self._offsets["companion"].add(fix.received_at, offset, self.offset_window_s)
        reading = _Reading(fix.lat, fix.lon, sigma, fix.received_at, offset)
        events: list[object] = []
        previous = self._companion
        if previous is not None and reading.at > previous.at:
            events += self._check_jump(previous, reading, now)
        self._companion = reading
        return events + self._compare(now)

    def on_autopilot(self, state: VehicleState, now: float) -> list[object]:
        """A new vehicle state from the flight controller (GLOBAL_POSITION_INT, GPS_RAW_INT)."""
        pos = state.position
        if pos is None or state.gps.fix_type < 3:
            return []
        gps = state.gps
        sigma = gps.h_acc_m or (gps.hdop or 2.0) * UERE_M
        offset = None
        if state.utc_time_s is not None and state.utc_received_at is not None:
            offset = state.utc_time_s - state.utc_received_at
        offset = self._offsets["autopilot"].add(now, offset, self.offset_window_s)
        self._autopilot = _Reading(pos.lat, pos.lon, sigma, now, offset)
        return self._compare(now)

    # -- checks ----------------------------------------------------------------------------

    def _check_jump(self, a: _Reading, b: _Reading, now: float) -> list[object]:
        dt = b.at - a.at
        moved = distance_m(a.lat, a.lon, b.lat, b.lon)
        allowed = self.max_speed_mps * dt + self.k_sigma * math.hypot(a.sigma_m, b.sigma_m)
        if moved > allowed:
            return self._raise(
                "jump",
                f"companion fix moved {moved:.0f} m in {dt:.2f} s (at most {allowed:.0f} m "
                "is flyable): spoofing or receiver fault",
                moved,
                allowed,
                now,
            )
        return self._clear("jump", now)

    def _compare(self, now: float) -> list[object]:
        c, a = self._companion, self._autopilot
        if c is None or a is None:
            return []
        if now - c.at > self.max_pair_age_s or now - a.at > self.max_pair_age_s:
            return []  # one side is stale: comparing would measure latency, not error
        events: list[object] = []
        gap = distance_m(c.lat, c.lon, a.lat, a.lon)
        bound = (
            self.base_bound_m
            + self.k_sigma * math.hypot(c.sigma_m, a.sigma_m)
            + self.max_speed_mps * abs(c.at - a.at)
        )
        # Hysteresis: raised after `persist` checks beyond the bound, cleared only after
        # `persist` checks well inside it, so noise at the edge does not make it flap.
        if gap > bound:
            self._over, self._under = self._over + 1, 0
            if self._over >= self.persist:
                events += self._raise(
                    "divergence",
                    f"companion and autopilot GPS are {gap:.0f} m apart, beyond the "
                    f"{bound:.0f} m their accuracy allows",
                    gap,
                    bound,
                    now,
                )
        elif gap < self.clear_fraction * bound:
            self._over, self._under = 0, self._under + 1
            if self._under >= self.persist:
                events += self._clear("divergence", now)
        else:
            self._over = 0
        if c.utc_offset_s is not None and a.utc_offset_s is not None:
            skew = abs(c.utc_offset_s - a.utc_offset_s)
            if skew > self.time_tolerance_s:
                events += self._raise(
                    "time",
                    f"companion and autopilot UTC differ by {skew:.1f} s",
                    skew,
                    self.time_tolerance_s,
                    now,
                )
            else:
                events += self._clear("time", now)
        return events

    def _raise(
        self, kind: str, detail: str, value: float, bound: float, now: float
    ) -> list[object]:
        if kind in self._raised:
            return []
        self._raised.add(kind)
        return [IntegrityAlarm(kind, detail, value, bound, now)]

    def _clear(self, kind: str, now: float) -> list[object]:
        if kind not in self._raised:
            return []
        self._raised.discard(kind)
        return [IntegrityCleared(kind, now)]


def watch(bus: Bus, clock: Callable[[], float], monitor: IntegrityMonitor | None = None) -> None:
    """Feed the monitor from the bus (the companion's `GpsFix`, the autopilot's
    `VehicleState`) and publish its alarms there, timed by `clock`."""
    monitor = monitor or IntegrityMonitor()

    def publish_all(events: list[object]) -> None:
        for event in events:
            bus.publish(event)

    bus.subscribe(GpsFix, lambda fix: publish_all(monitor.on_companion_fix(fix, clock())))
    bus.subscribe(VehicleState, lambda state: publish_all(monitor.on_autopilot(state, clock())))
