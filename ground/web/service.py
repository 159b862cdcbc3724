"""The running service's state (`Ground`) and the request checks every route shares: who is
signed in, and whether a POST carries its CSRF token. Refusals are counted by reason in
`Ground.refused` (``session-<reason>``, ``token``, ``csrf``, ``login``, ``login-limited``,
``tracking-*``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from ground.dispatch import Dispatcher
from ground.store import Store, StoreError
from ground.web.backend import Accounts, LiveStore
from ground.web.config import WebConfig, subkey
from ground.web.live import LiveHub
from ground.web.security import LoginLimiter, Session, SessionRefused, Sessions
from ground.web.tracking import TrackingLinks

log = logging.getLogger(__name__)

SESSION_COOKIE = "skycourier_session"
LOGIN_CSRF_COOKIE = "skycourier_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"


class Ground:
    """Everything a request may need: the store, the accounts, sessions, the live hub."""

    def __init__(
        self,
        config: WebConfig,
        store: Store,
        secret: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.accounts = Accounts(store)
        self.sessions = Sessions(
            subkey(secret, "session"), subkey(secret, "csrf"), config.session_ttl_s, clock
        )
        self.limiter = LoginLimiter(config.login_max_failures, config.login_window_s, clock)
        self.links = TrackingLinks(subkey(secret, "tracking"))
        self.hub = LiveHub(config.live_queue_batches)
        if isinstance(store, LiveStore):
            store.listeners.append(self.hub.publish)
        self.refused: Counter[str] = Counter()
        self.ingestor: Any = None  # ground.ingest.Ingestor when a broker is configured
        self.dispatcher: Dispatcher | None = None  # with a broker and the dispatcher's keys
        #: The decoders of this process's ingest and live feed (their allow-lists).
        self.decoders: list[Any] = []

    def refresh_allowed(self) -> None:
        """With `WebConfig.registered_only`, make the registered drones the ingest's and the
        live feed's allow-list (after a registration here, and now and then for those made
        elsewhere)."""
        if self.config.registered_only:
            allowed = self.store.registered_drones()
            for decoder in self.decoders:
                decoder.allow(allowed)

    def session(self, request: Request) -> Session | None:
        """The request's valid session, or None (refusals counted)."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is None:
            return None
        try:
            return self.sessions.check(cookie)
        except SessionRefused as exc:
            self.refused[f"session-{exc.reason}"] += 1
            return None

    async def audit(
        self,
        actor: str,
        action: str,
        target_kind: str | None = None,
        target_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append an operator action to the store's audit log (off the event loop)."""
        try:
            await run_in_threadpool(
                self.store.append_audit, actor, action, target_kind, target_id, detail
            )
        except StoreError as exc:  # an actor name the log cannot keep: still logged here
            log.warning("audit entry %s by %.64r not kept: %s", action, actor, exc)


def ground(request: Request) -> Ground:
    return request.app.state.ground  # type: ignore[no-any-return]


def api_session(request: Request) -> Session:
    """The operator of an API request, by its ``Authorization: Bearer`` API token or its
    session cookie; 401 otherwise (a wrong token is counted as ``token``)."""
    service = ground(request)
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        username = (
            service.accounts.token_user(token.strip()) if scheme.lower() == "bearer" else None
        )
        if username is None:
            service.refused["token"] += 1
            raise HTTPException(
                status_code=401,
                detail="unknown or revoked API token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        now = service.clock()
        return Session(username, now, float("inf"), "token", by_token=True)
    session = service.session(request)
    if session is None:
        raise HTTPException(status_code=401, detail="sign in first (POST /login)")
    return session


async def csrf_session(request: Request) -> Session:
    """The signed-in operator of a POST that carries its CSRF token (header or form field);
    401 without a session, 403 without the token."""
    session = api_session(request)
    if session.by_token:
        return session
    token = request.headers.get(CSRF_HEADER)
    if token is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        token = value if isinstance(value, str) else None
    service = ground(request)
    if not service.sessions.check_csrf(session, token):
        service.refused["csrf"] += 1
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token")
    return session
