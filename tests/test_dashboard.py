"""The Panel dashboard every node serves, driven in real headless Chromium (Debian's
`chromium`, installed by .ci/run) against a real 3-node cluster with the models.

Each scenario saves screenshots under artifacts/dashboard/ (kept by CI, ignored by git).
A missing browser fails these tests: it is part of the product's test bed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fpdf import FPDF
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.nodecluster import ADMIN_PASSWORD, NodeCluster

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
SHOTS = Path(__file__).parent.parent / "artifacts" / "dashboard"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    cluster = NodeCluster(tmp_path_factory.mktemp("dashboard"), models=True, dashboard=True)
    cluster.start_all()
    try:
        cluster.wait_ready(timeout=90)
        cluster.wait_models()
        _, body = cluster.request("n1", "POST", "/api/v1/kb/documents", {
            "title": "Lighthouses", "text": "The lighthouse keeper polishes the great lens every Tuesday."})
        wait_state(cluster, body["tasks"][0]["id"], "completed")
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: apt-get install chromium (see .ci/run)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def wait_state(cluster: NodeCluster, task_id: str, state: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        task = cluster.request("n1", "GET", f"/api/v1/tasks/{task_id}")[1]
        if task["state"] == state:
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.3)


def logged_in(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.fill("input[type=password]", ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".bk-tab", has_text="Overview")).to_be_visible(timeout=30_000)
    return page


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_login_is_required_and_wrong_passwords_are_refused(cluster: NodeCluster, browser: Browser) -> None:
    page = browser.new_page()
    page.goto(cluster.dashboard_urls["n2"])
    page.fill("input[type=password]", "wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("wrong username or password")).to_be_visible(timeout=15_000)
    shot(page, "login-refused")
    page.close()


def test_submit_a_question_and_watch_it_reach_its_answer(cluster: NodeCluster, browser: Browser) -> None:
    page = logged_in(browser, cluster.dashboard_urls["n1"])
    shot(page, "overview")
    page.locator(".bk-tab", has_text="Submit").click()
    page.locator("textarea").fill("What does the lighthouse keeper polish?")
    page.get_by_role("button", name="Submit").click()
    # the detail follows the task live: queued/running, then the answer with its citations
    expect(page.locator(".answer").first).to_be_visible(timeout=90_000)
    expect(page.get_by_text("completed").first).to_be_visible()
    citation = page.locator("details.citation").last
    expect(citation).to_be_visible()
    citation.locator("summary").click()
    expect(citation.get_by_text("great lens")).to_be_visible()
    shot(page, "answer-with-citations")
    page.close()


def test_cancel_a_queued_task_from_the_table(cluster: NodeCluster, browser: Browser) -> None:
    for _ in range(6):  # two slots on each of three nodes: all busy
        cluster.request("n1", "POST", "/api/v1/tasks", {"type": "noop", "input": {"duration_ms": 30_000},
                                                        "priority": 9})
    _, waiting = cluster.request("n2", "POST", "/api/v1/tasks", {"type": "noop", "input": {"duration_ms": 1},
                                                                  "priority": 0})
    page = logged_in(browser, cluster.dashboard_urls["n3"])
    page.locator(".bk-tab", has_text="Tasks").click()
    page.get_by_placeholder("id, text, owner, error").fill(waiting["id"])
    page.get_by_placeholder("id, text, owner, error").press("Enter")
    row = page.locator(".tabulator-row", has_text=waiting["id"])
    expect(row).to_have_count(1, timeout=15_000)
    row.locator("input[type='checkbox']").click()  # its selection checkbox
    page.get_by_role("button", name="Cancel selected").click()
    expect(page.get_by_text(f"{waiting['id']}: cancelled")).to_be_visible(timeout=15_000)
    shot(page, "cancelled-from-table")
    time.sleep(1)
    task = cluster.request("n1", "GET", f"/api/v1/tasks/{waiting['id']}")[1]
    assert task["state"] == "cancelled" and task["started_at"] is None  # it never ran
    page.close()


def test_upload_a_pdf_and_see_the_document_appear(cluster: NodeCluster, browser: Browser, tmp_path: Path) -> None:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, "The harbour master rings the brass bell at noon.")
    path = tmp_path / "harbour.pdf"
    path.write_bytes(bytes(pdf.output()))
    page = logged_in(browser, cluster.dashboard_urls["n1"])
    page.locator(".bk-tab", has_text="Knowledge").click()
    page.locator("input[type=file]").set_input_files(str(path))
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_text("harbour.pdf: queued as")).to_be_visible(timeout=15_000)
    expect(page.locator(".tabulator-row", has_text="harbour.pdf").filter(has_text="ready")).to_be_visible(
        timeout=60_000)
    shot(page, "knowledge-base")
    page.close()


def test_a_killed_node_is_marked_dead_on_another_nodes_dashboard(cluster: NodeCluster, browser: Browser) -> None:
    page = logged_in(browser, cluster.dashboard_urls["n1"])
    card = page.locator('.node-card[data-node="n3"] .gossip')
    expect(card).to_have_text("alive", timeout=15_000)
    cluster.kill("n3")
    started = time.monotonic()
    expect(card).to_have_text("dead", timeout=15_000)
    assert time.monotonic() - started < 10
    shot(page, "node-dead")
    page.close()
