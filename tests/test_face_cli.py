"""`skycourier face compare A B`: the JSON verdict and the exit status for a match, a
non-match, each kind of refused photo, missing models and bad arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from companion import cli
from companion.identity.errors import FaceModelError
from tests.face_images import ancelotti, bus_man, side_by_side


@pytest.fixture
def photos(tmp_path: Path, zidane, bus) -> dict[str, Path]:
    pytest.importorskip("dlib", reason="pip install dlib-bin")
    face = ancelotti(zidane)
    images = {
        "ancelotti.jpg": face,
        "ancelotti_bright.png": cv2.convertScaleAbs(face, alpha=1.2, beta=25),
        "stranger.png": bus_man(bus),
        "two.png": side_by_side(face, bus_man(bus)),
        "blurred.png": cv2.GaussianBlur(face, (0, 0), 2.0),
    }
    paths = {}
    for name, image in images.items():
        paths[name] = tmp_path / name
        cv2.imwrite(str(paths[name]), image)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9")
    paths["corrupt.jpg"] = tmp_path / "corrupt.jpg"
    return paths


def compare(capsys, *args) -> tuple[int, dict]:
    status = cli.main(["face", "compare", *map(str, args)])
    out = capsys.readouterr().out
    return status, json.loads(out)


def test_same_person_matches(capsys, photos):
    status, result = compare(capsys, photos["ancelotti.jpg"], photos["ancelotti_bright.png"])
    assert status == 0
    assert result["match"] is True and result["distance"] < 0.2 and result["threshold"] == 0.55
    assert result["a_face"]["eye_chin_px"] > 70 and "sharpness" in result["b_face"]


def test_different_people_do_not_match(capsys, photos):
    status, result = compare(capsys, photos["ancelotti.jpg"], photos["stranger.png"])
    assert status == 1
    assert result["match"] is False and result["distance"] > 0.7


def test_threshold_option_and_config(capsys, photos, tmp_path):
    status, result = compare(
        capsys, photos["ancelotti.jpg"], photos["stranger.png"], "--threshold", "1.5"
    )
    assert status == 0 and result["threshold"] == 1.5 and result["match"]
    config = tmp_path / "c.toml"
    config.write_text("[identity]\nthreshold = 0.05\n")
    status, result = compare(
        capsys, photos["ancelotti.jpg"], photos["ancelotti_bright.png"], "--config", config
    )
    assert status == 1 and result["threshold"] == 0.05


@pytest.mark.parametrize(
    ("name", "reason", "detail"),
    [
        ("two.png", "several-faces", "2 faces found"),
        ("blurred.png", "blurred", "sharpness"),
        ("corrupt.jpg", "unreadable", "not a decodable image"),
        ("missing.jpg", "unreadable", "no such file"),
    ],
)
def test_refused_photos_say_which_and_why(capsys, photos, tmp_path, name, reason, detail):
    path = photos.get(name, tmp_path / name)
    status, result = compare(capsys, photos["ancelotti.jpg"], path)
    assert status == 3
    assert result["match"] is False and result["distance"] is None
    assert result["refused"]["photo"] == "b" and result["refused"]["path"] == str(path)
    assert result["refused"]["reason"] == reason and detail in result["refused"]["detail"]


def test_bad_threshold_is_a_usage_error(capsys, photos):
    status = cli.main(["face", "compare", str(photos["ancelotti.jpg"]), "x", "--threshold", "3"])
    assert status == 2
    assert "--threshold must be within (0, 2)" in capsys.readouterr().err


def test_missing_models_exit_4(capsys, monkeypatch, tmp_path):
    def unavailable():
        raise FaceModelError(
            "face verification needs the Python package 'dlib': pip install dlib-bin"
        )

    monkeypatch.setattr("companion.identity.faces.load_models", unavailable)
    status, result = compare(capsys, tmp_path / "a.jpg", tmp_path / "b.jpg")
    assert status == 4 and "pip install dlib-bin" in result["error"]


def test_the_parser_does_not_load_the_face_models():
    """`skycourier --help` and the other commands do not pay for dlib and the models."""
    code = (
        "import sys; from companion.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m == 'dlib' or m.startswith('companion.identity')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.stdout.strip() == "['companion.identity', 'companion.identity.commands']"
