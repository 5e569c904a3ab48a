"""The Panel dashboard every node serves, driven in real headless Chromium (Debian's
`chromium`, installed by .ci/run) against a real 3-node cluster with the models.

Each scenario saves screenshots under artifacts/dashboard/ (kept by CI, ignored by git).
A missing browser fails these tests: it is part of the product's test bed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fpdf import FPDF
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from tests.nodecluster import ADMIN_PASSWORD, NodeCluster, users_toml

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SHOTS = Path(__file__).parent.parent / "artifacts" / "dashboard"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    cluster = NodeCluster(
        tmp_path_factory.mktemp("dashboard"),
        models=True,
        dashboard=True,
        extra_toml=users_toml(alice="alice-password"),
    )
    cluster.start_all()
    try:
        cluster.wait_ready(timeout=90)
        cluster.wait_models()
        _, body = cluster.request(
            "n1",
            "POST",
            "/api/v1/kb/documents",
            {
                "title": "Lighthouses",
                "text": "The lighthouse keeper polishes the great lens every Tuesday.",
            },
        )
        wait_state(cluster, body["tasks"][0]["id"], "completed")
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), (
        "Debian's chromium is missing: apt-get install chromium (see .ci/run)"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def wait_state(cluster: NodeCluster, task_id: str, state: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        task = cluster.request("n1", "GET", f"/api/v1/tasks/{task_id}")[1]
        if task.get("state") == state:  # a 404 until n1 has applied the submission
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.3)


def logged_in(
    browser: Browser, url: str, user: str = "admin", password: str = ADMIN_PASSWORD
) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.get_by_placeholder("username").fill(user)
    page.fill("input[type=password]", password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".bk-tab", has_text="Overview")).to_be_visible(timeout=30_000)
    return page


def source_data(page: Page, name: str) -> dict:
    """The data of a named Bokeh ColumnDataSource as the browser holds it."""
    return page.evaluate(
        """name => {
        for (const doc of Bokeh.documents) {
            const model = doc.get_model_by_name(name);
            if (model) {
                const data = model.data, out = {};
                const entries = data instanceof Map ? Array.from(data.entries()) : Object.entries(data);
                for (const [k, v] of entries) out[k] = Array.from(v);
                return out;
            }
        }
        return null;
    }""",
        name,
    )


def submit(cluster: NodeCluster, node: str, body: dict) -> dict:
    status, task = cluster.request(node, "POST", "/api/v1/tasks", body)
    assert status == 201, task
    return task


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_login_is_required_and_wrong_passwords_are_refused(
    cluster: NodeCluster, browser: Browser
) -> None:
    page = browser.new_page()
    page.goto(cluster.dashboard_urls["n2"])
    page.fill("input[type=password]", "wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("wrong username or password")).to_be_visible(timeout=15_000)
    shot(page, "login-refused")
    page.close()


def test_submit_a_question_and_watch_it_reach_its_answer(
    cluster: NodeCluster, browser: Browser
) -> None:
    page = logged_in(browser, cluster.dashboard_urls["n1"])
    shot(page, "overview")
    page.locator(".bk-tab", has_text="Submit").click()
    page.locator("textarea").fill("What does the lighthouse keeper polish?")
    page.get_by_role("button", name="Submit").click()
    # the detail follows the task live, without a reload: its state as the page shows it
    # goes queued → running → completed, and then the answer with its citations
    heading = page.locator(".submit-result h4")
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while not seen or seen[-1] != "completed":
        assert time.monotonic() < deadline, seen
        if heading.count():
            state = heading.first.inner_text().rsplit("·", 1)[-1].strip()
            if not seen or seen[-1] != state:
                seen.append(state)
        time.sleep(0.1)
    assert "running" in seen and seen == [
        s for s in ("queued", "running", "completed") if s in seen
    ], seen
    expect(page.locator(".answer").first).to_be_visible()
    timeline = page.locator(".submit-result li")
    for state in ("queued", "running", "completed"):
        expect(timeline.filter(has_text=state).first).to_be_visible()
    # sentence by sentence, as the API's grounding says, each with its citation marks
    task_id = heading.first.inner_text().split("·", 1)[0].strip()
    result = cluster.request("n1", "GET", f"/api/v1/tasks/{task_id}")[1]["result"]
    print(f"answer: {result['answer']!r}")
    print(f"grounding: {result['grounding']}")
    print(f"citations: {result['citations']}")
    block = page.locator(".submit-result .answer-block")
    check_grounded_answer(block, result)
    # the attribution finds the passage that supports the answer: hovering its mark
    # lights the supporting span in the passage, and so does a click (the mark keeps
    # the focus); clicking elsewhere puts it out
    cited = next(i for i, c in enumerate(result["citations"]) if c["supported"] and c["span"])
    mark = block.locator(f'sup.cite[data-cite="{cited}"]')
    spans = block.locator(f'mark[data-cites~="{cited}"]')
    assert "".join(spans.all_inner_texts()) == result["citations"][cited]["quote"]
    passage = block.locator(f'.cited-passage[data-cites~="{cited}"]')
    expect(passage).to_contain_text("great lens")
    idle, idle_box = background(spans.first), background(passage)
    mark.hover()
    expect(spans.first).not_to_have_css("background-color", idle)
    expect(passage).not_to_have_css("background-color", idle_box)
    lit = background(spans.first)
    page.mouse.move(5, 5)
    expect(spans.first).to_have_css("background-color", idle)
    mark.locator("a").click()
    page.mouse.move(5, 5)
    expect(spans.first).to_have_css("background-color", lit)
    mark.hover()
    shot(page, "answer-with-citations")
    page.locator(".submit-result h4").click()
    page.mouse.move(5, 5)
    expect(spans.first).to_have_css("background-color", idle)
    page.close()


def find_task(page: Page, task_id: str) -> Locator:
    """The Tasks tab, searched for one task: its row."""
    page.locator(".bk-tab", has_text="Tasks").click()
    search = page.get_by_placeholder("id, text, owner, error")
    search.fill(task_id)
    search.press("Enter")
    row = page.locator(".tasks-table .tabulator-row", has_text=task_id)
    expect(row).to_have_count(1, timeout=15_000)
    return row


def background(element: Locator) -> str:
    return str(element.evaluate("e => getComputedStyle(e).backgroundColor"))


def check_grounded_answer(block: Locator, result: dict) -> None:
    """The answer block shows the grounding the API has: one element per sentence, the
    unsupported ones marked (class, title, dotted red underline), one mark per citation
    ([n?] for a flagged one), the grounding line."""
    expect(block).to_be_visible()
    grounding = result["grounding"]
    sentences = block.locator(".answer .sentence")
    expect(sentences).to_have_count(len(grounding["sentences"]))
    for k, sentence in enumerate(grounding["sentences"]):
        shown = sentences.nth(k)
        if sentence["supported"] is False:
            expect(shown).to_have_class(re.compile(r"\bunsupported\b"))
            expect(shown).to_have_attribute("title", "no retrieved passage supports this sentence")
            expect(shown).to_have_css("text-decoration-style", "dotted")
            expect(shown).to_have_css("text-decoration-color", "rgb(197, 48, 48)")
        else:
            expect(shown).not_to_have_class(re.compile(r"\bunsupported\b"))
        marks = [
            f"[{result['citations'][i]['n']}{'' if result['citations'][i]['supported'] else '?'}]"
            for i in sentence["citations"]
        ]
        # a sentence's marks are the <sup> elements between it and the next sentence
        following = shown.evaluate(
            """e => { const out = []; let n = e.nextElementSibling;
                while (n && n.tagName === 'SUP') { out.push(n.innerText); n = n.nextElementSibling; }
                return out; }"""
        )
        assert following == marks, (k, following, marks)
    expect(block.locator(".answer sup.cite")).to_have_count(len(result["citations"]))
    flagged = [c for c in result["citations"] if not c["supported"]]
    expect(block.locator("sup.cite-unverified")).to_have_count(len(flagged))
    checked = [s for s in grounding["sentences"] if s["checked"]]
    if checked:
        expect(block.locator(".grounding")).to_contain_text(
            f"grounding {grounding['score']:.0%}: {grounding['supported']} of {len(checked)} "
            "sentences supported"
        )


def test_an_answer_no_passage_supports_is_marked_unsupported(
    cluster: NodeCluster, browser: Browser
) -> None:
    """A question the knowledge base knows nothing of: the model's answer is its own,
    no passage supports it, and the Tasks tab's detail marks its sentences so."""
    question = submit(
        cluster, "n2", {"type": "qa", "input": {"query": "What is the capital of France?"}}
    )
    result = wait_state(cluster, question["id"], "completed", timeout=120)["result"]
    print(f"answer: {result['answer']!r}")
    print(f"grounding: {result['grounding']}")
    assert result["grounding"]["unsupported"] >= 1, result  # the bundled model's answer
    page = logged_in(browser, cluster.dashboard_urls["n3"])
    find_task(page, question["id"]).locator(".tabulator-cell[tabulator-field=id]").click()
    block = page.locator(".answer-block")
    expect(block).to_be_visible(timeout=15_000)
    check_grounded_answer(block, result)
    expect(block.locator(".sentence.unsupported")).to_have_count(result["grounding"]["unsupported"])
    shot(page, "answer-unsupported")
    page.close()


def test_filter_sort_and_page_through_more_than_a_thousand_tasks(
    cluster: NodeCluster, browser: Browser
) -> None:
    bodies = [
        {"type": "noop", "input": {"duration_ms": 1}, "priority": i % 10} for i in range(1050)
    ]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda b: submit(cluster, ("n1", "n2", "n3")[b["priority"] % 3], b), bodies))
    _, everything = cluster.request("n1", "GET", "/api/v1/tasks?type=noop&limit=1")
    assert everything["total"] >= 1050
    _, sevens = cluster.request(
        "n1", "GET", "/api/v1/tasks?type=noop&priority=7&sort=submitted&limit=500"
    )
    page = logged_in(browser, cluster.dashboard_urls["n3"])
    page.locator(".bk-tab", has_text="Tasks").click()
    info = page.locator(".page-info")
    page.locator(".f-type select").select_option("noop")
    expect(info).to_contain_text("page 1 · ", timeout=10_000)
    pages: list[list[str]] = []
    for number in (1, 2, 3):
        expect(info).to_contain_text(f"page {number} · ", timeout=10_000)
        rows = page.locator(".tasks-table .tabulator-row")
        expect(rows).to_have_count(50, timeout=10_000)
        pages.append(rows.locator(".tabulator-cell[tabulator-field=id]").all_inner_texts())
        page.get_by_role("button", name="next ▶").click()
    assert len({i for p in pages for i in p}) == 150  # three different pages of 50
    page.get_by_role("button", name="◀ prev").click()
    expect(info).to_contain_text("page 3 · ")
    # priority 7, oldest first: the same tasks, in the same order, as the API lists
    page.locator(".f-priority select").select_option("7")
    page.locator(".f-sort select").select_option("oldest first")
    expect(info).to_contain_text(f"page 1 · {sevens['total']} tasks", timeout=10_000)
    first = page.locator(".tasks-table .tabulator-row").first.locator(
        ".tabulator-cell[tabulator-field=id]"
    )
    expect(first).to_have_text(sevens["items"][0]["id"])
    for row in page.locator(".tasks-table .tabulator-row").all()[:10]:
        expect(row.locator(".tabulator-cell[tabulator-field=priority]")).to_have_text("7")
        expect(row.locator(".tabulator-cell[tabulator-field=type]")).to_have_text("noop")
    shot(page, "tasks-paging")
    page.close()


def test_overview_charts_and_cards_follow_the_cluster(
    cluster: NodeCluster, browser: Browser
) -> None:
    page = logged_in(browser, cluster.dashboard_urls["n2"])
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0")
    # the cards and the charts' data are the API's
    completed = cluster.request("n2", "GET", "/api/v1/stats")[1]["completed"]
    deadline = time.monotonic() + 10
    while True:
        states = source_data(page, "states-over-time")
        if states and states["completed"] and states["completed"][-1] >= completed:
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.5)
    assert len(states["t"]) == 60 and len(states["queued"]) == 60
    per_node = source_data(page, "tasks-per-node")
    assert per_node["node"] == ["n1", "n2", "n3"]
    latency = source_data(page, "latency")
    assert sum(latency["run"]) >= 1 and len(latency["bucket"]) == 13
    # a change is pushed without reloading: a new task shows in the queued card and
    # the Tasks table within about a second of its commit
    page.locator(".bk-tab", has_text="Tasks").click()
    task = submit(cluster, "n1", {"type": "noop", "input": {"duration_ms": 1}, "priority": 3})
    committed = time.monotonic()
    expect(page.locator(".tabulator-row", has_text=task["id"])).to_have_count(1, timeout=5_000)
    shown_after = time.monotonic() - committed
    print(f"new task shown {shown_after:.2f} s after its commit")
    assert shown_after < 2.0
    page.locator(".bk-tab", has_text="Nodes").click()
    rows = page.locator(".nodes-table .tabulator-row")
    expect(rows).to_have_count(3, timeout=10_000)
    for node in ("n1", "n2", "n3"):
        row = rows.filter(has=page.locator(".tabulator-cell[tabulator-field=node]", has_text=node))
        expect(row).to_contain_text("alive")
        expect(row.locator(".tabulator-cell[tabulator-field=models]")).to_have_text("ready")
        expect(row.locator(".tabulator-cell[tabulator-field=term]")).not_to_be_empty()
    # every node's CPU history, as n2's gossip saw it, reached the browser
    deadline = time.monotonic() + 10
    while any(
        len((source_data(page, f"cpu_percent-{n}") or {"t": []})["t"]) < 2
        for n in ("n1", "n2", "n3")
    ):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    shot(page, "nodes")
    page.locator(".bk-tab", has_text="Overview").click()
    shot(page, "overview-charts")
    page.close()


def test_a_user_sees_only_their_tasks_and_cannot_change_the_knowledge_base(
    cluster: NodeCluster, browser: Browser
) -> None:
    page = logged_in(browser, cluster.dashboard_urls["n2"], "alice", "alice-password")
    page.locator(".bk-tab", has_text="Tasks").click()
    expect(page.locator(".page-info")).to_contain_text(
        "page 1 · 0 tasks", timeout=10_000
    )  # admin's are hidden
    page.locator(".bk-tab", has_text="Submit").click()
    page.locator(".s-type select").select_option("retrieve")
    page.locator("textarea").fill("lighthouse lens")
    page.get_by_role("button", name="Submit").click()
    expect(page.locator(".submit-result .passage").first).to_contain_text(
        "great lens", timeout=60_000
    )
    page.locator(".bk-tab", has_text="Tasks").click()
    expect(page.locator(".page-info")).to_contain_text("page 1 · 1 tasks", timeout=10_000)
    expect(page.locator(".tasks-table .tabulator-row")).to_contain_text("alice")
    page.locator(".bk-tab", has_text="Knowledge").click()
    page.locator(".documents-table .tabulator-row", has_text="Lighthouses").locator(
        ".tabulator-cell[tabulator-field=title]"
    ).click()
    page.get_by_role("button", name="Delete selected document").click()
    expect(page.get_by_text("delete refused: only editors and admins")).to_be_visible(
        timeout=10_000
    )
    assert cluster.request("n1", "GET", "/api/v1/kb/documents")[1]["total"] >= 1
    shot(page, "user-view")
    page.close()


def test_cancel_a_queued_task_from_the_table(cluster: NodeCluster, browser: Browser) -> None:
    blockers = [
        submit(cluster, "n1", {"type": "noop", "input": {"duration_ms": 30_000}, "priority": 9})
        for _ in range(6)
    ]  # two slots on each of three nodes: all busy
    _, waiting = cluster.request(
        "n2", "POST", "/api/v1/tasks", {"type": "noop", "input": {"duration_ms": 1}, "priority": 0}
    )
    page = logged_in(browser, cluster.dashboard_urls["n3"])
    page.locator(".bk-tab", has_text="Tasks").click()
    page.get_by_placeholder("id, text, owner, error").fill(waiting["id"])
    page.get_by_placeholder("id, text, owner, error").press("Enter")
    row = page.locator(".tasks-table .tabulator-row", has_text=waiting["id"])
    expect(row).to_have_count(1, timeout=15_000)
    row.locator("input[type='checkbox']").click()  # its selection checkbox
    page.get_by_role("button", name="Cancel selected").click()
    expect(page.get_by_text(f"{waiting['id']}: cancelled")).to_be_visible(timeout=15_000)
    shot(page, "cancelled-from-table")
    time.sleep(1)
    task = cluster.request("n1", "GET", f"/api/v1/tasks/{waiting['id']}")[1]
    assert task["state"] == "cancelled" and task["started_at"] is None  # it never ran
    # a running task cannot be cancelled: the refusal says why; abort stops it
    running = wait_state(cluster, blockers[0]["id"], "running")
    search = page.get_by_placeholder("id, text, owner, error")
    search.fill(running["id"])
    search.press("Enter")
    row = page.locator(".tasks-table .tabulator-row", has_text=running["id"])
    expect(row).to_have_count(1, timeout=15_000)
    row.locator("input[type='checkbox']").click()
    page.get_by_role("button", name="Cancel selected").click()
    expect(page.get_by_text(f"{running['id']}: cancel refused")).to_contain_text(
        "running", timeout=15_000
    )
    page.get_by_role("button", name="Abort selected").click()
    wait_state(cluster, running["id"], "cancelled", timeout=15)
    expect(row).to_contain_text("cancelled", timeout=10_000)
    shot(page, "refused-then-aborted")
    page.close()


def test_upload_files_watch_them_ingested_then_replace_search_and_delete(
    cluster: NodeCluster, browser: Browser, tmp_path: Path
) -> None:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, "The harbour master rings the brass bell at noon.")
    path = tmp_path / "harbour.pdf"
    path.write_bytes(bytes(pdf.output()))
    (tmp_path / "tides.md").write_text(
        "# Tides\n\nThe spring tide floods the causeway twice a month."
    )
    (tmp_path / "ferry.html").write_text(
        "<html><body><p>The ferry leaves the pier at seven.</p></body></html>"
    )
    page = logged_in(browser, cluster.dashboard_urls["n1"])
    page.locator(".bk-tab", has_text="Knowledge").click()
    page.locator("input[type=file]").set_input_files(
        [str(path), str(tmp_path / "tides.md"), str(tmp_path / "ferry.html")]
    )
    page.get_by_role("button", name="Upload").click()
    for name in ("harbour.pdf", "tides.md", "ferry.html"):  # one line each, followed to its end
        expect(page.get_by_text(f"{name}: queued as")).to_be_visible(timeout=15_000)
        expect(page.locator(".upload-line", has_text=name)).to_contain_text(
            "ready: 1 chunks by n", timeout=60_000
        )
        expect(
            page.locator(".documents-table .tabulator-row", has_text=name).filter(has_text="ready")
        ).to_be_visible()
    row = page.locator(".documents-table .tabulator-row", has_text="harbour")
    # replace it: select the row, choose a new file, the document's version 2 is ingested
    (tmp_path / "harbour-v2.txt").write_text(
        "The harbour master now rings the silver bell at dusk."
    )
    row.locator(".tabulator-cell[tabulator-field=title]").click()
    page.locator("input[type=file]").set_input_files(str(tmp_path / "harbour-v2.txt"))
    page.get_by_role("button", name="Replace selected with file").click()
    expect(page.get_by_text("harbour-v2.txt: version 2 of")).to_be_visible(timeout=15_000)
    expect(
        row.filter(has_text="ready").locator(".tabulator-cell[tabulator-field=version]")
    ).to_have_text("2", timeout=60_000)
    page.get_by_placeholder("a query").fill("silver bell")
    page.get_by_role("button", name="Search").click()
    expect(page.locator(".passage").first).to_contain_text("silver bell", timeout=15_000)
    shot(page, "knowledge-base")
    ferry = page.locator(".documents-table .tabulator-row", has_text="ferry.html")
    ferry.locator(".tabulator-cell[tabulator-field=title]").click()
    page.get_by_role("button", name="Delete selected document").click()
    expect(ferry).to_have_count(0, timeout=15_000)
    titles = [d["title"] for d in cluster.request("n2", "GET", "/api/v1/kb/documents")[1]["items"]]
    assert "ferry.html" not in titles and "tides.md" in titles
    page.close()


def test_an_admin_creates_and_disables_a_user_on_the_users_tab(
    cluster: NodeCluster, browser: Browser
) -> None:
    page = logged_in(browser, cluster.dashboard_urls["n1"])
    page.locator(".bk-tab", has_text="Users").click()
    page.get_by_placeholder("new user's name").fill("erin")
    page.locator(".users-password input[type=password]").fill("erin-password")
    page.locator(".users-role select").select_option("editor")  # quotas: the defaults, none
    page.get_by_role("button", name="Create user").click()
    expect(page.locator(".users-notice")).to_contain_text("created erin", timeout=10_000)
    row = page.locator(".users-table .tabulator-row", has_text="erin")
    expect(row.locator(".tabulator-cell[tabulator-field=role]")).to_have_text("editor")
    cluster.read_barrier("n3")
    listed = cluster.request("n3", "GET", "/api/v1/users")[1]["items"]
    assert next(u for u in listed if u["name"] == "erin")["role"] == "editor"
    # erin's own dashboard (another node) has no Users tab
    erin = logged_in(browser, cluster.dashboard_urls["n2"], "erin", "erin-password")
    expect(erin.locator(".bk-tab", has_text="Knowledge")).to_be_visible()
    expect(erin.locator(".bk-tab", has_text="Users")).to_have_count(0)
    erin.close()
    row.locator(".tabulator-cell[tabulator-field=name]").click()
    page.get_by_role("button", name="Disable / enable selected").click()
    expect(page.locator(".users-notice")).to_contain_text("disabled erin", timeout=10_000)
    expect(row.locator(".tabulator-cell[tabulator-field=state]")).to_have_text("disabled")
    login = {"username": "erin", "password": "erin-password"}
    assert cluster.request("n2", "POST", "/api/v1/auth/token", login, token="")[0] == 401
    shot(page, "users")
    page.close()


def test_a_killed_node_is_marked_dead_on_another_nodes_dashboard(
    cluster: NodeCluster, browser: Browser
) -> None:
    page = logged_in(browser, cluster.dashboard_urls["n1"])
    on_victim = logged_in(browser, cluster.dashboard_urls["n3"])
    banner = on_victim.get_by_text("stopped answering")
    expect(banner).to_be_hidden()
    card = page.locator('.node-card[data-node="n3"] .gossip')
    expect(card).to_have_text("alive", timeout=15_000)
    cluster.kill("n3")
    started = time.monotonic()
    expect(card).to_have_text("dead", timeout=15_000)
    assert time.monotonic() - started < 10
    shot(page, "node-dead")
    # the page served by the dead node says so and links to the others
    expect(banner).to_be_visible(timeout=10_000)
    for node in ("n1", "n2"):
        expect(on_victim.get_by_role("link", name=node)).to_have_attribute(
            "href", cluster.dashboard_urls[node]
        )
    shot(on_victim, "serving-node-died")
    on_victim.close()
    page.close()


XSS = '<img src=x onerror="window.__xss=(window.__xss||0)+1">'


def test_markup_planted_in_data_is_shown_as_text_and_never_runs(
    cluster: NodeCluster, browser: Browser
) -> None:
    """Data is rendered escaped everywhere the dashboard shows it: a document title and
    text, a task's query (in the table and its detail), its answer and citations, and
    the passages of a search each carry an <img onerror> that would count in
    window.__xss if it ran."""
    _, body = cluster.request(
        "n1",
        "POST",
        "/api/v1/kb/documents",
        {"title": f"Beacons {XSS}", "text": f"The beacon keeper lights the fire {XSS} at dusk."},
    )
    wait_state(cluster, body["tasks"][0]["id"], "completed")
    question = submit(
        cluster, "n1", {"type": "qa", "input": {"query": f"When is the beacon lit? {XSS}"}}
    )
    wait_state(cluster, question["id"], "completed", timeout=120)
    page = logged_in(browser, cluster.dashboard_urls["n2"])
    row = find_task(page, question["id"])
    expect(row).to_contain_text("<img src=x")  # the markup, as text
    row.locator(".tabulator-cell[tabulator-field=id]").click()
    expect(page.get_by_text("onerror=").first).to_be_visible(timeout=15_000)
    page.locator(".bk-tab", has_text="Knowledge").click()
    expect(
        page.locator(".documents-table .tabulator-row", has_text="Beacons").first
    ).to_contain_text("<img src=x", timeout=15_000)
    page.get_by_placeholder("a query").fill("beacon keeper lights the fire")
    page.get_by_role("button", name="Search").click()
    expect(page.locator(".passage").first).to_contain_text("onerror=", timeout=15_000)
    page.wait_for_timeout(1000)  # an image that fails to load fires onerror at once
    shot(page, "markup-shown-as-text")
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src=x]").count() == 0
    page.close()
