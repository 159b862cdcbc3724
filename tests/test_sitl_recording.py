"""Replay of a recorded ArduCopter SITL exchange (tests/data/sitl_mission_param_exchange.json,
recorded by the bridge against a real SITL): each protocol core, fed the autopilot's frames
in their recorded order, must send exactly the frames that were sent to the real autopilot.

The recording shows what real ArduPilot does: it asks for items with the legacy
MISSION_REQUEST, and unsolicited PARAM_VALUEs arrive in the middle of a mission upload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.dialect import MAVLinkMessage, mavlink
from firmware_bridge.mission_protocol import MissionDownload, MissionItem, MissionUpload
from firmware_bridge.param_protocol import ParamSet
from firmware_bridge.transaction import Transaction

RECORDING = Path(__file__).parent / "data" / "sitl_mission_param_exchange.json"


def _frames() -> list[tuple[str, MAVLinkMessage]]:
    parser = mavlink.MAVLink(None)
    out = []
    for frame in json.loads(RECORDING.read_text())["frames"]:
        (msg,) = parser.parse_buffer(bytes.fromhex(frame["hex"]))
        out.append((frame["dir"], msg))
    return out


def _replay(
    core: Transaction[Any], frames: list[tuple[str, MAVLinkMessage]]
) -> tuple[list[dict], list[dict]]:
    """Feed the recorded incoming frames; return (what the core sent, what was recorded)."""
    sent = [m.to_dict() for m in core.start(0.0)]
    for direction, msg in frames:
        if direction == "in":
            sent += [m.to_dict() for m in core.receive(msg, 0.0)]
    return sent, [m.to_dict() for d, m in frames if d == "out"]


def _between(frames: list, first: str, last: str, last_dir: str) -> list:
    start = next(i for i, (d, m) in enumerate(frames) if d == "out" and m.get_type() == first)
    end = next(
        i for i, (d, m) in enumerate(frames)
        if i > start and d == last_dir and m.get_type() == last
    )  # fmt: skip
    return frames[start : end + 1]


@pytest.fixture(scope="module")
def frames() -> list[tuple[str, MAVLinkMessage]]:
    return _frames()


def test_upload_matches_the_recording(frames: list) -> None:
    exchange = _between(frames, "MISSION_COUNT", "MISSION_ACK", "in")
    items = [MissionItem.from_msg(m) for d, m in exchange if m.get_type() == "MISSION_ITEM_INT"]
    assert [m.get_type() for d, m in exchange if d == "in"].count("MISSION_REQUEST") == len(items)
    core = MissionUpload(items, mavlink.MAV_MISSION_TYPE_MISSION, 1, 1)
    sent, recorded = _replay(core, exchange)
    assert sent == recorded
    assert core.finished
    core.result()


def test_download_matches_the_recording(frames: list) -> None:
    exchange = _between(frames, "MISSION_REQUEST_LIST", "MISSION_ACK", "out")
    core = MissionDownload(mavlink.MAV_MISSION_TYPE_MISSION, 1, 1)
    sent, recorded = _replay(core, exchange)
    assert sent == recorded
    items = core.result()
    assert len(items) == 6 and items[0].seq == 0


@pytest.mark.parametrize(("name", "value"), [("WPNAV_SPEED", 800.0), ("RTL_ALT", 2500)])
def test_param_set_matches_the_recording(frames: list, name: str, value: float) -> None:
    start = next(
        i for i, (d, m) in enumerate(frames)
        if d == "out" and m.get_type() == "PARAM_SET" and m.param_id == name
    )  # fmt: skip
    exchange = frames[start : start + 2]
    core = ParamSet(name, value, None, 1, 1)
    sent, recorded = _replay(core, exchange)
    assert sent == recorded
    assert core.result()[0] == value
