"""Fuzzing the MAVLink transfer cores (missions, parameters, commands) with mutated replays
of a real ArduCopter SITL exchange (tests/data/sitl_mission_param_exchange.json), and of a
whole parameter listing (which the recording lacks).

Each input is the recording's frames from the autopilot, mutated at the byte level (bits
flipped, bytes replaced, frames cut, duplicated, dropped, swapped, spliced; the CRC fixed up
for some so that mutated payloads reach the cores, as a peer that signs its garbage would),
decoded by pymavlink's robust parser as the link decodes, and fed with clock ticks to a fresh
core of every kind. What must hold for every input:

- nothing but the core's own error types (`BridgeError` and its subclasses) leaves it, from
  `start`, `receive`, `tick` or `result`;
- what a core holds stays within a stated bound: a mission download holds at most the
  item count the autopilot announced (a MISSION_COUNT is a uint16: 65,535), a parameter
  download at most `param_count` values;
- a core that says it succeeded has what it says it has (an upload every item
  acknowledged, a download every item from 0 to count - 1).

`python tests/fuzz_mavlink.py --runs 100000 --seed 1` is the long run; the test suite runs
a short one (tests/test_fuzz_mavlink.py).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firmware_bridge.command_protocol import CommandInt, CommandLong
from firmware_bridge.dialect import MAVLinkMessage, mavlink
from firmware_bridge.errors import BridgeError
from firmware_bridge.mission_protocol import MissionDownload, MissionItem, MissionUpload
from firmware_bridge.param_protocol import ParamRead, ParamReadAll, ParamSet
from firmware_bridge.transaction import Transaction

RECORDING = Path(__file__).parent / "data" / "sitl_mission_param_exchange.json"
#: The most items a mission download may hold: MISSION_COUNT.count is a uint16.
MAX_MISSION_ITEMS = 65535


def recorded_frames() -> list[tuple[str, bytes]]:
    """(direction, wire bytes) of every frame of the recording."""
    frames = json.loads(RECORDING.read_text())["frames"]
    return [(f["dir"], bytes.fromhex(f["hex"])) for f in frames]


def parameter_listing(count: int = 5) -> list[bytes]:
    """A whole parameter list as an autopilot streams it after PARAM_REQUEST_LIST (the
    recording has only echoes of single sets), so that a read-all can complete."""
    sender = mavlink.MAVLink(None, srcSystem=1, srcComponent=1)
    return [
        mavlink.MAVLink_param_value_message(
            f"P{i:02d}".encode(), float(i), mavlink.MAV_PARAM_TYPE_INT16, count, i
        ).pack(sender)
        for i in range(count)
    ]


def uploaded_items() -> list[MissionItem]:
    """The items the recorded upload carried (what a fresh upload core sends again)."""
    parser = mavlink.MAVLink(None)
    items = []
    for direction, raw in recorded_frames():
        for msg in parser.parse_buffer(raw) or []:
            if direction == "out" and msg.get_type() == "MISSION_ITEM_INT":
                items.append(MissionItem.from_msg(msg))
    return items


def _crc_fixed(frame: bytes) -> bytes:
    """`frame` with its MAVLink 2 checksum recomputed, so a mutated payload is accepted."""
    if len(frame) < 12 or frame[0] != 0xFD:
        return frame
    length = frame[1]
    body = frame[1 : 10 + length]
    msgid = int.from_bytes(frame[7:10], "little")
    entry = mavlink.mavlink_map.get(msgid)
    if entry is None or len(body) < 9 + length:
        return frame
    crc = mavlink.x25crc(body)
    crc.accumulate(bytes([entry.crc_extra]))
    return frame[: 10 + length] + crc.crc.to_bytes(2, "little")


def mutate(frames: list[bytes], rng: random.Random) -> list[bytes]:
    """A mutated copy of the autopilot's frames: a few random edits, each of one kind."""
    out = list(frames)
    for _ in range(rng.randint(1, 6)):
        if not out:
            out.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40))))
            continue
        i = rng.randrange(len(out))
        frame = bytearray(out[i])
        kind = rng.randrange(10)
        if kind == 0 and frame:
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        elif kind == 1 and frame:
            frame[rng.randrange(len(frame))] = rng.getrandbits(8)
        elif kind == 2:
            frame = frame[: rng.randrange(len(frame) + 1)]
        elif kind == 3:
            out.insert(i, bytes(frame))
        elif kind == 4:
            del out[i]
            continue
        elif kind == 5:
            j = rng.randrange(len(out))
            out[i], out[j] = out[j], out[i]
            continue
        elif kind == 6:
            frame += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 30)))
        elif kind == 7 and len(frame) > 10:
            # A payload byte changed and the checksum made right: the core sees the value.
            at = rng.randrange(10, len(frame))
            frame[at] = rng.choice([0, 1, 0xFF, rng.getrandbits(8)])
            frame = bytearray(_crc_fixed(bytes(frame)))
        elif kind == 8:
            other = out[rng.randrange(len(out))]
            frame = frame[: rng.randrange(len(frame) + 1)] + other[rng.randrange(len(other) + 1) :]
        elif kind == 9:
            frame = bytearray(_field_spliced(bytes(frame), out, rng))
        out[i] = bytes(frame)
    return out


def _decode_one(frame: bytes) -> MAVLinkMessage | None:
    try:
        got = mavlink.MAVLink(None).parse_buffer(frame) or []
    except Exception:
        return None
    return got[0] if got and got[0].get_type() != "BAD_DATA" else None


def _field_spliced(frame: bytes, frames: list[bytes], rng: random.Random) -> bytes:
    """`frame` with one field set to the same field of another frame of its type, or to a
    boundary value, and packed again (a well-formed message with a hostile value)."""
    msg = _decode_one(frame)
    if msg is None or not msg.get_fieldnames():
        return frame
    field = rng.choice(msg.get_fieldnames())
    peers = [
        m for m in map(_decode_one, frames) if m is not None and m.get_type() == msg.get_type()
    ]
    current = getattr(msg, field)
    if peers and rng.random() < 0.6:
        value = getattr(rng.choice(peers), field)
    elif isinstance(current, (bytes, str)):
        value = rng.choice([b"", b"\xff" * 16, b"P0" + bytes([rng.randrange(48, 58)])])
    elif isinstance(current, float):
        value = rng.choice([0.0, -1.0, float("nan"), float("inf"), 3.4e38])
    elif isinstance(current, int):
        value = rng.choice([0, 1, 255, 65535, -1, current + 1, current - 1])
    else:
        return frame
    sender = mavlink.MAVLink(
        None, srcSystem=msg.get_srcSystem(), srcComponent=msg.get_srcComponent()
    )
    setattr(msg, field, value)
    try:
        return msg.pack(sender)
    except Exception:  # a value the field cannot carry: the frame goes out unchanged
        return frame


def decoded(frames: list[bytes]) -> list[MAVLinkMessage]:
    """What the link would dispatch: pymavlink's robust parser over the byte stream."""
    parser = mavlink.MAVLink(None)
    parser.robust_parsing = True
    messages = []
    for frame in frames:
        try:
            got = parser.parse_buffer(frame) or []
        except Exception:  # the link counts these as bad frames; nothing reaches a core
            continue
        messages += [m for m in got if m.get_type() != "BAD_DATA"]
    return messages


CoreMaker = Callable[[], Transaction[Any]]


def core_makers(items: list[MissionItem]) -> dict[str, CoreMaker]:
    """A fresh core of every kind, as the bridge builds them."""
    mission = mavlink.MAV_MISSION_TYPE_MISSION
    return {
        "MissionUpload": lambda: MissionUpload(items, mission, 1, 1),
        "MissionDownload": lambda: MissionDownload(mission, 1, 1),
        "ParamSet": lambda: ParamSet("WPNAV_SPEED", 800.0, None, 1, 1),
        "ParamRead": lambda: ParamRead("RTL_ALT", 1, 1),
        "ParamReadAll": lambda: ParamReadAll(1, 1),
        "CommandLong": lambda: CommandLong(mavlink.MAV_CMD_COMPONENT_ARM_DISARM, [1], 1, 1),
        "CommandInt": lambda: CommandInt(
            mavlink.MAV_CMD_DO_REPOSITION, mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT,
            [-1, 0, 0, 0], -353600000, 1491690000, 30.0, 1, 1,
        ),
    }  # fmt: skip


class Violation(AssertionError):
    """A promise of a core broken by one input."""


def check(name: str, make: CoreMaker, messages: list[MAVLinkMessage]) -> None:
    """Feed `messages` to a fresh core, ticking time between them; raise Violation if any
    promise is broken."""
    core = make()
    now = 0.0
    try:
        core.start(now)
        for msg in messages:
            core.receive(msg, now)
            now += 0.05
            if core.deadline is not None and now >= core.deadline:
                core.tick(now)
        for _ in range(200):  # let every timeout and retry run out
            if core.finished or core.deadline is None:
                break
            now = max(now, core.deadline)
            core.tick(now)
    except Exception as exc:  # anything leaving a core while it runs is a finding
        raise Violation(f"{name}: {type(exc).__name__} while running: {exc}") from exc
    _bounds(name, core)
    if not core.finished:
        return
    try:
        result = core.result()
    except BridgeError:
        return
    except Exception as exc:
        raise Violation(f"{name}: {type(exc).__name__} from result(): {exc}") from exc
    _success(name, core, result)


def _bounds(name: str, core: Transaction[Any]) -> None:
    if isinstance(core, MissionDownload):
        held = len(getattr(core, "_items", {}))
        if held > MAX_MISSION_ITEMS:
            raise Violation(f"{name}: holds {held} items")
    if isinstance(core, ParamReadAll):
        count = core._count or 0
        if len(core._by_index) > count:
            raise Violation(f"{name}: holds {len(core._by_index)} values for {count}")


def _success(name: str, core: Transaction[Any], result: Any) -> None:
    if isinstance(core, MissionDownload) and [i.seq for i in result] != list(range(len(result))):
        raise Violation(f"{name}: succeeded with items {[i.seq for i in result]}")
    if isinstance(core, ParamReadAll) and len(result) != core._count:
        raise Violation(f"{name}: succeeded with {len(result)} of {core._count} parameters")


def run(runs: int, seed: int, report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fuzz every core with `runs` mutated replays; returns what was found and how long the
    cores took per message (mutated versus the unmutated recording)."""
    rng = random.Random(seed)
    seeds = [
        [raw for direction, raw in recorded_frames() if direction == "in"],
        parameter_listing(),
    ]
    makers = core_makers(uploaded_items())
    started = time.perf_counter()
    clean = [m for frames in seeds for m in decoded(frames)]
    for name, make in makers.items():
        for frames in seeds:
            check(name, make, decoded(frames))
    clean_s = (time.perf_counter() - started) / max(1, len(clean))
    findings: list[str] = []
    fed = 0
    started = time.perf_counter()
    for n in range(runs):
        messages = decoded(mutate(rng.choice(seeds), rng))
        fed += len(messages)
        for name, make in makers.items():
            try:
                check(name, make, messages)
            except Violation as violation:
                findings.append(f"run {n}: {violation}")
        if report is not None and n and n % 10_000 == 0:
            report(f"{n} runs, {len(findings)} findings")
    mutated_s = (time.perf_counter() - started) / max(1, fed)
    return {
        "runs": runs,
        "seed": seed,
        "findings": findings,
        "messages_fed": fed,
        "per_message_ratio_mutated_over_clean": round(mutated_s / clean_s, 2) if clean_s else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = run(args.runs, args.seed, report=lambda line: print(line, flush=True))
    for finding in result["findings"][:20]:
        print(finding)
    print(json.dumps({k: v for k, v in result.items() if k != "findings"}))
    print(f"{len(result['findings'])} findings")
    return 1 if result["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
