"""Connection strings: every accepted form, and a message naming the problem for the rest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.endpoint import Endpoint, EndpointError, parse_endpoint


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("tcp:127.0.0.1:5760", Endpoint("tcp", "127.0.0.1", 5760)),
        ("udp:0.0.0.0:14550", Endpoint("udpin", "0.0.0.0", 14550)),
        ("udpin:0.0.0.0:14550", Endpoint("udpin", "0.0.0.0", 14550)),
        ("udpout:10.0.0.2:14550", Endpoint("udpout", "10.0.0.2", 14550)),
        ("/dev/ttyAMA0:921600", Endpoint("serial", "/dev/ttyAMA0", 921600)),
        ("serial:/dev/ttyACM0:115200", Endpoint("serial", "/dev/ttyACM0", 115200)),
        (
            "/dev/serial/by-id/usb-ArduPilot_Pixhawk6C_3A0031-if00:115200",
            Endpoint("serial", "/dev/serial/by-id/usb-ArduPilot_Pixhawk6C_3A0031-if00", 115200),
        ),
    ],
)
def test_accepted_forms(spec: str, expected: Endpoint) -> None:
    assert parse_endpoint(spec) == expected


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("", "empty"),
        ("tcp:127.0.0.1", "HOST:PORT"),
        ("tcp:127.0.0.1:70000", "port must be a number from 1 to 65535"),
        ("tcp:127.0.0.1:abc", "port must be a number"),
        ("http://example:80", "unknown link type 'http'"),
        ("/dev/ttyAMA0", "DEVICE:BAUD"),
        ("/dev/ttyAMA0:12345", "baud rate '12345' is not one of"),
        ("serial:ttyAMA0:57600", "absolute path"),
    ],
)
def test_rejections_name_the_problem(spec: str, complaint: str) -> None:
    with pytest.raises(EndpointError) as caught:
        parse_endpoint(spec)
    assert complaint in str(caught.value)


@given(st.text(max_size=60))
def test_any_text_parses_or_raises_endpoint_error(spec: str) -> None:
    try:
        endpoint = parse_endpoint(spec)
    except EndpointError as exc:
        assert str(exc)
    else:
        assert endpoint.kind in ("tcp", "udpin", "udpout", "serial")
