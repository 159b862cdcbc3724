"""The dispatch page in a real browser: Playwright drives Debian's chromium (the system
browser; nothing is downloaded) against the service on a real uvicorn, with its ingest on a
real mosquitto. An operator is refused with a wrong password, signs in, and sees a simulated
drone appear on the map and in the list from records published to the broker. A screenshot
is saved in the test's tmp dir (its path printed: the artifact)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="install the ground extra: pip install -e '.[ground]'")

pytest.importorskip("playwright.sync_api", reason="apt install chromium; pip install playwright")

import paho.mqtt.client as mqtt
from playwright import sync_api

from companion.telemetry import schema
from sim.mqtt_broker import find_mosquitto, start_broker
from tests.browser_fixtures import ARGS, CHROMIUM, require_chromium, sign_in_after_a_refusal
from tests.ground_web_fixtures import make_web, served, status, telemetry
from tests.mqtt_fixtures import MOSQUITTO_SKIP

DRONE = "sim-1"


def publish(client: mqtt.Client, items: list) -> None:  # type: ignore[type-arg]
    for item in items:
        record = item.record
        info = client.publish(
            schema.topic(record.drone_id, schema.CHANNEL_OF[record.type]),
            schema.encode(record),
            qos=1,
            retain=record.type == "status",
        )
        info.wait_for_publish(10)


def test_operator_signs_in_and_sees_a_drone_appear_on_the_map(tmp_path: Path) -> None:
    require_chromium()
    if find_mosquitto() is None:
        pytest.skip(MOSQUITTO_SKIP)
    with start_broker("mosquitto") as broker:
        web = make_web(
            tmp_path,
            clock=time.time,
            broker=f"{broker.host}:{broker.port}",
            ingest_client_id=f"ground-browser-{uuid.uuid4().hex[:8]}",
        )
        fleet = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleet-{uuid.uuid4().hex}")
        fleet.connect(broker.host, broker.port)
        fleet.loop_start()
        try:
            with served(web.app) as base, sync_api.sync_playwright() as pw:
                assert web.ground.ingestor.wait_connected(20), web.ground.ingestor.stats()
                assert web.app.state.live.wait_connected(20), "the live subscription"
                browser = pw.chromium.launch_persistent_context(
                    str(tmp_path / "chromium-profile"),
                    executable_path=CHROMIUM,
                    headless=True,
                    args=ARGS,
                    viewport={"width": 1280, "height": 800},
                )
                try:
                    page = browser.new_page()
                    sign_in_after_a_refusal(page, base)
                    now = time.time()
                    publish(
                        fleet,
                        [status(DRONE, 1, now)]
                        + [
                            telemetry(
                                DRONE,
                                2 + i,
                                now + i / 5,
                                51.5 + i / 1e4,
                                -0.1 + i / 1e4,
                                battery=77,
                            )
                            for i in range(5)
                        ],
                    )
                    row = page.locator(f'#drones tr[data-drone="{DRONE}"]')
                    sync_api.expect(row).to_contain_text("77 %", timeout=20_000)
                    marker = page.locator(f'path.drone-marker[data-drone="{DRONE}"]')
                    sync_api.expect(marker).to_be_visible(timeout=20_000)
                    row.click()
                    sync_api.expect(page.locator("path.track-line")).to_be_visible(timeout=20_000)
                    shot = tmp_path / "dispatch.png"
                    page.screenshot(path=str(shot), full_page=True)
                    print(f"artifact: {shot}")
                    assert shot.stat().st_size > 10_000
                finally:
                    browser.close()
        finally:
            fleet.loop_stop()
            fleet.disconnect()
            web.store.close()
