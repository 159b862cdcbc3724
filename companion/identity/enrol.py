"""Enrolment: a recipient's face template from one or more photos.

Each photo must show exactly one face that passes the quality gates; anything else is an
`EnrolmentError` naming the file and the reason, because a template built from the wrong
face (a bystander, a poster behind the recipient) would let the wrong person take the
parcel. The template is one 128-D embedding per photo; the verifier matches a camera frame
against the closest row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from companion.identity.errors import FaceRejected
from companion.identity.faces import FaceAnalyzer, FaceSample
from companion.identity.photos import PhotoError, decode_photo, read_photo

#: A template holds at most this many photos (each row is checked at every frame).
MAX_PHOTOS = 16


class EnrolmentError(Exception):
    """A photo that cannot enrol: `path`, a short `reason` code ("unreadable", "no-face",
    "several-faces", "too-small", "blurred", "off-angle", "no-photos", "too-many-photos")
    and a sentence."""

    def __init__(self, path: str | Path, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {reason}: {detail}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail


def enrol_image(image: np.ndarray, analyzer: FaceAnalyzer, where: str | Path) -> FaceSample:
    """The one face of a decoded photo, gated and embedded, or EnrolmentError."""
    try:
        faces = analyzer.detect(image)
        if not faces:
            raise EnrolmentError(
                where,
                "no-face",
                f"no face found (faces are looked for down to about "
                f"{analyzer.limits.min_eye_chin_px:.0f} px from eyes to chin)",
            )
        if len(faces) > 1:
            boxes = ", ".join(str(list(f.as_dict()["box"])) for f in faces[:4])
            raise EnrolmentError(
                where,
                "several-faces",
                f"{len(faces)} faces found ({boxes}); an enrolment photo must show only the "
                "recipient",
            )
        return analyzer.analyse(image, faces[0])
    except FaceRejected as exc:
        raise EnrolmentError(where, exc.reason, exc.detail) from exc


def enrol_template(paths: Sequence[str | Path], analyzer: FaceAnalyzer | None = None) -> np.ndarray:
    """The template of the photos at `paths`: shape (n, 128) float32, one row per photo, in
    order; EnrolmentError for the first photo that cannot enrol."""
    return _enrol([(path, partial(read_photo, path)) for path in paths], analyzer)


def enrol_photos(
    photos: Sequence[tuple[str, bytes]], analyzer: FaceAnalyzer | None = None
) -> np.ndarray:
    """`enrol_template` for photos that arrive as bytes, named for the errors (a file a
    dispatcher uploads to the ground service): the same checks, never a file on disk."""
    return _enrol([(name, partial(decode_photo, data, name)) for name, data in photos], analyzer)


def _enrol(
    photos: Sequence[tuple[str | Path, Callable[[], np.ndarray]]], analyzer: FaceAnalyzer | None
) -> np.ndarray:
    """The template of `photos`, each a name and how to read it (PhotoError if it cannot)."""
    if not photos:
        raise EnrolmentError("<no photos>", "no-photos", "enrolment needs at least one photo")
    if len(photos) > MAX_PHOTOS:
        raise EnrolmentError(
            "<photos>", "too-many-photos", f"{len(photos)} photos, at most {MAX_PHOTOS}"
        )
    analyzer = analyzer or FaceAnalyzer()
    rows = []
    for where, read in photos:
        try:
            image = read()
        except PhotoError as exc:
            raise EnrolmentError(where, "unreadable", exc.cause) from exc
        rows.append(enrol_image(image, analyzer, where).embedding)
    return np.stack(rows).astype(np.float32)
