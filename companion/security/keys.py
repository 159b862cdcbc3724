"""Key files of the dispatcher and of each drone.

The dispatcher holds one Ed25519 key that signs orders. Each drone holds an Ed25519 identity
key (it signs the drone's audit trail), an X25519 key that recipient templates are sealed to,
and a random 32-byte MAVLink 2 signing secret shared with its flight controller. Each is a file
of its own in one key directory:

    dispatcher-signing.pem   Ed25519 private key (PKCS#8 PEM)
    dispatcher.pub.json      its public half, for the drones
    drone-id                 the drone's id (as in [telemetry] drone_id)
    drone-identity.pem       Ed25519 private key (PKCS#8 PEM)
    drone-seal.pem           X25519 private key (PKCS#8 PEM)
    mavlink-signing.key      the MAVLink signing secret, hexadecimal
    drone.pub.json           drone id and both public halves, for the dispatcher

Every file is created mode 0600 in a directory of mode 0700, and never overwritten. A private
file that the group or others can read is refused when loaded, with the mode and the `chmod` to
run: a key anyone on the machine could have copied is not a key. Each problem is a
`KeyFileError` that names the file and the reason (missing, permissions, corrupt, wrong key
type), never what the file holds.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from companion.security.encoding import (
    EncodingError,
    b64url,
    canonical_json,
    from_b64url,
    loads_strict,
)

DISPATCHER_KEY = "dispatcher-signing.pem"
DISPATCHER_PUB = "dispatcher.pub.json"
DRONE_ID = "drone-id"
DRONE_IDENTITY_KEY = "drone-identity.pem"
DRONE_SEAL_KEY = "drone-seal.pem"
MAVLINK_SECRET = "mavlink-signing.key"
DRONE_PUB = "drone.pub.json"

DRONE_FILES = (DRONE_ID, DRONE_IDENTITY_KEY, DRONE_SEAL_KEY, MAVLINK_SECRET, DRONE_PUB)
DISPATCHER_FILES = (DISPATCHER_KEY, DISPATCHER_PUB)

#: The same rule as [telemetry] drone_id: it appears in MQTT topics.
DRONE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAVLINK_SECRET_BYTES = 32
#: No key file is anywhere near this; a larger one is not ours.
MAX_KEY_FILE_BYTES = 4096

_DRONE_PUB_TYPE = "skycourier-drone-public"
_DISPATCHER_PUB_TYPE = "skycourier-dispatcher-public"
_PUB_VERSION = 1

PublicKey = Ed25519PublicKey | X25519PublicKey
PrivateKey = Ed25519PrivateKey | X25519PrivateKey


class KeyFileError(Exception):
    """A key file that cannot be used: the message names the file and why."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def raw_public(key: PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 or X25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public_key: PublicKey) -> str:
    """A short, comparable name of a public key: its algorithm and 128 bits of SHA-256 over
    the algorithm and the raw key, in groups of four hex digits (e.g. for reading aloud)."""
    algorithm = "ed25519" if isinstance(public_key, Ed25519PublicKey) else "x25519"
    digest = hashlib.sha256(algorithm.encode() + b"\0" + raw_public(public_key)).hexdigest()
    return f"{algorithm}:" + "-".join(digest[i : i + 4] for i in range(0, 32, 4))


def check_drone_id(drone_id: str) -> str:
    """`drone_id` if it is 1-64 letters, digits, '-' or '_'; ValueError otherwise."""
    if not isinstance(drone_id, str) or not DRONE_ID_PATTERN.fullmatch(drone_id):
        raise ValueError(f"drone id must be 1-64 letters, digits, '-' or '_', got {drone_id!r}")
    return drone_id


@dataclass(frozen=True)
class DronePublic:
    """What a dispatcher holds of a drone: its id, identity (audit) and seal public keys."""

    drone_id: str
    identity: Ed25519PublicKey
    seal: X25519PublicKey

    def to_json(self) -> bytes:
        """The `drone.pub.json` file content."""
        return canonical_json(
            {
                "type": _DRONE_PUB_TYPE,
                "v": _PUB_VERSION,
                "drone_id": self.drone_id,
                "identity_ed25519": b64url(raw_public(self.identity)),
                "seal_x25519": b64url(raw_public(self.seal)),
            }
        )


def dispatcher_public_json(key: Ed25519PublicKey) -> bytes:
    """The `dispatcher.pub.json` file content."""
    return canonical_json(
        {
            "type": _DISPATCHER_PUB_TYPE,
            "v": _PUB_VERSION,
            "signing_ed25519": b64url(raw_public(key)),
        }
    )


def read_key_file(path: Path, *, private: bool) -> bytes:
    """The bytes of a regular file of at most MAX_KEY_FILE_BYTES; a private one must not be
    accessible to group or others. The mode is checked on the opened file, not the name, so
    the file cannot be swapped between the check and the read."""
    flags = os.O_RDONLY | (getattr(os, "O_NOFOLLOW", 0) if private else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise KeyFileError(path, "missing (create keys with `skycourier keys init`)") from None
    except OSError as exc:
        if private and exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise KeyFileError(
                path, "is a symbolic link; a key file must be the file itself"
            ) from None
        raise KeyFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(path, "not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if private and mode & 0o077:
            raise KeyFileError(
                path,
                f"mode {mode:04o} lets the group or others read it; must be 0600 "
                f"(chmod 600 {path})",
            )
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(
                path, f"{info.st_size} bytes; no key file is over {MAX_KEY_FILE_BYTES}"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(path, f"over {MAX_KEY_FILE_BYTES} bytes; not a key file")
    return data


def _load_private(path: Path, expected: type[PrivateKey], what: str) -> PrivateKey:
    data = read_key_file(path, private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(path, "corrupt: the key is encrypted; SkyCourier keys are not") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(path, f"corrupt: not a PEM {what} private key") from None
    if not isinstance(key, expected):
        found = type(key).__name__.removeprefix("_").replace("PrivateKey", "")
        raise KeyFileError(path, f"wrong key type: holds an {found} key, expected {what}")
    return key


def _pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_fields(
    path: Path | str, expected_type: str, fields: tuple[str, ...], data: bytes | None = None
) -> dict[str, object]:
    """The fields of a public-key file: read from `path`, or given as `data` (an upload;
    `path` then only names it in errors)."""
    if data is None:
        data = read_key_file(Path(path), private=False)
    elif len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(path, f"{len(data)} bytes; no key file is over {MAX_KEY_FILE_BYTES}")
    try:
        doc = loads_strict(data.strip(), allow_floats=False)
    except EncodingError as exc:
        raise KeyFileError(path, f"corrupt: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") not in (_DRONE_PUB_TYPE, _DISPATCHER_PUB_TYPE):
        raise KeyFileError(path, "corrupt: not a SkyCourier public-key file")
    if doc["type"] != expected_type:
        raise KeyFileError(path, f"wrong key type: a {doc['type']} file, expected {expected_type}")
    if doc.get("v") != _PUB_VERSION:
        raise KeyFileError(
            path, f"unknown version {doc.get('v')!r} (this build reads {_PUB_VERSION})"
        )
    expected = {"type", "v", *fields}
    if set(doc) != expected:
        raise KeyFileError(path, f"corrupt: fields {sorted(doc)}, expected {sorted(expected)}")
    return doc


def _public_key(path: Path | str, doc: dict[str, object], field: str, cls: type) -> PublicKey:
    try:
        return cls.from_public_bytes(from_b64url(doc[field], size=32))
    except (EncodingError, ValueError) as exc:
        raise KeyFileError(path, f"corrupt: {field}: {exc}") from None


def load_drone_public(path: Path | str, data: bytes | None = None) -> DronePublic:
    """A drone's `drone.pub.json`, from `path` or, when given, from its bytes `data` (an
    upload, named `path` in errors)."""
    fields = ("drone_id", "identity_ed25519", "seal_x25519")
    doc = _public_fields(path, _DRONE_PUB_TYPE, fields, data)
    try:
        drone_id = check_drone_id(doc["drone_id"])  # type: ignore[arg-type]
    except ValueError as exc:
        raise KeyFileError(path, f"corrupt: {exc}") from None
    return DronePublic(
        drone_id,
        _public_key(path, doc, "identity_ed25519", Ed25519PublicKey),  # type: ignore[arg-type]
        _public_key(path, doc, "seal_x25519", X25519PublicKey),  # type: ignore[arg-type]
    )


def load_dispatcher_public(path: Path) -> Ed25519PublicKey:
    """The dispatcher's `dispatcher.pub.json`."""
    doc = _public_fields(path, _DISPATCHER_PUB_TYPE, ("signing_ed25519",))
    return _public_key(path, doc, "signing_ed25519", Ed25519PublicKey)  # type: ignore[return-value]


def write_new_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create `path` with `mode` (whatever the umask) and `data`, fsynced; an existing file is
    a KeyFileError, never overwritten."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise KeyFileError(path, "already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise KeyFileError(path, f"cannot be created: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class KeyStore:
    """The key directory of a dispatcher, a drone, or both (a test bench)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def has_drone(self) -> bool:
        return self.file(DRONE_IDENTITY_KEY).exists()

    def has_dispatcher(self) -> bool:
        return self.file(DISPATCHER_KEY).exists()

    # --- creation -------------------------------------------------------------------------

    def _prepare(self, names: tuple[str, ...]) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            mode = stat.S_IMODE(self.path.stat().st_mode)
        except OSError as exc:
            raise KeyFileError(
                self.path, f"cannot create the key directory: {exc.strerror or exc}"
            ) from None
        if mode & 0o077:
            raise KeyFileError(
                self.path,
                f"key directory mode {mode:04o} lets the group or others in; must be 0700 "
                f"(chmod 700 {self.path})",
            )
        for name in names:
            if self.file(name).exists() or self.file(name).is_symlink():
                raise KeyFileError(self.file(name), "already exists; refusing to overwrite keys")

    def _write_all(self, files: dict[str, bytes]) -> None:
        """Write every file or none: on a failure the ones already written are removed."""
        written: list[Path] = []
        try:
            for name, data in files.items():
                write_new_file(self.file(name), data)
                written.append(self.file(name))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        _fsync_dir(self.path)

    def init_drone(self, drone_id: str) -> DronePublic:
        """Create a drone's identity and seal keys and MAVLink secret; refuses to overwrite."""
        check_drone_id(drone_id)
        self._prepare(DRONE_FILES)
        identity = Ed25519PrivateKey.generate()
        seal = X25519PrivateKey.generate()
        public = DronePublic(drone_id, identity.public_key(), seal.public_key())
        self._write_all(
            {
                DRONE_ID: drone_id.encode("ascii") + b"\n",
                DRONE_IDENTITY_KEY: _pem(identity),
                DRONE_SEAL_KEY: _pem(seal),
                MAVLINK_SECRET: os.urandom(MAVLINK_SECRET_BYTES).hex().encode("ascii") + b"\n",
                DRONE_PUB: public.to_json() + b"\n",
            }
        )
        return public

    def init_dispatcher(self) -> Ed25519PublicKey:
        """Create the dispatcher's signing key; refuses to overwrite."""
        self._prepare(DISPATCHER_FILES)
        key = Ed25519PrivateKey.generate()
        self._write_all(
            {
                DISPATCHER_KEY: _pem(key),
                DISPATCHER_PUB: dispatcher_public_json(key.public_key()) + b"\n",
            }
        )
        return key.public_key()

    # --- loading --------------------------------------------------------------------------

    def dispatcher_signing_key(self) -> Ed25519PrivateKey:
        return _load_private(self.file(DISPATCHER_KEY), Ed25519PrivateKey, "Ed25519")  # type: ignore[return-value]

    def drone_identity_key(self) -> Ed25519PrivateKey:
        return _load_private(self.file(DRONE_IDENTITY_KEY), Ed25519PrivateKey, "Ed25519")  # type: ignore[return-value]

    def drone_seal_key(self) -> X25519PrivateKey:
        return _load_private(self.file(DRONE_SEAL_KEY), X25519PrivateKey, "X25519")  # type: ignore[return-value]

    def drone_id(self) -> str:
        path = self.file(DRONE_ID)
        try:
            return check_drone_id(read_key_file(path, private=True).decode("ascii").strip())
        except (UnicodeDecodeError, ValueError) as exc:
            raise KeyFileError(path, f"corrupt: {exc}") from None

    def mavlink_signing_secret(self) -> bytes:
        """The 32-byte MAVLink 2 signing secret (SETUP_SIGNING's secret_key)."""
        path = self.file(MAVLINK_SECRET)
        text = read_key_file(path, private=True).strip()
        try:
            secret = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise KeyFileError(path, "corrupt: not hexadecimal") from None
        if len(secret) != MAVLINK_SECRET_BYTES:
            raise KeyFileError(
                path, f"corrupt: {len(secret)} bytes, the secret is {MAVLINK_SECRET_BYTES}"
            )
        return secret

    def drone_public(self) -> DronePublic:
        """The drone's public halves, derived from its private keys (not from drone.pub.json)."""
        return DronePublic(
            self.drone_id(),
            self.drone_identity_key().public_key(),
            self.drone_seal_key().public_key(),
        )

    def dispatcher_public(self) -> Ed25519PublicKey:
        return self.dispatcher_signing_key().public_key()
