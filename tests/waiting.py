"""Waiting in tests for something a thread will do: a generous bound that fails with what did
not happen, never a timing assertion."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], what: str, within_s: float = 20.0) -> None:
    """Return once `condition()` holds; fail naming `what` if it has not within `within_s`."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within_s} s")
        time.sleep(0.005)
