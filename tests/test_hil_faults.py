"""Hardware-in-the-loop faults, part one: the receiver's lead pulled and the modem's firmware
locking up, each while `skycourier run` flies a signed order on the rig (`sim.harness.hil`),
and `skycourier check` run against the same rig, as an operator would on the drone with the
daemon stopped.

Each flight is checked to the end: the order is delivered (or ends safely), and nothing is
lost from the telemetry queue, the journal or the audit trail (`tests.hil_checks`). Real
time, like tests/test_hil.py: marked `hil`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import redirect_stdout

import pytest

from companion.cli import main
from sim.harness.hil import HilRig
from tests.hil_checks import (
    ANSWER_S,
    FLIGHT_S,
    PIN,
    assert_nothing_lost,
    deliver,
    phase_entered,
    wait_status,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.hil, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HilRig]:
    with HilRig(tmp_path_factory.mktemp("hil-faults")) as started:
        started.wait_ready(120.0)
        yield started
        assert started.stop_daemon() == 0, started.daemon.tail()


def run_check(rig: HilRig) -> tuple[int, list[dict]]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["check", "--config", str(rig.config_path), "--json"])
    return code, json.loads(out.getvalue())


def test_skycourier_check_passes_against_the_rig_and_names_a_missing_gps(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A rig of its own: the receiver it unplugs comes back power-cycled, without the fix the
    # flights of the shared rig need at once.
    with HilRig(tmp_path_factory.mktemp("hil-check")) as rig:
        rig.wait_ready(120.0)
        # As on the drone: the daemon holds the ports, so it is stopped for the check.
        assert rig.stop_daemon() == 0, rig.daemon.tail()
        check_against(rig)


def check_against(rig: HilRig) -> None:
    """`skycourier check` with the rig's configuration: everything wired passes; with the GPS
    unplugged, its row fails naming the port, with a fix."""
    try:
        code, rows = run_check(rig)
        assert code == 0, rows
        assert all(row["status"] in ("pass", "info", "skip") for row in rows), rows
        checked = {row["device"] for row in rows if row["status"] == "pass"}
        assert {"gps", "modem", "flight controller"} <= checked, rows
        # The rig flies without a camera: vision's rows are skipped, saying so.
        skipped = {row["device"] for row in rows if row["status"] == "skip"}
        assert skipped == {"camera", "models"}, rows
        rig.unplug_gps()
        code, rows = run_check(rig)
        assert code == 1
        failed = [row for row in rows if row["status"] == "fail"]
        assert [row["device"] for row in failed] == ["gps"], rows
        assert "skycourier-gps" in failed[0]["detail"] and failed[0]["fix"], failed
    finally:
        rig.replug_gps()


def test_a_gps_unplugged_in_flight_is_reported_found_again_and_the_order_delivered(
    rig: HilRig,
) -> None:
    order_id = "fault-gps"
    mark = rig.submit_order(rig.order(order_id, pin=PIN))
    rig.wait_for(phase_entered("cruise", order_id), "the cruise to the drop", FLIGHT_S, since=mark)
    rig.unplug_gps()
    try:
        # The receiver's last epochs may say no-fix first; then the lost port is noticed.
        wait_status(
            rig,
            "the daemon to see the receiver gone",
            lambda s: (
                s["companion_gps"] is not None
                and s["companion_gps"]["status"] in ("disconnected", "silent", "detecting")
            ),
            ANSWER_S,
        )
    finally:
        rig.replug_gps()  # whatever happened: the later tests need their receiver
    wait_status(
        rig,
        "the daemon to find the receiver again",
        lambda s: s["companion_gps"]["status"] == "ok" and s["companion_gps"]["age_s"] < 2.0,
        ANSWER_S,
    )
    deliver(rig, order_id, mark)
    assert_nothing_lost(rig, order_id, mark)


def test_a_hung_modem_is_power_cycled_and_what_it_held_back_reaches_the_ground(
    rig: HilRig,
) -> None:
    order_id = "fault-modem"
    mark = rig.submit_order(rig.order(order_id, pin=PIN))
    rig.wait_event("verify-recipient", order_id, FLIGHT_S, since=mark)
    rig.send_sms(f"pin {PIN}")
    rig.wait_event("released", order_id, ANSWER_S, since=mark)
    assert rig.power_key is not None
    pulses = rig.power_key.pulses
    rig.hang_modem()
    # The daemon's recovery ladder (re-register, radio toggle, AT+CRESET) gets no answer
    # from the locked firmware, so it ends at the power key, which the rig's line presses.
    wait_until(lambda: rig.power_key.pulses > pulses, "the daemon's power key pulse", FLIGHT_S)
    server = rig.server
    assert server is not None
    # Meanwhile the flight went on without an uplink: it lands at home...
    wait_until(lambda: server.state.landed and not server.state.armed, "landed", FLIGHT_S)
    # ...and what the daemon queued while the modem was gone arrives once it is back.
    done = rig.wait_event("order-done", order_id, FLIGHT_S, since=mark)
    assert done.detail["outcome"] == "delivered"
    up = wait_status(
        rig, "the modem up again", lambda s: s["uplink"]["modem"]["stage"] == "up", ANSWER_S
    )
    assert up["subsystems"]["telemetry"]["state"] == "running"
    assert_nothing_lost(rig, order_id, mark)
