"""The page in headless Chromium (Debian's, driven by Playwright): the seeded figures show in the headline, the
charts and the fleet table; an empty store says so; the token cookie flow works; nothing loads from elsewhere."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page

from dashboards.app import create_app
from fleet.cli_dashboard import DashboardServer, serve_in_thread
from fleet.config import DashboardConfig, ReplayConfig
from fleet.replay import ReplayStore
from fleet.status import StatusBoard
from tests.dashboards.conftest import Seeded, expected

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("MOLMOFLEET_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "browser-token-0123456789"
REPORT_SHOT = Path("/tmp/dashboard.png")


@pytest.fixture
def beating(seeded: Seeded) -> Iterator[None]:
    """Keep heartbeats coming as actors would, each robot at its seeded age (live, stale, down)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            now = time.time()
            for hb in seeded.beats:
                seeded.board.beat(hb.model_copy(update={"t": now - (seeded.now - hb.t)}))
            stop.wait(0.5)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(5)


@pytest.fixture
def servers(seeded: Seeded, beating: None) -> Iterator[dict[str, DashboardServer]]:
    empty = ReplayStore(seeded.store.r, ReplayConfig(prefix="empty"), decode_workers=0)
    started = {
        "fleet": serve_in_thread(create_app(seeded.store, seeded.board, DashboardConfig(refresh_s=1))),
        "empty": serve_in_thread(create_app(empty, StatusBoard(seeded.store.r, "empty"))),
        "token": serve_in_thread(create_app(seeded.store, seeded.board, DashboardConfig(), token=TOKEN)),
    }
    try:
        yield started
    finally:
        for s in started.values():
            s.stop()


def _cell(page: Page, robot: str, col: str) -> Locator:
    return page.locator(f'tr[data-robot="{robot}"] td[data-col="{col}"]')


def test_page_shows_the_seeded_fleet(servers: dict[str, DashboardServer], tmp_path: Path) -> None:
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}: scripts/install.sh --browser installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    base = servers["fleet"].url
    foreign: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1680, "height": 1050}, device_scale_factor=1)
            page.on(
                "request",
                lambda r: None if r.url.startswith(("http://127.0.0.1", "data:")) else foreign.append(r.url),
            )
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(base + "/#window=6h")
            page.wait_for_selector('body[data-loaded="1"]', timeout=20_000)

            # headline: 6 of 9 episodes in the last hour succeeded
            hour = expected(True, "embodiment")
            n, ok = sum(v[0] for v in hour.values()), sum(v[1] for v in hour.values())
            assert page.locator("#kpi-robots .value").inner_text() == "2 / 4"
            assert page.locator("#kpi-success-hour .value").inner_text() == f"{100 * ok / n:.1f}%"
            assert f"n={n}" in page.locator("#kpi-success-hour .foot").inner_text()
            assert page.locator("#kpi-champion .value").inner_text() == "v1"
            assert "canary v2" in page.locator("#kpi-champion .foot").inner_text()

            # fleet table: one row per robot, with status, version, rates and backlog
            assert page.locator("#fleet-table tbody tr").count() == 4
            assert _cell(page, "franka-01", "status").inner_text() == "live"
            assert _cell(page, "franka-02", "status").inner_text() == "stale"
            assert _cell(page, "so101-01", "status").inner_text() == "down"
            assert _cell(page, "franka-01", "version").inner_text().startswith("v2")
            assert "canary" in _cell(page, "franka-01", "version").inner_text()
            rate = _cell(page, "franka-01", "success_hour").locator(".rate")
            assert (rate.get_attribute("data-rate"), rate.get_attribute("data-n")) == ("0.7500", "4")
            assert _cell(page, "franka-01", "success_hour").inner_text().startswith("75.0%")
            assert _cell(page, "yam-01", "interventions_per_hour").inner_text() == "3"
            assert _cell(page, "so101-01", "spool_backlog").inner_text() == "7"
            assert _cell(page, "franka-01", "control_rate").inner_text() == "14.8 / 15 Hz"

            # charts: the data handed to uPlot and the legend carry the seeded rates; the canvas is drawn
            drawn = page.evaluate("""() => {
                const c = window.molmoDash.charts.embodiment;
                const keys = c.series.map(s => s.key);
                const i = keys.indexOf("franka");
                const rate = c.u.data[1 + 3 * i];
                return {keys, last: rate[rate.length - 1], events: c.payload.events.length,
                        vkeys: window.molmoDash.charts.version.series.map(s => s.label)};
            }""")
            assert set(drawn["keys"]) >= {"franka", "yam_bimanual", "so101"}
            assert drawn["last"] == pytest.approx(100 * 5 / 6)  # the last hour's franka episodes: 5 of 6
            assert drawn["events"] == 4 and drawn["vkeys"] == ["v1", "v2"]
            total = expected(False, "embodiment")["franka"]
            legend = page.locator('#legend-embodiment .item[data-key="franka"]').inner_text()
            assert f"{100 * total[1] / total[0]:.1f}% · n={total[0]}" in legend
            painted = page.evaluate("""() => {
                const cv = document.querySelector('#chart-embodiment canvas');
                const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
                let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                return n / (cv.width * cv.height);
            }""")
            assert painted > 0.01, "the success chart canvas is blank"

            # rollout, learner, ingest panels
            gate = page.locator('#rollout-body .gate[data-embodiment="franka"]')
            assert gate.locator('[data-col="decision"]').inner_text().lower() == "wait"
            assert "0.731" in gate.locator('[data-col="statistic"]').inner_text()
            assert "(3/4)" in gate.locator('[data-col="canary_rate"]').inner_text()
            assert page.locator("#learner-step").inner_text() == "450"
            assert (
                page.locator("#mlflow-link").get_attribute("href")
                == "http://mlflow.internal:5000/#/runs/0123abcd"
            )
            assert page.locator(
                '#ingest-body tr[data-embodiment="franka"] [data-col="episodes_24h"]'
            ).inner_text() == str(total[0])

            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            shutil.copy(tmp_path / "dashboard.png", REPORT_SHOT)

            # an empty store: the page says so instead of drawing nothing
            page.goto(servers["empty"].url + "/")
            page.wait_for_selector('body[data-loaded="1"]', timeout=20_000)
            assert "empty" in page.locator("#banner").inner_text()
            assert "no episodes" in page.locator("#chart-embodiment .empty").inner_text()
            page.screenshot(path=str(tmp_path / "dashboard-empty.png"), full_page=True)
            shutil.copy(tmp_path / "dashboard-empty.png", REPORT_SHOT.with_name("dashboard-empty.png"))

            # the token flow: refused without it, then ?token= once and the cookie carries on
            page.goto(servers["token"].url + "/")
            assert "needs a token" in page.content()
            page.goto(servers["token"].url + f"/?token={TOKEN}")
            page.wait_for_selector('body[data-loaded="1"]', timeout=20_000)
            assert "token" not in page.url
            assert page.locator("#kpi-robots .value").inner_text() == "2 / 4"
        finally:
            browser.close()
    assert not foreign, f"the page loaded from elsewhere: {foreign}"
    assert not [e for e in errors if "401" not in e], errors
