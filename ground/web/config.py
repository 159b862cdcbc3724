"""The ground web service's settings and its secret key.

Defaults suit one laptop: a SQLite file (`ground.db.default_url`), bound to 127.0.0.1 so that
nothing off the machine reaches it until an operator says so, no broker (no live ingest) and no
map tiles (the map draws on a plain background). The secret key signs session cookies, CSRF
tokens and recipient tracking links; it is created on first start, 32 random bytes in a file
only its owner may read (0600), and a key file others can read is refused rather than used.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

#: Bytes of randomness in a new secret key (256 bits); a shorter key file is refused.
SECRET_BYTES = 32


class WebConfigError(ValueError):
    """A setting or secret key file the service cannot use; the message says which and why."""


def default_secret_file() -> Path:
    """``$XDG_DATA_HOME/skycourier/ground-secret.key`` (beside the default database)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "skycourier" / "ground-secret.key"


@dataclass(frozen=True)
class WebConfig:
    """What `ground.web.app.create_app` needs. Times in seconds."""

    db_url: str | None = None
    #: ``HOST:PORT`` of the fleet's MQTT broker; None: no ingest in this process.
    broker: str | None = None
    bind: str = "127.0.0.1"
    port: int = 8080
    secret_file: Path = field(default_factory=default_secret_file)
    #: A Leaflet tile URL template (``https://tiles.example/{z}/{x}/{y}.png``); None: no tiles.
    tile_url: str | None = None
    #: The MQTT session name of this instance's ingest (keep it across restarts).
    ingest_client_id: str = "skycourier-ground"
    #: The dispatcher's key store (`skycourier keys init --dispatcher`): with a broker, the
    #: page and the API send signed orders and commands; None: tracking only.
    dispatcher_keys: Path | None = None
    #: Store records only from drones registered for dispatch (`Store.register_drone`);
    #: others are refused as ``unknown-drone``. False: any drone on the fleet's topics.
    registered_only: bool = False
    #: The shared-subscription group the instances of one fleet share (`ground.ingest`).
    ingest_group: str = "skycourier-ground"
    #: The broker account of this service, its password in a file only its owner may read
    #: (never on a command line); TLS with the system's CAs, or `broker_ca_file`'s.
    broker_username: str | None = None
    broker_password_file: Path | None = None
    broker_tls: bool = False
    broker_ca_file: Path | None = None
    session_ttl_s: float = 8 * 3600.0
    tracking_ttl_s: float = 48 * 3600.0
    #: Failed logins allowed per account and per address within `login_window_s`.
    login_max_failures: int = 5
    login_window_s: float = 300.0
    #: Live-update batches queued for one browser before it is told to resynchronise.
    live_queue_batches: int = 64

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise WebConfigError(f"port {self.port}: expected 1-65535")
        if self.tile_url is not None:
            parts = urlsplit(self.tile_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise WebConfigError(
                    f"tile URL {self.tile_url!r}: expected http(s)://HOST/...{{z}}/{{x}}/{{y}}..."
                )
            if not all(part in self.tile_url for part in ("{z}", "{x}", "{y}")):
                raise WebConfigError(f"tile URL {self.tile_url!r}: needs {{z}}, {{x}} and {{y}}")
        for name in ("session_ttl_s", "tracking_ttl_s", "login_window_s"):
            if not getattr(self, name) > 0:
                raise WebConfigError(f"{name} must be above 0")
        if self.registered_only and self.broker is None:
            raise WebConfigError("--registered-only filters the ingest: give the broker too")
        if self.broker_password_file is not None and self.broker_username is None:
            raise WebConfigError("a broker password file without a broker user name")
        if self.broker_ca_file is not None and not self.broker_tls:
            raise WebConfigError("a broker CA file without TLS: turn TLS on too")
        if self.dispatcher_keys is not None and self.broker is None:
            raise WebConfigError("dispatcher keys without a broker: give the broker too")
        if self.login_max_failures < 1 or self.live_queue_batches < 1:
            raise WebConfigError("login_max_failures and live_queue_batches must be at least 1")

    @property
    def tile_origin(self) -> str | None:
        """``scheme://host[:port]`` of the tile server, for the Content-Security-Policy."""
        if self.tile_url is None:
            return None
        parts = urlsplit(self.tile_url)
        return f"{parts.scheme}://{parts.netloc}"


def load_secret(path: Path) -> bytes:
    """The secret key in `path`, created (0600, its folder 0700) if there is none yet.
    WebConfigError if the file is readable by others or too short."""
    path = path.expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(SECRET_BYTES) + "\n")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise WebConfigError(
            f"secret key file {path} is open to other users (mode {stat.filemode(mode)}): "
            f"chmod 600 {path}"
        )
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise WebConfigError(f"secret key file {path}: not hexadecimal") from None
    if len(key) < SECRET_BYTES:
        raise WebConfigError(f"secret key file {path}: under {SECRET_BYTES} bytes")
    return key


@dataclass(frozen=True)
class BrokerLogin:
    """How this service's MQTT clients (ingest, live feed, dispatch) sign in to the broker."""

    username: str | None
    password: str | None
    tls: ssl.SSLContext | None


def broker_login(config: WebConfig) -> BrokerLogin:
    """The broker account and TLS context of `config`; WebConfigError naming the file if the
    password file is missing, open to others or empty, or the CA file unusable."""
    password = None
    if config.broker_password_file is not None:
        path = config.broker_password_file.expanduser()
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise WebConfigError(
                    f"broker password file {path} is open to other users "
                    f"(mode {stat.filemode(mode)}): chmod 600 {path}"
                )
            password = path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise WebConfigError(f"broker password file {path}: {exc.strerror or exc}") from None
        if not password:
            raise WebConfigError(f"broker password file {path} is empty")
    tls = None
    if config.broker_tls:
        try:
            tls = ssl.create_default_context(
                cafile=None if config.broker_ca_file is None else str(config.broker_ca_file)
            )
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"broker CA file {config.broker_ca_file}: {exc}") from None
    return BrokerLogin(config.broker_username, password, tls)


def subkey(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose (sessions, CSRF, tracking links) derived from the secret, so
    that a token made for one purpose is never valid for another."""
    return hmac.new(secret, b"skycourier-ground/" + purpose.encode(), hashlib.sha256).digest()
