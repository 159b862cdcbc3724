"""MQTT broker fixtures: `mosquitto` (the real broker, skipped when not installed),
`embedded_mqtt_broker` (the pure-Python one) and `mqtt_broker` (whichever `start_broker`
picks, as `skycourier sim` does). Each is started once per test session on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sim.mqtt_broker import Broker, find_mosquitto, start_broker

MOSQUITTO_SKIP = "install mosquitto (apt install mosquitto)"


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Broker]:
    if find_mosquitto() is None:
        pytest.skip(MOSQUITTO_SKIP)
    with start_broker("mosquitto") as broker:
        yield broker


@pytest.fixture(scope="session")
def embedded_mqtt_broker() -> Iterator[Broker]:
    with start_broker("embedded") as broker:
        yield broker


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[Broker]:
    with start_broker() as broker:
        yield broker
