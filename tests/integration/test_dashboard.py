"""`riskstream dashboard` in a real browser (headless Chromium driven by Playwright) against a live
worker on the real stack: the page fills with live data, lists users at a risk level and draws
its charts; a screenshot is kept as a test artifact (test-artifacts/dashboard*.png)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request

from tests.integration.test_worker_parity import (
    ROOT,
    battery_artifacts,  # noqa: F401  (a fixture)
    published_alerts,
    replay,
    start_worker,
    stop,
    wait_drained,
)
from tests.tools import tool_missing

WORKER_HTTP = "127.0.0.1:19482"
DASHBOARD = "127.0.0.1:19483"
ARTIFACTS = ROOT / "test-artifacts"


def _chromium() -> str:
    exe = os.environ.get("RISKSTREAM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        tool_missing("no Chromium for the dashboard browser test: apt-get install chromium")
    return exe


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}: {stop(proc).decode()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} never answered")


def test_the_page_fills_with_live_data_in_a_real_browser(settings, battery_artifacts):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    exe = _chromium()
    art = battery_artifacts
    worker = start_worker(settings, art, "--batch-size", "2000", env={"RISKSTREAM_HTTP_ADDR": WORKER_HTTP})
    board = None
    try:
        replay(settings, art)
        published_alerts(settings, set(), worker, timeout=120)
        wait_drained(settings)
        board = subprocess.Popen(
            [sys.executable, "-m", "stream", "dashboard", "--namespace", settings.namespace, "--listen", DASHBOARD,
             "--metrics", WORKER_HTTP, "--policy-config", str(art["policy"])],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _wait_http(f"http://{DASHBOARD}/api/state", board)
        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"http://{DASHBOARD}/")
                expect(page.locator("#conn")).not_to_have_text("connecting…", timeout=30_000)
                # live figures from the worker's /metrics and the topics
                expect(page.locator("#workers-up")).to_have_text("1", timeout=30_000)
                expect(page.locator("#c-applied-total")).not_to_have_text("–", timeout=30_000)
                applied = int(page.locator("#c-applied-total").inner_text().replace(",", "").replace(" ", ""))
                assert applied > 1000
                expect(page.locator("#source")).to_have_text("risk.levels", timeout=30_000)
                # users at a level: the battery's compulsive users are there, with their reasons
                rows = page.locator("#top-users tbody tr")
                expect(rows.first).to_be_visible(timeout=30_000)
                listed = rows.locator("button.user").all_inner_texts()
                assert any(u.startswith(("checker", "night_binger")) for u in listed), listed
                assert page.locator("#distribution tbody tr").count() >= 1
                # charts drawn by uPlot (a canvas inside the chart container)
                expect(page.locator("#chart-rates canvas").first).to_be_attached(timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
                # drill-down into one user: summary, daily chart and the user's alerts
                user = next(u for u in listed if u.startswith(("checker", "night_binger")))
                rows.locator("button.user", has_text=user).first.click()
                expect(page.locator("#drill")).to_be_visible()
                expect(page.locator("#drill-user")).to_have_text(user)
                expect(page.locator("#drill-summary")).not_to_have_text("loading…", timeout=30_000)
                expect(page.locator("#chart-days canvas").first).to_be_attached(timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / "dashboard-user.png"), full_page=True)
                assert not errors, errors
            finally:
                browser.close()
    finally:
        if board is not None:
            out = stop(board)
            assert board.returncode == 0 or board.returncode == -15, out.decode()[-3000:]
        stop(worker)
