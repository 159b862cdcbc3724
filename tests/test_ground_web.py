"""The ground web service through its HTTP interface (Starlette's TestClient): sign-in and
sessions, CSRF, the login rate limit, escaping, the REST API's shapes, recipient tracking
links; time is simulated (`Clock`), never waited for."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="install the ground extra: pip install -e '.[ground]'")

from fastapi.testclient import TestClient

from ground.store import TrackPoint
from ground.web import vendor
from ground.web.backend import AccountError, Accounts
from ground.web.config import WebConfig, WebConfigError, load_secret
from ground.web.security import SessionRefused, Sessions, hash_password, verify_password
from ground.web.service import CSRF_HEADER, SESSION_COOKIE
from ground.web.tracking import TokenRefused, TrackingLinks, progress
from tests.ground_web_fixtures import (
    PASSWORD,
    T0,
    Clock,
    event,
    form_csrf,
    login,
    make_web,
    status,
    telemetry,
)

DIGEST = "ab" * 32
HOSTILE = "<script>alert(1)</script>'; DROP TABLE operator_accounts;--"


@pytest.fixture
def web(tmp_path: Path):  # type: ignore[no-untyped-def]
    w = make_web(tmp_path)
    yield w
    w.store.close()


@pytest.fixture
def client(web):  # type: ignore[no-untyped-def]
    with TestClient(web.app) as c:
        yield c


def signed_in(client: TestClient) -> str:
    """Sign in as alice; the page's CSRF token."""
    assert login(client).status_code == 303
    return form_csrf(client.get("/dispatch").text)


# -- keys, passwords, sessions ------------------------------------------------------------


def test_secret_key_is_created_private_and_an_open_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secret.key"
    key = load_secret(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(path) == key  # kept across starts
    os.chmod(path, 0o644)
    with pytest.raises(WebConfigError, match="chmod 600"):
        load_secret(path)


def test_password_hashes_are_salted_and_checked() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second and first.startswith("scrypt$")
    assert verify_password(PASSWORD, first) and verify_password(PASSWORD, second)
    assert not verify_password(PASSWORD + "x", first)
    assert not verify_password(PASSWORD, None)  # no account: same work, refused
    assert not verify_password(PASSWORD, "scrypt$garbage")


def test_session_cookie_tampered_expired_or_revoked_is_refused() -> None:
    clock = Clock()
    sessions = Sessions(b"k" * 32, b"c" * 32, ttl_s=60, clock=clock)
    session, cookie = sessions.issue("alice")
    assert sessions.check(cookie) == session
    body, tag = cookie.split(".")
    forged = Sessions(b"x" * 32, b"c" * 32, ttl_s=60, clock=clock).issue("mallory")[1]
    for bad, reason in ((f"{body}.{tag[:-2]}AA", "bad-signature"), (forged, "bad-signature")):
        with pytest.raises(SessionRefused) as refused:
            sessions.check(bad)
        assert refused.value.reason == reason
    clock.now += 60
    with pytest.raises(SessionRefused, match="expired"):
        sessions.check(cookie)
    fresh, fresh_cookie = sessions.issue("alice")
    sessions.revoke(fresh)
    with pytest.raises(SessionRefused, match="revoked"):
        sessions.check(fresh_cookie)
    assert sessions.refused == {"bad-signature": 2, "expired": 1, "revoked": 1}


# -- sign-in ------------------------------------------------------------------------------


def test_login_sets_a_strict_httponly_session_and_is_audited(web, client) -> None:  # type: ignore[no-untyped-def]
    response = login(client)
    assert response.status_code == 303 and response.headers["location"] == "/dispatch"
    cookie = next(c for c in response.headers.get_list("set-cookie") if SESSION_COOKIE in c)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=28800" in cookie
    page = client.get("/dispatch")
    assert page.status_code == 200 and "alice" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert [a.action for a in web.store.audit()] == ["login"]


def test_refused_login_gives_no_session_and_is_counted(web, client) -> None:  # type: ignore[no-untyped-def]
    for name, password in (("alice", "wrong password"), ("nobody", PASSWORD)):
        response = login(client, name, password)
        assert response.status_code == 401 and "Wrong name or password" in response.text
        assert SESSION_COOKIE not in client.cookies
    assert client.get("/api/drones").status_code == 401
    assert client.get("/dispatch", follow_redirects=False).headers["location"] == "/login"
    assert web.ground.refused["login"] == 2
    assert [a.action for a in web.store.audit()] == ["login-refused", "login-refused"]


def test_login_without_its_csrf_token_is_refused(web, client) -> None:  # type: ignore[no-untyped-def]
    client.get("/login")
    response = client.post("/login", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 403 and SESSION_COOKIE not in client.cookies
    assert web.ground.refused["csrf"] == 1


def test_login_rate_limit_per_account_lifts_after_the_window(web, client) -> None:  # type: ignore[no-untyped-def]
    for _ in range(web.config.login_max_failures):
        assert login(client, "alice", "wrong password").status_code == 401
    assert login(client).status_code == 429  # even the right password, while limited
    web.clock.now += web.config.login_window_s
    assert login(client).status_code == 303
    assert web.ground.refused["login-limited"] == 1


def test_expired_session_is_refused_and_counted(web, client) -> None:  # type: ignore[no-untyped-def]
    signed_in(client)
    assert client.get("/api/drones").status_code == 200
    web.clock.now += web.config.session_ttl_s
    assert client.get("/api/drones").status_code == 401
    assert client.get("/dispatch", follow_redirects=False).status_code == 303
    assert web.ground.refused["session-expired"] == 2


def test_logout_needs_csrf_and_kills_the_cookie(web, client) -> None:  # type: ignore[no-untyped-def]
    csrf = signed_in(client)
    cookie = client.cookies[SESSION_COOKIE]
    assert client.post("/logout", follow_redirects=False).status_code == 403
    assert client.post("/logout", data={"csrf": "x" * 32}).status_code == 403
    assert web.ground.refused["csrf"] == 2
    response = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert response.status_code == 303
    client.cookies.set(SESSION_COOKIE, cookie)  # a copy of the old cookie is dead too
    assert client.get("/api/drones").status_code == 401
    assert web.ground.refused["session-revoked"] == 1
    assert [a.action for a in web.store.audit()][:2] == ["logout", "login"]


# -- escaping -----------------------------------------------------------------------------


def new_link(client: TestClient, csrf: str | None, order_id: str) -> Any:
    headers = {} if csrf is None else {CSRF_HEADER: csrf}
    return client.post("/api/tracking-links", json={"order_id": order_id}, headers=headers)


def test_html_and_sql_in_names_are_data_and_shown_escaped(web, client) -> None:  # type: ignore[no-untyped-def]
    Accounts(web.store).add(HOSTILE, PASSWORD)
    assert login(client, HOSTILE).status_code == 303
    page = client.get("/dispatch").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#39;; DROP TABLE" in page
    assert "<script>alert" not in page
    assert {a.username for a in Accounts(web.store).list()} == {"alice", HOSTILE}
    # an order id from a drone, with markup in it: raw in the API, escaped on the page
    web.store.ingest([event("d1", 1, T0, "order-accepted", HOSTILE)])
    assert client.get("/api/orders").json()[0]["order_id"] == HOSTILE
    csrf = form_csrf(page)
    link = new_link(client, csrf, HOSTILE).json()["path"]
    tracked = client.get(link).text
    assert "&lt;script&gt;" in tracked and "<script>alert" not in tracked


def test_account_names_are_checked(web) -> None:  # type: ignore[no-untyped-def]
    accounts = Accounts(web.store)
    for bad in ("", " alice", "a\nb", "x" * 65):
        with pytest.raises(ValueError):
            accounts.add(bad, PASSWORD)
    with pytest.raises(AccountError, match="exists already"):
        accounts.add("alice", PASSWORD)
    with pytest.raises(ValueError, match="password"):
        accounts.add("bob", "short")


# -- the REST API -------------------------------------------------------------------------


def test_drones_track_events_and_orders_shapes(web, client) -> None:  # type: ignore[no-untyped-def]
    signed_in(client)
    web.store.create_order("o-1", "d1", DIGEST, created_by="alice")
    web.store.ingest(
        [
            status("d1", 1, T0, ttl_s=30),
            telemetry("d1", 2, T0 + 1, 51.5000, -0.1000),
            telemetry("d1", 3, T0 + 2, 51.5010, -0.1010, battery=79),
            event("d1", 4, T0 + 2, "order-accepted", "o-1"),
        ]
    )
    web.clock.now = T0 + 3
    (drone,) = client.get("/api/drones").json()
    assert drone["drone_id"] == "d1" and drone["online"] and drone["liveness"] == "online"
    latest = drone["latest"]
    assert (latest["lat"], latest["lon"], latest["battery_pct"]) == (51.501, -0.101, 79)
    assert latest["gps_fix"] == 3 and latest["link_rssi_dbm"] == -71 and latest["seq"] == 3
    track = client.get("/api/drones/d1/track").json()
    assert [p["seq"] for p in track] == [2, 3]
    (ev,) = client.get("/api/drones/d1/events").json()
    assert (ev["kind"], ev["mission_id"]) == ("order-accepted", "o-1")
    (order,) = client.get("/api/orders").json()
    assert (order["order_id"], order["state"], order["created_by"]) == ("o-1", "accepted", "alice")
    web.clock.now = T0 + 31  # the status's time-to-live has run out
    (drone,) = client.get("/api/drones").json()
    assert not drone["online"] and drone["liveness"] == "expired"


def test_api_refuses_bad_input_with_a_clear_error(client) -> None:  # type: ignore[no-untyped-def]
    signed_in(client)
    response = client.get("/api/drones/bad drone!/track")
    assert response.status_code == 422 and "drone_id" in response.json()["detail"]
    assert client.get("/api/drones/d1/track?max_points=1").status_code == 422
    assert client.get("/api/drones/d1/events?limit=0").status_code == 422
    assert client.get("/api/drones/unknown/track").json() == []


def test_openapi_describes_the_api(client) -> None:  # type: ignore[no-untyped-def]
    spec = client.get("/openapi.json").json()
    for path in (
        "/api/drones",
        "/api/drones/{drone_id}/track",
        "/api/drones/{drone_id}/events",
        "/api/orders",
        "/api/live",
        "/api/tracking-links",
    ):
        assert path in spec["paths"], path
    assert "/login" not in spec["paths"]
    assert client.get("/docs").status_code == 404  # Swagger's page loads a CDN: off


def test_vendored_leaflet_matches_the_lockfile(client) -> None:  # type: ignore[no-untyped-def]
    assert vendor.check() == []
    version, integrity = vendor.locked()["leaflet"]
    assert version == "1.9.4" and integrity.startswith("sha512-")
    response = client.get("/static/vendor/leaflet/leaflet.js")
    assert response.status_code == 200 and "Leaflet" in response.text[:500]


# -- recipient tracking -------------------------------------------------------------------


def test_tracking_link_shows_its_order_only(web, client) -> None:  # type: ignore[no-untyped-def]
    csrf = signed_in(client)
    web.store.create_order("order-A", "d1", DIGEST)
    web.store.create_order("order-B", "d2", DIGEST)
    assert new_link(client, None, "order-A").status_code == 403
    assert new_link(client, csrf, "nope").status_code == 404
    assert new_link(client, csrf, "").status_code == 422
    path = new_link(client, csrf, "order-A").json()["path"]
    client.cookies.clear()  # the recipient has no session
    page = client.get(path)
    assert page.status_code == 200 and "order-A" in page.text and "order-B" not in page.text
    assert "d1" not in page.text  # status and ETA only: not even the drone
    token = path.removeprefix("/track/")
    _, expires, tag = token.split(".")
    other = TrackingLinks(b"").token("order-B", float(expires)).split(".")[0]
    assert client.get(f"/track/{other}.{expires}.{tag}").status_code == 404
    assert client.get("/track/garbage").status_code == 404
    web.clock.now += web.config.tracking_ttl_s + 1
    assert client.get(path).status_code == 410
    assert web.ground.refused["tracking-bad-signature"] == 1
    assert web.ground.refused["tracking-expired"] == 1
    audited = web.store.audit()
    assert any(a.action == "tracking-link" and a.target_id == "order-A" for a in audited)


def test_tracking_token_is_bound_to_order_and_key() -> None:
    links = TrackingLinks(b"k" * 32)
    token = links.token("o-1", T0 + 100)
    assert links.order_id(token, T0) == "o-1"
    with pytest.raises(TokenRefused, match="bad-signature"):
        TrackingLinks(b"j" * 32).order_id(token, T0)
    with pytest.raises(TokenRefused, match="expired"):
        links.order_id(token, T0 + 100)


def test_eta_from_the_drop_and_the_drones_speed(web) -> None:  # type: ignore[no-untyped-def]
    web.store.create_order("o-1", "d1", DIGEST)
    web.store.ingest(
        [
            event("d1", 1, T0, "order-flying", "o-1"),
            event("d1", 2, T0, "enter", "o-1", drop=[51.5090, -0.1000]),
            telemetry("d1", 3, T0 + 1, 51.5000, -0.1000, speed=10.0),
        ]
    )
    order = web.store.order("o-1")
    events = web.store.events(order_id="o-1")
    latest = web.store.drone("d1").latest
    seen = progress(order, events, latest)
    assert seen.state == "flying" and seen.eta_s == pytest.approx(100.1, abs=0.5)  # 1000.8 m
    hovering = TrackPoint(**{**latest.__dict__, "ground_speed_mps": 0.0})
    assert progress(order, events, hovering).eta_s is None
    over_drop = TrackPoint(**{**latest.__dict__, "phase": "descend"})
    assert progress(order, events, over_drop).eta_s == 0.0


def test_config_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match="port"):
        WebConfig(port=0)
    with pytest.raises(WebConfigError, match="tile URL"):
        WebConfig(tile_url="javascript:alert(1)")
    config = WebConfig(tile_url="https://tiles.example/{z}/{x}/{y}.png")
    assert config.tile_origin == "https://tiles.example"
