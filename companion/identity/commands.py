"""`skycourier face compare A B`: the distance between the faces of two photos, as JSON.

Operators use it to set `identity.threshold`: compare photos of one person and of different
people taken the way the drone's camera will see them. Each photo must show exactly one face
that passes the same gates as enrolment (size, sharpness, head pose); a photo that does not
is refused with its reason instead of a distance.

Exit status: 0 the faces match (distance <= threshold), 1 they do not, 3 a photo was refused
(unreadable, no face, several faces, too small, blurred, off-angle; `refused` in the JSON
says which photo and why), 4 the face models are unavailable (a package to pip install),
2 bad arguments (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

EXIT_MATCH, EXIT_NO_MATCH, EXIT_USAGE, EXIT_REFUSED, EXIT_MODELS = 0, 1, 2, 3, 4


def add_face_arguments(parser: argparse.ArgumentParser) -> None:
    """`face compare A B [--threshold T] [--config FILE]`."""
    sub = parser.add_subparsers(dest="face_command", required=True)
    compare = sub.add_parser(
        "compare",
        help="print the distance between the faces of two photos and whether they match (JSON)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("a", type=Path, help="first photo (JPEG, PNG, ...)")
    compare.add_argument("b", type=Path, help="second photo")
    compare.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="largest distance that counts as a match (default: identity.threshold, 0.55)",
    )
    compare.add_argument(
        "--config", type=Path, default=None, help="TOML configuration (its [identity] section)"
    )


def run_face(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Compare the two photos; print the JSON verdict (on `out`, stdout by default); return
    the exit status."""
    out = out or sys.stdout
    from companion.config import load_config
    from companion.identity.enrol import EnrolmentError, enrol_image
    from companion.identity.errors import FaceModelError
    from companion.identity.faces import FaceAnalyzer, QualityLimits
    from companion.identity.photos import PhotoError, read_photo
    from companion.identity.verify import face_distance

    config = load_config(args.config).identity
    threshold = config.threshold if args.threshold is None else args.threshold
    result: dict[str, Any] = {"a": str(args.a), "b": str(args.b), "threshold": threshold}
    if not 0 < threshold < 2:
        print(
            f"skycourier face compare: --threshold must be within (0, 2), got {threshold}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        analyzer = FaceAnalyzer(
            QualityLimits(
                min_eye_chin_px=config.min_eye_chin_px,
                min_sharpness=config.min_sharpness,
                max_yaw_deg=config.max_yaw_deg,
                max_pitch_deg=config.max_pitch_deg,
            )
        )
    except FaceModelError as exc:
        result.update(match=False, distance=None, error=str(exc))
        print(json.dumps(result), file=out)
        return EXIT_MODELS
    samples = {}
    for key in ("a", "b"):
        path = getattr(args, key)
        try:
            sample = enrol_image(read_photo(path), analyzer, path)
        except PhotoError as exc:
            refusal = {"photo": key, "path": str(path), "reason": "unreadable", "detail": exc.cause}
        except EnrolmentError as exc:
            refusal = {"photo": key, "path": str(path), "reason": exc.reason, "detail": exc.detail}
        else:
            samples[key] = sample
            result[f"{key}_face"] = {**sample.box.as_dict(), **sample.quality.as_dict()}
            continue
        result.update(match=False, distance=None, refused=refusal)
        print(json.dumps(result), file=out)
        return EXIT_REFUSED
    distance = face_distance(samples["a"].embedding[None, :], samples["b"].embedding)
    match = distance <= threshold
    result.update(distance=round(distance, 4), match=match)
    print(json.dumps(result), file=out)
    return EXIT_MATCH if match else EXIT_NO_MATCH
