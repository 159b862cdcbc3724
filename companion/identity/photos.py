"""Reading a photo from disk for enrolment or `skycourier face compare`: every way a file
can be bad (missing, not a file, unreadable, empty, huge, not an image, cut short) is a
`PhotoError` naming the file and the reason, never a crash or a half-decoded picture."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

#: Larger files are refused before decoding (a phone photo is a few MB).
MAX_PHOTO_BYTES = 32 * 1024 * 1024
#: Larger images are refused after reading the header-sized decode (decompression bombs).
MAX_PHOTO_PIXELS = 50_000_000

_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"


class PhotoError(Exception):
    """A photo that cannot be used: `path` and `cause` in words."""

    def __init__(self, path: str | Path, cause: str) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = str(path)
        self.cause = cause


def _truncation(data: bytes) -> str | None:
    """Why the bytes are an image cut short, or None. JPEG and PNG decoders fill a missing
    tail with grey and only warn, which would enrol half a face."""
    if data.startswith(_JPEG_START) and _JPEG_END not in data[-1024:]:
        return "truncated JPEG (no end-of-image marker)"
    if data.startswith(_PNG_START) and _PNG_END not in data[-64:]:
        return "truncated PNG (no IEND chunk)"
    return None


def decode_photo(data: bytes, where: str | Path = "<bytes>") -> np.ndarray:
    """A BGR uint8 image from encoded bytes, or PhotoError."""
    if not data:
        raise PhotoError(where, "empty file (0 bytes)")
    if len(data) > MAX_PHOTO_BYTES:
        raise PhotoError(where, f"{len(data)} bytes, over the {MAX_PHOTO_BYTES} byte limit")
    cut = _truncation(data)
    if cut:
        raise PhotoError(where, cut)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise PhotoError(where, f"not a decodable image ({len(data)} bytes)")
    if image.shape[0] * image.shape[1] > MAX_PHOTO_PIXELS:
        raise PhotoError(
            where, f"{image.shape[1]} x {image.shape[0]} pixels, over {MAX_PHOTO_PIXELS}"
        )
    return image


def read_photo(path: str | Path) -> np.ndarray:
    """A BGR uint8 image from `path`, or PhotoError naming the file and the reason."""
    path = Path(path)
    if not path.exists():
        raise PhotoError(path, "no such file")
    if not path.is_file():
        raise PhotoError(path, "not a regular file")
    try:
        size = path.stat().st_size
        if size > MAX_PHOTO_BYTES:
            raise PhotoError(path, f"{size} bytes, over the {MAX_PHOTO_BYTES} byte limit")
        data = path.read_bytes()
    except OSError as exc:
        raise PhotoError(path, f"cannot read: {exc.strerror or exc}") from exc
    return decode_photo(data, path)
