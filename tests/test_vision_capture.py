"""Camera capture: source specs, image folders and video files, the newest frame winning
over a slow consumer (drops counted), and sources that vanish or drop out (reopened,
counted, never a crash)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="pip install 'opencv-python-headless>=4.8,<5'")

from companion.vision.capture import (  # noqa: E402
    Capture,
    CaptureError,
    EndOfStream,
    SourceSpec,
    parse_source,
)


def _image(value: int, w: int = 64, h: int = 48) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = value
    return img


def _folder(root: Path, count: int) -> Path:
    root.mkdir()
    for i in range(count):
        cv2.imwrite(str(root / f"img{i:03d}.png"), _image(i * 5))
    return root


def _video(path: Path, count: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened(), "OpenCV cannot write MJPG/AVI here"
    for i in range(count):
        writer.write(_image((i * 10) % 250))
    writer.release()
    return path


def _wait(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# -- source specs -------------------------------------------------------------------------


def test_parse_source_kinds(tmp_path):
    folder = _folder(tmp_path / "frames", 2)
    video = _video(tmp_path / "clip.avi", 2)
    assert parse_source(0) == SourceSpec("device", 0, "0")
    assert parse_source("2").target == 2
    assert parse_source("/dev/video3").kind == "device"
    csi = parse_source("csi:1")
    assert csi.kind == "gstreamer" and "sensor-id=1" in str(csi.target)
    gst = parse_source("v4l2src device=/dev/video0 ! videoconvert")
    assert gst.kind == "gstreamer" and str(gst.target).endswith("max-buffers=1")
    assert parse_source("rtsp://10.0.0.2:8554/cam").kind == "stream"
    assert parse_source(folder).kind == "folder"
    assert parse_source(folder / "img000.png").kind == "folder"  # one image
    assert parse_source(str(video)).kind == "file"
    assert parse_source("rtsp://x/y").live and not parse_source(folder).live


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("", "empty source"),
        ("   ", "empty source"),
        (-1, "0 or more"),
        ("ftp://host/cam", "unknown URL scheme"),
        ("/no/such/clip.mp4", "no such file"),
        ("/dev/ttyS0-nothing", "not a V4L2 video device"),
        ("gst:", "empty GStreamer pipeline"),
    ],
)
def test_parse_source_errors_name_the_problem(spec, words):
    with pytest.raises(CaptureError, match=words) as info:
        parse_source(spec)
    assert info.value.cause


# -- folders and files --------------------------------------------------------------------


def test_folder_replays_every_image_in_name_order(tmp_path):
    folder = _folder(tmp_path / "frames", 5)
    (folder / "notes.txt").write_text("not an image")
    (folder / "img002b.jpg").write_bytes(b"\xff\xd8 corrupt")
    with Capture(folder, lossless=True) as cap:
        frames = list(cap.frames(timeout=5.0))
        assert cap.state == "ended"
        with pytest.raises(EndOfStream):
            cap.read(0.1)
        stats = cap.stats
    assert [f.name for f in frames] == [f"img{i:03d}.png" for i in range(5)]
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 5, 10, 15, 20]
    assert [f.index for f in frames] == list(range(5))
    assert stats.captured == stats.delivered == 5 and stats.dropped == 0
    assert stats.errors == 1 and "img002b.jpg" in stats.last_error
    assert all(f.source == str(folder) for f in frames)


def test_video_file_lossless_then_end(tmp_path):
    video = _video(tmp_path / "clip.avi", 12)
    with Capture(video, lossless=True) as cap:
        frames = list(cap.frames(timeout=5.0))
        assert cap.state == "ended"
    assert len(frames) == 12
    assert [f.index for f in frames] == list(range(12))
    levels = [int(f.image.mean()) for f in frames]
    assert levels == sorted(levels) and abs(levels[-1] - 110) <= 3  # MJPG is lossy
    assert frames[0].t_captured <= frames[-1].t_captured


@pytest.mark.parametrize("kind", ["folder", "video"])
def test_newest_frame_wins_with_a_slow_consumer(tmp_path, kind):
    count = 30
    source = _folder(tmp_path / "frames", count) if kind == "folder" else None
    if source is None:
        source = _video(tmp_path / "clip.avi", count)
    with Capture(source) as cap:
        first = cap.read(5.0)
        assert first is not None
        # The consumer is busy; the capture thread reads on, replacing unread frames.
        assert _wait(lambda: cap.state == "ended")
        rest = list(cap.frames(timeout=1.0))
        stats = cap.stats
    got = [first, *rest]
    assert got[-1].index == count - 1  # the newest frame is what the consumer gets
    assert len(rest) <= 1
    assert stats.captured == count
    assert stats.delivered == len(got)
    assert stats.dropped == count - len(got) >= count - 2


def test_folder_that_vanishes_fails_with_a_clear_error(tmp_path, caplog):
    folder = _folder(tmp_path / "frames", 20)
    cap = Capture(folder, lossless=True, reopen_backoff_s=(0.01,), replay_reopen_limit=2)
    with cap:
        assert cap.read(5.0) is not None
        # Lossless: the reader fills the slot and waits with the next image in hand, so
        # the folder goes while the reader is idle (not half-way through a file).
        assert _wait(lambda: cap.stats.captured == 2)
        time.sleep(0.1)
        shutil.rmtree(folder)
        with pytest.raises(CaptureError) as info:
            for _ in range(25):
                cap.read(5.0)
        assert not isinstance(info.value, EndOfStream)
        assert cap.state == "failed"
        stats = cap.stats
    assert "gave up after 2 reopen attempt(s)" in info.value.cause
    assert "no such file or folder" in info.value.cause
    assert stats.reopen_attempts == 2 and stats.errors >= 3
    assert any("lost" in r.getMessage() and str(folder) in r.getMessage() for r in caplog.records)


def test_video_file_that_is_gone_before_open(tmp_path):
    video = _video(tmp_path / "clip.avi", 3)
    spec = parse_source(video)
    video.unlink()
    cap = Capture(spec, reopen_backoff_s=(0.01,), replay_reopen_limit=1)
    with cap, pytest.raises(CaptureError, match="no such file"):
        cap.read(5.0)


# -- live sources that drop out -----------------------------------------------------------


class _FakeCamera:
    """A camera delivering frames of one grey level; `lose_after` frames, then unplugged."""

    name = None

    def __init__(self, level: int, lose_after: int | None = None) -> None:
        self.level = level
        self.lose_after = lose_after
        self.sent = 0
        self.closed = False

    def read(self):
        if self.lose_after is not None and self.sent >= self.lose_after:
            raise CaptureError("/dev/video0", "no frame in 3 reads: lost")
        self.sent += 1
        time.sleep(0.002)
        return _image(self.level)

    def close(self):
        self.closed = True


def test_live_camera_that_drops_out_is_reopened_and_counted(caplog):
    first = _FakeCamera(10, lose_after=3)
    second = _FakeCamera(200)
    script = [first, CaptureError("/dev/video0", "does not exist"), RuntimeError("boom"), second]
    calls = []

    def opener(spec):
        item = script[min(len(calls), len(script) - 1)]
        calls.append(item)
        if isinstance(item, Exception):
            raise item
        return item

    spec = SourceSpec("device", "/dev/video0", "/dev/video0")
    with Capture(spec, opener=opener, reopen_backoff_s=(0.01,)) as cap:
        seen = None
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            frame = cap.read(1.0)
            if frame is not None and frame.image[0, 0, 0] == 200:
                seen = frame
                break
        stats = cap.stats
        assert cap.state == "running"
    assert seen is not None
    assert first.closed and second.closed
    assert stats.reopens == 1 and stats.reopen_attempts == 3
    assert stats.errors == 3
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "/dev/video0 lost" in text and "does not exist" in text


def test_missing_device_keeps_retrying_without_crashing():
    with Capture("/dev/video99", reopen_backoff_s=(0.01,)) as cap:
        assert cap.read(0.3) is None  # no frame, no exception: the camera may come back
        assert _wait(lambda: cap.stats.reopen_attempts >= 2)
        assert cap.state == "reconnecting"
        assert "/dev/video99" in cap.stats.last_error
    assert cap.state == "closed"
    with pytest.raises(CaptureError, match="closed"):
        cap.read(0.1)


def test_read_returns_none_on_a_stalled_camera_and_close_wakes_readers():
    stalled = threading.Event()

    class Stalled:
        name = None

        def read(self):
            stalled.wait(5.0)
            return None

        def close(self):
            pass

    spec = SourceSpec("device", 0, "0")
    cap = Capture(spec, opener=lambda _s: Stalled()).start()
    try:
        assert cap.read(0.05) is None
    finally:
        stalled.set()
        cap.close()
