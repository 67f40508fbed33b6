"""The web cockpit in a real browser: Playwright driving Debian's chromium (headless,
no browser download), against `urbanbrain run` on the demo city."""

from __future__ import annotations

import math
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from test_emergency import report
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


@pytest.fixture
def served_runtime(tmp_path: Path, grid_net: Path):
    """The service in this process over the 2x2 grid (no twin, a wall clock stopped at
    08:00), so a test can reach into its runtime: (url, admin key, CityRuntime)."""
    import uvicorn

    from urbanbrain.core.clock import CityClock, ClockSettings
    from urbanbrain.network import read_network
    from urbanbrain.service.app import ServiceState, create_app
    from urbanbrain.service.city import CityRuntime
    from urbanbrain.service.keys import create_key
    from urbanbrain.store import Store

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    store = Store(f"sqlite+pysqlite:///{tmp_path / 'store.db'}")
    store.migrate()
    key = create_key(store, "admin", "admin")
    service = ServiceState(store)
    service.runtime = CityRuntime(read_network(grid_net), store,
                                  clock=CityClock(ClockSettings(mode="wall"), wall=lambda: 8 * 3600.0))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="cockpit-test-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", lambda h: h["city_time"] == 8 * 3600.0, timeout_s=30)
        yield url, key, service.runtime
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        store.close()


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


def _open_cockpit(playwright, url: str, key: str):
    """A browser on the cockpit at a laptop's screen size; page errors are collected."""
    browser = launch(playwright)
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{url}/#key={key}")
    return browser, page, errors


def test_the_cockpit_shows_the_city_live_and_the_operator_switch_works(service):
    from playwright.sync_api import expect, sync_playwright

    url, key = service
    api = httpx.Client(base_url=url, headers={"X-API-Key": key})
    intersections = {row["id"] for row in api.get("/api/intersections").json()}
    with sync_playwright() as playwright:
        browser, page, errors = _open_cockpit(playwright, url, key)
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


def along(shape: list[list[float]], share: float) -> tuple[float, float]:
    """The point `share` of the way along a lane shape, in the map's svg coordinates (y down)."""
    segments = [math.dist(a, b) for a, b in zip(shape, shape[1:])]
    rest = share * sum(segments)
    for (a, b), length in zip(zip(shape, shape[1:]), segments):
        if rest <= length:
            f = rest / length if length else 0.0
            return a[0] + (b[0] - a[0]) * f, -(a[1] + (b[1] - a[1]) * f)
        rest -= length
    return shape[-1][0], -shape[-1][1]


def test_the_cockpit_shows_an_emergency_vehicle_its_route_and_the_signal_held_for_it(service):
    """A transponder reports over HTTP (as a real one would, every second); the cockpit
    places the vehicle on its lane, draws the route the brain planned along the roads,
    lists it with the signal held for it, and drops it once its transponder is silent."""
    from playwright.sync_api import expect, sync_playwright

    from urbanbrain.emergency import RouteError, fastest_route
    from urbanbrain.network import read_network
    from urbanbrain.twin.scenario import load_scenario

    url, key = service
    api = httpx.Client(base_url=url, headers={"X-API-Key": key})
    lanes = {lane["id"]: lane for lane in api.get("/api/network").json()["lanes"]}
    network = read_network(load_scenario("demo").net_file)

    def destination(edge: str) -> str | None:
        for road in sorted(network.roads):
            try:
                if len(fastest_route(network, edge, road)) >= 4:
                    return road
            except RouteError:
                continue
        return None

    # 20 m before a signal's stop line, bound three roads beyond: the brain holds that signal for it
    lane_id, goal = next((lane, goal) for lane in sorted(lanes) if lanes[lane]["intersection"] and lane.endswith("_0")
                         and lanes[lane]["length_m"] > 40 and (goal := destination(network.lanes[lane].edge)))
    lane, edge = lanes[lane_id], network.lanes[lane_id].edge
    position = lane["length_m"] - 20.0
    reporting, answers = threading.Event(), []
    reporting.set()

    def transponder() -> None:
        seq, clock = 1, api.get("/health").json()["city_time"]
        while reporting.is_set():
            answer = api.post("/api/events", json=[report(network, seq=seq, time=clock, edge=edge, lane=lane_id,
                                                          position_m=position, destination=goal)])
            answers.append(answer.status_code)
            clock, seq = answer.json().get("city_time") or clock, seq + 1
            time.sleep(0.3)

    thread = threading.Thread(target=transponder, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not (vehicles := api.get("/api/emergency").json()["vehicles"]) or not vehicles[0]["route"]:
            assert time.monotonic() < deadline and set(answers) <= {200}, f"no route planned; answers {answers[-3:]}"
            time.sleep(0.25)
        route = vehicles[0]["route"]
        assert route[0] == edge and route[-1] == goal
        with sync_playwright() as playwright:
            browser, page, errors = _open_cockpit(playwright, url, key)
            marker = page.get_by_test_id("emergency-vehicle-ev-1")
            expect(marker).to_have_count(1, timeout=30_000)
            expect(marker).to_have_attribute("data-edge", edge)
            expect(marker).to_contain_text("ev-1 · ambulance")
            x, y = map(float, re.match(r"translate\(([-\d.e]+) ([-\d.e]+)\)", marker.get_attribute("transform")).groups())
            expected = along(lane["shape"], position / lane["length_m"])
            assert math.dist((x, y), expected) < 0.5, ((x, y), expected)

            drawn = page.get_by_test_id("emergency-route-ev-1")
            expect(drawn).to_have_attribute("data-edges", " ".join(route), timeout=10_000)
            points = [tuple(map(float, p.split(","))) for p in
                      drawn.locator("polyline.ev-route-line").get_attribute("points").split()]
            assert math.dist(points[0], expected) < 0.5, "the route starts where the vehicle is"
            ends = [lanes[k]["shape"][-1] for k in network.roads[goal].lanes]
            assert min(math.dist(points[-1], (ex, -ey)) for ex, ey in ends) < 0.5, "and ends where its destination road ends"
            on_roads = {(px, -py) for e in route[1:] for k in network.roads[e].lanes for px, py in lanes[k]["shape"]}
            assert sum(any(math.dist(p, q) < 0.01 for q in on_roads) for p in points) >= 2 * len(route[1:]), \
                "drawn along the roads' own shapes"

            row = page.get_by_test_id("emergency-row-ev-1")
            expect(row).to_contain_text("ambulance")
            expect(row).to_contain_text("en route")
            expect(row).to_contain_text(edge)
            expect(page.get_by_test_id("emergency-preemptions")).to_contain_text(lane["intersection"], timeout=15_000)
            OUTPUT.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(OUTPUT / "cockpit-emergency.png"))

            reporting.clear()  # the transponder falls silent: priority ends, the vehicle leaves the map
            thread.join(timeout=10)
            expect(marker).to_have_count(0, timeout=30_000)
            expect(drawn).to_have_count(0)
            expect(page.get_by_test_id("emergency-empty")).to_be_visible()
            expect(page.get_by_test_id("emergency-panel")).to_contain_text(re.compile(r"\([1-9]\d* ended\)"))
            expect(page.get_by_test_id("silent-devices")).to_contain_text("ev-1", timeout=30_000)  # lost en route
            browser.close()
    finally:
        reporting.clear()
    assert set(answers) == {200}, answers
    assert not errors, errors


def test_the_cockpit_shows_the_supervisor_handing_an_intersection_to_the_actuated_cycle_and_back(served_runtime):
    """The supervisor takes A0 from the brain (as it does when a vehicle stands too long
    there): the map marks A0 as run by the cycle, the panel says until when and why, and
    the hand-over stands out in the decisions; then the brain takes it back."""
    from playwright.sync_api import expect, sync_playwright

    from urbanbrain.control.base import PhaseDecision

    url, key, runtime = served_runtime
    now = 8 * 3600.0

    def hand_over(intersection: str, mode: str, reason: str, note: str) -> None:
        """What the supervisor does: change who runs an intersection, and log it as a decision (live and stored)."""
        with runtime._lock:
            watch = runtime.controller.watches[intersection]
            watch.mode, watch.since, watch.until, watch.reason = mode, now, now + 300.0, reason
            watch.losses += mode == "cycle"
            runtime.brain._record(PhaseDecision(intersection, 0, 0.0, f"supervisor: {note}", note=True), now, "handed over")
            runtime._flush()

    with sync_playwright() as playwright:
        browser, page, errors = _open_cockpit(playwright, url, key)
        a0, a1, b1 = (page.get_by_test_id(f"intersection-{i}") for i in ("A0", "A1", "B1"))
        expect(a0).to_have_attribute("data-supervisor", "brain", timeout=30_000)
        a0.click()
        supervisor = page.get_by_test_id("panel-supervisor")
        expect(supervisor).to_have_text("brain")
        expect(page.get_by_test_id("panel-supervisor-reason")).to_be_hidden()
        expect(page.get_by_test_id("connection")).to_have_attribute("data-state", re.compile("live|stale"), timeout=15_000)

        standing = "a vehicle has stood 162 s at the head of B0A0_0 (limit 150 s)"
        hand_over("A0", "cycle", standing, f"brain losing at A0, actuated cycle for 300 s: {standing}")
        hand_over("A1", "cycle", f"{standing}, whose exit A1 drains", "brain losing at A1, actuated cycle for 300 s: ...")
        # within a few seconds, well before the cockpit's periodic re-read (15 s): the live hand-over triggers it,
        # for an intersection not selected too
        expect(a1).to_have_attribute("data-supervisor", "cycle", timeout=5_000)
        expect(a0).to_have_attribute("data-supervisor", "cycle", timeout=5_000)
        expect(a0).to_have_class(re.compile(r"\bis-cycle\b"))
        expect(a0).to_have_attribute("aria-label", re.compile(r"supervisor: actuated cycle until 29100 s \(08:05:00\), 1 hand-over"))
        expect(a0.locator(".m-label")).to_have_text("A0 · cycle")
        expect(b1).not_to_have_class(re.compile(r"\bis-cycle\b"))
        expect(b1.locator(".m-label")).to_have_text("B1")
        ring = "e => getComputedStyle(e.querySelector('.m-cycle')).stroke"
        assert a0.evaluate(ring) == "rgb(204, 121, 167)" and b1.evaluate(ring) == "none"

        expect(supervisor).to_have_text("actuated cycle until 29100 s (1 hand-over)", timeout=5_000)
        why = page.get_by_test_id("panel-supervisor-reason")
        expect(why).to_be_visible()
        expect(why).to_contain_text("Back to the brain at 08:05:00")
        expect(why).to_contain_text(standing)
        handed = page.get_by_test_id("intersection-panel").locator(".decisions li.decision-handed-over")
        expect(handed).to_have_count(1)
        expect(handed.locator(".outcome")).to_have_class(re.compile(r"\boutcome-handed-over\b"))
        expect(handed.locator(".outcome")).to_have_text("handed over")
        expect(handed.locator(".reason")).to_have_text(f"supervisor: brain losing at A0, actuated cycle for 300 s: {standing}")
        assert handed.locator(".outcome").evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(204, 121, 167)"
        OUTPUT.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUTPUT / "cockpit-supervisor.png"))

        back = "brain back after 300 s of actuated cycle: no head stands 75 s or more"
        hand_over("A0", "brain", back, back)
        expect(a0).to_have_attribute("data-supervisor", "brain", timeout=5_000)
        expect(a0).not_to_have_class(re.compile(r"\bis-cycle\b"))
        expect(a0).not_to_have_attribute("aria-label", re.compile("actuated cycle"))
        expect(supervisor).to_have_text("brain (1 hand-over so far)", timeout=5_000)
        expect(why).to_have_text(back)
        expect(handed).to_have_count(2)
        browser.close()
    assert not errors, errors
