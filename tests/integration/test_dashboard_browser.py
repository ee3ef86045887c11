"""The ops dashboard in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium).

The page loads against a running API + worker, shows every provider, and shows a breaker going open
after it is forced and after a simulated outage trips it. Screenshots land in the test's tmp dir
(and in docs/ when FUSEBOX_SCREENSHOTS is set, for the README).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import httpx
import pytest

from shared.config import FileConfig, Settings
from tests.integration.api_fixtures import admin_key, api, worker  # noqa: F401

CONFIG = {
    "breaker": {
        "window_seconds": 30,
        "minimum_calls": 5,
        "failure_rate_threshold": 0.5,
        "wait_open_seconds": 60,
    },
    "retry": {"max_attempts": 1},
    "providers": {
        "steady": {"type": "simulated", "max_concurrency": 8},
        "flaky": {"type": "simulated", "max_concurrency": 4, "options": {"failure_rate": 1.0}},
    },
}


@pytest.fixture
def settings(redis_url: str, namespace: str, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(redis_url=redis_url, namespace=namespace, data_dir=tmp_path / "data").with_file(
        FileConfig.model_validate(CONFIG)
    )


def _driver():  # type: ignore[no-untyped-def]
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        if os.environ.get("CI"):
            pytest.fail("chromium/chromium-driver missing: .ci/run installs Debian's packages")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1366,900"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(chromedriver), options=opts)


async def _until(driver, check, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """Poll the page (the browser runs in its own process; the event loop keeps serving the API)."""
    last = None
    for _ in range(int(timeout / 0.1)):
        last = await asyncio.to_thread(check, driver)
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"page never reached the expected state (last: {last!r})")


def _state(driver, scope: str) -> str | None:  # type: ignore[no-untyped-def]
    # one script call: the page re-renders on every event, so a found element can go stale
    js = "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;"
    text = driver.execute_script(js, f'.card[data-scope="{scope}"] [data-role="state"]')
    return text.strip().lower() if text else None


@pytest.mark.usefixtures("worker")
async def test_dashboard_shows_providers_and_breakers_opening(api, admin_key, tmp_path: Path) -> None:  # noqa: F811
    driver = await asyncio.to_thread(_driver)
    shots = [tmp_path]
    if os.environ.get("FUSEBOX_SCREENSHOTS"):
        shots.append(Path(os.environ["FUSEBOX_SCREENSHOTS"]))
    try:
        await asyncio.to_thread(driver.get, f"{api.base}/dashboard#key={admin_key}")
        await _until(driver, lambda d: _state(d, "steady") == "closed" and _state(d, "flaky") == "closed")
        assert await asyncio.to_thread(lambda: "#key" not in driver.current_url)  # the key left the URL
        for scope in ("steady", "flaky", "simulated"):
            assert await asyncio.to_thread(_state, driver, scope) is not None

        # forced open by an admin through the API: the page shows it
        async with httpx.AsyncClient(
            base_url=api.base, headers={"Authorization": f"Bearer {admin_key}"}
        ) as c:
            r = await c.post("/v1/providers/steady/breaker", json={"action": "open", "reason": "drill"})
            assert r.status_code == 200
            await _until(driver, lambda d: _state(d, "steady") == "forced open")

            # a simulated outage: every call to 'flaky' fails until its breaker trips
            for i in range(8):
                await c.post(
                    "/v1/jobs",
                    json={
                        "type": "chat",
                        "body": {"model": "flaky/m", "messages": [{"role": "user", "content": f"x{i}"}]},
                    },
                )
            await _until(driver, lambda d: _state(d, "flaky") == "open")
        for d in shots:
            d.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(driver.save_screenshot, str(d / "dashboard.png"))
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    finally:
        await asyncio.to_thread(driver.quit)
