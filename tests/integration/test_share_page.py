"""The share page in headless Chromium (Debian's), through the edge: it renders the job,
follows it live over the notifier (a job event and the driver's fixes), loads nothing from
elsewhere, never shows the customer, and a revoked link says it is no longer available."""

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.sync_api import sync_playwright

from infra.config import REPO_ROOT
from infra.stack import Stack
from schemas.auth import Role
from tests.support.driving import ping_at, post
from tests.support.stack import wait_for

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
BODY = {"pickup": {"lat": 12.97, "lon": 77.59}, "dropoff": {"lat": 12.93, "lon": 77.62}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_share_page_follows_the_job_live_and_a_revoked_link_is_gone(
    stack: Stack, token: Callable[..., str]
) -> None:
    public = stack.public_url()
    assert public is not None
    tag = uuid.uuid4().hex[:6]
    customer_id, driver_id = f"cust-page-{tag}", f"drv-page-{tag}"
    customer, driver = token(Role.CUSTOMER, customer_id), token(Role.DRIVER, driver_id)
    dispatcher = token(Role.DISPATCHER, f"disp-page-{tag}")
    job = httpx.post(public + "/v1/jobs", json=BODY, headers=bearer(customer)).json()
    path = f"/v1/jobs/{job['job_id']}"
    r = httpx.post(
        f"{public}{path}/assign", json={"driver_id": driver_id}, headers=bearer(dispatcher)
    )
    assert r.status_code == 200, r.text
    started = datetime.now(UTC) - timedelta(seconds=60)
    post(stack.config, driver, [ping_at(started, 0.0)])
    link = httpx.post(f"{public}{path}/share", json={}, headers=bearer(customer)).json()
    assert link["page_url"] == f"/s/{link['token']}"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 420, "height": 800})
            requested: list[str] = []
            errors: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(public + link["page_url"])
            # Live over the notifier, the job as it is.
            page.wait_for_selector("body[data-state=live][data-status=assigned]", timeout=30_000)
            assert page.locator("#status").text_content() == "A driver is assigned"

            # The driver moves and picks up: the page follows, without a reload.
            # 10 m/s: a fix much faster than a car would be flagged and not shown.
            for step in (1, 2, 3):
                at = started + timedelta(seconds=15 * step)
                post(stack.config, driver, [ping_at(at, 150.0 * step)])
            r = httpx.post(f"{public}{path}/pickup", headers=bearer(driver))
            assert r.status_code == 200, r.text
            page.wait_for_selector("body[data-status=picked_up]", timeout=30_000)
            assert page.locator("#status").text_content() == "On the way"

            # Polled from here: the page's CSP forbids the eval a string predicate needs.
            def trail() -> int | None:
                points = (page.locator("#trail").get_attribute("points") or "").split()
                return len(points) if len(points) >= 2 else None

            wait_for(trail, timeout_s=30)
            assert float(page.locator("#driver").get_attribute("cx") or -1) >= 0
            assert page.evaluate("document.body.dataset.state") == "live"
            page.screenshot(path=str(ARTIFACTS / "share-page.png"), full_page=True)
            # Nothing from elsewhere; nothing of the customer's.
            assert requested and all(url.startswith(public) for url in requested), requested
            assert customer_id not in page.content()

            # Revoked: the open page says so (the notifier ends its connection, the view
            # answers 404), and so does the link opened afresh.
            r = httpx.delete(f"{public}{path}/share", headers=bearer(customer))
            assert r.json()["revoked"] == 1
            page.wait_for_selector("body[data-state=gone]", timeout=45_000)
            assert page.locator("#gone").is_visible()
            assert "no longer available" in (page.locator("#gone").text_content() or "")
            fresh = browser.new_page()
            fresh.goto(public + link["page_url"])
            fresh.wait_for_selector("body[data-state=gone]", timeout=30_000)
            assert "no longer available" in (fresh.locator("#gone").text_content() or "")
            assert not errors, errors
        finally:
            browser.close()
