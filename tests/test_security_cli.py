"""`skycourier keys`, `order` and `audit`: the dispatcher's and the drone's side end to end,
each refusal one line naming the file or the reason, with exit status 1."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from companion.cli import main
from companion.security.audit import AuditTrail
from companion.security.keys import (
    DISPATCHER_PUB,
    DRONE_PUB,
    DRONE_SEAL_KEY,
    KeyStore,
    fingerprint,
    load_drone_public,
)
from companion.security.orders import NonceStore, create_order, verify_order


def _run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    dispatcher, drone = tmp_path / "dispatcher", tmp_path / "drone"
    assert _run(capsys, "keys", "init", "--dir", dispatcher, "--dispatcher")[0] == 0
    assert _run(capsys, "keys", "init", "--dir", drone, "--drone", "sky-1")[0] == 0
    return dispatcher, drone


@pytest.fixture
def template_npy(tmp_path: Path) -> Path:
    path = tmp_path / "template.npy"
    np.save(path, np.random.default_rng(3).normal(0, 0.1, (2, 128)).astype(np.float32))
    return path


def _create(capsys, keys, source: list[str | Path], out: Path, *extra: str) -> tuple[int, str, str]:
    dispatcher, drone = keys
    return _run(
        capsys,
        "order", "create",
        "--dispatcher-keys", dispatcher,
        "--drone-pub", drone / DRONE_PUB,
        *source,
        "--lat", "-35.3600712", "--lon", "149.1691384", "--alt", "3.5",
        "--expires-in", "3600",
        "--out", out,
        *extra,
    )  # fmt: skip


def _inspect(capsys, keys, order: Path, *extra: str | Path) -> tuple[int, str, str]:
    dispatcher, drone = keys
    return _run(
        capsys,
        "order", "inspect", order,
        "--keys", drone,
        "--dispatcher-pub", dispatcher / DISPATCHER_PUB,
        *extra,
    )  # fmt: skip


def test_keys_init_show_and_export(
    keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dispatcher, drone = keys
    code, out, err = _run(capsys, "keys", "show", "--dir", drone)
    assert code == 0, err
    shown = json.loads(out)
    store = KeyStore(drone)
    public = store.drone_public()
    assert shown["drone"]["drone_id"] == "sky-1"
    assert shown["drone"]["identity_ed25519"]["fingerprint"] == fingerprint(public.identity)
    assert shown["drone"]["seal_x25519"]["fingerprint"] == fingerprint(public.seal)
    assert "dispatcher" not in shown
    # Never private material: no PEM, no line of a private key file, not the MAVLink secret.
    assert "PRIVATE" not in out
    for name in ("drone-identity.pem", "drone-seal.pem"):
        body = (drone / name).read_text().splitlines()[1]
        assert body not in out
    assert store.mavlink_signing_secret().hex() not in out
    code, out, _ = _run(capsys, "keys", "show", "--dir", dispatcher)
    assert code == 0 and json.loads(out)["dispatcher"]["signing_ed25519"]["fingerprint"]

    exported = tmp_path / "for-dispatcher" / "sky-1.pub.json"
    exported.parent.mkdir()
    code, out, err = _run(capsys, "keys", "export", "--dir", drone, "--drone", "--out", exported)
    assert code == 0, err
    assert stat.S_IMODE(exported.stat().st_mode) == 0o644
    assert load_drone_public(exported).drone_id == "sky-1"
    code, _, err = _run(capsys, "keys", "export", "--dir", drone, "--drone", "--out", exported)
    assert code == 1 and "already exists; refusing to overwrite" in err


def test_keys_refusals_name_the_file(
    keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, drone = keys
    code, _, err = _run(capsys, "keys", "init", "--dir", drone, "--drone", "sky-1")
    assert code == 1
    assert "skycourier keys init: " in err and "refusing to overwrite keys" in err
    code, _, err = _run(capsys, "keys", "show", "--dir", tmp_path / "empty")
    assert code == 1 and "no keys here" in err
    (drone / DRONE_SEAL_KEY).chmod(0o640)
    code, _, err = _run(capsys, "keys", "show", "--dir", drone)
    assert code == 1
    assert f"mode 0640 lets the group or others read it; must be 0600 (chmod 600 {drone}" in err


def test_order_create_then_inspect_without_using_the_nonce(
    keys: tuple[Path, Path],
    template_npy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    order = tmp_path / "order.json"
    code, out, err = _create(
        capsys, keys, ["--template-npy", template_npy], order, "--pin", "135790"
    )
    assert code == 0, err
    created = json.loads(out)
    assert created["drone_id"] == "sky-1" and created["recipient"]["rows"] == 2
    assert created["drop"] == {"lat": -35.3600712, "lon": 149.1691384, "alt_m": 3.5}
    assert created["expires"] - created["not_before"] == 3600
    assert stat.S_IMODE(order.stat().st_mode) == 0o600

    nonces = tmp_path / "nonces.json"
    for _ in range(2):  # a dry check: the same order inspects again
        code, out, err = _inspect(capsys, keys, order, "--nonces", nonces)
        assert code == 0, err
        shown = json.loads(out)
        assert shown["verified"] and shown["replay_checked"]
        assert shown["order"]["order_id"] == created["order_id"]
        assert shown["order"]["recipient"]["opens_with_this_drone"] is True
        assert shown["order"]["pin"] is True and "135790" not in out
    assert not nonces.exists()
    template = np.load(template_npy)
    assert f"{float(template[0, 0]):.6f}"[:7] not in out

    # Once the drone has accepted it, inspect reports the replay.
    dispatcher, drone = keys
    store = KeyStore(drone)
    verify_order(
        order.read_bytes(),
        dispatcher_public=KeyStore(dispatcher).dispatcher_public(),
        drone_id=store.drone_id(),
        now=created["not_before"] + 1,
        nonces=NonceStore(nonces),
    )
    code, out, err = _inspect(capsys, keys, order, "--nonces", nonces)
    assert code == 1 and out == ""
    assert "skycourier order inspect: order refused (replay)" in err

    code, _, err = _create(capsys, keys, ["--template-npy", template_npy], order)
    assert code == 1 and "already exists; refusing to overwrite" in err


def test_order_inspect_refusals(
    keys: tuple[Path, Path],
    template_npy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    order = tmp_path / "order.json"
    assert _create(capsys, keys, ["--template-npy", template_npy], order)[0] == 0
    dispatcher, _ = keys

    tampered = tmp_path / "tampered.json"
    doc = json.loads(order.read_bytes())
    doc["order"]["drop"]["lat_e7"] += 100
    tampered.write_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    code, _, err = _inspect(capsys, keys, tampered)
    assert code == 1 and "order refused (signature)" in err

    other_drone = tmp_path / "other-drone"
    KeyStore(other_drone).init_drone("sky-2")
    code, _, err = _inspect(capsys, (dispatcher, other_drone), order)
    assert code == 1 and "order refused (wrong-drone)" in err

    same_id_other_keys = tmp_path / "impostor-drone"
    KeyStore(same_id_other_keys).init_drone("sky-1")
    code, _, err = _inspect(capsys, (dispatcher, same_id_other_keys), order)
    assert code == 1 and "order refused (sealed)" in err

    other_dispatcher = tmp_path / "other-dispatcher"
    KeyStore(other_dispatcher).init_dispatcher()
    code, _, err = _inspect(capsys, (other_dispatcher, keys[1]), order)
    assert code == 1 and "order refused (signature)" in err

    expired = tmp_path / "expired.json"
    drone = load_drone_public(keys[1] / DRONE_PUB)
    expired.write_bytes(
        create_order(
            KeyStore(dispatcher).dispatcher_signing_key(),
            drone_id=drone.drone_id,
            seal_public=drone.seal,
            order_id="old",
            lat=1.0,
            lon=2.0,
            template=np.load(template_npy),
            not_before=1_000_000,
            expires=1_003_600,
        )
    )
    code, _, err = _inspect(capsys, keys, expired)
    assert code == 1 and "order refused (expired)" in err

    code, _, err = _inspect(capsys, keys, tmp_path / "missing.json")
    assert code == 1 and "missing.json: cannot be read" in err


def test_order_create_refusals(
    keys: tuple[Path, Path],
    template_npy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    npy = ["--template-npy", template_npy]
    out = tmp_path / "o.json"
    cases = [
        (["--window", "12"], "--window: give START,END"),
        (["--window", "tomorrow,later"], "neither Unix seconds nor an ISO 8601 time"),
        (["--window", "2026-01-01T10:00,2026-01-01T11:00"], "has no time zone"),
        (["--window", "1000,2000"], "--window: must lie between now and the expiry"),
        (["--pin", "12"], "a fallback PIN is 4 to 12 digits"),
        (["--order-id", "a b"], "order.order_id: must match"),
    ]
    for extra, message in cases:
        code, _, err = _create(capsys, keys, npy, out, *extra)
        assert code == 1 and message in err, (extra, err)
    code, _, err = _run(
        capsys, "order", "create", "--dispatcher-keys", tmp_path / "none",
        "--drone-pub", keys[1] / DRONE_PUB, *npy, "--lat", "1", "--lon", "2",
        "--expires-in", "60", "--out", out,
    )  # fmt: skip
    assert code == 1 and f"{tmp_path / 'none' / 'dispatcher-signing.pem'}: missing" in err
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    code, _, err = _create(capsys, keys, ["--template-npy", bad], out)
    assert code == 1 and "bad.npy: not a readable .npy array" in err
    np.save(bad, np.zeros((2, 64), np.float32))
    code, _, err = _create(capsys, keys, ["--template-npy", bad], out)
    assert code == 1 and "a template is (n, 128)" in err
    assert not out.exists()


def test_order_create_from_photos_needs_the_enrolment_module(
    keys: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "companion.identity.enrol", None)  # as if not installed
    photo = tmp_path / "face.jpg"
    photo.write_bytes(b"")
    code, _, err = _create(capsys, keys, ["--photo", photo], tmp_path / "o.json")
    assert code == 1
    assert "face enrolment is unavailable" in err and "--template-npy" in err


def test_order_create_without_the_face_models_says_so(
    keys: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import companion.identity.enrol as enrol
    from companion.identity.errors import FaceModelError

    def no_models(paths: object) -> None:
        raise FaceModelError("dlib is not installed: pip install dlib-bin")

    monkeypatch.setattr(enrol, "enrol_template", no_models)
    photo = tmp_path / "face.jpg"
    photo.write_bytes(b"")
    code, _, err = _create(capsys, keys, ["--photo", photo], tmp_path / "o.json")
    assert code == 1 and "pip install dlib-bin" in err and "--template-npy" in err
    assert not (tmp_path / "o.json").exists()


def test_order_create_from_real_photos(
    keys: tuple[Path, Path], tmp_path: Path, capsys, sources
) -> None:
    """The real enrolment (dlib): a photo with one face makes an order; one without a face
    or a corrupt file is refused naming the file."""
    pytest.importorskip("dlib", reason="dlib-bin is not installed")
    pytest.importorskip("face_recognition_models", reason="face_recognition_models missing")
    from sim.faces import ZIDANE_FACE_CROP

    zidane = cv2.imread(str(sources.images[1]))
    x1, y1, x2, y2 = ZIDANE_FACE_CROP
    face = tmp_path / "recipient.png"
    cv2.imwrite(str(face), zidane[y1:y2, x1:x2])
    order = tmp_path / "order.json"
    code, out, err = _create(capsys, keys, ["--photo", face], order)
    assert code == 0, err
    assert json.loads(out)["recipient"]["rows"] == 1
    code, out, err = _inspect(capsys, keys, order)
    assert code == 0, err
    assert json.loads(out)["order"]["recipient"]["opens_with_this_drone"] is True

    empty = tmp_path / "wall.png"
    cv2.imwrite(str(empty), np.full((300, 300, 3), 128, np.uint8))
    code, _, err = _create(capsys, keys, ["--photo", empty], tmp_path / "o2.json")
    assert code == 1 and f"{empty}: no-face" in err
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, _, err = _create(
        capsys, keys, ["--photo", face, "--photo", corrupt], tmp_path / "o3.json"
    )
    assert code == 1 and f"{corrupt}: unreadable" in err
    assert not (tmp_path / "o2.json").exists() and not (tmp_path / "o3.json").exists()


def test_audit_verify(
    keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, drone = keys
    trail_path = tmp_path / "audit.jsonl"
    with AuditTrail(trail_path, KeyStore(drone).drone_identity_key()) as trail:
        trail.append("order-accepted", order_id="o-1")
        trail.append("face-check", distance=0.38, match=True)
        head = trail.append("released")["hash"]
    pub = drone / DRONE_PUB
    code, out, _ = _run(capsys, "audit", "verify", trail_path, "--drone-pub", pub)
    assert code == 0
    assert out.strip() == f"OK: 3 records, head {head} (signatures verified)"
    code, out, _ = _run(capsys, "audit", "verify", trail_path, "--expect-head", head)
    assert code == 0 and "signatures not checked" in out

    other = tmp_path / "other"
    KeyStore(other).init_drone("sky-9")
    code, out, _ = _run(capsys, "audit", "verify", trail_path, "--drone-pub", other / DRONE_PUB)
    assert code == 1 and out.startswith("BAD: line 1: signature does not verify")

    lines = trail_path.read_bytes().splitlines(keepends=True)
    trail_path.write_bytes(lines[0] + lines[2])
    code, out, _ = _run(capsys, "audit", "verify", trail_path, "--drone-pub", pub)
    assert code == 1 and out.startswith("BAD: line 2: seq 2 where 1 was expected")

    trail_path.write_bytes(b"".join(lines[:2]))
    code, out, _ = _run(capsys, "audit", "verify", trail_path, "--expect-head", head)
    assert code == 1 and "records were removed from its end" in out

    code, _, err = _run(capsys, "audit", "verify", tmp_path / "none.jsonl")
    assert code == 1 and "none.jsonl: cannot be read" in err


def test_the_parser_does_not_load_the_crypto() -> None:
    """`skycourier --help` and the other commands do not pay for the security imports."""
    code = (
        "import sys; from companion.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.startswith('companion.security')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.stdout.strip() == "['companion.security', 'companion.security.commands']"
