"""The ground segment's acceptance flow, in a real browser against a real drone stack: an
operator signs in to the dispatch page (after a refused attempt), makes an order for the
drone of the hardware-in-the-loop rig (`sim.harness.hil`: `skycourier run` in its own
process, its A7670 on a pty bridged to mosquitto), chooses the drop on the map, uploads the
recipient's photo, and sends it signed; the drone accepts it and flies; the operator holds
it from the page and resumes it, each confirmed by the drone; the order is delivered and the
page shows it; the recipient's tracking link shows that order and nothing else.

Playwright drives Debian's chromium (nothing downloaded). Screenshots are saved in the
test's tmp dir (their paths printed: the artifacts). The rig flies in real time: marked
`hil`, like the other rig tests.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from pathlib import Path

import cv2
import pytest

pytest.importorskip("fastapi", reason="install the ground extra: pip install -e '.[ground]'")
pytest.importorskip("playwright.sync_api", reason="apt install chromium; pip install playwright")

from playwright import sync_api

from sim.harness.hil import HilRig
from sim.mqtt_broker import find_mosquitto
from tests.browser_fixtures import ARGS, CHROMIUM, require_chromium, sign_in_after_a_refusal
from tests.face_images import analyzer, ancelotti, zidane  # noqa: F401
from tests.ground_web_fixtures import make_web, served
from tests.hil_checks import ANSWER_S, FLIGHT_S, PIN, assert_nothing_lost, deliver, phase_entered
from tests.mqtt_fixtures import MOSQUITTO_SKIP
from tests.waiting import wait_until

pytestmark = [pytest.mark.hil, pytest.mark.timeout(600)]

#: Playwright's waits for what the drone does (it flies in real time on a loaded machine).
DRONE_MS = int(ANSWER_S * 1000)


def shoot(page: sync_api.Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"artifact: {path}")


def speed(rig: HilRig) -> float:
    assert rig.server is not None
    vn, ve, _vd = rig.server.state.velocity_ned
    return math.hypot(vn, ve)


def test_an_operator_dispatches_holds_resumes_and_sees_the_delivery(
    tmp_path_factory: pytest.TempPathFactory,
    zidane,  # noqa: F811
    analyzer,  # noqa: F811
) -> None:
    require_chromium()
    if find_mosquitto() is None:
        pytest.skip(MOSQUITTO_SKIP)
    work = tmp_path_factory.mktemp("hil-ground")
    out = tmp_path_factory.mktemp("ground-artifacts")
    photo = out / "recipient.jpg"
    cv2.imwrite(str(photo), ancelotti(zidane))
    with HilRig(work) as rig:
        rig.wait_ready(120.0)
        assert rig.broker is not None and rig.ground is not None
        web = make_web(
            out,
            clock=time.time,
            broker=f"{rig.broker.host}:{rig.broker.port}",
            dispatcher_keys=work / "keys" / "dispatcher",
            ingest_client_id=f"ground-accept-{uuid.uuid4().hex[:8]}",
        )
        web.store.create_order("someone-else", rig.drone_id, "cd" * 32, created_by="bob")
        drop = rig.drop()
        try:
            with served(web.app) as base, sync_api.sync_playwright() as pw:
                assert web.app.state.live.wait_connected(20), "the live subscription"
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
                try:
                    operator = browser.new_context(viewport={"width": 1400, "height": 900})
                    page = operator.new_page()
                    sign_in_after_a_refusal(page, base)
                    row = page.locator(f'#drones tr[data-drone="{rig.drone_id}"]')
                    sync_api.expect(row).to_contain_text("online", timeout=DRONE_MS)

                    # The drone is registered from its public-key file, as the rig wrote it.
                    register = page.locator("#register-form")
                    register.locator("input[name=public]").set_input_files(
                        str(work / "keys" / "drone.pub.json")
                    )
                    page.click("#register-drone")
                    sync_api.expect(page.locator("#register-result")).to_contain_text(
                        f"{rig.drone_id} registered"
                    )

                    # The order: the drop is chosen on the map, then set exactly.
                    form = page.locator("#order-form")
                    sync_api.expect(form).to_be_visible()
                    page.locator("#map").click(position={"x": 300, "y": 300})
                    assert form.locator("input[name=lat]").input_value() != ""
                    sync_api.expect(page.locator("path.new-drop-marker")).to_be_visible()
                    form.locator("select[name=drone_id]").select_option(rig.drone_id)
                    form.locator("input[name=lat]").fill(f"{drop[0]:.7f}")
                    form.locator("input[name=lon]").fill(f"{drop[1]:.7f}")
                    form.locator("input[name=photo]").set_input_files(str(photo))
                    form.locator("input[name=pin]").fill(PIN)
                    mark = rig.ground.mark
                    page.click("#dispatch-order")
                    result = page.locator("#order-result")
                    sync_api.expect(result).to_contain_text(": sent", timeout=60_000)
                    order_id = result.inner_text().split()[1].rstrip(":")
                    state = page.locator(f'#orders tr[data-order="{order_id}"] td.state')
                    sync_api.expect(state).to_have_text("flying", timeout=DRONE_MS)
                    rig.wait_for(
                        phase_entered("cruise", order_id), "the cruise", FLIGHT_S, since=mark
                    )

                    # Hold from the page: the drone confirms and stops; resume: it goes on.
                    row.click()
                    page.click('#commands button[data-command="hold"]')
                    held = page.locator('#command-log li[data-command="hold"] span.state')
                    sync_api.expect(held).to_have_text("accepted", timeout=DRONE_MS)
                    rig.wait_event("hold", order_id, ANSWER_S, since=mark)
                    wait_until(lambda: speed(rig) < 0.3, "the vehicle holding", ANSWER_S)
                    shoot(page, out / "held.png")
                    page.click('#commands button[data-command="resume"]')
                    resumed = page.locator('#command-log li[data-command="resume"] span.state')
                    sync_api.expect(resumed).to_have_text("accepted", timeout=DRONE_MS)

                    deliver(rig, order_id, mark)  # the recipient gives the PIN by SMS
                    sync_api.expect(state).to_have_text("done", timeout=DRONE_MS)
                    outcome = page.locator(f'#orders tr[data-order="{order_id}"] td.outcome')
                    sync_api.expect(outcome).to_have_text("delivered")
                    handover = page.locator(f'#orders tr[data-order="{order_id}"] td.handover')
                    sync_api.expect(handover).to_contain_text("released", timeout=DRONE_MS)
                    page.locator(f'#drones tr[data-drone="{rig.drone_id}"]').click()
                    track = page.locator("path.track-line")  # a straight line east: no height
                    sync_api.expect(track).to_have_attribute("d", re.compile(r"M[^L]+L"))
                    shoot(page, out / "delivered.png")

                    # The recipient's link: this order only, and no way to the others.
                    page.locator(f'#orders tr[data-order="{order_id}"] button').click()
                    link = page.locator("#tracking-link a")
                    sync_api.expect(link).to_be_visible()
                    href = link.get_attribute("href")
                    assert href is not None and href.startswith("/track/")
                    recipient = browser.new_context().new_page()  # no operator session
                    recipient.goto(f"{base}{href}")
                    body = recipient.locator("body")
                    sync_api.expect(body).to_contain_text("delivered")
                    assert "someone-else" not in recipient.content()
                    shoot(recipient, out / "recipient.png")
                    api = recipient.request
                    assert api.get(f"{base}/api/orders").status == 401
                    token = href.removeprefix("/track/")
                    forged = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
                    assert recipient.goto(f"{base}/track/{forged}").status == 404  # type: ignore[union-attr]
                finally:
                    browser.close()
            audit = [(a.actor, a.action) for a in web.store.audit(limit=50)]
            for action in ("drone-register", "order-create", "order-sent", "command-hold",
                           "command-resume"):  # fmt: skip
                assert ("alice", action) in audit, (action, audit)
            commands = {c.command: c.state for c in web.store.commands(rig.drone_id)}
            assert commands == {"hold": "accepted", "resume": "accepted"}
            assert_nothing_lost(rig, order_id, mark)
            print(json.dumps({"order": order_id, "artifacts": str(out)}))
        finally:
            web.store.close()
