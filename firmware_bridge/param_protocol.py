"""MAVLink parameter protocol: read one, read all, set with verification.

Implements https://mavlink.io/en/services/parameter.html (cited as "parameter.html,
<section>") the way ArduPilot answers it (libraries/GCS_MAVLink/GCS_Param.cpp).

Value encoding. PARAM_VALUE and PARAM_SET carry every value in one float field. The spec
describes a byte-wise encoding, the integer's bytes copied into the float (parameter.html,
"Parameter Encoding"); the capability bits MAV_PROTOCOL_CAPABILITY_PARAM_ENCODE_BYTEWISE /
_C_CAST tell which one a component uses. ArduPilot uses the C cast, the integer converted to
a float: `GCS_MAVLINK::queued_param_send` and `param_io_timer` send
`AP_Param::cast_to_float(type)`, the AP_Int8/16/32 value converted to float, and
`handle_param_set` gives the received float to `AP_Param::user_set_value`, which converts it
back to the parameter's own type (ignoring PARAM_SET.param_type). `mav_param_type` maps
ArduPilot's types to MAV_PARAM_TYPE_INT8, _INT16, _INT32 and _REAL32. So an integer is
exact only up to 2**24 in magnitude, the float32 mantissa; `encode_param` refuses integers
it could not carry exactly.

Names: param_id is 16 characters, null-padded, without terminator when exactly 16 long
(PARAM_VALUE); pymavlink hands it over as str with the padding removed.
"""

from __future__ import annotations

import math
import struct

from firmware_bridge.dialect import MAVLinkMessage, enum_name, mavlink
from firmware_bridge.errors import ParamError, ProtocolTimeout
from firmware_bridge.exchange import OWN_COMPONENT, OWN_SYSTEM, Exchange, RequestReply

ParamValue = tuple[int | float, int]
"""A parameter's value and its MAV_PARAM_TYPE."""

NAME_LENGTH = 16

_INT_RANGES = {
    mavlink.MAV_PARAM_TYPE_UINT8: (0, 2**8 - 1),
    mavlink.MAV_PARAM_TYPE_INT8: (-(2**7), 2**7 - 1),
    mavlink.MAV_PARAM_TYPE_UINT16: (0, 2**16 - 1),
    mavlink.MAV_PARAM_TYPE_INT16: (-(2**15), 2**15 - 1),
    mavlink.MAV_PARAM_TYPE_UINT32: (0, 2**32 - 1),
    mavlink.MAV_PARAM_TYPE_INT32: (-(2**31), 2**31 - 1),
    mavlink.MAV_PARAM_TYPE_UINT64: (0, 2**64 - 1),
    mavlink.MAV_PARAM_TYPE_INT64: (-(2**63), 2**63 - 1),
}
_FLOAT_TYPES = (mavlink.MAV_PARAM_TYPE_REAL32, mavlink.MAV_PARAM_TYPE_REAL64)

# PARAM_VALUE.param_index of a value sent because it changed, not because it was listed
# (ArduPilot's GCS::send_parameter_value sends -1, which the uint16 field carries as 65535).
_NO_INDEX = 0xFFFF


def type_name(param_type: int) -> str:
    """Name of a MAV_PARAM_TYPE value, e.g. 6 -> "MAV_PARAM_TYPE_INT32"."""
    return enum_name("MAV_PARAM_TYPE", param_type)


def _to_float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def encode_param(value: float, param_type: int) -> float:
    """The float that carries `value` of `param_type` on the wire (C-cast encoding).

    Raises `ParamError` when the value cannot be carried exactly: a non-integer or
    out-of-range value for an integer type, an integer beyond float32 precision, a value
    beyond float32 range, or NaN/infinity.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamError(f"{value} is not a finite number")
    if param_type in _FLOAT_TYPES:
        if abs(value) > 3.4028234663852886e38:
            raise ParamError(f"{value} is outside the float32 range")
        return _to_float32(float(value))
    if param_type not in _INT_RANGES:
        raise ParamError(f"unknown parameter type {param_type}")
    low, high = _INT_RANGES[param_type]
    if value != int(value) or not low <= int(value) <= high:
        raise ParamError(f"{value} is not an integer in {low}..{high} ({type_name(param_type)})")
    encoded = float(int(value))
    if _to_float32(encoded) != encoded:
        raise ParamError(f"{int(value)} cannot be carried exactly in a float32 parameter value")
    return encoded


def decode_param(value: float, param_type: int) -> int | float:
    """The value of a `param_type` parameter that arrived as float `value` (C-cast encoding).

    Raises `ParamError` for an unknown type, or a non-finite value for an integer type.
    """
    if param_type in _FLOAT_TYPES:
        return value
    if param_type not in _INT_RANGES:
        raise ParamError(f"unknown parameter type {param_type}")
    if not math.isfinite(value):
        raise ParamError(f"{value} is not a valid {type_name(param_type)} value")
    return int(value)


def _check_name(name: str) -> None:
    if not name or len(name) > NAME_LENGTH or not name.isascii():
        raise ParamError(f"parameter name must be 1..{NAME_LENGTH} ASCII characters: {name!r}")


def _decoded(msg: MAVLinkMessage) -> ParamValue:
    try:
        return decode_param(msg.param_value, msg.param_type), msg.param_type
    except ParamError as exc:
        raise ParamError(f"{msg.param_id}: {exc}") from None


class ParamRead(RequestReply[ParamValue]):
    """Read parameter `name`; `result()` -> (value, MAV_PARAM_TYPE).

    PARAM_REQUEST_READ by name (param_index -1), answered by PARAM_VALUE (parameter.html,
    "Read Single Parameter", which has "no formal way" to say that a name does not exist).
    ArduPilot ignores a request for a name it does not have (`param_io_timer` returns without
    replying), so silence after all retries is reported as `ParamError("no parameter NAME
    ...")`, not as a timeout.
    """

    def __init__(
        self,
        name: str,
        target_system: int,
        target_component: int,
        *,
        timeout: float = 1.0,
        retries: int = 3,
        own_system: int = OWN_SYSTEM,
        own_component: int = OWN_COMPONENT,
    ) -> None:
        super().__init__(
            target_system,
            target_component,
            timeout=timeout,
            retries=retries,
            own_system=own_system,
            own_component=own_component,
        )
        _check_name(name)
        self.name = name

    def _request(self) -> MAVLinkMessage:
        return mavlink.MAVLink_param_request_read_message(
            self.target_system, self.target_component, self.name.encode("ascii"), -1
        )

    def _what(self) -> str:
        return f"read {self.name}: PARAM_VALUE"

    def _on_message(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]:
        if msg.get_type() == "PARAM_VALUE" and msg.param_id == self.name:
            try:
                self._succeed(_decoded(msg))
            except ParamError as exc:
                self._fail(exc)
        return []

    def _on_deadline(self, now: float) -> list[MAVLinkMessage]:
        if self._sends <= self.retries:
            return super()._on_deadline(now)
        self._fail(
            ParamError(f"no parameter {self.name} (no PARAM_VALUE after {self._sends} requests)")
        )
        return []


class ParamSet(RequestReply[ParamValue]):
    """Set parameter `name` to `value` and check that it stuck; `result()` -> (value, type).

    PARAM_SET, acknowledged by a PARAM_VALUE echo of the same name; "even if the write
    operation fails ... the PARAM_VALUE will be the current/unchanged parameter value"
    (parameter.html, "Write Parameters"). So if the echo differs from the value sent (beyond
    float32 rounding), the autopilot kept another value (out of range, read-only, truncated to
    an integer) and `ParamError("NAME: set to v, autopilot kept w")` is raised. An echo that
    differs could also be a stale PARAM_VALUE already on its way (a parameter list being
    streamed), so a mismatch is only final when no matching echo arrives before the current
    timeout ends. No echo after all retries: `ProtocolTimeout`
    (ArduPilot does not answer a PARAM_SET for a name it does not have).

    `param_type` None sends MAV_PARAM_TYPE_REAL32: ArduPilot converts the float to the
    parameter's own type whatever the field says; other autopilots need the right type.
    """

    def __init__(
        self,
        name: str,
        value: float,
        param_type: int | None,
        target_system: int,
        target_component: int,
        *,
        timeout: float = 1.0,
        retries: int = 3,
        own_system: int = OWN_SYSTEM,
        own_component: int = OWN_COMPONENT,
    ) -> None:
        super().__init__(
            target_system,
            target_component,
            timeout=timeout,
            retries=retries,
            own_system=own_system,
            own_component=own_component,
        )
        _check_name(name)
        self.name = name
        self.value = value
        self.param_type = mavlink.MAV_PARAM_TYPE_REAL32 if param_type is None else param_type
        try:
            self._wire_value = encode_param(value, self.param_type)
        except ParamError as exc:
            raise ParamError(f"{name}: {exc}") from None
        self._kept: ParamValue | None = None

    def _request(self) -> MAVLinkMessage:
        return mavlink.MAVLink_param_set_message(
            self.target_system,
            self.target_component,
            self.name.encode("ascii"),
            self._wire_value,
            self.param_type,
        )

    def _what(self) -> str:
        return f"set {self.name}: PARAM_VALUE"

    def _on_message(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]:
        if msg.get_type() != "PARAM_VALUE" or msg.param_id != self.name:
            return []
        try:
            echoed = _decoded(msg)
        except ParamError as exc:
            self._fail(exc)
            return []
        if math.isclose(echoed[0], self._wire_value, rel_tol=1e-6, abs_tol=1e-9):
            self._succeed(echoed)
        else:
            self._kept = echoed
        return []

    def _on_deadline(self, now: float) -> list[MAVLinkMessage]:
        if self._kept is not None:
            self._fail(
                ParamError(f"{self.name}: set to {self.value}, autopilot kept {self._kept[0]}")
            )
            return []
        return super()._on_deadline(now)


class ParamReadAll(Exchange[dict[str, ParamValue]]):
    """Read every parameter; `result()` -> {name: (value, MAV_PARAM_TYPE)} in index order.

    PARAM_REQUEST_LIST makes the autopilot stream all PARAM_VALUEs with param_index and
    param_count (parameter.html, "Read All Parameters"). Values are collected by index; once
    the stream has been quiet for `quiet_period`, the missing indices are requested one by
    one with PARAM_REQUEST_READ by index, as QGroundControl does (the spec leaves "handling of
    missing params" to the GCS), at most `batch` at a time because ArduPilot queues only 20
    pending reads (GCS_Param.cpp `param_requests`).
    Each round that brings no new value uses up one of `retries`; then `ProtocolTimeout`
    names what is missing.
    """

    def __init__(
        self,
        target_system: int,
        target_component: int,
        *,
        quiet_period: float = 1.0,
        retries: int = 3,
        batch: int = 10,
        own_system: int = OWN_SYSTEM,
        own_component: int = OWN_COMPONENT,
    ) -> None:
        super().__init__(target_system, target_component, own_system, own_component)
        self.quiet_period = quiet_period
        self.retries = retries
        self.batch = batch
        self._count: int | None = None
        self._by_index: dict[int, tuple[str, ParamValue]] = {}
        self._index_of: dict[str, int] = {}
        self._rounds = 0

    def start(self, now: float) -> list[MAVLinkMessage]:
        self._rounds = 1
        self._deadline = now + self.quiet_period
        return [self._request_list()]

    def _request_list(self) -> MAVLinkMessage:
        return mavlink.MAVLink_param_request_list_message(self.target_system, self.target_component)

    def _on_message(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]:
        if msg.get_type() != "PARAM_VALUE":
            return []
        index = msg.param_index
        if self._count is None and index < msg.param_count:
            self._count = msg.param_count
        if self._count is not None and index < self._count and index not in self._by_index:
            known = self._index_of.get(msg.param_id)
            if known is not None and known != index:
                # Names are unique in the autopilot's table: one name at two indices means
                # the listing is not one table (changed or corrupted during the download),
                # and a result keyed by name would silently lack a parameter.
                self._fail(
                    ParamError(
                        f"read all parameters: {msg.param_id} listed at indices {known} and "
                        f"{index}; the parameter table is not consistent, read it again"
                    )
                )
                return []
            try:
                self._by_index[index] = (msg.param_id, _decoded(msg))
            except ParamError as exc:
                self._fail(exc)
                return []
            self._index_of[msg.param_id] = index
            self._rounds = 1
            self._deadline = now + self.quiet_period
            if len(self._by_index) == self._count:
                self._succeed(dict(self._by_index[i] for i in sorted(self._by_index)))
        elif index == _NO_INDEX and msg.param_id in self._index_of:
            # A value that changed during the download replaces the listed one.
            try:
                value = _decoded(msg)
            except ParamError as exc:
                self._fail(exc)
                return []
            self._by_index[self._index_of[msg.param_id]] = (msg.param_id, value)
        return []

    def _on_deadline(self, now: float) -> list[MAVLinkMessage]:
        if self._rounds > self.retries:
            if self._count is None:
                what = f"no PARAM_VALUE after {self._rounds} PARAM_REQUEST_LIST"
            else:
                missing = [i for i in range(self._count) if i not in self._by_index]
                shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
                what = f"{len(missing)} of {self._count} parameters missing (indices {shown})"
            self._fail(ProtocolTimeout(f"read all parameters: {what}"))
            return []
        self._rounds += 1
        self._deadline = now + self.quiet_period
        if self._count is None:
            return [self._request_list()]
        missing = [i for i in range(self._count) if i not in self._by_index][: self.batch]
        return [
            mavlink.MAVLink_param_request_read_message(
                self.target_system, self.target_component, b"", index
            )
            for index in missing
        ]
