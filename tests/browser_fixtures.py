"""What the browser tests share: Debian's chromium driven by Playwright (the system browser:
nothing is downloaded), and an operator's sign-in through the real form, refused once with a
wrong password first."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="apt install chromium; pip install playwright")

from playwright import sync_api

from tests.ground_web_fixtures import PASSWORD

SKIP = "apt install chromium; pip install playwright"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no system chromium ({SKIP})")


def sign_in_after_a_refusal(page: sync_api.Page, base: str, username: str = "alice") -> None:
    """A wrong password is refused with a message; the right one opens the dispatch page,
    whose live feed connects."""
    page.goto(f"{base}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    sync_api.expect(page.locator(".error")).to_contain_text("Wrong name")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/dispatch")
    sync_api.expect(page.locator("#live-state")).to_have_text("live", timeout=20_000)
