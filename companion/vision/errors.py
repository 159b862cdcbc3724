"""Typed errors of the vision subsystem, each carrying the path and the cause, so the daemon
can log one clear line and keep running instead of crashing on a bad file."""

from __future__ import annotations

from pathlib import Path


class VisionError(Exception):
    """Base of the vision errors: `path` is the file concerned (or a description such as
    `<array>`), `cause` the reason in words."""

    def __init__(self, path: str | Path, cause: str) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = str(path)
        self.cause = cause


class ModelError(VisionError):
    """A model file that is missing, corrupt, or not a detector graph built by `models/`."""


class ImageError(VisionError):
    """An image that cannot be read or decoded, or an array that is not an image."""
