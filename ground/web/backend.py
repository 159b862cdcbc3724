"""The web service's one adapter over the ground store (`ground.store`, `ground.models`):
everything it needs from the database goes through here, so that a change in the store's
API is met in one place.

- `LiveStore`: the `Store` the in-process ingest writes through; after each committed batch
  that stored something new, it hands the batch's records to its listeners (the live feed,
  unless the service feeds it from the broker: `ground.web.live_fleet`).
- `Accounts`: operator accounts on the store's ``operator_accounts`` table (the store keeps
  the table; hashing and checking passwords are the web service's, `ground.web.security`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Engine, insert, select, update

from ground.models import OperatorAccount
from ground.store import IngestResult, Received, Store
from ground.web.security import (
    TOKEN_PREFIX,
    check_username,
    hash_password,
    new_api_token,
    token_digest,
    verify_password,
)

log = logging.getLogger(__name__)

#: The role every account has for now (the column is there for finer roles later).
OPERATOR_ROLE = "operator"

Listener = Callable[[Sequence[Received]], None]


class LiveStore(Store):
    """A `Store` that tells `listeners` what each ingest batch brought. A batch that was all
    duplicates is not passed on; one that stored some new records is passed on whole (the
    store does not say which were new), so a listener may see a record twice and
    de-duplicates by its id (the page does)."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        super().__init__(engine, clock)
        self.listeners: list[Listener] = []

    def ingest(self, batch: Sequence[Received]) -> IngestResult:
        result = super().ingest(batch)
        if result.stored:
            for listener in self.listeners:
                try:
                    listener(batch)
                except Exception:  # the live feed must never cost the ingest a batch
                    log.exception("live-update listener failed")
        return result


class AccountError(ValueError):
    """An account that cannot be created or changed as asked; the message says why."""


@dataclass(frozen=True)
class Account:
    username: str
    role: str
    created_at: datetime
    disabled: bool


class Accounts:
    """Operator accounts in the store's database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._table = OperatorAccount.__table__

    def add(self, username: str, password: str) -> Account:
        """A new account; AccountError if the name is taken or unusable."""
        check_username(username)
        hashed = hash_password(password)
        c = self._table.c
        now = datetime.fromtimestamp(self.store.clock(), tz=timezone.utc)
        with self.store.engine.begin() as conn:
            if conn.execute(select(c.id).where(c.username == username)).first():
                raise AccountError(f"operator {username!r} exists already (use `user passwd`)")
            conn.execute(
                insert(self._table).values(
                    username=username, password_hash=hashed, role=OPERATOR_ROLE, created_at=now
                )
            )
        return Account(username, OPERATOR_ROLE, now, False)

    def set_password(self, username: str, password: str) -> None:
        hashed = hash_password(password)
        c = self._table.c
        with self.store.engine.begin() as conn:
            done = conn.execute(
                update(self._table).where(c.username == username).values(password_hash=hashed)
            )
        if done.rowcount != 1:
            raise AccountError(f"no operator {username!r}")

    def list(self) -> list[Account]:
        c = self._table.c
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(self._table).order_by(c.username)).mappings().all()
        return [
            Account(r["username"], r["role"], r["created_at"], r["disabled_at"] is not None)
            for r in rows
        ]

    def authenticate(self, username: str, password: str) -> bool:
        """Whether `username` is an enabled account and `password` its password; the same
        work whether or not the account exists."""
        c = self._table.c
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(c.password_hash, c.disabled_at).where(c.username == username)
            ).first()
        stored = None if row is None or row.disabled_at is not None else row.password_hash
        return verify_password(password, stored)

    def issue_token(self, username: str) -> str:
        """A new API token for `username`, replacing any it had; shown once, kept hashed."""
        token = new_api_token()
        c = self._table.c
        with self.store.engine.begin() as conn:
            done = conn.execute(
                update(self._table)
                .where(c.username == username)
                .values(token_hash=token_digest(token))
            )
        if done.rowcount != 1:
            raise AccountError(f"no operator {username!r}")
        return token

    def token_user(self, token: str) -> str | None:
        """The enabled account whose API token `token` is; None otherwise."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        c = self._table.c
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(c.username).where(
                    c.token_hash == token_digest(token), c.disabled_at.is_(None)
                )
            ).first()
        return None if row is None else str(row.username)
