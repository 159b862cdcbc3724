"""`skycourier sim --ground`: the ground service watches the simulated flight through the
sim's broker (mosquitto), as a fleet's would; the flight's report links to its tracking page,
which the same database and secret key serve again later."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="install the ground extra: pip install -e '.[ground]'")

from fastapi.testclient import TestClient

from companion.cli import main
from companion.config import Config
from companion.report import FlightRecorder, build_report
from ground.store import Store
from ground.web.app import create_app
from ground.web.config import WebConfig
from sim.mqtt_broker import find_mosquitto
from tests.ground_web_fixtures import login
from tests.mqtt_fixtures import MOSQUITTO_SKIP

SKYCOURIER = [sys.executable, "-m", "companion.cli"]
#: A short plain delivery: the fastest run that still flies a whole one.
FLIGHT = ["--distance", "100", "--speedup", "25", "--no-camera", "--recipient", "none", "--quiet"]
WATCH = re.compile(
    r"^ground: watch the flight live at (http://127\.0\.0\.1:\d+)/dispatch "
    r"\(operator sim, password (\S+)\)$",
    re.MULTILINE,
)
DRONE = Config().telemetry.drone_id

needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason=MOSQUITTO_SKIP)


@needs_mosquitto
def test_ground_watches_the_flight_and_its_report_links_the_tracking_page(
    tmp_path: Path,
) -> None:
    out = tmp_path / "r"
    done = subprocess.run(
        [*SKYCOURIER, "sim", "--out", str(out), *FLIGHT, "--ground", "--ground-exit"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    watch = WATCH.search(done.stdout)
    assert watch, done.stdout  # printed even with --quiet
    base, password = watch.groups()
    report = json.loads((out / "report.json").read_text())
    links = report["ground"]
    order_id = report["mission_id"]
    assert links["order_id"] == order_id and links["drone_id"] == DRONE
    assert links["dispatch_url"] == f"{base}/dispatch"
    assert links["tracking_url"] == base + links["tracking_path"]
    assert links["tracking_url"] in done.stdout
    assert Path(links["database"]) == (out / "ground.db").resolve()
    assert "skycourier ground --db sqlite:///" in done.stdout

    # What reached the ground store went through the broker: the track, and the order
    # moved by the drone's own order events to its end.
    db_url = f"sqlite:///{out / 'ground.db'}"
    with Store.open(db_url) as store:
        order = store.order(order_id)
        assert order is not None and order.drone_id == DRONE
        assert (order.state, order.outcome, order.created_by) == ("done", "delivered", "sim")
        kinds = [e.kind for e in store.events(order_id=order_id)]
        assert kinds[:2] == ["order-accepted", "order-flying"] and kinds[-1] == "order-done"
        assert "released" in kinds
        track = store.track(DRONE)
        assert len(track) > 20
        assert max(p.alt_rel_m or 0.0 for p in track) > 25.0
        drone = store.drone(DRONE)
        assert drone is not None and drone.last_seq == report["telemetry"]["last_seq"]

    # Served again from the same database and secret key, the report's link still works;
    # a tampered one does not, and the printed operator password signs in.
    app = create_app(WebConfig(db_url=db_url, secret_file=out / "ground-secret.key"))
    with TestClient(app) as client:
        page = client.get(links["tracking_path"])
        assert page.status_code == 200 and "Delivery finished" in page.text
        assert order_id in page.text
        path = links["tracking_path"]
        tampered = path[:-1] + ("A" if path[-1] != "A" else "B")
        assert client.get(tampered).status_code == 404
        assert login(client, "sim", password + "x").status_code == 401
        signed_in = login(client, "sim", password)
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dispatch"
        assert client.get("/dispatch").status_code == 200


@needs_mosquitto
def test_ground_keeps_serving_after_the_flight_until_ctrl_c(tmp_path: Path) -> None:
    sim = subprocess.Popen(
        [*SKYCOURIER, "sim", "--out", str(tmp_path / "r"), *FLIGHT, "--ground"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sim.stdout is not None
        lines = []
        for line in sim.stdout:  # ends if the process does
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        printed = "".join(lines)
        watch = WATCH.search(printed)
        assert watch and "Ctrl-C to stop" in printed, printed
        with urllib.request.urlopen(f"{watch.group(1)}/login", timeout=30) as page:
            assert page.status == 200  # the flight is over, the service is still up
        sim.send_signal(signal.SIGINT)
        assert sim.wait(timeout=60) == 0  # the flight's status: delivered
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()


def test_ground_without_the_ground_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn raises ImportError
    assert main(["sim", "--out", str(tmp_path / "r"), *FLIGHT, "--ground"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install -e '.[ground]'" in err
    assert "uvicorn" in err
    assert not (tmp_path / "r").exists()  # refused before anything ran


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ground", "--orders", "x.geojson"], "cannot be used with --orders"),
        (["--ground", "--ground-port", "70000"], "--ground-port 70000: expected 1-65535"),
        (["--ground-exit"], "go with --ground"),
    ],
)
def test_ground_options_that_cannot_work_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["sim", "--out", str(tmp_path / "r"), *argv]) == 2
    assert message in capsys.readouterr().err


@needs_mosquitto
def test_a_ground_port_that_is_taken_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["sim", "--out", str(tmp_path / "r"), *FLIGHT, "--ground", "--ground-port"]
        assert main([*argv, str(port)]) == 2
    assert f"--ground-port {port}: cannot listen" in capsys.readouterr().err


def test_the_report_has_a_ground_section_only_when_given_one() -> None:
    home, drop = (-35.363261, 149.165230), (-35.362, 149.166)
    kwargs = dict(config=Config(), mission_id="m", outcome="delivered", drop=drop, home=home)
    assert "ground" not in build_report(FlightRecorder(), **kwargs)  # type: ignore[arg-type]
    links = {"tracking_url": "http://127.0.0.1:8080/track/t", "database": "/x/ground.db"}
    with_links = build_report(FlightRecorder(), ground=links, **kwargs)  # type: ignore[arg-type]
    assert with_links["ground"] == links
