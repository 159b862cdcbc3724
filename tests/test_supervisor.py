"""The supervisor's restart policy, stepped through time without sleeping: a part that fails
to start or stops running is restarted with a doubling backoff while the others run on."""

from __future__ import annotations

import itertools
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from companion.supervisor import FAILED, OFF, RUNNING, STOPPED, Part, StartError, Supervisor


class Fake:
    """A part whose start fails `fail_starts` times, then runs until told to die."""

    def __init__(self, name: str, fail_starts: int = 0, configured: bool = True) -> None:
        self.name = name
        self.fail_starts = fail_starts
        self.configured = configured
        self.starts = 0
        self.stops = 0
        self.dead = False
        self.log: list[str] = []

    def part(self) -> Part:
        return Part(self.name, self.start, self.stop, lambda h: not self.dead)

    def start(self) -> object | None:
        self.starts += 1
        if not self.configured:
            return None
        if self.fail_starts > 0:
            self.fail_starts -= 1
            raise OSError(f"{self.name}: device busy")
        self.dead = False
        return self

    def stop(self, handle: object) -> None:
        self.stops += 1
        self.log.append("stop")


def states(sup: Supervisor) -> dict[str, str]:
    return {h.name: h.state for h in sup.health()}


def test_a_part_that_fails_to_start_is_retried_with_backoff_while_the_others_run() -> None:
    gps, modem = Fake("gps", fail_starts=3), Fake("modem")
    sup = Supervisor([gps.part(), modem.part()], base_s=1.0, max_s=60.0)
    sup.start_all(0.0)
    assert states(sup) == {"gps": FAILED, "modem": RUNNING}
    (health,) = [h for h in sup.health() if h.name == "gps"]
    assert "failed to start: OSError: gps: device busy" in health.detail
    attempts = []
    for t in range(0, 20):
        before = gps.starts
        sup.step(float(t))
        if gps.starts > before:
            attempts.append(t)
    assert attempts == [1, 3, 7]  # 1 s, then 2 s, then 4 s after each failure
    assert states(sup) == {"gps": RUNNING, "modem": RUNNING}
    assert sup.handle("gps") is gps and [h.restarts for h in sup.health()] == [3, 0]


def test_a_part_that_stops_running_is_stopped_and_started_again() -> None:
    vision = Fake("vision")
    sup = Supervisor([vision.part()], base_s=2.0)
    sup.start_all(0.0)
    vision.dead = True
    sup.step(5.0)
    assert states(sup) == {"vision": FAILED} and vision.stops == 1
    assert sup.handle("vision") is None
    sup.step(6.9)
    assert vision.starts == 1
    sup.step(7.0)
    assert vision.starts == 2 and states(sup) == {"vision": RUNNING}


def test_backoff_starts_over_once_a_part_has_settled() -> None:
    part = Fake("modem")
    sup = Supervisor([part.part()], base_s=1.0, settled_s=30.0)
    sup.start_all(0.0)
    for t in (1.0, 3.0):  # two quick deaths: waits 1 s, then 2 s
        part.dead = True
        sup.step(t)
        sup.step(t + sup.backoff_s(1 if t == 1.0 else 2))
    assert states(sup) == {"modem": RUNNING}
    sup.step(100.0)  # ran 30 s and more
    part.dead = True
    sup.step(101.0)
    sup.step(102.0)  # 1 s again, not 4 s
    assert states(sup) == {"modem": RUNNING}


def test_an_unconfigured_part_is_off_and_never_retried() -> None:
    gps = Fake("gps", configured=False)
    sup = Supervisor([gps.part()])
    sup.start_all(0.0)
    for t in range(100):
        sup.step(float(t))
    assert states(sup) == {"gps": OFF} and gps.starts == 1


def test_errors_inside_parts_never_reach_the_supervisor() -> None:
    def broken_alive(_h: object) -> bool:
        raise RuntimeError("health check crashed")

    def broken_stop(_h: object) -> None:
        raise RuntimeError("stop crashed")

    sup = Supervisor([Part("odd", lambda: object(), broken_stop, broken_alive)])
    sup.start_all(0.0)
    sup.step(1.0)  # the health check raises: counted as stopped running
    assert states(sup) == {"odd": FAILED}
    sup.step(2.0)
    sup.stop_all(3.0)
    assert states(sup) == {"odd": STOPPED}


def test_a_start_error_is_one_line_in_the_health_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    built: list[bool] = []

    def start() -> object:
        if not built:
            raise StartError("/models/yolov4-tiny-int8.onnx: no such model file")
        return object()

    sup = Supervisor([Part("vision", start, lambda _h: None)])
    with caplog.at_level(logging.ERROR, logger="companion.supervisor"):
        sup.start_all(0.0)
    [health] = sup.health()
    assert health.state == FAILED
    assert health.detail == "cannot start: /models/yolov4-tiny-int8.onnx: no such model file"
    assert [r.exc_info for r in caplog.records] == [None]  # no traceback for a known cause
    built.append(True)  # the operator builds the model
    sup.step(1.0)
    assert states(sup) == {"vision": RUNNING}


def test_a_running_part_describes_how_it_is_doing_and_a_broken_description_is_shown() -> None:
    def describe(_h: object) -> str:
        raise RuntimeError("no idea")

    sup = Supervisor(
        [
            Part("gps", lambda: object(), lambda _h: None, describe=lambda _h: "detecting: x"),
            Part("odd", lambda: object(), lambda _h: None, describe=describe),
        ]
    )
    sup.start_all(0.0)
    assert [(h.state, h.detail) for h in sup.health()] == [
        (RUNNING, "detecting: x"),
        (RUNNING, "cannot tell: RuntimeError: no idea"),
    ]


def test_parts_stop_newest_first() -> None:
    order: list[str] = []
    parts = [Part(n, lambda n=n: n, lambda h: order.append(h)) for n in ("link", "gps", "vision")]
    sup = Supervisor(parts)
    sup.start_all(0.0)
    sup.stop_all(1.0)
    assert order == ["vision", "gps", "link"]


@given(st.floats(0.01, 10), st.floats(1, 600), st.integers(1, 40))
def test_backoff_doubles_and_is_capped(base: float, cap: float, failures: int) -> None:
    sup = Supervisor([], base_s=base, max_s=cap)
    delays = [sup.backoff_s(n) for n in range(1, failures + 1)]
    assert delays[0] == min(cap, base)
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert all(d <= cap for d in delays)
