"""The recipient check of a hand-over and the release gate.

A drop whose plan has a `HandoverStep.VERIFY_RECIPIENT` step releases its parcel only to the
person who ordered it. During that step the core takes two kinds of input for the drop:

- a `RecipientVerdict` from the identity service: it clears the release only when it is for
  this drop, was decided during this step and at most `Limits.recipient_max_age_s` ago, and
  says matched (at a distance within its threshold) AND live. A verdict that is fresh but
  refuses (no match, liveness failed, a "match" beyond the threshold) ends the hand-over: the
  parcel is flown home. A stale, early, future-dated or malformed verdict clears nothing and
  is recorded as ignored;
- a `FallbackPin`, the result of an operator's authenticated PIN for this drop: a valid one
  clears the release; `MAX_WRONG_PINS` invalid ones end the hand-over.

No clearance within `Limits.recipient_timeout_s` ends the hand-over too. The gate itself,
`release_refusal`, is asked by the Release step (the only sender of `ReleaseParcel`) before
it opens the gripper; it is the one place that decides whether a release may happen.

Everything here is journaled as numbers and words only (distances, liveness scores, frame
counts, reasons): a template, an embedding or landmarks never reach a record.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from companion.mission.inputs import FallbackPin, RecipientVerdict
from companion.mission.plan import MissionPlan

#: Invalid fallback PINs for one drop after which the hand-over ends (a guessing bound on
#: top of the operator command's own authentication).
MAX_WRONG_PINS = 3
#: Liveness figures a verdict may carry (a baseline, an extreme, a count or two).
MAX_LIVENESS_FIGURES = 8
_MAX_TEXT = 200
_MAX_NAME = 32
#: Names that could hold biometric data: a figure so named is refused, never recorded.
_BIOMETRIC_NAME = re.compile(r"template|embedding|descriptor|landmark", re.IGNORECASE)

#: The hand-over's records: journaled like every transition, and given to the runner's audit
#: hook (with every abort and the mission's end).
AUDITED_EVENTS = frozenset(
    {
        "verify-recipient",  # the check began: drop, timeout
        "recipient-verdict",  # a verdict judged: its figures, the outcome and why
        "recipient-pin",  # a fallback PIN's result judged (never the PIN)
        "recipient-ignored",  # an input that came outside its drop's check
        "cleared",  # the release is allowed: by face or PIN, from whom
        "released",  # the gripper opened
    }
)

Outcome = Literal["cleared", "refused", "ignored"]


@dataclass(frozen=True)
class Clearance:
    """Leave to release drop `drop_id`: `by` a face verdict decided at `at_s` (autopilot
    time) or a PIN given then, from `source`."""

    drop_id: str
    by: Literal["face", "pin"]
    at_s: float
    source: str


def _number(value: object) -> float | None:
    """`value` as a finite float, or None (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: object, limit: int = _MAX_TEXT) -> str:
    return str(value)[:limit]


def verdict_figures(verdict: RecipientVerdict) -> tuple[dict[str, Any], list[str]]:
    """The verdict as a record (numbers and short words only), and what is malformed in it
    (empty when nothing): whatever comes from outside the core is checked, not trusted."""
    problems: list[str] = []
    if not isinstance(verdict.drop_id, str):
        problems.append("drop_id is not text")
    decided = _number(verdict.decided_at_s)
    if decided is None:
        problems.append("decided_at_s is not a finite number")
    for name in ("matched", "live"):
        if not isinstance(getattr(verdict, name), bool):
            problems.append(f"{name} is not true or false")
    distance = _number(verdict.distance)
    if verdict.distance is not None and (distance is None or distance < 0):
        problems.append("distance is not a finite number of at least 0")
    threshold = _number(verdict.threshold)
    if threshold is None or threshold <= 0:
        problems.append("threshold is not a positive number")
    frames = verdict.frames if type(verdict.frames) is int and verdict.frames >= 0 else None
    if frames is None:
        problems.append("frames is not a count")
    liveness: dict[str, float] = {}
    pairs = verdict.liveness if isinstance(verdict.liveness, tuple | list) else None
    shape = f"liveness must be at most {MAX_LIVENESS_FIGURES} (name, number) pairs"
    if pairs is None or len(pairs) > MAX_LIVENESS_FIGURES:
        problems.append(shape)
        pairs = ()
    for pair in pairs:
        name, value = pair if isinstance(pair, tuple | list) and len(pair) == 2 else (None, None)
        number = _number(value)
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME or number is None:
            problems.append(shape)
            break
        if _BIOMETRIC_NAME.search(name):
            problems.append(f"liveness figure {name!r} is named like biometric data")
            break
        liveness[name] = round(number, 4)
    record: dict[str, Any] = {
        "drop": _text(verdict.drop_id, 64),
        "matched": verdict.matched is True,
        "live": verdict.live is True,
        "distance": None if distance is None else round(distance, 4),
        "threshold": None if threshold is None else round(threshold, 4),
        "frames": frames,
        "liveness": liveness,
        "reason": _text(verdict.reason) if isinstance(verdict.reason, str) else "",
        "decided_at_s": decided,
    }
    return record, problems


def judge_verdict(
    verdict: RecipientVerdict,
    problems: list[str],
    *,
    now: float | None,
    check_started_s: float | None,
    max_age_s: float,
) -> tuple[Outcome, str]:
    """Whether a verdict for the drop under check clears the release, ends the hand-over
    ("refused"), or is no verdict at all ("ignored"), and why. Fail safe: anything missing,
    stale or malformed never clears."""
    if problems:
        return "ignored", "malformed verdict: " + "; ".join(problems)
    if now is None or check_started_s is None:
        return "ignored", "no autopilot time yet"
    decided = float(verdict.decided_at_s)
    if decided < check_started_s:
        return "ignored", (
            f"decided at {decided:.1f} s, before this recipient check began "
            f"({check_started_s:.1f} s)"
        )
    age = now - decided
    if age > max_age_s:
        return "ignored", f"stale: decided {age:.1f} s ago (at most {max_age_s:g} s)"
    if age < -max_age_s:
        return "ignored", f"decided {-age:.1f} s ahead of the autopilot's clock"
    failures = []
    distance, threshold = verdict.distance, float(verdict.threshold)
    if not verdict.matched:
        seen = "no face" if distance is None else f"distance {distance:.3f}"
        failures.append(f"face not matched ({seen}, threshold {threshold:.3f})")
    elif distance is None:
        failures.append("a match without a distance")
    elif distance > threshold:
        failures.append(f"a match claimed at distance {distance:.3f}, above {threshold:.3f}")
    if not verdict.live:
        failures.append("liveness check failed")
    if verdict.frames < 1:
        failures.append("a verdict on no camera frames")
    if failures:
        why = ", ".join(failures)
        reason = _text(verdict.reason) if isinstance(verdict.reason, str) else ""
        return "refused", f"{why}: {reason}" if reason else why
    return "cleared", ""


def pin_record(pin: FallbackPin) -> dict[str, Any]:
    """A fallback PIN's result as a record: the drop, valid or not, and who sent it."""
    return {"drop": _text(pin.drop_id, 64), "valid": pin.valid is True, "source": _text(pin.source)}


def input_record(given: RecipientVerdict | FallbackPin) -> dict[str, Any]:
    """A verdict or PIN result as the record of an input that was not used."""
    if isinstance(given, FallbackPin):
        return {"input": "pin", **pin_record(given)}
    return {"input": "verdict", **verdict_figures(given)[0]}


def release_refusal(
    plan: MissionPlan, drop_id: str, clearance: Clearance | None, now: float | None
) -> str | None:
    """THE release gate: why drop `drop_id` may not be released now, or None when it may.

    A drop without a recipient check is released as planned (a plain delivery). A drop with
    one needs its clearance from that check: a valid PIN, or a verified, live match that is
    still fresh (at most `recipient_max_age_s` old)."""
    drop = plan.drop(drop_id)
    if drop is None:
        return f"drop {drop_id!r} is not in the plan"
    if not drop.requires_recipient:
        return None
    if clearance is None or clearance.drop_id != drop_id:
        return f"no verified, live match and no valid fallback PIN for drop {drop_id}"
    if clearance.by == "face":
        limit = plan.limits.recipient_max_age_s
        age = None if now is None else now - clearance.at_s
        if age is None or not -limit <= age <= limit:
            return f"the match for drop {drop_id} is no longer fresh"
    return None
