"""Operator commands from the dispatcher and the drone's own control socket: verified, handed
to the flying mission, answered on the uplink, audited.

Two ways in, as for orders:

- signed commands (`companion.security.signed_commands`) published on
  ``skycourier/v1/<drone_id>/commands`` and delivered by the telemetry link's transport
  (`companion.intake.downlink.subscribe_commands`), verified in full against the dispatcher's
  key: signature, this drone, the validity window, a nonce never seen (then recorded);
- local commands through the control socket (`skycourier command hold`), which carry no
  signature: the socket's file permissions (0660, the daemon's user and group) are their
  authentication, and each gets a fresh id for its answer and its audit record.

An accepted command goes on the bus as an `OperatorCommand` (source "mqtt:<topic>" or
"control"), which the flying `MissionRunner` takes exactly as an SMS command: "abort" and
"return" both fly home (`OperatorAction.ABORT`, RTL), "land" lands where the drone is, "hold"
stops it where it is, "resume" goes on. What the mission then did (hold, resume, abort or
why it ignored the request) is journaled and goes up as its own mission event naming the
source. A command when no mission flies is refused as "no-mission" (nothing is done); one
naming an order (`order_id`) while another order's mission flies is refused as
"wrong-order" (an order is flown as the mission of the same id).

Every command gets one answer, a `CommandAck`: back to the control socket's client and on
the bus, where the telemetry publisher sends it up as a ``command-accepted`` or
``command-refused`` event with the reason, the message and the command's id. Commands that
were authenticated (a valid signature or the control socket) are also recorded in the audit
trail, accepted or refused; a payload nobody authenticated is answered and logged but not
audited, so that whoever can publish on the broker cannot fill the signed trail. A failing
audit trail never stops a command (the flight's safety comes first); it is logged.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from companion.bus import Bus
from companion.mission.events import MissionEvent
from companion.mission.inputs import OperatorAction, OperatorCommand
from companion.mission.journal import FINISHED_EVENT
from companion.security.orders import ORDER_ID_PATTERN, NonceStore
from companion.security.signed_commands import (
    COMMANDS,
    CommandError,
    SignedCommand,
    decode_command,
    verify_command,
)

log = logging.getLogger(__name__)

#: What each command asks of the mission core; "return" is the SMS "abort": home by RTL.
ACTIONS = {
    "abort": OperatorAction.ABORT,
    "return": OperatorAction.ABORT,
    "land": OperatorAction.LAND,
    "hold": OperatorAction.HOLD,
    "resume": OperatorAction.RESUME,
}
CONTROL_SOURCE = "control"
#: How long a control-socket client waits for the mission's reaction to its command.
CONTROL_REACTION_WAIT_S = 5.0
#: Receives an audited record: its kind and data (numbers and words only).
AuditHook = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class CommandAck:
    """The answer to one command. `reason` is "accepted", one of the verifier's reasons
    (`CommandError.reason`), "no-dispatcher-key", "no-mission" or "wrong-order"; `message`
    says it in words; `command_id` the signed command's nonce (when the bytes held one) or
    the local command's fresh id; `mission_id` the mission it was given to."""

    accepted: bool
    reason: str
    message: str
    source: str
    command: str | None = None
    command_id: str | None = None
    order_id: str | None = None
    mission_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CommandIntake:
    """Verifies, hands on and answers operator commands for `drone_id`. Without
    `dispatcher_public` every signed command is refused; without `nonces` (the store could
    not be opened: `nonce_problem` says why) too, as a replay could not be told apart.
    Local commands need neither."""

    def __init__(
        self,
        bus: Bus,
        *,
        dispatcher_public: Ed25519PublicKey | None,
        drone_id: str,
        nonces: NonceStore | None,
        nonce_problem: str = "the command nonce store is not open",
        audit: AuditHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self._dispatcher = dispatcher_public
        self._drone_id = drone_id
        self._nonces = nonces
        self._nonce_problem = nonce_problem
        self._audit = audit
        self._clock = clock
        self._cond = threading.Condition()
        self._mission: MissionEvent | None = bus.latest(MissionEvent)
        self._reactions: list[MissionEvent] = []
        self._reaction_count = 0
        self._unsubscribe = bus.subscribe(MissionEvent, self._on_mission_event)

    def close(self) -> None:
        self._unsubscribe()

    # -- the ways in -------------------------------------------------------------------------

    def submit(self, blob: bytes, source: str) -> CommandAck:
        """Verify one signed command and hand it on; the answer, also published."""
        try:
            command = self._verify(blob)
        except CommandError as err:
            ack = CommandAck(False, err.reason, err.message, source, *_named(blob))
            # A verified signature makes a refusal the dispatcher's business: audited.
            authenticated = err.reason not in _UNAUTHENTICATED
            return self._answer(ack, {} if authenticated else None)
        ack = self._act(command.command, command.order_id, source, command.command_id)
        signed = {"issued_at": command.issued_at, "valid_for_s": command.valid_for_s,
                  "digest": command.digest}  # fmt: skip
        return self._answer(ack, signed)

    def local(self, command: str, order_id: str | None, source: str = CONTROL_SOURCE) -> CommandAck:
        """One command from the control socket (authenticated by its permissions)."""
        command_id = f"{source}-{secrets.token_hex(8)}"
        if not isinstance(command, str) or command not in COMMANDS:
            why = f"unknown command {command!r:.40}: one of {', '.join(COMMANDS)}"
            return self._answer(CommandAck(False, "malformed", why, source, None, command_id), {})
        if order_id is not None and (
            not isinstance(order_id, str) or not ORDER_ID_PATTERN.fullmatch(order_id)
        ):
            why = f"order id {order_id!r:.80} does not match {ORDER_ID_PATTERN.pattern}"
            ack = CommandAck(False, "malformed", why, source, command, command_id)
            return self._answer(ack, {})
        return self._answer(self._act(command, order_id, source, command_id), {})

    def control(self, command: str, order_id: str | None, wait_s: float) -> dict[str, Any]:
        """The control socket's answer to a local command: its `CommandAck` and, when it was
        accepted, the mission's reaction (the journaled event that answers it) if one came
        within `wait_s`, else None."""
        with self._cond:
            seen = self._reaction_count
        ack = self.local(command, order_id)
        answer = ack.as_dict()
        if ack.accepted:
            reaction = self._reaction(ack.source, seen, wait_s)
            answer["reaction"] = None if reaction is None else {
                "mission_id": reaction.mission_id,
                "phase": reaction.phase.value,
                "event": reaction.event,
                "detail": dict(reaction.detail),
            }  # fmt: skip
        return answer

    # -- deciding ----------------------------------------------------------------------------

    def _verify(self, blob: bytes) -> SignedCommand:
        if self._dispatcher is None:
            raise CommandError(
                "no-dispatcher-key",
                "this drone has no dispatcher key ([security] dispatcher_pub): every signed "
                "command is refused",
            )
        checked = verify_command(
            blob,
            dispatcher_public=self._dispatcher,
            drone_id=self._drone_id,
            now=self._clock(),
            # Without the store every other check still runs, so the refusal names the
            # first thing wrong, and one that gets this far is the dispatcher's.
            nonces=self._nonces if self._nonces is not None else NonceStore(None),
        )
        if self._nonces is None:
            raise CommandError("nonce-store", self._nonce_problem)
        return checked

    def _act(self, command: str, order_id: str | None, source: str, command_id: str) -> CommandAck:
        """Give an authenticated command to the flying mission, or refuse it saying why."""
        with self._cond:
            mission = self._mission
        if mission is None or mission.event == FINISHED_EVENT:
            return CommandAck(False, "no-mission", "no mission flying: nothing done", source,
                              command, command_id, order_id)  # fmt: skip
        if order_id is not None and order_id != mission.mission_id:
            why = f"the command is for order {order_id!r}, but mission {mission.mission_id!r} flies"
            return CommandAck(False, "wrong-order", why, source, command, command_id, order_id,
                              mission.mission_id)  # fmt: skip
        self.bus.publish(OperatorCommand(ACTIONS[command], source))
        return CommandAck(
            True, "accepted",
            f"given to mission {mission.mission_id}; its answer follows as a mission event",
            source, command, command_id, order_id, mission.mission_id,
        )  # fmt: skip

    def _answer(self, ack: CommandAck, audited: dict[str, Any] | None) -> CommandAck:
        """Log, publish and (with `audited` extra data; None: not audited) audit `ack`."""
        level = logging.INFO if ack.accepted else logging.WARNING
        log.log(level, "command %s (%s) from %s: %s (%s)", ack.command or "?",
                ack.command_id or "?", ack.source, ack.reason, ack.message)  # fmt: skip
        self.bus.publish(ack)
        if audited is not None and self._audit is not None:
            kind = "command-accepted" if ack.accepted else "command-refused"
            try:
                self._audit(kind, {**ack.as_dict(), **audited})
            except Exception as exc:  # the command has been acted on; the trail's failure
                log.error("command %s not audited: %s", ack.command_id, exc)  # is said loudly
        return ack

    # -- the mission's side ------------------------------------------------------------------

    def _on_mission_event(self, event: MissionEvent) -> None:
        with self._cond:
            self._mission = event
            if _operator_source(event) is not None:
                self._reactions.append(event)
                self._reaction_count += 1
                del self._reactions[:-16]
            self._cond.notify_all()

    def _reaction(self, source: str, seen: int, wait_s: float) -> MissionEvent | None:
        """The first mission event answering `source` after the `seen`-th reaction."""

        def find() -> MissionEvent | None:
            new = min(self._reaction_count - seen, len(self._reactions))
            recent = self._reactions[-new:] if new > 0 else []
            return next((e for e in recent if _operator_source(e) == source), None)

        with self._cond:
            self._cond.wait_for(lambda: find() is not None, timeout=wait_s)
            return find()


#: Refusals reached before the signature was checked: nobody vouches for these bytes.
_UNAUTHENTICATED = frozenset({"malformed", "version", "unsigned", "signature", "no-dispatcher-key"})


def _named(blob: bytes) -> tuple[str | None, str | None, str | None]:
    """The command, command id and order id the bytes name, to name a refusal (None where
    they name none). Unverified: for answers only, never for a decision."""
    try:
        claimed = decode_command(blob)[0]
    except CommandError:
        return None, None, None
    return claimed.command, claimed.command_id, claimed.order_id


def _operator_source(event: MissionEvent) -> str | None:
    """The operator source a mission event answers: `source` in its detail (a resume, an
    ignored request), or inside the reason of an operator hold, abort or land
    ("operator hold (control)")."""
    detail = event.detail
    source = detail.get("source")
    if isinstance(source, str):
        return source
    reason = detail.get("reason")
    if isinstance(reason, str) and reason.startswith("operator ") and reason.endswith(")"):
        return reason[reason.find("(") + 1 : -1]
    return None
