"""The web console in a real browser: Debian's chromium, driven by Playwright, against a real
``helios server --demo`` subprocess protected by a bearer token.

The tests run in order on one server and one page: the job list, the job page and its charts, a
savepoint made in the page, a submit with a bad field, and last a cancel. Each page's screenshot is
saved under ``artifacts/console/`` (git-ignored; ``HELIOS_ARTIFACTS`` moves it); ``jobs.png`` and
``job-top.png`` are the ones in docs/images/.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from heliosdb_streaming.testing.server import HeliosServerProcess

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "console-test-token"
ARTIFACTS = Path(os.environ.get("HELIOS_ARTIFACTS", Path(__file__).parents[2] / "artifacts")) / "console"
DEMO = "demo_fraud_detection"


def call(url: str, method: str = "GET", body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    """One REST call outside the browser: what the API itself says, to check the page against."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeliosServerProcess]:
    process = HeliosServerProcess(
        tmp_path_factory.mktemp("console") / "home", "--demo", env={"HELIOS_API_TOKEN": TOKEN}
    )
    try:
        process.wait_output("demo job submitted")
        wait_running(process.url)
        yield process
    finally:
        assert process.stop(signal.SIGTERM) == 0, process.log_tail()


def wait_running(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = call(f"{url}/api/v1/jobs")[1]["jobs"]
        if [j["status"] for j in jobs] == ["running"]:
            return
        assert time.monotonic() < deadline, f"the demo job is not running: {jobs}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run  make test-tools  (or  sudo apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def page(browser: Browser, server: HeliosServerProcess) -> Iterator[Page]:
    """One tab for the module (the token is asked once per tab); a script error fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.on("dialog", lambda dialog: dialog.accept())  # the confirm() of cancel
    tab.set_default_timeout(20_000)
    expect.set_options(timeout=15_000)  # the suite shares two cores with the server and its workers
    yield tab
    context.close()
    assert errors == [], f"script errors in the console: {errors}"


def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def demo_id(server: HeliosServerProcess) -> str:
    status, listing = call(f"{server.url}/api/v1/jobs")
    assert status == 200, listing
    return next(j["job_id"] for j in listing["jobs"] if j["name"] == DEMO)


def test_console_is_served_without_token_and_the_api_still_needs_it(server: HeliosServerProcess) -> None:
    for path in ("/", "/submit", "/jobs/anything", "/console/app.js", "/console/style.css"):
        with urllib.request.urlopen(server.url + path, timeout=10) as answer:
            assert answer.status == 200, path
            assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert call(f"{server.url}/api/v1/jobs", token=None)[0] == 401
    assert call(f"{server.url}/metrics", token=None)[0] == 401
    for path in ("/console/missing.js", "/console/..%2Fapp.py", "/console/.hidden.js", "/console/app.py"):
        assert call(server.url + path, token=None)[0] == 404, path


def test_guard_still_refuses_a_foreign_origin(server: HeliosServerProcess) -> None:
    job = demo_id(server)
    request = urllib.request.Request(
        f"{server.url}/api/v1/jobs/{job}/pause",
        data=b"{}",
        method="POST",
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
            "Origin": "http://evil.example",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    assert call(f"{server.url}/api/v1/jobs/{job}")[1]["status"] == "running"


def test_jobs_page_asks_the_token_once_and_lists_the_demo_job(
    page: Page, server: HeliosServerProcess
) -> None:
    page.goto(server.url + "/")
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    page.fill("#token-input", "wrong-token")
    page.click("#token-form button")
    expect(page.locator("#token-error")).to_have_text("That token was refused.")
    page.fill("#token-input", TOKEN)
    page.click("#token-form button")
    expect(dialog).to_be_hidden()

    row = page.locator(f"tr[data-job-id='{demo_id(server)}']")
    expect(row.locator("a")).to_have_text(DEMO)
    assert page.evaluate("sessionStorage.getItem('helios.token')") == TOKEN
    expect(page.locator("#forget-token")).to_be_visible()
    expect(row.locator(".status")).to_have_text("running")
    expect(row.locator(".status")).to_have_css("background-color", "rgb(22, 163, 74)")  # running: green
    expect(row.locator("td").nth(2)).to_have_text("2")  # the demo's parallelism
    expect(row.locator(".throughput")).not_to_have_text("…")
    expect(row.locator(".p99")).not_to_have_text("…")
    screenshot(page, "jobs")

    page.select_option("#status-filter", "cancelled")
    expect(page.locator("tbody")).to_have_text("No jobs.")
    expect(page).to_have_url(server.url + "/?status=cancelled")
    page.select_option("#status-filter", "running")
    page.fill("input[type=search]", "no such name")
    expect(page.locator("tbody")).to_have_text("No jobs.")
    page.fill("input[type=search]", "fraud")
    expect(row.locator("a")).to_have_text(DEMO)
    expect(page.locator(".pager span")).to_have_text("page 1 of 1 · 1 job")


def test_job_page_shows_the_plan_and_draws_the_charts(page: Page, server: HeliosServerProcess) -> None:
    job = demo_id(server)
    page.click(f"tr[data-job-id='{job}'] a")
    expect(page).to_have_url(f"{server.url}/jobs/{job}")  # followed without reloading: no token asked
    expect(page.locator("#token-dialog")).to_be_hidden()
    expect(page.locator("h1")).to_have_text(DEMO)
    plan = call(f"{server.url}/api/v1/jobs/{job}")[1]["plan"]
    expect(page.locator("#plan .stage")).to_have_count(len(plan["stages"]))
    steps = [f"{p['index']}: {p['type']}" for stage in plan["stages"] for p in stage["steps"]]
    assert steps == ["0: filter", "1: key_by", "2: cep", "3: map"]  # the demo's transformations
    expect(page.locator("#plan .step")).to_have_text(steps)
    for chart in ("throughput", "p99", "backpressure"):
        expect(page.locator(f"#chart-{chart}")).not_to_have_attribute("data-points", "0", timeout=20_000)
    # the demo checkpoints every 10 s: its first checkpoint appears in the table and the chart
    first_checkpoint = page.locator("#checkpoints tr td").first
    expect(first_checkpoint).to_have_text(re.compile(r"checkpoint-\d+"), timeout=40_000)
    expect(page.locator("#chart-checkpoint")).not_to_have_attribute("data-points", "0", timeout=10_000)
    inked = page.evaluate(
        """() => [...document.querySelectorAll('canvas')].map((c) => {
            const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let coloured = 0;  // pixels of a series colour (grid and labels are grey: 0 of them)
            for (let i = 0; i < data.length; i += 4) {
              const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
              if (a > 200 && Math.max(r, g, b) - Math.min(r, g, b) > 80) coloured++;
            }
            return coloured;
        })"""
    )
    assert len(inked) == 4 and all(n > 0 for n in inked), f"charts without a drawn line: {inked}"
    page.select_option("#metrics-window", "1h")
    expect(page.locator("#chart-throughput")).not_to_have_attribute("data-points", "0")
    expect(page.locator("#logs")).to_contain_text("INFO")
    page.select_option("#log-level", "error")
    status, errors = call(f"{server.url}/api/v1/jobs/{job}/logs?level=error&tail=200")
    assert status == 200
    expected_lines = len(errors["logs"])
    expect(page.locator("#logs .log")).to_have_count(expected_lines)
    page.select_option("#log-level", "")
    page.select_option("#metrics-window", "5m")


def test_savepoint_created_in_the_page_appears_in_the_api(page: Page, server: HeliosServerProcess) -> None:
    job = demo_id(server)
    page.fill("#savepoint-description", "made in the console")
    page.click("#create-savepoint")
    row = page.locator("#savepoints tr[data-savepoint-id]").first
    expect(row).to_contain_text("made in the console", timeout=60_000)
    shown = row.get_attribute("data-savepoint-id")
    status, listing = call(f"{server.url}/api/v1/jobs/{job}/savepoints")
    assert status == 200
    assert [(s["savepoint_id"], s["description"]) for s in listing["savepoints"]] == [
        (shown, "made in the console")
    ]
    screenshot(page, "job")
    screenshot(page, "job-top", full_page=False)  # docs/images/console-job.png


def test_pause_and_resume_from_the_page(page: Page, server: HeliosServerProcess) -> None:
    job = demo_id(server)
    badge = page.locator(".toolbar .status")
    page.click("[data-action=pause]")
    expect(badge).to_have_text("paused", timeout=30_000)
    expect(badge).to_have_css("background-color", "rgb(217, 119, 6)")  # paused: amber
    assert call(f"{server.url}/api/v1/jobs/{job}")[1]["status"] == "paused"
    expect(page.locator("[data-action=pause]")).to_be_disabled()
    page.click("[data-action=resume]")
    expect(badge).to_have_text("running", timeout=30_000)
    assert call(f"{server.url}/api/v1/jobs/{job}")[1]["status"] == "running"


def test_restore_a_savepoint_with_a_parallelism_override(page: Page, server: HeliosServerProcess) -> None:
    job = demo_id(server)
    row = page.locator("#savepoints tr[data-savepoint-id]").first
    savepoint = row.get_attribute("data-savepoint-id")
    row.locator("input[type=number]").fill("1")
    row.locator("button.restore").click()
    expect(page.locator("#flash")).to_have_text("Restored", timeout=40_000)
    details = call(f"{server.url}/api/v1/jobs/{job}")[1]
    assert (details["status"], details["config"]["parallelism"]) == ("running", 1)
    expect(page.locator("#job-facts")).to_contain_text("Parallelism1")
    logs = call(f"{server.url}/api/v1/jobs/{job}/logs?tail=1000")[1]["logs"]
    assert any(savepoint in line["message"] for line in logs), "the restart did not restore the savepoint"


def test_logs_tail_and_level(page: Page, server: HeliosServerProcess) -> None:
    job = demo_id(server)
    page.fill("#log-tail", "3")
    page.dispatch_event("#log-tail", "change")
    expect(page.locator("#logs .log")).to_have_count(3)
    newest = call(f"{server.url}/api/v1/jobs/{job}/logs?tail=3")[1]["logs"][-1]["message"]
    expect(page.locator("#logs .log").last).to_contain_text(newest)
    page.fill("#log-tail", "200")
    page.dispatch_event("#log-tail", "change")
    expect(page.locator("#logs .log")).not_to_have_count(3)


def test_delete_a_savepoint_from_the_page(page: Page, server: HeliosServerProcess) -> None:
    """The job restores from the savepoint until its first checkpoint: until then the page shows the
    API's 409 savepoint_in_use, and a later click deletes it."""
    job = demo_id(server)
    flash = page.locator("#flash")
    deadline = time.monotonic() + 60
    while True:
        page.evaluate("document.getElementById('flash').textContent = ''")
        page.locator("#savepoints button.delete").first.click()
        expect(flash).to_have_text(re.compile("Savepoint deleted|savepoint_in_use"))
        if flash.text_content() == "Savepoint deleted":
            break
        assert time.monotonic() < deadline, "the savepoint stayed in use"
        time.sleep(2)
    expect(page.locator("#savepoints")).to_have_text("No savepoints.")
    assert call(f"{server.url}/api/v1/jobs/{job}/savepoints")[1]["savepoints"] == []


def test_submit_with_a_bad_field_shows_the_error_at_its_path(page: Page, server: HeliosServerProcess) -> None:
    bad = {
        "name": "bad_job",
        "config": {"parallelism": 0},
        "sources": [{"type": "datagen", "config": {"schema": "transactions", "rate_per_sec": -5}}],
        "sinks": [{"type": "discard", "config": {}}],
    }
    status, answer = call(f"{server.url}/api/v1/jobs", "POST", bad)
    assert status == 400 and len(answer["error"]["details"]) >= 2, answer
    page.click("nav a[data-nav=submit]")
    expect(page).to_have_url(server.url + "/submit")
    page.fill("#job-editor", json.dumps(bad, indent=2))
    page.click("#submit-job")
    expect(page.locator("#submit-summary")).to_contain_text(answer["error"]["code"])
    shown = page.locator("#submit-errors li")
    expect(shown).to_have_count(len(answer["error"]["details"]))
    for i, detail in enumerate(answer["error"]["details"]):
        expect(shown.nth(i).locator(".path")).to_have_text(detail["path"])
        expect(shown.nth(i)).to_contain_text(detail["message"])
    assert any("rate_per_sec" in d["path"] for d in answer["error"]["details"])
    screenshot(page, "submit")
    assert [j["name"] for j in call(f"{server.url}/api/v1/jobs")[1]["jobs"]] == [DEMO]  # nothing submitted

    good = {**bad, "config": {"parallelism": 1}}
    good["sources"] = [
        {"type": "datagen", "config": {"schema": "transactions", "count": 100, "partitions": 1}}
    ]
    page.fill("#job-editor", json.dumps(good))
    page.click("#submit-job")
    expect(page).to_have_url(re.compile(re.escape(server.url) + r"/jobs/job-[0-9a-f-]+$"))
    expect(page.locator("h1")).to_have_text("bad_job")
    expect(page.locator(".toolbar .status")).to_have_text("finished", timeout=60_000)
    submitted = page.url.rsplit("/", 1)[1]
    assert call(f"{server.url}/api/v1/jobs/{submitted}")[1]["status"] == "finished"


def test_jobs_pages_are_the_apis(page: Page, server: HeliosServerProcess) -> None:
    """Two jobs, one per page: each page shows what the API's limit=1&offset=N answers."""
    expected = [call(f"{server.url}/api/v1/jobs?limit=1&offset={n}")[1]["jobs"][0]["name"] for n in (0, 1)]
    assert sorted(expected) == sorted([DEMO, "bad_job"])
    page.goto(server.url + "/?limit=1")
    rows = page.locator("tbody tr[data-job-id] a")
    expect(page.locator(".pager span")).to_have_text("page 1 of 2 · 2 jobs")
    expect(rows).to_have_text([expected[0]])
    page.click("#next-page")
    expect(page).to_have_url(server.url + "/?page=1&limit=1")
    expect(rows).to_have_text([expected[1]])
    page.select_option("#status-filter", "finished")
    expect(rows).to_have_text(["bad_job"])
    expect(page.locator(".pager span")).to_have_text("page 1 of 1 · 1 job")
    page.select_option("#status-filter", "")
    page.select_option("#page-size", "20")
    expect(rows).to_have_count(2)


def test_cancel_from_the_page_cancels(page: Page, server: HeliosServerProcess) -> None:
    job = demo_id(server)
    page.goto(f"{server.url}/jobs/{job}")  # a reload: the token stays in the tab's session
    expect(page.locator("#token-dialog")).to_be_hidden()
    expect(page.locator(".toolbar .status")).to_have_text("running")
    page.click("[data-action=cancel]")
    expect(page.locator(".toolbar .status")).to_have_text("cancelled", timeout=30_000)
    assert call(f"{server.url}/api/v1/jobs/{job}")[1]["status"] == "cancelled"
    expect(page.locator("[data-action=restart]")).to_be_enabled()
    expect(page.locator("[data-action=pause]")).to_be_disabled()


def test_restart_then_cancel_with_savepoint_from_the_page(page: Page, server: HeliosServerProcess) -> None:
    job = demo_id(server)
    badge = page.locator(".toolbar .status")
    page.click("[data-action=restart]")
    expect(badge).to_have_text("running", timeout=40_000)
    page.click("[data-action=cancel-savepoint]")
    expect(badge).to_have_text("cancelled", timeout=60_000)
    assert call(f"{server.url}/api/v1/jobs/{job}")[1]["status"] == "cancelled"
    savepoints = call(f"{server.url}/api/v1/jobs/{job}/savepoints")[1]["savepoints"]
    assert len(savepoints) == 1
    expect(page.locator("#savepoints tr[data-savepoint-id]")).to_have_count(1)
