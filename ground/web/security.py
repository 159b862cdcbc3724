"""Operator authentication: password hashes, signed session cookies, CSRF tokens and the
login rate limit. Pure functions and small classes with an injected clock, so that expiry
and rate limits are tested by moving time, not by waiting.

- **Passwords** are hashed with scrypt (RFC 7914; N=2^14, r=8, p=1, 16 MiB per attempt), a
  random 16-byte salt per password, and compared in constant time.
- **Sessions** are a signed cookie (HMAC-SHA256 over ``user|issued|expires|nonce``), HttpOnly,
  SameSite=Strict, never readable by the page's script. A cookie past its expiry, with a bad
  signature, or revoked by a logout is refused, and each refusal is counted by reason. A
  logout revokes the session's nonce in this process (until its expiry), so a copied cookie
  dies with it; a restart forgets revocations, not the expiries.
- **CSRF**: a synchronizer token derived from the session's nonce (an HMAC with its own key);
  every POST carries it (a form field, or the ``X-CSRF-Token`` header from the page's script).
  The login form, which has no session yet, uses a double-submit token: a random cookie and
  the same value in the form.
- **API tokens** (for scripts and other services: ``Authorization: Bearer <token>``): 32
  random bytes per account, shown once when issued; the store keeps only their SHA-256 (a
  random 256-bit secret needs no slow hash), so a copy of the database holds no token. A
  request with a token needs no CSRF token: no browser sends it by itself.
- **Login rate limit**: at most `max_failures` failed logins per account and per address in a
  sliding `window_s`; beyond that, logins are refused without checking the password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
#: Longest password accepted (scrypt takes any length; a megabyte "password" is an attack).
MAX_PASSWORD_CHARS = 1024
MIN_PASSWORD_CHARS = 8
#: Longest username: the accounts table's column (`ground.models.ID_CHARS`).
MAX_USERNAME_CHARS = 64


class CredentialError(ValueError):
    """A username or password that cannot be used; the message says why."""


def check_username(name: str) -> str:
    """`name` if it can be an operator's name: 1-64 printable characters, no leading or
    trailing space. Any other text (HTML, quotes) is allowed: it is data, stored as such
    and escaped wherever it is shown."""
    if not 1 <= len(name) <= MAX_USERNAME_CHARS:
        raise CredentialError(f"username: 1-{MAX_USERNAME_CHARS} characters")
    if not name.isprintable() or name != name.strip():
        raise CredentialError("username: printable characters only, no surrounding spaces")
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise CredentialError(
            f"password: {MIN_PASSWORD_CHARS}-{MAX_PASSWORD_CHARS} characters, please"
        )
    return password


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * r * n + 2**20, dklen=32
    )


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64url) of a checked password."""
    check_password(password)
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


#: A hash to check against when the account does not exist, so that a missing account
#: costs the same time as a wrong password (no user enumeration by timing).
_DUMMY_HASH = hash_password("not a real password")


def verify_password(password: str, stored: str | None) -> bool:
    """Whether `password` matches `stored` (constant-time); False for a malformed or absent
    hash, after the same amount of work."""
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        scheme, n, r, p, salt, digest = (stored or _DUMMY_HASH).split("$")
        if scheme != "scrypt" or not (2 <= int(n) <= 2**20 and 1 <= int(r) <= 32):
            raise ValueError(scheme)
        expected = _unb64(digest)
        got = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except ValueError:
        _scrypt(password, b"\0" * SALT_BYTES, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        return False
    return hmac.compare_digest(got, expected) and stored is not None


@dataclass(frozen=True)
class Session:
    username: str
    issued_at: float
    expires_at: float
    nonce: str
    #: Authenticated by an API token rather than a cookie (no CSRF token to check).
    by_token: bool = False


#: The prefix of an API token, so that one found in a log or a file says what it is.
TOKEN_PREFIX = "sct_"


def new_api_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the store keeps of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


class SessionRefused(Exception):
    """A session cookie that is not (or no longer) valid; `reason` is the counter's key:
    ``malformed``, ``bad-signature``, ``expired`` or ``revoked``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Sessions:
    """Issues and checks session cookies and their CSRF tokens (module doc)."""

    def __init__(
        self,
        session_key: bytes,
        csrf_key: bytes,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = session_key
        self._csrf_key = csrf_key
        self.ttl_s = ttl_s
        self.clock = clock
        self._revoked: dict[str, float] = {}  # nonce -> its expiry
        self.refused: Counter[str] = Counter()

    def issue(self, username: str) -> tuple[Session, str]:
        """A new session for `username` and its cookie value."""
        now = self.clock()
        session = Session(username, now, now + self.ttl_s, secrets.token_urlsafe(18))
        body = _b64(
            "|".join(
                [
                    _b64(username.encode()),
                    f"{session.issued_at:.3f}",
                    f"{session.expires_at:.3f}",
                    session.nonce,
                ]
            ).encode()
        )
        return session, f"{body}.{self._sign(body)}"

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def check(self, cookie: str | None) -> Session:
        """The session `cookie` carries; SessionRefused (counted) otherwise."""
        try:
            return self._check(cookie)
        except SessionRefused as exc:
            self.refused[exc.reason] += 1
            raise

    def _check(self, cookie: str | None) -> Session:
        if not cookie or cookie.count(".") != 1 or len(cookie) > 1024:
            raise SessionRefused("malformed")
        body, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            raise SessionRefused("bad-signature")
        try:
            name, issued, expires, nonce = _unb64(body).decode().split("|")
            session = Session(_unb64(name).decode(), float(issued), float(expires), nonce)
        except ValueError:
            raise SessionRefused("malformed") from None
        if self.clock() >= session.expires_at:
            raise SessionRefused("expired")
        if session.nonce in self._revoked:
            raise SessionRefused("revoked")
        return session

    def revoke(self, session: Session) -> None:
        """Refuse `session` from now on (logout); forgotten revocations are those expired."""
        now = self.clock()
        self._revoked = {n: exp for n, exp in self._revoked.items() if exp > now}
        self._revoked[session.nonce] = session.expires_at

    def csrf_token(self, session: Session) -> str:
        return _b64(hmac.new(self._csrf_key, session.nonce.encode(), hashlib.sha256).digest())

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf_token(session))


def new_login_csrf() -> str:
    """The double-submit token of a login form (cookie and form field carry the same)."""
    return secrets.token_urlsafe(24)


def same_token(cookie: str | None, form: str | None) -> bool:
    return bool(cookie) and bool(form) and hmac.compare_digest(str(cookie), str(form))


class LoginLimiter:
    """Failed logins per key (``user:NAME``, ``addr:IP``) in a sliding window (module doc).
    Memory is bounded: at most `max_failures` times are kept per key, and keys whose times
    have all left the window are dropped when seen again or pruned past `max_keys`."""

    def __init__(
        self,
        max_failures: int,
        window_s: float,
        clock: Callable[[], float] = time.time,
        max_keys: int = 10_000,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}
        self.limited = 0

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and now - times[0] >= self.window_s:
            times.popleft()
        return times

    def allowed(self, *keys: str) -> bool:
        """Whether a login for these keys may be tried now (counted when not)."""
        now = self.clock()
        if any(len(self._recent(key, now)) >= self.max_failures for key in keys):
            self.limited += 1
            return False
        return True

    def failed(self, *keys: str) -> None:
        now = self.clock()
        if len(self._failures) >= self.max_keys:
            self._failures = {k: t for k, t in self._failures.items() if self._recent(k, now)}
        for key in keys:
            times = self._recent(key, now)
            times.append(now)
            while len(times) > self.max_failures:
                times.popleft()
            self._failures[key] = times

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)
