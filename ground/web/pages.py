"""The HTML pages: sign-in and sign-out, the dispatch page, and the recipient's tracking page.
Templates are Jinja2 with autoescaping, so every name and text from outside (operator names,
order ids, what drones report) is shown as text, never as markup.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from ground.web.security import MAX_PASSWORD_CHARS, MAX_USERNAME_CHARS, new_login_csrf, same_token
from ground.web.service import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    csrf_session,
    ground,
)
from ground.web.tracking import TokenRefused, progress

templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
templates.env.autoescape = True  # every template, whatever its name
router = APIRouter(include_in_schema=False)


def _login_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    token = new_login_csrf()
    response = templates.TemplateResponse(
        request, "login.html", {"csrf": token, "error": error}, status_code=status
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=_https(request)
    )
    return response


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


@router.get("/")
async def root(request: Request) -> Response:
    target = "/dispatch" if ground(request).session(request) else "/login"
    return RedirectResponse(target, status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/login")
async def login(request: Request) -> Response:
    """Sign in: the double-submit CSRF token, the rate limit, then the password."""
    service = ground(request)
    form = await request.form()
    username, password, token = (form.get(k) for k in ("username", "password", CSRF_FIELD))
    form_token = token if isinstance(token, str) else None
    if not same_token(request.cookies.get(LOGIN_CSRF_COOKIE), form_token):
        service.refused["csrf"] += 1
        return _login_page(request, "The form expired; please try again.", 403)
    if not isinstance(username, str) or not isinstance(password, str):
        return _login_page(request, "Enter a name and a password.", 400)
    if len(username) > MAX_USERNAME_CHARS or len(password) > MAX_PASSWORD_CHARS:
        service.refused["login"] += 1
        return _login_page(request, "Wrong name or password.", 401)
    address = request.client.host if request.client else "unknown"
    keys = (f"user:{username}", f"addr:{address}")
    if not service.limiter.allowed(*keys):
        service.refused["login-limited"] += 1
        return _login_page(request, "Too many failed sign-ins; wait a few minutes.", 429)
    if not await run_in_threadpool(service.accounts.authenticate, username, password):
        service.limiter.failed(*keys)
        service.refused["login"] += 1
        await service.audit(username or "-", "login-refused", detail={"address": address})
        return _login_page(request, "Wrong name or password.", 401)
    service.limiter.succeeded(f"user:{username}")
    _session, cookie = service.sessions.issue(username)
    await service.audit(username, "login", detail={"address": address})
    response = RedirectResponse("/dispatch", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(service.config.session_ttl_s),
        httponly=True,
        samesite="strict",
        secure=_https(request),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = await csrf_session(request)
    service = ground(request)
    service.sessions.revoke(session)
    await service.audit(session.username, "logout")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/dispatch", response_class=HTMLResponse)
async def dispatch(request: Request) -> Response:
    service = ground(request)
    session = service.session(request)
    if session is None:
        return RedirectResponse("/login", status_code=303)
    return templates.TemplateResponse(
        request,
        "dispatch.html",
        {
            "username": session.username,
            "csrf": service.sessions.csrf_token(session),
            "tile_url": service.config.tile_url or "",
        },
    )


@router.get("/track/{token}", response_class=HTMLResponse)
async def track(request: Request, token: str) -> Response:
    """The recipient's page: this order's status and ETA, nothing else (`ground.web.tracking`)."""
    service = ground(request)
    try:
        order_id = service.links.order_id(token, service.clock())
    except TokenRefused as exc:
        service.refused[f"tracking-{exc.reason}"] += 1
        expired = exc.reason == "expired"
        context = {"missing": True, "expired": expired}
        status = 410 if expired else 404
        return templates.TemplateResponse(request, "track.html", context, status_code=status)
    store = service.store
    order = await run_in_threadpool(store.order, order_id)
    if order is None:
        return templates.TemplateResponse(
            request, "track.html", {"missing": True, "expired": False}, status_code=404
        )
    events = await run_in_threadpool(lambda: store.events(order_id=order_id, limit=200))
    drone = await run_in_threadpool(store.drone, order.drone_id)
    view = progress(order, events, None if drone is None else drone.latest)
    return templates.TemplateResponse(request, "track.html", {"missing": False, "progress": view})
