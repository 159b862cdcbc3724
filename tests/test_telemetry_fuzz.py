"""A short run of the telemetry schema's fuzz harness (tests/fuzz_schema.py; the long run,
100,000 inputs with timing, is `python tests/fuzz_schema.py`): mutated records, batches and
statuses through `decode`, `decode_message` and `Tracker`, with no exception but
SchemaError, nothing accepted that cannot be written again, and the tracker within its
bounds. The findings it made are regression tests in test_telemetry_schema.py."""

from __future__ import annotations

from tests.fuzz_schema import run


def test_the_decoder_keeps_its_promises_over_mutated_input() -> None:
    result = run(6_000, seed=20261207)
    assert result["findings"] == []
    # Both sides exercised: mutations that still decode, and rejections.
    assert result["accepted"] > 300 and result["rejected"] > 3_000
