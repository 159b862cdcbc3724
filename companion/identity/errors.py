"""Errors of the identity subsystem. A refused face carries a short reason code that the
verifier counts and the audit trail records, plus a sentence for people."""

from __future__ import annotations

#: Reason codes of `FaceRejected`, in the order the gates are checked.
REASONS = ("no-face", "several-faces", "too-small", "blurred", "off-angle", "bad-frame")


class FaceModelError(RuntimeError):
    """The face models cannot be used: a package is missing (the message says what to pip
    install) or a model file does not load."""


class FaceRejected(Exception):
    """A face that must not be used for a decision (too small, blurred, off-angle, ...):
    `reason` is one of `REASONS`, `detail` says by how much."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
