"""The console's dry run and the job page's operational figures, in Debian's chromium (Playwright)
against a real ``helios server`` subprocess behind a bearer token.

The Submit page's "Validate" asks ``POST /api/v1/jobs?dry_run=true``: the plan of a valid job, or every
error at its path (a model error and the server's python allow-list), and no job is ever created. The
job page shows current against average throughput, the source lag, the autoscaler's last decision and a
"recovering" badge while a killed worker's job waits for its restart. Screenshots go to
``artifacts/console/`` as the other console tests' do.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from playwright.sync_api import Browser, Page, expect
from test_console_browser import TOKEN, browser, call, screenshot

from heliosdb_streaming.testing.server import HeliosServerProcess

__all__ = ["browser"]  # the chromium fixture of test_console_browser

pytestmark = pytest.mark.browser

WORKER_MODULE = "heliosdb_streaming.runtime.worker"


def keyed_job(name: str) -> dict[str, Any]:
    """Datagen partitions hold whole cards: counting per merchant needs a second stage."""
    return {
        "name": name,
        "config": {"parallelism": 1, "restart_strategy": "none"},
        "sources": [{"type": "datagen", "config": {"partitions": 2, "count": 100, "seed": 1}}],
        "transformations": [
            {"type": "filter", "config": {"condition": "amount > 10"}},
            {"type": "key_by", "config": {"key": "merchant"}},
            {"type": "window", "config": {"size": "1h", "aggregates": {"n": "count(*)"}}},
        ],
        "sinks": [{"type": "discard", "config": {}}],
    }


def endless_job(name: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "config": {"parallelism": 2, "checkpoint_interval_ms": 1000, **config},
        "sources": [{"type": "datagen", "config": {"partitions": 2, "rate_per_sec": 200}}],
        "sinks": [{"type": "discard", "config": {}}],
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeliosServerProcess]:
    process = HeliosServerProcess(
        tmp_path_factory.mktemp("console-more") / "home", env={"HELIOS_API_TOKEN": TOKEN}
    )
    try:
        yield process
    finally:
        assert process.stop(signal.SIGTERM) == 0, process.log_tail()


@pytest.fixture(scope="module")
def page(browser: Browser, server: HeliosServerProcess) -> Iterator[Page]:
    """One tab with the token in its session (the token dialog is test_console_browser's); a script
    error fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.set_default_timeout(20_000)
    expect.set_options(timeout=15_000)
    tab.goto(server.url + "/submit")
    tab.evaluate(f"sessionStorage.setItem('helios.token', {json.dumps(TOKEN)})")
    yield tab
    context.close()
    assert errors == [], f"script errors in the console: {errors}"


def job_names(server: HeliosServerProcess) -> list[str]:
    status, listing = call(f"{server.url}/api/v1/jobs")
    assert status == 200, listing
    return [j["name"] for j in listing["jobs"]]


def dry_run(server: HeliosServerProcess, body: dict[str, Any]) -> tuple[int, Any]:
    return call(f"{server.url}/api/v1/jobs?dry_run=true", "POST", body)


def wait_for(check: Any, what: str, within: float = 60) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_validate_shows_the_plan_and_creates_nothing(page: Page, server: HeliosServerProcess) -> None:
    job = keyed_job("validated")
    status, answer = dry_run(server, job)
    assert status == 200, answer
    page.goto(server.url + "/submit")
    page.fill("#job-editor", json.dumps(job, indent=2))
    page.click("#validate-job")
    expect(page.locator("#submit-summary")).to_have_text(
        "Valid: validated at parallelism 1, 2 stages. Nothing was submitted."
    )
    expect(page.locator("#submit-summary")).to_have_class("ok")
    steps = [f"{p['index']}: {p['type']}" for stage in answer["plan"]["stages"] for p in stage["steps"]]
    assert steps == ["0: filter", "1: key_by", "2: window"]
    expect(page.locator("#validate-plan .stage")).to_have_count(2)
    expect(page.locator("#validate-plan .step")).to_have_text(steps)
    (boundary,) = answer["plan"]["boundaries"]
    expect(page.locator("#validate-plan .boundaries li")).to_have_text(
        f"stage 1 starts at step 1 (by merchant): {boundary['reason']}"
    )
    expect(page.locator("#submit-errors li")).to_have_count(0)
    screenshot(page, "validate")
    assert job_names(server) == []  # a dry run: no job, even after the page showed the plan


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (  # two model errors at once
            lambda j: (
                j["config"].update(parallelism=0),
                j["sources"][0]["config"].update(rate_per_sec=-5),
            ),
            "invalid_job_config",
        ),
        (  # the server's python allow-list (none given: no user code), not a model check
            lambda j: j["transformations"].append({"type": "python", "config": {"function": "json:loads"}}),
            "python_not_allowed",
        ),
    ],
    ids=["model", "allow-list"],
)
def test_validate_shows_each_error_at_its_path(
    page: Page, server: HeliosServerProcess, change: Any, code: str
) -> None:
    job = keyed_job("bad")
    change(job)
    status, answer = dry_run(server, job)
    assert status == 400 and answer["error"]["code"] == code, answer
    page.goto(server.url + "/submit")
    page.fill("#job-editor", json.dumps(job, indent=2))
    page.click("#validate-job")
    expect(page.locator("#submit-summary")).to_contain_text(code)
    expect(page.locator("#submit-summary")).to_have_class("error")
    shown = page.locator("#submit-errors li")
    expect(shown).to_have_count(len(answer["error"]["details"]))
    for i, detail in enumerate(answer["error"]["details"]):
        expect(shown.nth(i).locator(".path")).to_have_text(detail["path"])
        expect(shown.nth(i)).to_contain_text(detail["message"])
    expect(page.locator("#validate-plan .stage")).to_have_count(0)
    screenshot(page, f"validate-{code}")
    assert job_names(server) == []


def test_job_page_shows_throughput_lag_and_the_autoscalers_decision(
    page: Page, server: HeliosServerProcess
) -> None:
    settings = {"enabled": True, "mode": "recommend", "stabilization_ms": 1000, "metrics_window_ms": 2000}
    status, answer = call(
        f"{server.url}/api/v1/jobs", "POST", endless_job("scaled", {"autoscaler": settings})
    )
    assert status == 201, answer
    job_id = answer["job_id"]
    try:
        page.goto(f"{server.url}/jobs/{job_id}")
        facts = page.locator("#metrics-facts")
        expect(facts).to_contain_text(re.compile(r"Throughput now / average[\d.k]+ / [\d.k]+ ev/s"))
        expect(facts).to_contain_text(re.compile(r"Source lag\d+ records"), timeout=30_000)

        def scale_down() -> Any:
            d = call(f"{server.url}/api/v1/jobs/{job_id}")[1]
            last = (d.get("autoscaler") or {}).get("last_decision")
            return d if last and last["action"] == "scale_down" else None

        details = wait_for(scale_down, "the autoscaler to recommend scaling down", within=60)
        last = details["autoscaler"]["last_decision"]
        expect(page.locator("#autoscaler")).to_be_visible()
        expect(page.locator("#autoscaler-facts")).to_contain_text("Moderecommend")
        expect(page.locator("#autoscaler-last")).to_contain_text("Decisionscale down 2 → 1", timeout=10_000)
        expect(page.locator("#autoscaler-last")).to_contain_text("Applied" + "no")
        assert last["reason"]

        def reason_shown() -> Any:  # decisions go on (their figures change): any recent one's reason
            shown = page.locator("#autoscaler-reason").inner_text().strip()
            now = call(f"{server.url}/api/v1/jobs/{job_id}")[1]["autoscaler"]
            reasons = {d["reason"] for d in [now["last_decision"], *now["history"]] if d}
            return shown if shown in reasons else None

        wait_for(reason_shown, "the page to show the reason of a decision the API reports", within=15)
        expect(page.locator("#autoscaler-history tbody tr")).not_to_have_count(0)
        expect(page.locator("#recovering-badge")).to_have_count(0)
        expect(page.locator(".toolbar")).to_have_text("scaledrunning")  # the status badge alone
        metrics = call(f"{server.url}/api/v1/jobs/{job_id}/metrics")[1]["metrics"]
        assert metrics["average_throughput_per_sec"] > 0 and metrics["source"]["lag_records"] is not None
        screenshot(page, "job-autoscaler")
    finally:
        call(f"{server.url}/api/v1/jobs/{job_id}", "DELETE")


def test_a_job_waiting_for_its_restart_shows_recovering(page: Page, server: HeliosServerProcess) -> None:
    strategy = {"type": "fixed_delay", "attempts": 3, "delay_ms": 10_000}
    status, answer = call(
        f"{server.url}/api/v1/jobs", "POST", endless_job("recovers", {"restart_strategy": strategy})
    )
    assert status == 201, answer
    job_id = answer["job_id"]
    try:
        page.goto(f"{server.url}/jobs/{job_id}")
        expect(page.locator(".toolbar .status")).to_have_text("running", timeout=30_000)
        expect(page.locator("#recovering-badge")).to_have_count(0)

        def workers() -> list[psutil.Process]:
            found = []
            for proc in psutil.process_iter(["cmdline"]):
                cmdline = proc.info.get("cmdline") or []
                if WORKER_MODULE in cmdline and job_id in cmdline:
                    found.append(proc)
            return found

        wait_for(lambda: len(workers()) == 2, "the job's two workers")
        wait_for(
            lambda: call(f"{server.url}/api/v1/jobs/{job_id}")[1]["metrics"]["events_processed"] > 0, "events"
        )
        workers()[0].send_signal(signal.SIGKILL)
        badge = page.locator("#recovering-badge")
        expect(badge).to_have_text("recovering", timeout=10_000)
        details = call(f"{server.url}/api/v1/jobs/{job_id}")[1]
        assert details["recovering"] is True and details["status"] == "running", details
        expect(page.locator("#job-message")).to_contain_text("Job failed")
        expect(page.locator("#job-message")).to_have_class("message warn")
        expect(page.locator(".toolbar")).to_have_text("recoversrunningrecovering")
        screenshot(page, "job-recovering", full_page=False)
        expect(badge).to_have_count(0, timeout=40_000)  # the second run connected
        assert call(f"{server.url}/api/v1/jobs/{job_id}")[1]["recovering"] is False
        expect(page.locator("#job-message")).to_contain_text("Recovered")
    finally:
        call(f"{server.url}/api/v1/jobs/{job_id}", "DELETE")
