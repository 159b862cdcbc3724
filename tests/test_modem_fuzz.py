"""The AT engine's fuzz harness (tests/fuzz_at.py), a short run: mutated replays of the real
A7670 transcripts and the manuals' exchanges, with nothing escaping the engine and every
buffer within its stated bound. The long run (100,000 inputs, and the time-per-byte
comparison, which is no test here: timings on a loaded machine are not assertions) is
`python tests/fuzz_at.py --runs 100000 --seed 1 --timing`."""

from __future__ import annotations

import random

import pytest

from tests.fuzz_at import (
    TRANSCRIPTS,
    fuzz,
    manual_seeds,
    mutate,
    run_one,
    shapes,
    transcript_seeds,
)


def test_the_seeds_are_the_real_transcripts() -> None:
    if not TRANSCRIPTS.is_dir():
        pytest.skip(f"{TRANSCRIPTS} is absent (the ../shared checkout): no recorded transcripts")
    seeds = transcript_seeds()
    assert len(seeds) >= 10
    commands = {c.line for s in seeds for c in s.commands}
    assert {"AT+CPIN?", "AT+NETOPEN", "AT+CMQTTSTART", "AT+CMGRD=1"} <= commands


@pytest.mark.parametrize("seed", [1, 2])
def test_a_short_fuzz_run_finds_nothing(seed: int) -> None:
    fed, failures = fuzz(400, seed)
    assert fed > 0
    assert [(f.seed, f.error) for f in failures] == []


def test_every_seed_and_shape_runs_clean_unmutated() -> None:
    rng = random.Random(0)
    for seed in transcript_seeds() + manual_seeds():
        assert run_one(seed, seed.stream, rng)[1] is None, seed.name
    for name, data in shapes(16 * 1024).items():
        base = manual_seeds()[0]
        assert run_one(base, data, rng)[1] is None, name


def test_mutations_reach_the_framed_states() -> None:
    """The mutator does steer inputs into SMS and MQTT framing (else the run proves little)."""
    rng = random.Random(5)
    seeds = transcript_seeds() + manual_seeds()
    blobs = [mutate(rng, seeds, rng.choice(seeds)) for _ in range(300)]
    assert sum(b"+CMGR" in b or b"+CMT:" in b for b in blobs) > 20
    assert sum(b"+CMQTTRXPAYLOAD" in b for b in blobs) > 20
