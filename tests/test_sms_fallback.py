"""The SMS fallback for how a mission ends: queued by the mission's thread, sent by the
fallback's own worker, so that a slow module (40 s per number) never holds up the mission.

The SMS client here is a fake whose sends block until the test lets them go: the point is
the threading. tests/test_telemetry_uplink.py sends the same events through the A7670
emulator on a pty, and tests/test_modem_driver.py checks the AT commands of a send.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from companion.bus import Bus
from companion.mission.events import ABORTED, DELIVERED, MissionEvent, Phase
from companion.modem.sms import SmsError, SmsFallback
from companion.telemetry.uplink import forward_endings
from tests.waiting import wait_until

NUMBER = "+447700900123"
# A send the test never releases would end (and the test fail) after this; far longer than
# any step of a test, so that it never ends one that works.
_STUCK_S = 60.0


class SlowSms:
    """An `SmsClient` stand-in: each send waits until `release()`, as a module that takes its
    40 s; `fail_with` makes sends raise once released."""

    def __init__(self) -> None:
        self.sending = threading.Event()
        self.finished: list[tuple[str, str]] = []
        self.fail_with: Exception | None = None
        self._gate = threading.Event()

    def send(self, number: str, text: str) -> int:
        self.sending.set()
        self._gate.wait(_STUCK_S)
        if self.fail_with is not None:
            raise self.fail_with
        self.finished.append((number, text))
        return len(self.finished)

    def release(self) -> None:
        self._gate.set()


@pytest.fixture
def sms() -> Iterator[SlowSms]:
    fake = SlowSms()
    yield fake
    fake.release()  # never leave a worker waiting on the gate


def _fallback(sms: SlowSms, *, link_up: bool = False, max_queued: int = 8) -> SmsFallback:
    return SmsFallback(
        sms,  # type: ignore[arg-type]
        numbers=[NUMBER],
        link_up=lambda: link_up,
        drone_id="drone-7",
        max_queued=max_queued,
    )


def _aborted(mission_id: str, reason: str) -> MissionEvent:
    return MissionEvent(mission_id, *ABORTED, {"reason": reason, "action": "RTL"})


def test_publishing_the_abort_returns_while_the_sms_is_still_being_sent(sms: SlowSms) -> None:
    bus = Bus()
    with _fallback(sms) as fallback:
        forward_endings(bus, fallback)
        bus.publish(_aborted("m-1", "battery low"))
        # publish() has returned, yet the send it caused has not finished: the mission's
        # thread did not wait for the module.
        assert sms.finished == []
        sms.release()
        wait_until(lambda: fallback.sent == 1, "the SMS sent")
    assert sms.finished == [(NUMBER, "drone-7 ABORTED mission m-1: battery low (RTL)")]


def test_only_the_event_that_ends_the_mission_is_sent(sms: SlowSms) -> None:
    """Entering ABORT is not the ending (the mission publishes (ABORT, "abort") for it);
    the delivered ending is entering DONE."""
    bus = Bus()
    sms.release()
    with _fallback(sms) as fallback:
        forward_endings(bus, fallback)
        for event in (
            MissionEvent("m-2", Phase.CRUISE, "enter"),
            MissionEvent("m-2", Phase.ABORT, "enter"),
            _aborted("m-2", "obstacle"),
            MissionEvent("m-3", *DELIVERED),
        ):
            bus.publish(event)
        wait_until(lambda: fallback.sent == 2, "two SMS sent")
    assert [text for _, text in sms.finished] == [
        "drone-7 ABORTED mission m-2: obstacle (RTL)",
        "drone-7 DELIVERED mission m-3",
    ]


def test_nothing_is_queued_while_the_data_link_is_up(sms: SlowSms) -> None:
    with _fallback(sms, link_up=True) as fallback:
        assert not fallback.notify("aborted", "mission m-4")
    assert not sms.sending.is_set() and fallback.dropped == 0


def test_a_full_queue_drops_counts_and_logs(sms: SlowSms, caplog: pytest.LogCaptureFixture) -> None:
    with _fallback(sms, max_queued=2) as fallback:
        assert fallback.notify("aborted", "mission m-5")
        assert sms.sending.wait(_STUCK_S)  # the worker holds the first, the queue is empty
        assert fallback.notify("delivered", "mission m-6")
        assert fallback.notify("delivered", "mission m-7")
        with caplog.at_level(logging.ERROR, "companion.modem.sms"):
            assert not fallback.notify("emergency", "mission m-8")
        assert fallback.dropped == 1
        (record,) = caplog.records
        assert "EMERGENCY mission m-8" in record.getMessage() and "2 notifications" in (
            record.getMessage()
        )
        sms.release()
        wait_until(lambda: fallback.sent == 3, "the queued SMS sent")


def test_failed_sends_are_counted_and_the_worker_goes_on(sms: SlowSms) -> None:
    sms.release()
    with _fallback(sms) as fallback:
        sms.fail_with = SmsError("SMS to +447700900123 failed: +CMS ERROR: 331")
        assert fallback.notify("aborted", "mission m-9")
        wait_until(lambda: fallback.failed == 1, "the failure counted")
        sms.fail_with = RuntimeError("a bug in the driver")
        assert fallback.notify("aborted", "mission m-10")
        wait_until(lambda: fallback.failed == 2, "the crash counted")
        sms.fail_with = None
        assert fallback.notify("delivered", "mission m-11")
        wait_until(lambda: fallback.sent == 1, "a later SMS still sent")


def _started(fallback: SmsFallback) -> threading.Thread:
    """Start `fallback`; returns its worker thread."""
    before = set(threading.enumerate())
    fallback.start()
    (worker,) = [t for t in threading.enumerate() if t not in before and t.name == "sms-fallback"]
    return worker


def test_stop_ends_the_worker_and_later_notifications_are_dropped(sms: SlowSms) -> None:
    sms.release()
    fallback = _fallback(sms)
    worker = _started(fallback)
    fallback.stop()
    assert not worker.is_alive()
    assert not fallback.notify("aborted", "mission m-12")
    assert fallback.dropped == 1 and not sms.sending.is_set()


def test_stop_during_a_stuck_send_drops_what_is_still_queued(sms: SlowSms) -> None:
    fallback = _fallback(sms)
    worker = _started(fallback)
    assert fallback.notify("aborted", "mission m-13")
    assert sms.sending.wait(_STUCK_S)
    assert fallback.notify("delivered", "mission m-14")
    fallback.stop(timeout_s=0.0)  # gives up on the send in progress at once
    sms.release()
    wait_until(lambda: fallback.dropped == 1, "the queued notification dropped")
    wait_until(lambda: not worker.is_alive(), "the worker ended")
    assert [text for _, text in sms.finished] == ["drone-7 ABORTED mission m-13"]


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (
            MissionEvent("m-5", *ABORTED, {"reason": "battery critical: 9% < 10%",
                                            "action": "LAND"}),
            "drone-7 EMERGENCY mission m-5: battery critical: 9% < 10% (LAND)",
        ),
        (
            MissionEvent("m-5", *ABORTED, {"reason": "link lost for 5 s", "action": "FAILSAFE"}),
            "drone-7 EMERGENCY mission m-5: link lost for 5 s (FAILSAFE)",
        ),
        (
            MissionEvent(
                "m-5", Phase.ABORT, "abort-action-failed",
                {"action": "RTL", "error": "MAV_RESULT_DENIED"},
            ),
            "drone-7 EMERGENCY mission m-5: RTL refused (MAV_RESULT_DENIED), landing where it is",
        ),
        (
            MissionEvent("m-5", Phase.ABORT, "still-armed", {"waited_s": 120.0}),
            "drone-7 EMERGENCY mission m-5: still armed after 120.0 s",
        ),
    ],
)  # fmt: skip
def test_emergencies_are_told_as_such(sms: SlowSms, event: MissionEvent, text: str) -> None:
    """The `emergency` kind: the drone comes down away from home, or out of the companion's
    hands (an abort to LAND, a failsafe, a refused return, a drone still armed)."""
    bus = Bus()
    sms.release()
    with _fallback(sms) as fallback:
        forward_endings(bus, fallback)
        bus.publish(event)
        wait_until(lambda: fallback.sent == 1, "the SMS sent")
    assert sms.finished == [(NUMBER, text)]


def test_a_return_home_is_an_abort_not_an_emergency(sms: SlowSms) -> None:
    bus = Bus()
    sms.release()
    with _fallback(sms) as fallback:
        forward_endings(bus, fallback)
        bus.publish(MissionEvent("m-6", Phase.ABORT, "landed"))
        bus.publish(_aborted("m-6", "operator abort (sms:+447700900123)"))
        wait_until(lambda: fallback.sent == 1, "the SMS sent")
    assert sms.finished[0][1].startswith("drone-7 ABORTED mission m-6")
