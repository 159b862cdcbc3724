"""The acceptance test on the labelled photos of ../shared/reference/faces (read in place,
never copied): at the default threshold every genuine pair is accepted and every impostor
pair refused, with the enrolment path a recipient's photo takes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from companion.config import IdentityConfig
from companion.identity.verify import DEFAULT_THRESHOLD, FaceVerifier, face_distance

FACES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "faces"

pytestmark = pytest.mark.skipif(
    not (FACES / "pairs.csv").is_file(),
    reason=f"no labelled reference faces at {FACES} (../shared/reference/faces)",
)


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str, bool]]:
    with (FACES / "pairs.csv").open(newline="") as f:
        return [(row["img_a"], row["img_b"], row["same"] == "1") for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def templates(pairs) -> dict[str, np.ndarray]:
    pytest.importorskip("dlib", reason="pip install dlib-bin")
    from companion.identity.enrol import enrol_template
    from companion.identity.faces import FaceAnalyzer

    analyzer = FaceAnalyzer()
    names = sorted({a for a, _, _ in pairs} | {b for _, b, _ in pairs})
    return {name: enrol_template([FACES / name], analyzer) for name in names}


def test_every_genuine_pair_accepted_every_impostor_refused(pairs, templates):
    genuine = [(a, b) for a, b, same in pairs if same]
    impostor = [(a, b) for a, b, same in pairs if not same]
    assert len(genuine) == 12 and len(impostor) == 66
    wrong = []
    for a, b, same in pairs:
        distance = face_distance(templates[a], templates[b][0])
        if (distance <= DEFAULT_THRESHOLD) != same:
            wrong.append(f"{a} vs {b}: {distance:.3f} ({'genuine' if same else 'impostor'})")
    assert not wrong, wrong


def test_the_verifier_decides_the_same(pairs, templates):
    """The pairs through FaceVerifier (one-frame windows) as the hand-over would run them."""
    from companion.identity.faces import FaceBox, FaceQuality, FaceSample

    for a, b, same in pairs:
        probe = FaceSample(
            FaceBox(0, 0, 1, 1), templates[b][0], np.zeros((68, 2)), FaceQuality(0, 0, 0, 0)
        )
        verdict = FaceVerifier(templates[a], k=1, n=1).feed(probe, 0.0)
        assert verdict.match == same, (a, b)


def test_the_configured_default_is_the_measured_one():
    assert IdentityConfig().threshold == DEFAULT_THRESHOLD
