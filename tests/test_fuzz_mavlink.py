"""A short run of the MAVLink transfer cores' fuzz harness (tests/fuzz_mavlink.py; the long
run, 100,000 inputs, is `python tests/fuzz_mavlink.py`): mutated replays of a real SITL
exchange and of a parameter listing, with no exception outside the cores' own error types,
nothing held beyond its bound, and no success that lacks what it claims. The finding it made
(a read-all succeeding a parameter short) is a regression test in test_param_protocol.py."""

from __future__ import annotations

from tests.fuzz_mavlink import run


def test_the_cores_keep_their_promises_over_mutated_replays() -> None:
    result = run(5_000, seed=20261207)
    assert result["findings"] == []
    assert result["messages_fed"] > 20_000
