"""FaceVerifier: the k-of-n window over frames. The core is sans-I/O, so most tests feed it
samples with chosen embeddings and times; the last ones feed real frames through the real
models."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.identity.errors import FaceRejected
from companion.identity.faces import FaceBox, FaceQuality, FaceSample
from companion.identity.verify import (
    DEFAULT_THRESHOLD,
    FaceVerifier,
    Verdict,
    check_template,
    face_distance,
)
from tests.face_images import ancelotti, bus_man, side_by_side

RNG = np.random.default_rng(7)
TEMPLATE = RNG.normal(size=(2, 128)).astype(np.float32)


def sample(distance: float, row: int = 0, faces: int = 1) -> FaceSample:
    """A sample whose embedding is `distance` away from template row `row`."""
    direction = RNG.normal(size=128)
    direction /= np.linalg.norm(direction)
    embedding = (TEMPLATE[row] + distance * direction).astype(np.float32)
    return FaceSample(
        box=FaceBox(0, 0, 100, 100),
        embedding=embedding,
        landmarks68=np.zeros((68, 2)),
        quality=FaceQuality(90.0, 100.0, 0.0, 0.0),
        faces_in_frame=faces,
    )


def run(verifier: FaceVerifier, frames) -> Verdict | None:
    verdict = None
    for t, frame in enumerate(frames):
        verdict = verifier.feed(frame, float(t))
        if verdict is not None:
            break
    return verdict


def test_k_matches_decide_early():
    verifier = FaceVerifier(TEMPLATE, k=3, n=5)
    verdict = run(verifier, [sample(0.3), sample(0.8), sample(0.4, row=1), sample(0.2), None])
    assert verdict is not None and verdict.match and verdict.reason == "match"
    assert verdict.frames == 4 and verdict.matches == 3 and verdict.rejected == 0
    assert [round(d, 3) for d in verdict.distances] == [0.3, 0.8, 0.4, 0.2]
    assert verdict.threshold == DEFAULT_THRESHOLD
    assert verifier.verdict is verdict


def test_no_match_as_soon_as_k_is_out_of_reach():
    verdict = run(FaceVerifier(TEMPLATE, k=3, n=5), [sample(0.7), sample(0.9), sample(0.3)] * 2)
    assert verdict is not None and not verdict.match and verdict.reason == "no-match"
    # After 4 frames with 1 match, 1 frame left cannot make 3.
    assert verdict.frames == 4 and verdict.matches == 1
    assert "no match (no-match): 1 of 4 frames" in verdict.summary()


def test_threshold_is_inclusive_and_configurable():
    verdict = run(FaceVerifier(TEMPLATE, threshold=0.4, k=1, n=1), [sample(0.4 - 1e-4)])
    assert verdict.match
    verdict = run(FaceVerifier(TEMPLATE, threshold=0.4, k=1, n=1), [sample(0.45)])
    assert not verdict.match


def test_rejected_and_missing_frames_never_match():
    frames = [
        None,
        FaceRejected("blurred", "sharpness 12"),
        FaceRejected("too-small", "eyes to chin 40 px"),
    ]
    verdict = run(FaceVerifier(TEMPLATE, k=2, n=5, max_rejected=2), frames + [sample(0.1)] * 3)
    assert not verdict.match and verdict.reason == "too-many-rejected"
    assert verdict.rejections == {"no-face": 1, "blurred": 1, "too-small": 1}
    assert verdict.matches == 0 and verdict.distances == ()
    assert "3 rejected (blurred 1, no-face 1, too-small 1)" in verdict.summary()


def test_rejections_within_the_bound_are_tolerated():
    frames = [None, sample(0.2), FaceRejected("off-angle", "40 deg"), sample(0.3), sample(0.25)]
    verdict = run(FaceVerifier(TEMPLATE, k=3, n=5), frames)
    assert verdict.match and verdict.rejected == 2


def test_stale_frames_count_as_rejected_even_when_they_match():
    verifier = FaceVerifier(TEMPLATE, k=2, n=4, max_rejected=1)
    assert verifier.feed(sample(0.1), 10.0) is None
    assert verifier.feed(sample(0.1), 10.0) is None  # the same time again: a stalled camera
    verdict = verifier.feed(sample(0.1), 9.0)  # older than the last good frame
    assert verdict is not None and not verdict.match and verdict.reason == "too-many-rejected"
    assert verdict.rejections == {"stale": 2} and verdict.matches == 1
    verifier = FaceVerifier(TEMPLATE, k=1, n=2)
    assert verifier.feed(sample(0.1), math.nan) is None  # unusable time: stale
    assert verifier.feed(sample(0.1), 1.0).match


def test_malformed_samples_are_bad_frames():
    nan = sample(0.1)
    nan.embedding[3] = np.nan
    short = FaceSample(FaceBox(0, 0, 9, 9), np.zeros(64, np.float32), np.zeros((68, 2)), None)
    verdict = run(FaceVerifier(TEMPLATE, k=1, n=3, max_rejected=2), [nan, short, "a string"])
    assert not verdict.match and verdict.rejections == {"bad-frame": 3}


def test_several_faces_are_reported():
    verdict = run(FaceVerifier(TEMPLATE, k=2, n=3), [sample(0.2, faces=3), sample(0.2)])
    assert verdict.match and verdict.several_faces == 1
    assert "several faces in 1 frames, the largest used" in verdict.summary()


def test_a_decided_window_takes_no_more_frames():
    verifier = FaceVerifier(TEMPLATE, k=1, n=1)
    verifier.feed(sample(0.1), 0.0)
    with pytest.raises(RuntimeError, match="decided"):
        verifier.feed(sample(0.1), 1.0)


def test_as_dict_holds_no_embedding():
    verdict = run(FaceVerifier(TEMPLATE, k=2, n=3), [sample(0.2), sample(0.6), sample(0.3)])
    data = verdict.as_dict()
    assert data["match"] and data["frames"] == 3 and data["matches"] == 2
    assert data["distance_min"] == pytest.approx(0.2, abs=1e-3)
    assert data["distance_median"] == pytest.approx(0.3, abs=1e-3)
    assert all(not isinstance(v, (list, tuple, np.ndarray)) for v in data.values())
    assert data["duration_s"] == 2.0


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"k": 0}, "k <= n"),
        ({"k": 6, "n": 5}, "k <= n"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": math.inf}, "threshold"),
        ({"max_rejected": 9}, "max_rejected"),
    ],
)
def test_bad_parameters(kwargs, words):
    with pytest.raises(ValueError, match=words):
        FaceVerifier(TEMPLATE, **kwargs)


@pytest.mark.parametrize(
    "template",
    [np.zeros((0, 128)), np.zeros((2, 64)), np.full((1, 128), np.nan), np.zeros((1, 128), int)],
)
def test_bad_templates(template):
    with pytest.raises(ValueError, match="template"):
        check_template(template)


def test_face_distance_takes_the_closest_row():
    template = np.zeros((3, 128), np.float32)
    template[1, 0], template[2, 0] = 1.0, 0.25
    probe = np.zeros(128, np.float32)
    probe[0] = 0.9
    assert face_distance(template, probe) == pytest.approx(0.1)
    assert check_template(template[0]).shape == (1, 128)


FRAME = st.one_of(
    st.none(),
    st.sampled_from(["blurred", "too-small", "off-angle", "no-face"]).map(
        lambda r: FaceRejected(r, "test")
    ),
    st.floats(0.0, 1.2).map(sample),
)


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(st.tuples(FRAME, st.floats(-5, 5)), max_size=20),
    k=st.integers(1, 6),
    extra=st.integers(0, 4),
    max_rejected=st.integers(0, 4),
)
def test_window_invariants(frames, k, extra, max_rejected):
    """Whatever arrives: a match needs k matching, fresh frames within the rejection bound;
    the window decides within n frames; every frame is counted once."""
    n = k + extra
    verifier = FaceVerifier(TEMPLATE, k=k, n=n, max_rejected=min(max_rejected, n))
    verdict, t = None, 0.0
    for frame, step in frames:
        t += step
        verdict = verifier.feed(frame, t)
        if verdict is not None:
            break
    if verdict is None:
        assert len(frames) < n
        return
    assert verdict.frames <= n
    assert verdict.frames == len(verdict.distances) + verdict.rejected
    assert verdict.matches == sum(d <= verdict.threshold for d in verdict.distances)
    if verdict.match:
        assert verdict.matches >= k and verdict.rejected <= verifier.max_rejected
    else:
        assert verdict.matches < k


# Real frames through the real models.


def test_real_frames_of_the_recipient_match(analyzer, zidane):
    template = analyzer.analyse_frame(ancelotti(zidane)).embedding[None, :]
    frames = [
        zidane,
        cv2.convertScaleAbs(zidane, alpha=0.8, beta=-10),
        cv2.GaussianBlur(zidane, (0, 0), 3.0),  # rejected: blurred
        cv2.imdecode(cv2.imencode(".jpg", zidane, [cv2.IMWRITE_JPEG_QUALITY, 50])[1], 1),
    ]
    verifier = FaceVerifier(template, k=3, n=4)
    verdict = None
    for t, frame in enumerate(frames):
        try:
            observed = analyzer.analyse_frame(frame)
        except FaceRejected as exc:
            observed = exc
        verdict = verifier.feed(observed, t * 0.2)
    assert verdict is not None and verdict.match, verdict.summary()
    assert verdict.rejected == 1 and max(verdict.distances) < 0.2


def test_real_frames_of_someone_else_do_not_match(analyzer, zidane, bus):
    template = analyzer.analyse_frame(ancelotti(zidane)).embedding[None, :]
    stranger = bus_man(bus)
    verifier = FaceVerifier(template, k=2, n=3)
    verdict = None
    for t, frame in enumerate([stranger, cv2.flip(stranger, 1), stranger]):
        verdict = verifier.feed(analyzer.analyse_frame(frame), float(t))
        if verdict:
            break
    assert verdict is not None and not verdict.match and min(verdict.distances) > 0.7


def test_the_recipient_with_a_bystander_uses_the_largest_face(analyzer, zidane, bus):
    template = analyzer.analyse_frame(ancelotti(zidane)).embedding[None, :]
    small_stranger = cv2.resize(bus_man(bus), None, fx=0.9, fy=0.9)
    frame = side_by_side(small_stranger, ancelotti(zidane))
    verdict = FaceVerifier(template, k=1, n=1).feed(analyzer.analyse_frame(frame), 0.0)
    assert verdict.match and verdict.several_faces == 1
