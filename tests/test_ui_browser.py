"""The web UI in a real headless Chromium (Debian's, driven by Playwright), against `python -m agent ui` started
as a user would, on a seeded database of each backend: open it, pick a thread, open a checkpoint, diff two,
fork a step with an edit (preview first), and watch the new branch appear in the graph without a reload.

Set AGENT_UI_SCREENSHOT=docs/ui.png to keep a screenshot of the SQLite run (the README shows one).
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent import Agent

# Read at import: the suite's autouse fixture clears AGENT_* variables before each test runs.
SCREENSHOT = os.environ.get("AGENT_UI_SCREENSHOT")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
QUESTION = "What is 17*23+4?"


def _chromium() -> str:
    """The system Chromium, or skip (fail in CI: there the browser test must run, never silently skip)."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path, why = None, "the playwright package is not installed (pip install -e '.[test]')"
    else:
        why = "no Chromium on this machine: apt-get install chromium (Debian's package)"
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"the UI browser test cannot run in CI: {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright adds --headless and a fresh profile directory of its own.
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def start_ui(cli, db_url: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """`python -m agent ui` on a free loopback port; returns the process and the address it printed."""
    proc = cli.popen("ui", "--db", db_url, "--port", "0", "--no-browser", *extra)
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = proc.stdout.readline()
            match = re.search(r"http://127\.0\.0\.1:\d+/\S*", line)
            if match:
                return proc, match.group(0)
            if not line:
                break
    proc.kill()
    raise AssertionError(f"the UI did not start: {proc.stderr.read()}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def seeded(db_url):
    """t1: a finished run on the offline model; t2: another thread to compare with."""
    with Agent(db=db_url, model="offline") as agent:
        assert agent.reason(QUESTION, thread="t1").answer == "395"
        agent.reason("What is 2*3+4?", thread="t2")
        return len(agent.history("t1"))


def test_browse_diff_and_fork_in_a_real_browser(browser, seeded, db_url, cli, tmp_path):
    from playwright.sync_api import expect

    proc, url = start_ui(cli, db_url, "--write")
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        # The thread list: both threads, newest first, with their status; search narrows it as you type.
        page.goto(url)
        rows = page.locator("table.threads tbody tr")
        expect(rows).to_have_count(2)
        expect(page.locator("tr[data-thread=t1] .status")).to_have_text("done")
        page.fill("input[name=q]", "17*23")
        expect(rows).to_have_count(1)

        # A thread: its history graph, one row per checkpoint, the head marked.
        page.click("tr[data-thread=t1] a")
        graph_rows = page.locator("#graph li.row[data-checkpoint]")
        expect(graph_rows).to_have_count(seeded)
        expect(page.locator("#graph li.row.is-head .badge.head")).to_have_text("HEAD")

        # A checkpoint: its state, which node wrote it, what runs next, and the model call behind it.
        analyze = page.locator("#graph li.row", has=page.locator(".node", has_text="analyze")).first
        analyze.locator("a.cp").click()
        detail = page.locator("#detail")
        expect(detail.locator("dd .node")).to_have_text("analyze")
        expect(detail.locator("dd.next")).to_have_text("execute")
        expect(detail.locator("table.plan tbody tr")).to_have_count(2)
        expect(detail.locator(".messages")).to_contain_text(f"Question: {QUESTION}")
        expect(detail.locator("pre.reply")).to_contain_text("Multiply 17 by 23")

        # Diff two checkpoints picked in the graph: field by field, list items one by one.
        analyze.locator("input.pick").check()
        graph_rows.last.locator("input.pick").check()
        page.click("button.diff-picked")
        expect(detail.locator("tbody.field[data-field=results] tr.added")).to_have_count(2)
        expect(detail.locator("tbody.field[data-field=answer] td.new")).to_have_text('395')

        # Fork after step 1 with an edited step 2: the preview shows the edit and what runs again, and
        # writes nothing; then the run streams its progress and the new branch appears in the graph.
        step_1 = page.locator("#graph li.row", has=page.locator(".summary", has_text="step 1 →")).first
        step_1.locator("a.cp").click()
        expect(detail.locator("dd .node")).to_have_text("execute")
        detail.locator("input[name='field:plan.2']").fill("Add the result of step 1 and 5")
        detail.locator("form.fork-form button").click()
        preview = page.locator("#activity .preview")
        expect(preview.locator("tbody.field[data-field=plan] tr.changed td.new")).to_have_text(
            "Add the result of step 1 and 5")
        expect(preview.locator("ol.will-run li").first).to_have_text("execute step 2: Add the result of step 1 and 5")
        expect(graph_rows).to_have_count(seeded)  # nothing written yet

        preview.locator("button.fork-run").click()
        run = page.locator("#activity .run")
        expect(run.locator(".run-state")).to_have_text("done", timeout=30_000)
        expect(run.locator(".events li").nth(1)).to_have_text("step 2 Add the result of step 1 and 5 → 396")
        edit_row = page.locator("#graph li.row", has=page.locator(".badge.kind", has_text="edit"))
        expect(edit_row).to_have_count(1)
        assert graph_rows.count() > seeded  # the branch came in without a reload
        lanes = page.locator("#graph svg.lanes circle").evaluate_all("cs => cs.map(c => +c.getAttribute('cx'))")
        assert len(set(lanes)) >= 2, lanes  # the branch runs in a lane of its own
        # The new head is opened: the edited step 2 was rejected by the check and revised back to 395.
        expect(detail.locator(".badge.head")).to_have_text("HEAD")
        expect(detail.locator("b.answer")).to_have_text("395")
        expect(page.locator("#graph li.row.selected")).to_have_class(re.compile("is-head"))
        if SCREENSHOT and db_url.startswith("sqlite"):
            page.evaluate("window.scrollTo(0, 0)")
            Path(SCREENSHOT).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=SCREENSHOT)
        assert errors == []
    finally:
        page.close()
        stop(proc)
