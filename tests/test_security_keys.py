"""Key files: created 0600 in a 0700 directory, never overwritten, loaded with errors that
name the file and the reason (missing, permissions, corrupt, wrong key type)."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.security.keys import (
    DISPATCHER_FILES,
    DISPATCHER_KEY,
    DISPATCHER_PUB,
    DRONE_FILES,
    DRONE_IDENTITY_KEY,
    DRONE_PUB,
    DRONE_SEAL_KEY,
    MAVLINK_SECRET,
    DronePublic,
    KeyFileError,
    KeyStore,
    fingerprint,
    load_dispatcher_public,
    load_drone_public,
    raw_public,
)


@functools.cache
def _drone_public_json() -> bytes:
    return DronePublic(
        "sky-1",
        Ed25519PrivateKey.generate().public_key(),
        X25519PrivateKey.generate().public_key(),
    ).to_json()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def drone_store(tmp_path: Path) -> KeyStore:
    store = KeyStore(tmp_path / "drone")
    store.init_drone("sky-1")
    return store


def test_drone_keys_are_created_private_and_load_back(tmp_path: Path) -> None:
    old = os.umask(0)  # a permissive umask must not widen the modes
    try:
        store = KeyStore(tmp_path / "keys")
        public = store.init_drone("sky-1")
    finally:
        os.umask(old)
    assert _mode(store.path) == 0o700
    assert sorted(p.name for p in store.path.iterdir()) == sorted(DRONE_FILES)
    for name in DRONE_FILES:
        assert _mode(store.file(name)) == 0o600, name
    assert store.drone_id() == "sky-1"
    assert raw_public(store.drone_identity_key().public_key()) == raw_public(public.identity)
    assert raw_public(store.drone_seal_key().public_key()) == raw_public(public.seal)
    derived = store.drone_public()
    assert derived.drone_id == "sky-1"
    assert raw_public(derived.identity) == raw_public(public.identity)
    assert raw_public(derived.seal) == raw_public(public.seal)
    exported = load_drone_public(store.file(DRONE_PUB))
    assert exported.drone_id == "sky-1"
    assert raw_public(exported.identity) == raw_public(public.identity)
    assert raw_public(exported.seal) == raw_public(public.seal)
    secret = store.mavlink_signing_secret()
    assert len(secret) == 32
    other = KeyStore(tmp_path / "other")
    other.init_drone("sky-2")
    assert other.mavlink_signing_secret() != secret
    assert raw_public(other.drone_seal_key().public_key()) != raw_public(public.seal)


def test_dispatcher_key_is_created_and_its_public_file_matches(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "dispatch")
    public = store.init_dispatcher()
    assert sorted(p.name for p in store.path.iterdir()) == sorted(DISPATCHER_FILES)
    assert _mode(store.file(DISPATCHER_KEY)) == 0o600
    assert raw_public(store.dispatcher_public()) == raw_public(public)
    assert raw_public(load_dispatcher_public(store.file(DISPATCHER_PUB))) == raw_public(public)
    message = b"order bytes"
    public.verify(store.dispatcher_signing_key().sign(message), message)


def test_init_refuses_to_overwrite_and_writes_nothing(
    drone_store: KeyStore, tmp_path: Path
) -> None:
    before = {p.name: p.read_bytes() for p in drone_store.path.iterdir()}
    with pytest.raises(KeyFileError, match="already exists; refusing to overwrite"):
        drone_store.init_drone("sky-1")
    assert {p.name: p.read_bytes() for p in drone_store.path.iterdir()} == before

    # One file of a drone's set already there: nothing else is created either.
    partial = KeyStore(tmp_path / "partial")
    partial.path.mkdir(mode=0o700)
    (partial.path / MAVLINK_SECRET).write_text("x")
    with pytest.raises(KeyFileError) as info:
        partial.init_drone("sky-1")
    assert info.value.path == partial.file(MAVLINK_SECRET)
    assert [p.name for p in partial.path.iterdir()] == [MAVLINK_SECRET]


def test_a_drone_and_the_dispatcher_can_share_a_directory(drone_store: KeyStore) -> None:
    drone_store.init_dispatcher()
    assert drone_store.has_drone() and drone_store.has_dispatcher()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        drone_store.init_dispatcher()


def test_init_refuses_a_key_directory_others_can_enter(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o755)
    with pytest.raises(KeyFileError, match=rf"mode 0755 .*chmod 700 {re.escape(str(folder))}"):
        KeyStore(folder).init_dispatcher()
    assert list(folder.iterdir()) == []


def test_init_refuses_a_bad_drone_id(tmp_path: Path) -> None:
    for bad in ("", "a b", "x" * 65, "sky/1", "ü"):
        with pytest.raises(ValueError, match="drone id must be"):
            KeyStore(tmp_path / "k").init_drone(bad)
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
@pytest.mark.parametrize(
    ("name", "load"),
    [
        (DRONE_IDENTITY_KEY, KeyStore.drone_identity_key),
        (DRONE_SEAL_KEY, KeyStore.drone_seal_key),
        (MAVLINK_SECRET, KeyStore.mavlink_signing_secret),
        ("drone-id", KeyStore.drone_id),
    ],
)
def test_private_files_others_can_read_are_refused(
    drone_store: KeyStore, name: str, load, mode: int
) -> None:
    path = drone_store.file(name)
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load(drone_store)
    assert info.value.path == path
    assert str(info.value) == (
        f"{path}: mode {mode:04o} lets the group or others read it; must be 0600 (chmod 600 {path})"
    )
    path.chmod(0o400)  # stricter than 0600 is fine
    load(drone_store)


def test_missing_key_file_names_the_file(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "empty")
    for load, name in (
        (store.dispatcher_signing_key, DISPATCHER_KEY),
        (store.drone_identity_key, DRONE_IDENTITY_KEY),
        (store.drone_seal_key, DRONE_SEAL_KEY),
        (store.mavlink_signing_secret, MAVLINK_SECRET),
    ):
        with pytest.raises(KeyFileError, match=rf"{re.escape(str(store.file(name)))}: missing"):
            load()
    with pytest.raises(KeyFileError, match="missing"):
        load_drone_public(tmp_path / "nope.pub.json")


def test_corrupt_key_files_are_named(drone_store: KeyStore) -> None:
    drone_store.file(DRONE_IDENTITY_KEY).write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(KeyFileError, match=r"drone-identity\.pem: corrupt: not a PEM Ed25519"):
        drone_store.drone_identity_key()
    drone_store.file(MAVLINK_SECRET).write_text("00ff\n")
    with pytest.raises(KeyFileError, match=r"mavlink-signing\.key: corrupt: 2 bytes"):
        drone_store.mavlink_signing_secret()
    drone_store.file(MAVLINK_SECRET).write_text("not hex at all\n")
    with pytest.raises(KeyFileError, match="corrupt: not hexadecimal"):
        drone_store.mavlink_signing_secret()
    drone_store.file(DRONE_SEAL_KEY).write_bytes(os.urandom(9000))
    with pytest.raises(KeyFileError, match="no key file is over 4096"):
        drone_store.drone_seal_key()


def test_wrong_key_type_is_named(drone_store: KeyStore, tmp_path: Path) -> None:
    # The seal key (X25519) where the identity key (Ed25519) belongs, and the other way round.
    seal = drone_store.file(DRONE_SEAL_KEY).read_bytes()
    identity = drone_store.file(DRONE_IDENTITY_KEY).read_bytes()
    drone_store.file(DRONE_IDENTITY_KEY).write_bytes(seal)
    drone_store.file(DRONE_SEAL_KEY).write_bytes(identity)
    with pytest.raises(KeyFileError, match="wrong key type: holds an X25519 key, expected Ed25519"):
        drone_store.drone_identity_key()
    with pytest.raises(KeyFileError, match="wrong key type: holds an Ed25519 key, expected X25519"):
        drone_store.drone_seal_key()
    # A dispatcher's public file given where a drone's is expected, and vice versa.
    dispatcher = KeyStore(tmp_path / "d")
    dispatcher.init_dispatcher()
    with pytest.raises(KeyFileError, match="wrong key type: a skycourier-dispatcher-public file"):
        load_drone_public(dispatcher.file(DISPATCHER_PUB))
    with pytest.raises(KeyFileError, match="wrong key type: a skycourier-drone-public file"):
        load_dispatcher_public(drone_store.file(DRONE_PUB))


def test_a_private_key_reached_through_a_symlink_is_refused(
    drone_store: KeyStore, tmp_path: Path
) -> None:
    real = tmp_path / "elsewhere.pem"
    shutil.move(drone_store.file(DRONE_SEAL_KEY), real)
    drone_store.file(DRONE_SEAL_KEY).symlink_to(real)
    with pytest.raises(KeyFileError, match="symbolic link"):
        drone_store.drone_seal_key()


def test_fingerprints_name_the_key_and_its_algorithm() -> None:
    a, b = Ed25519PrivateKey.generate().public_key(), Ed25519PrivateKey.generate().public_key()
    assert fingerprint(a) == fingerprint(a)
    assert fingerprint(a) != fingerprint(b)
    assert re.fullmatch(r"ed25519:([0-9a-f]{4}-){7}[0-9a-f]{4}", fingerprint(a))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600))
def test_public_key_files_decode_only_to_a_key_or_a_key_file_error(
    data: bytes, tmp_path_factory
) -> None:
    path = tmp_path_factory.mktemp("pub") / "drone.pub.json"
    path.write_bytes(data)
    with pytest.raises(KeyFileError, match=re.escape(str(path))):
        load_drone_public(path)


@settings(max_examples=200, deadline=None)
@given(
    field=st.sampled_from(["type", "v", "drone_id", "identity_ed25519", "seal_x25519", "extra"]),
    value=st.one_of(
        st.none(), st.integers(), st.text(max_size=50), st.lists(st.integers(), max_size=3)
    ),
)
def test_edited_public_files_are_refused_with_the_file_named(
    field: str, value: object, tmp_path_factory
) -> None:
    doc = json.loads(_drone_public_json())
    doc[field] = value
    path = tmp_path_factory.mktemp("k") / DRONE_PUB
    path.write_text(json.dumps(doc))
    try:
        loaded = load_drone_public(path)
    except KeyFileError as exc:
        assert str(path) in str(exc)
    else:  # only an edit that is itself a valid value can load
        assert field == "drone_id" and loaded.drone_id == value
