"""systemd's notification protocol: READY, STATUS, STOPPING and a watchdog that pings only while
every critical loop makes progress; the daemon's own code path against a fake NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from companion import daemon
from companion.bus import Bus
from companion.config import load_config
from companion.daemon import run_daemon
from companion.sd_notify import (
    Liveness,
    Notifier,
    Watchdog,
    notify_address,
    one_line,
    watchdog_interval_s,
)
from sim.vehicle import DEFAULT_HOME, VehicleServer

# -- the decision core ---------------------------------------------------------------------


def test_pings_only_while_every_loop_beats_within_its_staleness() -> None:
    live = Liveness()
    live.register("status loop", 2.0, now=0.0)
    live.register("reader", 5.0, now=0.0)
    assert live.verdict(1.0).ping and live.verdict(1.0).status is None
    live.beat("reader", 2.5)
    stuck = live.verdict(2.5)  # the status loop last beat at 0.0: 2.5 s > 2.0 s
    assert not stuck.ping
    assert [s.name for s in stuck.stuck] == ["status loop"]
    assert stuck.status is not None and "status loop" in stuck.status
    assert "reader" not in stuck.status
    live.beat("status loop", 3.0)
    resumed = live.verdict(3.0)
    assert resumed.ping and resumed.status == "watchdog pings resumed: status loop live again"
    assert live.verdict(3.1).status is None  # said once


def test_a_loop_that_never_beats_again_stays_stuck() -> None:
    live = Liveness()
    live.register("status loop", 1.0, now=10.0)
    for now in (11.5, 20.0, 1000.0):
        verdict = live.verdict(now)
        assert not verdict.ping
        assert verdict.status is not None and "status loop" in verdict.status  # every tick


def test_a_beat_from_the_past_never_makes_a_loop_fresher() -> None:
    live = Liveness()
    live.register("a", 1.0, now=5.0)
    live.beat("a", 3.0)
    assert live.verdict(6.5).ping is False


def test_unregistered_loops_no_longer_count() -> None:
    live = Liveness()
    live.register("a", 1.0, now=0.0)
    live.unregister("a")
    assert live.verdict(100.0).ping


@pytest.mark.parametrize(
    ("name", "stale", "match"),
    [("", 1.0, "empty"), ("a", 0.0, "positive"), ("a", float("nan"), "positive")],
)
def test_bad_registrations_are_refused(name: str, stale: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Liveness().register(name, stale, now=0.0)


def test_duplicate_and_unknown_loops_are_refused() -> None:
    live = Liveness()
    live.register("a", 1.0, now=0.0)
    with pytest.raises(ValueError, match="already registered"):
        live.register("a", 1.0, now=0.0)
    with pytest.raises(ValueError, match="not registered"):
        live.beat("b", 0.0)


# -- the environment -----------------------------------------------------------------------


def test_notify_socket_forms() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@sky/notify") == "\0sky/notify"
    for bad in ("relative/path", "@", "vsock:2:1234", ""):
        with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
            notify_address(bad)


def test_watchdog_usec_and_pid() -> None:
    me = os.getpid()
    assert watchdog_interval_s({}, me) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, me) == 30.0
    mine = {"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(me)}
    assert watchdog_interval_s(mine, me) == 0.5
    # A watchdog meant for another process (a parent that forked us) is not ours to feed.
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, me) is None
    for env, match in (
        ({"WATCHDOG_USEC": "30s"}, "WATCHDOG_USEC"),
        ({"WATCHDOG_USEC": "0"}, "WATCHDOG_USEC"),
        ({"WATCHDOG_USEC": "-5"}, "WATCHDOG_USEC"),
        ({"WATCHDOG_USEC": "1", "WATCHDOG_PID": "x"}, "WATCHDOG_PID"),
    ):
        with pytest.raises(ValueError, match=match):
            watchdog_interval_s(env, me)


def test_an_unreadable_watchdog_value_sends_no_pings(caplog: pytest.LogCaptureFixture) -> None:
    watchdog = Watchdog.from_environment({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "x"})
    assert watchdog.interval_s is None
    assert "WATCHDOG_USEC='x'" in caplog.text


@given(st.text())
def test_a_status_text_is_always_one_assignment(text: str) -> None:
    line = one_line(text)
    assert "\n" not in line and "\r" not in line and "\0" not in line
    assert len(line.encode("utf-8", "replace").splitlines()) <= 1


# -- the socket ----------------------------------------------------------------------------


class FakeSystemd:
    """A real AF_UNIX datagram socket standing in for the service manager's notify socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.received: list[str] = []

    def next(self, timeout_s: float = 20.0) -> str | None:
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(4096).decode()
        except TimeoutError:
            return None
        self.received.append(data)
        return data

    def wait_for(self, predicate: Callable[[str], bool], what: str, timeout_s: float = 20.0) -> str:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            message = self.next(left)
            if message is not None and predicate(message):
                return message
        raise AssertionError(f"{what} not received within {timeout_s} s: got {self.received}")

    def drain(self) -> None:
        while self.next(0.01) is not None:
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake_systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd(f"@skycourier-test-{uuid.uuid4().hex}")
    yield fake
    fake.close()


def test_notifier_speaks_to_an_abstract_socket(fake_systemd: FakeSystemd) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": fake_systemd.address})
    assert notifier.ready("link up\nREADY=0")
    assert fake_systemd.next() == "READY=1\nSTATUS=link up READY=0"
    assert notifier.watchdog() and fake_systemd.next() == "WATCHDOG=1"
    assert notifier.stopping() and fake_systemd.next() == "STOPPING=1"


def test_notifier_speaks_to_a_path_socket(tmp_path: Path) -> None:
    fake = FakeSystemd(str(tmp_path / "n.sock"))
    try:
        assert Notifier(fake.address).status("hello") and fake.next() == "STATUS=hello"
    finally:
        fake.close()


def test_a_send_that_fails_is_logged_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert notifier.watchdog() is False
    assert notifier.watchdog() is False
    assert notifier.failed == 2
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"  # then debug, no flood


def test_outside_systemd_everything_is_a_no_op() -> None:
    watchdog = Watchdog.from_environment({})
    assert not watchdog.notifier.enabled and watchdog.interval_s is None
    with watchdog:
        beat = watchdog.register("loop", 1.0)
        beat()
        watchdog.ready("ready")
        watchdog.status("status")
        watchdog.stopping()
    assert watchdog.notifier.sent == 0


def test_watchdog_ticks_with_a_clock_of_its_own(fake_systemd: FakeSystemd) -> None:
    now = [0.0]
    watchdog = Watchdog(Notifier(notify_address(fake_systemd.address)), 2.0, clock=lambda: now[0])
    beat = watchdog.register("loop", 1.5)
    answers = iter([True, False, False])
    watchdog.watch("reader", lambda: next(answers), 1.5)
    assert watchdog.tick().ping and fake_systemd.next() == "WATCHDOG=1"
    now[0] = 1.0
    beat()
    assert watchdog.tick().ping and fake_systemd.next() == "WATCHDOG=1"  # reader: 0.0 + 1.5
    now[0] = 2.0
    verdict = watchdog.tick()
    assert not verdict.ping and [s.name for s in verdict.stuck] == ["reader"]
    assert fake_systemd.next().startswith("STATUS=watchdog pings stopped, stuck: reader")
    watchdog.status("link up")
    assert fake_systemd.next() == "STATUS=STUCK: reader; link up"
    assert fake_systemd.next(0.2) is None  # no ping went out


def test_after_stopping_no_ping_goes_out(fake_systemd: FakeSystemd) -> None:
    watchdog = Watchdog(Notifier(notify_address(fake_systemd.address)), 2.0, clock=lambda: 0.0)
    watchdog.stopping()
    watchdog.stopping()  # said once
    assert fake_systemd.next() == "STOPPING=1\nSTATUS=stopping"
    watchdog.tick()
    assert fake_systemd.next(0.2) is None


def test_a_probe_that_raises_counts_as_no_progress(fake_systemd: FakeSystemd) -> None:
    now = [0.0]
    watchdog = Watchdog(Notifier(notify_address(fake_systemd.address)), 2.0, clock=lambda: now[0])

    def broken() -> bool:
        raise RuntimeError("probe broke")

    watchdog.watch("reader", broken, 1.0)
    now[0] = 1.5
    assert not watchdog.tick().ping


# -- the daemon, in-process, against the built-in vehicle ------------------------------------

WATCHDOG_USEC = "1000000"  # 1 s: pings every 0.5 s


def _start_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: VehicleServer, address: str
) -> tuple[threading.Event, threading.Thread, list[int]]:
    monkeypatch.chdir(tmp_path)  # relative state paths (queue, control socket) land here
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", WATCHDOG_USEC)
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    config = load_config(None).updated(
        "test",
        vehicle={"connection": f"tcp:127.0.0.1:{server.port}", "heartbeat_timeout_s": 1.0},
        journal={"path": str(tmp_path / "journal.db")},
    )
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run_daemon(config, stop)))
    thread.start()
    return stop, thread, result


def _ready_and_pinging(fake: FakeSystemd) -> None:
    fake.wait_for(lambda m: m.startswith("READY=1"), "READY=1")
    for n in range(3):
        fake.wait_for(lambda m: m == "WATCHDOG=1", f"watchdog ping {n + 1}")


def test_daemon_says_ready_pings_and_stops_pinging_when_its_status_loop_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_systemd: FakeSystemd
) -> None:
    monkeypatch.setattr(daemon, "_STATUS_EVERY_S", 0.2)
    hang, entered, release = threading.Event(), threading.Event(), threading.Event()
    log_status = daemon._log_status

    def hanging_log_status(*args: object) -> None:
        if hang.is_set():
            entered.set()
            release.wait(30)  # the status loop is stuck here until the test lets go
        log_status(*args)

    monkeypatch.setattr(daemon, "_log_status", hanging_log_status)
    with VehicleServer(DEFAULT_HOME, speedup=5.0, port=0) as server:
        stop, thread, result = _start_daemon(tmp_path, monkeypatch, server, fake_systemd.address)
        try:
            _ready_and_pinging(fake_systemd)
            fake_systemd.wait_for(
                lambda m: m.startswith("STATUS=autopilot link up"), "a status line"
            )
            hang.set()
            assert entered.wait(20), "the status loop never reached the hang"
            fake_systemd.drain()
            fake_systemd.wait_for(
                lambda m: m.startswith("STATUS=watchdog pings stopped") and "status loop" in m,
                "a STATUS line naming the stuck status loop",
            )
            # From here on the loop is stuck for good: not one ping may follow.
            deadline = time.monotonic() + 2.0
            while (left := deadline - time.monotonic()) > 0:
                assert fake_systemd.next(left) != "WATCHDOG=1"
        finally:
            release.set()
            stop.set()
            thread.join(30)
    assert result == [0]
    fake_systemd.wait_for(lambda m: m.startswith("STOPPING=1"), "STOPPING=1")


def test_daemon_stops_pinging_when_the_link_reader_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket_path = tmp_path / "notify.sock"
    if len(str(socket_path)) > 100:  # AF_UNIX paths are limited to 108 bytes
        pytest.skip(f"tmp path too long for an AF_UNIX socket: {socket_path}")
    fake = FakeSystemd(str(socket_path))
    hang, entered, release = threading.Event(), threading.Event(), threading.Event()

    class HangingBus(Bus):
        """Hangs the autopilot link's reader thread in a listener once `hang` is set."""

        def publish(self, msg: object) -> None:
            if hang.is_set() and threading.current_thread().name == "mavlink-reader":
                entered.set()
                release.wait(30)
            super().publish(msg)

    monkeypatch.setattr(daemon, "Bus", HangingBus)
    with VehicleServer(DEFAULT_HOME, speedup=5.0, port=0) as server:
        stop, thread, result = _start_daemon(tmp_path, monkeypatch, server, fake.address)
        try:
            _ready_and_pinging(fake)
            hang.set()
            assert entered.wait(20), "the reader never reached the hang"
            fake.drain()
            fake.wait_for(
                lambda m: (
                    m.startswith("STATUS=watchdog pings stopped") and "autopilot link reader" in m
                ),
                "a STATUS line naming the stuck link reader",
            )
            deadline = time.monotonic() + 2.0
            while (left := deadline - time.monotonic()) > 0:
                assert fake.next(left) != "WATCHDOG=1"
        finally:
            release.set()
            stop.set()
            thread.join(30)
            fake.close()
    assert result == [0]
