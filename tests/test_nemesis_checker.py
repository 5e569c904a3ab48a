"""The nemesis checker on hand-made histories: a clean one passes, and each kind of
violation is caught (tests/nemesis/checker.py)."""

from __future__ import annotations

import copy

import pytest

from tests.nemesis import checker

NODES = ("n1", "n2", "n3")
T0 = 1_000_000.0  # seconds since the epoch


def task(
    task_id: str,
    key: str,
    state: str = "completed",
    attempt: int = 1,
    node: str | None = "n1",
    history: list[tuple] | None = None,
    at: float = T0,
) -> dict:
    ms = int(at * 1000)
    if history is None:
        history = [("queued", None, 0, ms)]
        if state in ("running", "completed"):
            history.append(("running", node, attempt, ms + 10))
        if state == "completed":
            history.append(("completed", node, attempt, ms + 20))
        if state == "cancelled":
            history.append(("cancelled", None, attempt, ms + 10))
    return {
        "id": task_id,
        "type": "noop",
        "input": {"duration_ms": 0, "tag": key},
        "state": state,
        "attempt": attempt,
        "node": node,
        "result": {"slept_ms": 0} if state == "completed" else None,
        "history": [
            {"state": s, "node": n, "attempt": a, "at": t, "note": ""} for s, n, a, t in history
        ],
    }


def everywhere(*tasks: dict) -> dict[str, dict[str, dict]]:
    return {n: {t["id"]: copy.deepcopy(t) for t in tasks} for n in NODES}


class H:
    """A history builder: times advance by 0.1 s per entry unless given."""

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.now = T0

    def add(self, process: str, type_: str, f: str, at: float | None = None, **fields) -> dict:
        self.now = at if at is not None else self.now + 0.1
        entry = {
            "index": len(self.entries),
            "time": self.now,
            "process": process,
            "type": type_,
            "f": f,
            **fields,
        }
        self.entries.append(entry)
        return entry

    def attempt(
        self, node: str, start: float, end: float, status: int | None, code: str | None = None
    ) -> dict:
        return {"node": node, "start": start, "end": end, "status": status, "code": code}

    def submit(
        self,
        task_id: str,
        key: str,
        node: str = "n1",
        process: str = "c1",
        at: float | None = None,
        sent: float | None = None,
        f: str = "submit",
        **fields,
    ) -> dict:
        end = at if at is not None else self.now + 0.1
        start = sent if sent is not None else end - 0.05
        self.add(process, "invoke", f, at=start, node=node, key=key)
        return self.add(
            process,
            "ok",
            f,
            at=end,
            node=node,
            key=key,
            id=task_id,
            status=201,
            attempts=[self.attempt(node, start, end, 201)],
            **fields,
        )

    def refused(
        self,
        node: str,
        sent: float,
        answered: float,
        status: int | None = 503,
        process: str = "probe-503",
    ) -> dict:
        key = f"probe-{sent}"
        return self.add(
            process,
            "info",
            "submit",
            at=answered,
            node=node,
            key=key,
            status=status,
            attempts=[
                self.attempt(node, sent, answered, status, "no_quorum" if status == 503 else None)
            ],
        )

    def change(
        self, f: str, task_id: str, key: str, type_: str = "ok", status: int = 200, value=None
    ) -> dict:
        return self.add(
            "c1",
            type_,
            f,
            id=task_id,
            key=key,
            status=status,
            value=value,
            attempts=[self.attempt("n1", self.now, self.now + 0.01, status)],
        )

    def nemesis(self, f: str, at: float | None = None, **fields) -> dict:
        return self.add("nemesis", "info", f, at=at, **fields)


def kinds(report: dict) -> set[str]:
    return set(report["violation_counts"])


def healthy() -> tuple[H, dict]:
    """A clean run: submits, one isolation refused fast, a heal followed by a fast write."""
    h = H()
    h.nemesis("schedule", seed=1)
    h.submit("t1", "k1")
    h.submit("t2", "k2", node="n2")
    cut = h.nemesis("start", fault="isolate-leader", cut_off=["n1"])["time"]
    h.refused("n1", cut + 0.1, cut + 0.9)
    h.submit("t3", "k3", node="n2", at=cut + 1.0)
    heal = h.nemesis("heal", fault="isolate-leader", at=cut + 5)["time"]
    h.submit("t4", "k4", node="n1", at=heal + 0.3, sent=heal + 0.05, process="probe-heal")
    h.submit("t5", "k5", node="n3", at=heal + 0.5, sent=heal + 0.1)
    h.change("cancel", "t5", "k5", value={"id": "t5", "state": "cancelled", "attempt": 0})
    final = everywhere(
        task("t1", "k1"),
        task("t2", "k2"),
        task("t3", "k3"),
        task("t4", "k4"),
        task("t5", "k5", state="cancelled", attempt=0, node=None),
    )
    return h, final


def test_a_clean_history_passes_and_the_figures_are_right():
    h, final = healthy()
    report = checker.check(h.entries, final)
    assert report["ok"], report["violations"]
    f = report["figures"]
    assert f["acknowledged_tasks"] == 5
    assert f["cancels"]["ok"] == 1
    assert f["max_time_to_503_s"] == pytest.approx(0.9)
    assert f["max_write_gap_after_heal_s"] == pytest.approx(0.3)
    assert "OK" in checker.render(report)


def test_a_lost_task_is_caught():
    h, final = healthy()
    del final["n2"]["t3"]
    report = checker.check(h.entries, final)
    assert kinds(report) == {"lost"}
    assert report["violations"][0]["nodes"] == ["n2"]


def test_a_task_not_terminal_is_caught():
    h, final = healthy()
    for n in NODES:
        final[n]["t2"] = task("t2", "k2", state="running")
    assert kinds(checker.check(h.entries, final)) == {"not_terminal"}


def test_diverging_replicas_are_caught():
    h, final = healthy()
    final["n3"]["t1"]["attempt"] = 2
    report = checker.check(h.entries, final)
    assert kinds(report) == {"divergent"}
    assert report["violations"][0]["fields"] == ["attempt"]
    # a task (not acknowledged) that only some nodes have
    h, final = healthy()
    final["n1"]["x"] = task("x", "kx")
    assert kinds(checker.check(h.entries, final)) == {"divergent"}


def test_a_task_completed_twice_is_caught():
    h, final = healthy()
    twice = task(
        "t1",
        "k1",
        attempt=2,
        history=[
            ("queued", None, 0, 1),
            ("running", "n1", 1, 2),
            ("completed", "n1", 1, 3),
            ("running", "n2", 2, 4),
            ("completed", "n2", 2, 5),
        ],
    )
    for n in NODES:
        final[n]["t1"] = copy.deepcopy(twice)
    assert kinds(checker.check(h.entries, final)) == {"completed_twice"}


def test_a_duplicate_from_a_retried_submission_is_caught():
    h, final = healthy()
    for n in NODES:
        final[n]["t1bis"] = task("t1bis", "k1")  # same key as t1: the retry minted a second task
    report = checker.check(h.entries, final)
    assert kinds(report) == {"duplicate"}
    assert report["violations"][0]["cause"] == "retry"
    assert report["figures"]["duplicate_tasks"] == 1


def test_a_replay_answered_with_another_task_is_caught():
    h, final = healthy()
    h.submit("t6", "k1", node="n3", f="replay", original_id="t1")
    for n in NODES:
        final[n]["t6"] = task("t6", "k1")
    report = checker.check(h.entries, final)
    assert kinds(report) == {"replay_new_task", "duplicate"}
    assert next(v for v in report["violations"] if v["kind"] == "duplicate")["cause"] == "replay"
    # and a replay that gets the same id is fine
    h, final = healthy()
    h.submit("t1", "k1", node="n3", f="replay", original_id="t1")
    assert checker.check(h.entries, final)["ok"]


def test_a_cancelled_task_that_ran_is_caught():
    h, final = healthy()
    ran = task(
        "t5",
        "k5",
        state="completed",
        attempt=1,
        history=[
            ("queued", None, 0, 1),
            ("cancelled", None, 0, 2),
            ("running", "n2", 1, 3),
            ("completed", "n2", 1, 4),
        ],
    )
    for n in NODES:
        final[n]["t5"] = copy.deepcopy(ran)
    report = checker.check(h.entries, final)
    assert kinds(report) == {"cancelled_task_ran"}
    assert "completed" in report["violations"][0]["problems"]


def test_an_abort_that_cancelled_a_queued_task_counts_as_a_cancel():
    h, final = healthy()
    h.change("abort", "t2", "k2", value={"id": "t2", "state": "cancelled", "attempt": 0})
    assert kinds(checker.check(h.entries, final)) == {"cancelled_task_ran"}  # t2 completed


def test_a_duplicate_of_a_cancelled_submission_that_ran_is_caught():
    h, final = healthy()
    cancel_time = h.entries[-1]["time"]
    for n in NODES:
        final[n]["t5bis"] = task("t5bis", "k5", at=cancel_time + 1)
    assert kinds(checker.check(h.entries, final)) == {"duplicate", "cancelled_submission_ran"}


def test_an_ignored_abort_is_caught():
    h, final = healthy()
    h.change("abort", "t1", "k1", value={"id": "t1", "state": "running", "attempt": 1})
    assert checker.check(h.entries, final)["ok"]  # aborted while running, then completed: a race
    for n in NODES:
        final[n]["t1"] = task("t1", "k1", attempt=2)  # but it started again afterwards
    assert kinds(checker.check(h.entries, final)) == {"abort_ignored"}


def test_a_write_naming_an_acknowledged_task_answered_404_is_caught():
    h, final = healthy()
    h.change("cancel", "t1", "k1", type_="fail", status=404)
    assert kinds(checker.check(h.entries, final)) == {"acked_task_not_found"}


def test_a_task_lost_across_a_restart_is_caught():
    h, final = healthy()
    killed = h.nemesis("kill", node="n2")["time"]
    h.nemesis("restart", node="n2")
    h.nemesis(
        "restart-check", node="n2", killed_at=killed, caught_up=True, ids=["t1", "t2", "t3", "t4"]
    )
    report = checker.check(h.entries, final)
    assert kinds(report) == {"lost_after_restart"}
    assert report["violations"][0]["id"] == "t5"
    # not caught up: not judged (noted)
    h, final = healthy()
    killed = h.nemesis("kill", node="n2")["time"]
    h.nemesis("restart-check", node="n2", killed_at=killed, caught_up=False, ids=[])
    report = checker.check(h.entries, final)
    assert report["ok"] and "not checked" in report["figures"]["restarts"][0]["note"]


def test_a_slow_or_missing_write_after_a_heal_is_caught():
    h = H()
    h.submit("t1", "k1")
    cut = h.nemesis("start", fault="split", cut_off=[])["time"]
    heal = h.nemesis("heal", fault="split", at=cut + 3)["time"]
    h.submit("t2", "k2", at=heal + 2.5, sent=heal + 0.1)
    final = everywhere(task("t1", "k1"), task("t2", "k2"))
    report = checker.check(h.entries, final)
    assert kinds(report) == {"slow_write_after_heal"}
    assert report["figures"]["max_write_gap_after_heal_s"] == pytest.approx(2.5)
    # a write sent before the heal does not count as accepted after it
    h = H()
    cut = h.nemesis("start", fault="split", cut_off=[])["time"]
    heal = h.nemesis("heal", fault="split", at=cut + 3)["time"]
    h.submit("t1", "k1", at=heal + 0.2, sent=heal - 0.5)
    h.nemesis("start", fault="loss", at=heal + 4)
    h.nemesis("heal", fault="loss", at=heal + 5)
    h.submit("t2", "k2", at=heal + 5.1, sent=heal + 5.05)
    report = checker.check(h.entries, everywhere(task("t1", "k1"), task("t2", "k2")))
    assert kinds(report) == {"no_write_after_heal"}
    assert report["violations"][0]["fault"] == "split"


def test_a_cut_off_node_that_does_not_refuse_in_time_is_caught():
    h = H()
    h.submit("t1", "k1")
    cut = h.nemesis("start", fault="isolate-leader", cut_off=["n1"])["time"]
    h.refused("n1", cut + 0.1, cut + 10.0)  # held 10 s (ProposalTimeout), then 503
    heal = h.nemesis("heal", fault="isolate-leader", at=cut + 10.2)["time"]
    h.submit("t2", "k2", at=heal + 0.2, sent=heal + 0.1)
    final = everywhere(task("t1", "k1"), task("t2", "k2"))
    report = checker.check(h.entries, final)
    assert kinds(report) == {"slow_refusal", "held_write"}
    assert report["figures"]["max_time_to_503_s"] == pytest.approx(10.0)
    # never refused at all while cut off (the client gave up at 3 s, twice)
    h = H()
    cut = h.nemesis("start", fault="one-way", cut_off=["n3"])["time"]
    h.refused("n3", cut + 0.1, cut + 3.1, status=None, process="c3")
    h.refused("n3", cut + 3.2, cut + 6.2, status=None, process="c3")
    heal = h.nemesis("heal", fault="one-way", at=cut + 8)["time"]
    h.submit("t1", "k1", at=heal + 0.2, sent=heal + 0.1)
    report = checker.check(h.entries, everywhere(task("t1", "k1")))
    assert kinds(report) == {"no_refusal", "held_write"}
    assert next(v for v in report["violations"] if v["kind"] == "held_write")["count"] == 2


def test_a_fast_first_refusal_with_later_writes_held_is_caught():
    h = H()
    cut = h.nemesis("start", fault="split", cut_off=["n2"])["time"]
    h.refused("n2", cut + 0.1, cut + 0.8)
    h.refused("n2", cut + 1.0, cut + 3.5)  # waited 2.5 s for a leader
    heal = h.nemesis("heal", fault="split", at=cut + 6)["time"]
    h.submit("t1", "k1", at=heal + 0.2, sent=heal + 0.1)
    report = checker.check(h.entries, everywhere(task("t1", "k1")))
    assert kinds(report) == {"held_write"}


def test_a_write_acknowledged_by_a_cut_off_node_is_caught():
    h = H()
    cut = h.nemesis("start", fault="isolate-leader", cut_off=["n1"])["time"]
    h.refused("n1", cut + 0.1, cut + 0.5)
    h.submit("t1", "k1", node="n1", at=cut + 2.5, sent=cut + 2.4)
    heal = h.nemesis("heal", fault="isolate-leader", at=cut + 6)["time"]
    h.submit("t2", "k2", at=heal + 0.2, sent=heal + 0.1)
    report = checker.check(h.entries, everywhere(task("t1", "k1"), task("t2", "k2")))
    assert kinds(report) == {"cut_off_node_acked"}


def test_a_node_that_exits_on_its_own_is_caught():
    h, final = healthy()
    h.nemesis("crash", node="n2", code=1, log="ValueError: append at index 11 outside [1, 6]")
    assert kinds(checker.check(h.entries, final)) == {"node_crashed"}


def test_every_violation_kind_is_documented():
    documented = checker.__doc__
    for kind in (
        "lost",
        "not_terminal",
        "divergent",
        "completed_twice",
        "duplicate",
        "replay_new_task",
        "cancelled_task_ran",
        "cancelled_submission_ran",
        "abort_ignored",
        "acked_task_not_found",
        "lost_after_restart",
        "no_write_after_heal",
        "slow_write_after_heal",
        "no_refusal",
        "slow_refusal",
        "held_write",
        "cut_off_node_acked",
        "node_crashed",
    ):
        assert f"    {kind} " in documented, kind
