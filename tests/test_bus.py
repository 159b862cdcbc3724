"""The in-process bus: typed dispatch, containment of failing subscribers, bounded queues."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import pytest

from companion.bus import Bus


@dataclass(frozen=True)
class Base:
    n: int


@dataclass(frozen=True)
class Derived(Base):
    extra: str = "x"


@dataclass(frozen=True)
class Other:
    n: int


def test_subscriber_receives_its_type_only() -> None:
    bus = Bus()
    got: list[object] = []
    bus.subscribe(Other, got.append)
    bus.publish(Base(1))
    bus.publish(Other(2))
    assert got == [Other(2)]


def test_base_class_subscription_receives_subclasses_and_object_receives_all() -> None:
    bus = Bus()
    bases: list[Base] = []
    everything: list[object] = []
    bus.subscribe(Base, bases.append)
    bus.subscribe(object, everything.append)
    bus.publish(Derived(1))
    bus.publish(Base(2))
    bus.publish(Other(3))
    assert bases == [Derived(1), Base(2)]
    assert everything == [Derived(1), Base(2), Other(3)]


def test_callbacks_run_in_subscription_order_across_types() -> None:
    bus = Bus()
    order: list[str] = []
    bus.subscribe(Derived, lambda m: order.append("derived"))
    bus.subscribe(Base, lambda m: order.append("base"))
    bus.subscribe(Derived, lambda m: order.append("derived-2"))
    bus.publish(Derived(1))
    assert order == ["derived", "base", "derived-2"]


def test_unsubscribe_stops_delivery_and_is_idempotent() -> None:
    bus = Bus()
    got: list[Base] = []
    unsubscribe = bus.subscribe(Base, got.append)
    bus.publish(Base(1))
    unsubscribe()
    unsubscribe()
    bus.publish(Base(2))
    assert got == [Base(1)]


def test_latest_by_type_and_base_type() -> None:
    bus = Bus()
    assert bus.latest(Base) is None
    bus.publish(Base(1))
    bus.publish(Derived(2))
    bus.publish(Other(3))
    assert bus.latest(Derived) == Derived(2)
    assert bus.latest(Base) == Derived(2)
    assert bus.latest(Other) == Other(3)


def test_failing_subscriber_is_logged_counted_and_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = Bus()
    got: list[Base] = []

    def broken(msg: Base) -> None:
        raise RuntimeError("listener bug")

    bus.subscribe(Base, broken)
    bus.subscribe(Base, got.append)
    with caplog.at_level(logging.ERROR, logger="companion.bus"):
        bus.publish(Derived(1))  # must not raise
        bus.publish(Base(2))
    assert got == [Derived(1), Base(2)]
    assert bus.errors == 2
    assert bus.errors_by_type() == {"Derived": 1, "Base": 1}
    assert "Derived" in caplog.records[0].getMessage()
    assert caplog.records[0].exc_info is not None


@pytest.mark.parametrize("msg", [{"n": 1}, 3, "text"])
def test_only_frozen_dataclasses_may_be_published(msg: object) -> None:
    with pytest.raises(TypeError, match="frozen dataclass"):
        Bus().publish(msg)


def test_mutable_dataclass_is_refused() -> None:
    @dataclass
    class Mutable:
        n: int

    with pytest.raises(TypeError, match="Mutable"):
        Bus().publish(Mutable(1))


def test_callback_may_publish_and_subscribe_without_deadlock() -> None:
    bus = Bus()
    got: list[object] = []

    def relay(msg: Base) -> None:
        bus.subscribe(Other, got.append)
        bus.publish(Other(msg.n))

    bus.subscribe(Base, relay)
    bus.publish(Base(7))
    assert got == [Other(7)]


def test_concurrent_publishers_lose_nothing() -> None:
    bus = Bus()
    lock = threading.Lock()
    seen: list[int] = []

    def count(msg: Base) -> None:
        with lock:
            seen.append(msg.n)

    bus.subscribe(Base, count)
    queue = bus.queue(Base, maxsize=10_000)

    def publisher(offset: int) -> None:
        for i in range(500):
            bus.publish(Base(offset + i))

    threads = [threading.Thread(target=publisher, args=(k * 1000,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = sorted(k * 1000 + i for k in range(8) for i in range(500))
    assert sorted(seen) == expected
    assert sorted(m.n for m in queue.drain()) == expected
    assert queue.dropped == 0


def test_queue_delivers_in_order_and_times_out_with_none() -> None:
    bus = Bus()
    sub = bus.queue(Base, maxsize=4)
    bus.publish(Base(1))
    bus.publish(Other(9))
    bus.publish(Derived(2))
    assert sub.get(timeout=0) == Base(1)
    assert sub.get(timeout=0) == Derived(2)
    assert sub.get(timeout=0.01) is None


def test_full_queue_drops_oldest_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    bus = Bus()
    sub = bus.queue(Base, maxsize=3)
    with caplog.at_level(logging.WARNING, logger="companion.bus"):
        for i in range(10):
            bus.publish(Base(i))
    assert sub.dropped == 7
    assert [m.n for m in sub.drain()] == [7, 8, 9]
    assert any("dropped" in r.getMessage() for r in caplog.records)


def test_closing_queue_wakes_blocked_reader_and_unsubscribes() -> None:
    bus = Bus()
    sub = bus.queue(Base, maxsize=2)
    results: list[object] = []
    reader = threading.Thread(target=lambda: results.append(sub.get()))
    reader.start()
    sub.close()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert results == [None]
    bus.publish(Base(1))
    assert len(sub) == 0


def test_queue_rejects_nonpositive_size() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        Bus().queue(Base, maxsize=0)
