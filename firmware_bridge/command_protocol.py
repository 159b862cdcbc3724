"""MAVLink command protocol: COMMAND_LONG / COMMAND_INT answered by COMMAND_ACK.

Rules from https://mavlink.io/en/services/command.html ("Command Protocol"), cited at
the code that implements them. Every capability (arming, takeoff, gripper, ...) hands its
command to one of these cores, so acknowledgement matching, retries and timeouts live here
once and callers only map the outcome onto their own result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from firmware_bridge.dialect import MAVLinkMessage, enum_name, mavlink
from firmware_bridge.errors import CommandError, ProtocolTimeout
from firmware_bridge.exchange import OWN_COMPONENT, OWN_SYSTEM, RequestReply

# MAV_RESULT_CANCELLED (6) is in common.xml but missing from pymavlink 2.4.50's dialect.
_RESULT_NAMES_MISSING = {6: "MAV_RESULT_CANCELLED"}


def result_name(result: int) -> str:
    """Name of a MAV_RESULT value, e.g. 4 -> "MAV_RESULT_FAILED"."""
    return _RESULT_NAMES_MISSING.get(result) or enum_name("MAV_RESULT", result)


def command_name(command: int) -> str:
    """Name of a MAV_CMD value, e.g. 400 -> "MAV_CMD_COMPONENT_ARM_DISARM"."""
    return enum_name("MAV_CMD", command)


@dataclass(frozen=True)
class CommandAck:
    """The final, accepting COMMAND_ACK.

    `progress` is the last percentage an IN_PROGRESS ack reported (None if the command
    never reported progress; 255 means "unknown" per the spec); `result_param2` is the
    command-specific extra value of the final ack (0 when the autopilot sends none).
    """

    result: int
    progress: int | None
    result_param2: int | None


class _Command(RequestReply[CommandAck]):
    """Shared COMMAND_ACK handling of COMMAND_LONG and COMMAND_INT.

    Phases: waiting for an ack (re-send on timeout), IN_PROGRESS (wait, never re-send),
    and waiting `temp_reject_delay` before trying again after TEMPORARILY_REJECTED.
    """

    def __init__(
        self,
        command: int,
        target_system: int,
        target_component: int,
        *,
        timeout: float,
        retries: int,
        in_progress_timeout: float,
        temp_reject_retries: int,
        temp_reject_delay: float,
        own_system: int,
        own_component: int,
    ) -> None:
        super().__init__(
            target_system,
            target_component,
            timeout=timeout,
            retries=retries,
            own_system=own_system,
            own_component=own_component,
        )
        self.command = command
        self.in_progress_timeout = in_progress_timeout
        self.temp_reject_retries = temp_reject_retries
        self.temp_reject_delay = temp_reject_delay
        self.progress: int | None = None
        self._in_progress = False
        self._retry_pending = False
        self._temp_rejects = 0

    @property
    def name(self) -> str:
        """The command's MAV_CMD name, used in every error this core raises."""
        return command_name(self.command)

    def _what(self) -> str:
        return f"{self.name}: COMMAND_ACK"

    def _on_message(self, msg: MAVLinkMessage, now: float) -> list[MAVLinkMessage]:
        # COMMAND_ACK.command names the command acknowledged (common.xml); acks of other
        # commands answer someone else's request.
        if msg.get_type() != "COMMAND_ACK" or msg.command != self.command:
            return []
        result = msg.result
        if result == mavlink.MAV_RESULT_ACCEPTED:
            self._succeed(CommandAck(result, self.progress, msg.result_param2))
        elif result == mavlink.MAV_RESULT_IN_PROGRESS:
            # "the GCS should have a much increased timeout after receiving an ACK with
            # MAV_RESULT_IN_PROGRESS" and the drone "must terminate with a COMMAND_ACK
            # containing the final result" (command.html, "Reporting Progress"). Each report
            # restarts that longer timeout. Nothing is re-sent meanwhile: a repeated command
            # "is typically treated as an update command" and could restart the operation.
            self.progress = msg.progress
            self._in_progress = True
            self._retry_pending = False
            self._deadline = now + self.in_progress_timeout
        elif result == mavlink.MAV_RESULT_TEMPORARILY_REJECTED:
            return self._temporarily_rejected(now)
        else:
            detail = f"result_param2={msg.result_param2}" if msg.result_param2 else ""
            self._fail(CommandError(self.name, result_name(result), detail))
        return []

    def _temporarily_rejected(self, now: float) -> list[MAVLinkMessage]:
        # TEMPORARILY_REJECTED: valid, but not possible right now (busy, no GPS lock yet);
        # "Retrying later should work" (MAV_RESULT, common.xml). Acks that arrive while a
        # retry is already scheduled answer earlier copies of the request: counted once.
        if self._retry_pending:
            return []
        if self._temp_rejects >= self.temp_reject_retries:
            self._fail(
                CommandError(
                    self.name,
                    result_name(mavlink.MAV_RESULT_TEMPORARILY_REJECTED),
                    f"still rejected after {self._temp_rejects} retries",
                )
            )
            return []
        self._temp_rejects += 1
        self._retry_pending = True
        self._in_progress = False
        self._deadline = now + self.temp_reject_delay
        return []

    def _on_deadline(self, now: float) -> list[MAVLinkMessage]:
        if self._retry_pending:
            # A fresh attempt after a temporary rejection gets the full set of re-sends:
            # the autopilot has just proven that the link works.
            self._retry_pending = False
            self._sends = 0
            return self._send(now)
        if self._in_progress:
            self._fail(
                ProtocolTimeout(
                    f"{self.name}: no final COMMAND_ACK within {self.in_progress_timeout:g} s"
                    " of the last IN_PROGRESS"
                )
            )
            return []
        return super()._on_deadline(now)


class CommandLong(_Command):
    """Send COMMAND_LONG and wait for its COMMAND_ACK; `result()` -> `CommandAck`.

    Raises `CommandError(name, MAV_RESULT_...)` for any result but ACCEPTED (after
    `temp_reject_retries` retries for TEMPORARILY_REJECTED) and `ProtocolTimeout` when no
    ack arrives after `retries` re-sends, or no final ack `in_progress_timeout` after the
    last IN_PROGRESS.
    """

    def __init__(
        self,
        command: int,
        params: Sequence[float],
        target_system: int,
        target_component: int,
        *,
        timeout: float = 1.0,
        retries: int = 3,
        in_progress_timeout: float = 10.0,
        temp_reject_retries: int = 3,
        temp_reject_delay: float = 0.5,
        own_system: int = OWN_SYSTEM,
        own_component: int = OWN_COMPONENT,
    ) -> None:
        super().__init__(
            command,
            target_system,
            target_component,
            timeout=timeout,
            retries=retries,
            in_progress_timeout=in_progress_timeout,
            temp_reject_retries=temp_reject_retries,
            temp_reject_delay=temp_reject_delay,
            own_system=own_system,
            own_component=own_component,
        )
        self.params = _padded(params, 7)
        self._confirmation = 0

    def _request(self) -> MAVLinkMessage:
        # "If the command drops the sender should increase the confirmation field"
        # (command.html, "Sequences"): 0 first, +1 on every re-send, saturating at 255.
        confirmation = min(self._confirmation, 255)
        self._confirmation += 1
        return mavlink.MAVLink_command_long_message(
            self.target_system, self.target_component, self.command, confirmation, *self.params
        )


class CommandInt(_Command):
    """Send COMMAND_INT and wait for its COMMAND_ACK; outcomes as `CommandLong`.

    COMMAND_INT has no confirmation field, so a re-send is the identical message. `x`, `y`
    are latitude/longitude in degrees * 1e7 for global frames.
    """

    def __init__(
        self,
        command: int,
        frame: int,
        params4: Sequence[float],
        x: int,
        y: int,
        z: float,
        target_system: int,
        target_component: int,
        *,
        timeout: float = 1.0,
        retries: int = 3,
        in_progress_timeout: float = 10.0,
        temp_reject_retries: int = 3,
        temp_reject_delay: float = 0.5,
        own_system: int = OWN_SYSTEM,
        own_component: int = OWN_COMPONENT,
    ) -> None:
        super().__init__(
            command,
            target_system,
            target_component,
            timeout=timeout,
            retries=retries,
            in_progress_timeout=in_progress_timeout,
            temp_reject_retries=temp_reject_retries,
            temp_reject_delay=temp_reject_delay,
            own_system=own_system,
            own_component=own_component,
        )
        self.frame = frame
        self.params = _padded(params4, 4)
        self.x = x
        self.y = y
        self.z = z

    def _request(self) -> MAVLinkMessage:
        # current and autocontinue are unused by COMMAND_INT (spec: "Not used").
        return mavlink.MAVLink_command_int_message(
            self.target_system,
            self.target_component,
            self.frame,
            self.command,
            0,
            0,
            *self.params,
            self.x,
            self.y,
            self.z,
        )


def _padded(params: Sequence[float], n: int) -> list[float]:
    if len(params) > n:
        raise ValueError(f"at most {n} command parameters, got {len(params)}")
    return [float(p) for p in params] + [0.0] * (n - len(params))
