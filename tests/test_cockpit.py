"""The web cockpit in a real browser: Playwright driving Debian's chromium (headless,
no browser download), against `urbanbrain run` on the demo city."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from test_service_e2e import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "build" / "test-output"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MARKERS = '.marker[data-testid^="intersection-"]'


@pytest.fixture
def service(tmp_path: Path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "urbanbrain.cli", "run", "--data-dir", str(tmp_path),
                                "--port", str(port), "--speed", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", lambda h: h["twin"] == "running", timeout_s=300)
        yield url, (tmp_path / "admin.key").read_text().strip()
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


def test_the_cockpit_shows_the_city_live_and_the_operator_switch_works(service):
    from playwright.sync_api import expect, sync_playwright

    url, key = service
    api = httpx.Client(base_url=url, headers={"X-API-Key": key})
    intersections = {row["id"] for row in api.get("/api/intersections").json()}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{url}/#key={key}")
        expect(page.locator(MARKERS)).to_have_count(len(intersections), timeout=30_000)
        shown = {page.locator(MARKERS).nth(i).get_attribute("data-testid")[len("intersection-"):]
                 for i in range(len(intersections))}
        assert shown == intersections
        assert "#key=" not in page.url, "the key leaves the address bar"

        def states() -> dict[str, str]:
            return page.eval_on_selector_all(MARKERS, "ms => Object.fromEntries(ms.map(m => "
                                                      "[m.dataset.testid, m.dataset.signalState]))")

        before = states()
        deadline = time.monotonic() + 15
        while states() == before:
            assert time.monotonic() < deadline, "no signal state changed on screen within 15 s"
            page.wait_for_timeout(250)

        target = sorted(intersections)[0]
        marker = page.locator(f'.marker[data-testid="intersection-{target}"]')
        marker.click()
        page.get_by_test_id("control-fixed").click()
        expect(marker).to_have_attribute("data-controller", "fixed", timeout=15_000)
        expect(page.get_by_test_id("panel-controller")).to_contain_text("fixed", timeout=15_000)
        wait_for_mode = time.monotonic() + 30
        while api.get(f"/api/intersections/{target}").json()["mode"] != "plan":
            assert time.monotonic() < wait_for_mode, "the field controller did not go to its plan"
            time.sleep(0.25)
        page.get_by_test_id("control-brain").click()
        expect(marker).to_have_attribute("data-controller", "brain", timeout=15_000)
        audit = api.get("/api/audit").json()
        assert [a["detail"]["controller"] for a in audit[:2]] == ["brain", "fixed"]
        OUTPUT.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUTPUT / "cockpit.png"))
        browser.close()
    assert not errors, errors
