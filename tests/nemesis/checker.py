"""The checker: the recorded history plus the final state read from every node -> a report.

Pure (no I/O), so it can be fed hand-made histories (tests/test_nemesis_checker.py).

Inputs:
    history  the entries of history.py (dicts)
    final    node -> {task id -> task record (GET /api/v1/tasks?full=1)}

Properties (violation kinds):
    lost                    an acknowledged task (2xx submit) is missing on a node at the end
    not_terminal            an acknowledged task is not completed/failed/cancelled at the end
    divergent               a task differs between nodes (state, attempt, result, node,
                            history), or some nodes have it and others do not
    completed_twice         a task's history holds more than one `completed` entry
    duplicate               more than one task carries one idempotency key (input.tag):
                            a retried (or replayed) submission made a second task
    replay_new_task         an acknowledged submission re-sent with its key got another id
    cancelled_task_ran      an acknowledged cancel (or an abort answered `cancelled`): the
                            task is not cancelled at the end, has history after its
                            cancellation, a completion, or a later attempt
    cancelled_submission_ran  another task of the same key as a cancelled one ran after
                            the cancellation (the user cancelled, the work still happened)
    abort_ignored           an acknowledged abort of a running task: the task started another
                            attempt afterwards, or ended neither cancelled nor completed
    acked_task_not_found    a cancel/abort of an acknowledged task answered 404
    lost_after_restart      a task acknowledged before a kill -9 is missing on the restarted
                            node once it has caught up
    no_write_after_heal     no write was acknowledged between a heal and the next fault
    slow_write_after_heal   the first write acknowledged after a heal came later than
                            `write_gap_s` (requests sent after the heal)
    no_refusal              a node cut off from the quorum never answered 503 while cut off
    slow_refusal            ... answered its first 503 later than `refusal_s` after the cut
    held_write              a cut-off node held writes longer than `refusal_s` before answering
                            (one violation per fault and node, with the count): every write
                            sent to it should be refused within the limit, not only the first
    cut_off_node_acked      a node cut off from its peers acknowledged a write sent well
                            after the cut (the cut did not hold, or a safety bug)
    node_crashed            a node process exited that the nemesis did not kill
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

FINISHED = ("completed", "failed", "cancelled")
COMPARED = ("state", "attempt", "result", "node", "history")
WRITE_GAP_S = 2.0
REFUSAL_S = 2.0
CUT_GRACE_S = 1.0  # a write answered this soon after a cut may have committed before it


def _violation(out: list[dict], kind: str, **details: Any) -> None:
    out.append({"kind": kind, **details})


def _acked_writes(history: list[dict]) -> list[dict]:
    return [
        e for e in history if e["type"] == "ok" and e["f"] in ("submit", "replay") and e.get("id")
    ]


def _windows(history: list[dict]) -> list[dict]:
    """Fault windows: each `start` with its `heal` and the time the next fault starts."""
    nemesis = [e for e in history if e["process"] == "nemesis"]
    windows: list[dict] = []
    open_: dict | None = None
    for e in nemesis:
        if e["f"] in ("start", "final-heal") and windows and windows[-1]["next"] is None:
            windows[-1]["next"] = e["time"]
        if e["f"] == "start":
            open_ = {
                "fault": e.get("fault"),
                "start": e["time"],
                "heal": None,
                "next": None,
                "cut_off": e.get("cut_off") or [],
                "targets": e.get("targets"),
            }
            windows.append(open_)
        elif e["f"] == "heal" and open_ is not None and open_["heal"] is None:
            open_["heal"] = e["time"]
        elif e["f"] == "final-heal":
            open_ = None
            windows.append(
                {
                    "fault": "final",
                    "start": e["time"],
                    "heal": e["time"],
                    "next": None,
                    "cut_off": [],
                    "targets": None,
                }
            )
    return windows


def check(
    history: list[dict],
    final: dict[str, dict[str, dict]],
    write_gap_s: float = WRITE_GAP_S,
    refusal_s: float = REFUSAL_S,
) -> dict:
    violations: list[dict] = []
    nodes = sorted(final)
    end_time = max((e["time"] for e in history), default=0.0)
    acked_entries = _acked_writes(history)
    acked: dict[str, dict] = {}
    for e in acked_entries:
        acked.setdefault(e["id"], e)
    replayed_keys = {e["key"] for e in history if e["f"] == "replay"}

    # -------------------------------------------------- replays
    for e in acked_entries:
        if e["f"] == "replay" and e["id"] != e.get("original_id"):
            _violation(
                violations,
                "replay_new_task",
                key=e["key"],
                original_id=e.get("original_id"),
                new_id=e["id"],
                node=e.get("node"),
                replayed_header=e.get("replayed"),
            )

    # -------------------------------------------------- existence, terminal, identical
    for task_id, e in acked.items():
        missing = [n for n in nodes if task_id not in final[n]]
        if missing:
            _violation(
                violations,
                "lost",
                id=task_id,
                nodes=missing,
                acked_by=e.get("node"),
                acked_at=e["time"],
                process=e["process"],
            )
        for n in nodes:
            task = final[n].get(task_id)
            if task is not None and task["state"] not in FINISHED:
                _violation(violations, "not_terminal", id=task_id, node=n, state=task["state"])
    all_ids = sorted(set().union(*(set(final[n]) for n in nodes))) if nodes else []
    for task_id in all_ids:
        copies = {n: final[n].get(task_id) for n in nodes}
        absent = [n for n, t in copies.items() if t is None]
        if absent and task_id not in acked:
            _violation(violations, "divergent", id=task_id, fields=["present"], absent_on=absent)
        present = {n: t for n, t in copies.items() if t is not None}
        if len(present) > 1:
            first = next(iter(present.values()))
            differ = [
                f for f in COMPARED if any(t.get(f) != first.get(f) for t in present.values())
            ]
            if differ:
                _violation(
                    violations,
                    "divergent",
                    id=task_id,
                    fields=differ,
                    values={
                        n: {f: t.get(f) for f in differ if f != "history"}
                        for n, t in present.items()
                    },
                )
        for t in present.values():
            done = sum(1 for h in t.get("history", []) if h["state"] == "completed")
            if done > 1:
                _violation(violations, "completed_twice", id=task_id, completions=done)
                break

    # -------------------------------------------------- one task per idempotency key
    merged: dict[str, dict] = {}
    for n in nodes:
        for task_id, task in final[n].items():
            merged.setdefault(task_id, task)
    by_tag: dict[str, list[dict]] = defaultdict(list)
    for task in merged.values():
        tag = (task.get("input") or {}).get("tag")
        if tag:
            by_tag[tag].append(task)
    duplicates = 0
    for tag, tasks in sorted(by_tag.items()):
        if len(tasks) > 1:
            duplicates += len(tasks) - 1
            _violation(
                violations,
                "duplicate",
                key=tag,
                ids=sorted(t["id"] for t in tasks),
                cause="replay" if tag in replayed_keys else "retry",
                completed=sum(t["state"] == "completed" for t in tasks),
            )

    # -------------------------------------------------- cancels and aborts
    cancels = [e for e in history if e["type"] == "ok" and e["f"] == "cancel"]
    aborts_ok = [e for e in history if e["type"] == "ok" and e["f"] == "abort"]
    for e in cancels + [a for a in aborts_ok if (a.get("value") or {}).get("state") == "cancelled"]:
        _check_cancelled(e, final, nodes, by_tag, violations)
    for e in aborts_ok:
        value = e.get("value") or {}
        if value.get("state") != "running":
            continue
        for n in nodes:
            task = final[n].get(e["id"])
            if task is None:
                continue
            if task["attempt"] != value.get("attempt") or task["state"] not in (
                "cancelled",
                "completed",
            ):
                _violation(
                    violations,
                    "abort_ignored",
                    id=e["id"],
                    node=n,
                    state=task["state"],
                    attempt=task["attempt"],
                    attempt_when_aborted=value.get("attempt"),
                )
                break
    for e in history:
        if (
            e["f"] in ("cancel", "abort")
            and e["type"] in ("fail", "info")
            and e.get("status") == 404
            and e.get("id") in acked
        ):
            _violation(
                violations, "acked_task_not_found", id=e["id"], op=e["f"], node=e.get("node")
            )

    # -------------------------------------------------- kill -9 and restart
    restarts = [e for e in history if e["process"] == "nemesis" and e["f"] == "restart-check"]
    restart_notes = []
    for e in restarts:
        before = [tid for tid, a in acked.items() if a["time"] < e["killed_at"]]
        if not e.get("caught_up"):
            restart_notes.append(
                {"node": e["node"], "note": "did not catch up in time; not checked"}
            )
            continue
        present = set(e.get("ids") or [])
        missing = [tid for tid in before if tid not in present]
        restart_notes.append(
            {"node": e["node"], "acked_before_kill": len(before), "missing": len(missing)}
        )
        for tid in missing:
            _violation(violations, "lost_after_restart", id=tid, node=e["node"])

    # -------------------------------------------------- timing after heals, refusals while cut off
    attempts = [
        (e, a)
        for e in history
        if e["type"] in ("ok", "fail", "info")
        for a in e.get("attempts") or []
    ]
    write_attempts = [(e, a) for e, a in attempts if e["f"] in ("submit", "replay")]
    windows = _windows(history)
    gaps, refusals = [], []
    for w in windows:
        heal = w["heal"]
        if heal is None:
            continue
        until = w["next"] or end_time
        per_node: dict[str, float] = {}
        first: float | None = None
        for e, a in write_attempts:
            if (
                e["type"] == "ok"
                and a.get("status") in (200, 201)
                and heal <= a["start"]
                and a["end"] <= until
            ):
                gap = a["end"] - heal
                first = gap if first is None else min(first, gap)
                per_node[a["node"]] = min(per_node.get(a["node"], gap), gap)
        gaps.append(
            {
                "fault": w["fault"],
                "heal": heal,
                "gap_s": _r(first),
                "all_nodes_gap_s": _r(max(per_node.values()))
                if len(per_node) == len(nodes) and nodes
                else None,
                "per_node_s": {n: _r(g) for n, g in sorted(per_node.items())},
            }
        )
        if first is None:
            _violation(
                violations,
                "no_write_after_heal",
                fault=w["fault"],
                heal=heal,
                window_s=_r(until - heal),
            )
        elif first > write_gap_s:
            _violation(
                violations,
                "slow_write_after_heal",
                fault=w["fault"],
                gap_s=_r(first),
                limit_s=write_gap_s,
            )
    for w in windows:
        for node in w["cut_off"]:
            t0, t1 = w["start"], w["heal"] or end_time
            # sent while cut off (however long they were held), or answered while cut off
            on_node = [
                (e, a)
                for e, a in write_attempts
                if a["node"] == node and (t0 <= a["start"] <= t1 or t0 <= a["end"] <= t1)
            ]
            refused = sorted(
                (a for _, a in on_node if a.get("status") == 503 and t0 <= a["end"] <= t1 + 0.5),
                key=lambda a: a["end"],
            )
            held = [
                a["end"] - a["start"]
                for _, a in on_node
                if a["start"] >= t0 and a.get("status") != 201
            ]
            first_503 = refused[0] if refused else None
            record = {
                "fault": w["fault"],
                "node": node,
                "cut_s": _r(t1 - t0),
                "time_to_503_s": _r(first_503["end"] - t0) if first_503 else None,
                "code": first_503.get("code") if first_503 else None,
                "requests": len(on_node),
                "max_hold_s": _r(max(held)) if held else None,
                "timeouts": sum(1 for _, a in on_node if a.get("status") is None),
            }
            refusals.append(record)
            if first_503 is None:
                _violation(
                    violations,
                    "no_refusal",
                    fault=w["fault"],
                    node=node,
                    cut_s=_r(t1 - t0),
                    requests=len(on_node),
                    max_hold_s=record["max_hold_s"],
                )
            elif first_503["end"] - t0 > refusal_s:
                _violation(
                    violations,
                    "slow_refusal",
                    fault=w["fault"],
                    node=node,
                    time_to_503_s=record["time_to_503_s"],
                    limit_s=refusal_s,
                    max_hold_s=record["max_hold_s"],
                )
            held_long = sorted(
                (
                    a
                    for _, a in on_node
                    if a["start"] >= t0
                    and a["start"] + refusal_s <= t1
                    and a["end"] - a["start"] > refusal_s
                ),
                key=lambda a: a["start"],
            )
            record["held_over_limit"] = len(held_long)
            if held_long:
                _violation(
                    violations,
                    "held_write",
                    fault=w["fault"],
                    node=node,
                    count=len(held_long),
                    of=len(on_node),
                    max_hold_s=record["max_hold_s"],
                    limit_s=refusal_s,
                    first_sent_after_cut_s=_r(held_long[0]["start"] - t0),
                    outcomes=dict(
                        Counter(str(a.get("status") or a.get("error")) for a in held_long)
                    ),
                )
            for e, a in on_node:
                if (
                    a.get("status") in (200, 201)
                    and a["start"] >= t0 + CUT_GRACE_S
                    and a["end"] <= t1
                ):
                    _violation(
                        violations,
                        "cut_off_node_acked",
                        fault=w["fault"],
                        node=node,
                        id=e.get("id"),
                        sent_after_cut_s=_r(a["start"] - t0),
                    )

    for e in history:
        if e["process"] == "nemesis" and e["f"] == "crash":
            _violation(
                violations, "node_crashed", node=e.get("node"), code=e.get("code"), log=e.get("log")
            )

    # -------------------------------------------------- figures
    ops = Counter(
        (e["f"], e["type"])
        for e in history
        if e["type"] in ("ok", "fail", "info") and e["process"] != "nemesis"
    )
    workload = [
        e for e in history if e["type"] in ("ok", "fail", "info") and e["process"].startswith("c")
    ]
    wops = Counter((e["f"], e["type"]) for e in workload)
    final_states = {n: dict(Counter(t["state"] for t in final[n].values())) for n in nodes}
    gap_values = [g["gap_s"] for g in gaps if g["gap_s"] is not None]
    all_node_gaps = [g["all_nodes_gap_s"] for g in gaps if g["all_nodes_gap_s"] is not None]
    ttr = [r["time_to_503_s"] for r in refusals if r["time_to_503_s"] is not None]
    holds = [r["max_hold_s"] for r in refusals if r["max_hold_s"] is not None]
    figures = {
        "acknowledged_tasks": len(acked),
        "acknowledged_by_workload": sum(1 for e in acked.values() if e["process"].startswith("c")),
        "submits": {t: wops[("submit", t)] for t in ("ok", "fail", "info")},
        "replays": {t: wops[("replay", t)] for t in ("ok", "fail", "info")},
        "replays_same_id": sum(
            1 for e in acked_entries if e["f"] == "replay" and e["id"] == e.get("original_id")
        ),
        "cancels": {t: ops[("cancel", t)] for t in ("ok", "fail", "info")},
        "aborts": {t: ops[("abort", t)] for t in ("ok", "fail", "info")},
        "reads": {t: wops[("read", t)] + wops[("list", t)] for t in ("ok", "fail", "info")},
        "duplicate_tasks": duplicates,
        "faults": Counter(w["fault"] for w in windows if w["fault"] != "final"),
        "max_write_gap_after_heal_s": max(gap_values) if gap_values else None,
        "max_all_nodes_write_gap_after_heal_s": max(all_node_gaps) if all_node_gaps else None,
        "write_gaps": gaps,
        "max_time_to_503_s": max(ttr) if ttr else None,
        "max_hold_of_cut_off_node_s": max(holds) if holds else None,
        "refusals": refusals,
        "restarts": restart_notes,
        "final_states": final_states,
        "tasks_in_final_state": len(merged),
    }
    counts = Counter(v["kind"] for v in violations)
    return {
        "ok": not violations,
        "figures": figures,
        "violation_counts": dict(sorted(counts.items())),
        "violations": violations,
        "limits": {"write_gap_s": write_gap_s, "refusal_s": refusal_s},
    }


def _check_cancelled(
    e: dict, final: dict, nodes: list[str], by_tag: dict, violations: list[dict]
) -> None:
    task_id = e["id"]
    value = e.get("value") or {}
    for n in nodes:
        task = final[n].get(task_id)
        if task is None:
            continue  # reported as lost
        history = task.get("history", [])
        idx = next((i for i, h in enumerate(history) if h["state"] == "cancelled"), None)
        problems = []
        if task["state"] != "cancelled":
            problems.append(f"state {task['state']}")
        if idx is None:
            problems.append("no cancelled entry")
        elif idx != len(history) - 1:
            problems.append(
                "history after the cancellation: "
                + ", ".join(h["state"] for h in history[idx + 1 :])
            )
        if any(h["state"] == "completed" for h in history):
            problems.append("completed")
        if value.get("attempt") is not None and task["attempt"] != value["attempt"]:
            problems.append(f"attempt {value['attempt']} -> {task['attempt']}")
        if problems:
            _violation(
                violations, "cancelled_task_ran", id=task_id, node=n, op=e["f"], problems=problems
            )
            break
    cancelled_at_ms = e["time"] * 1000
    for other in by_tag.get(e.get("key"), []):
        if other["id"] == task_id:
            continue
        ran = [
            h
            for h in other.get("history", [])
            if h["state"] in ("running", "completed") and h["at"] >= cancelled_at_ms
        ]
        if ran:
            _violation(
                violations,
                "cancelled_submission_ran",
                id=task_id,
                duplicate=other["id"],
                key=e.get("key"),
                duplicate_state=other["state"],
            )


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---------------------------------------------------------------- text
def render(report: dict) -> str:
    f = report["figures"]
    lines = [f"nemesis report: {'OK' if report['ok'] else 'VIOLATIONS'}", ""]
    lines.append(
        f"acknowledged tasks      {f['acknowledged_tasks']} ({f['acknowledged_by_workload']} by the "
        f"workload clients, the rest by probes); {f['tasks_in_final_state']} tasks in the final state"
    )
    lines.append(
        f"submits (workload)      ok {f['submits']['ok']}, refused {f['submits']['fail']}, "
        f"indeterminate {f['submits']['info']}"
    )
    lines.append(
        f"replays (same key)      ok {f['replays']['ok']} (same id: {f['replays_same_id']}), "
        f"indeterminate {f['replays']['info']}"
    )
    lines.append(
        f"cancels                 acknowledged {f['cancels']['ok']}, refused {f['cancels']['fail']}, "
        f"indeterminate {f['cancels']['info']}"
    )
    lines.append(
        f"aborts                  acknowledged {f['aborts']['ok']}, refused {f['aborts']['fail']}, "
        f"indeterminate {f['aborts']['info']}"
    )
    lines.append(
        f"reads                   ok {f['reads']['ok']}, not found {f['reads']['fail']}, "
        f"failed {f['reads']['info']}"
    )
    lines.append(f"duplicate tasks         {f['duplicate_tasks']}")
    lines.append(
        f"faults                  {', '.join(f'{k} x{v}' for k, v in sorted(f['faults'].items()))}"
    )
    limits = report["limits"]
    lines.append(
        f"max write gap after heal  {_s(f['max_write_gap_after_heal_s'])} (limit {limits['write_gap_s']} s); "
        f"until every node accepts: {_s(f['max_all_nodes_write_gap_after_heal_s'])}"
    )
    for g in f["write_gaps"]:
        lines.append(
            f"    after {g['fault']:<15} first write {_s(g['gap_s'])}, every node {_s(g['all_nodes_gap_s'])} "
            f"{g['per_node_s']}"
        )
    lines.append(
        f"time to 503 of a cut-off node  max {_s(f['max_time_to_503_s'])} (limit {limits['refusal_s']} s); "
        f"longest hold {_s(f['max_hold_of_cut_off_node_s'])}"
    )
    for r in f["refusals"]:
        lines.append(
            f"    {r['fault']:<15} {r['node']}: first 503 after {_s(r['time_to_503_s'])} ({r['code']}), "
            f"{r['requests']} requests, {r['timeouts']} client timeouts, {r['held_over_limit']} held over the "
            f"limit, longest hold {_s(r['max_hold_s'])}, "
            f"cut for {_s(r['cut_s'])}"
        )
    for r in f["restarts"]:
        lines.append(f"restart of {r['node']}: {r}")
    lines.append(f"final states per node   {f['final_states']}")
    lines.append("")
    if report["violations"]:
        lines.append(
            f"violations: {sum(report['violation_counts'].values())}  {report['violation_counts']}"
        )
        shown = Counter()
        for v in report["violations"]:
            shown[v["kind"]] += 1
            if shown[v["kind"]] <= 5:
                lines.append(f"  - {v}")
            elif shown[v["kind"]] == 6:
                lines.append(f"  - ... more {v['kind']} in report.json")
    else:
        lines.append("violations: none")
    return "\n".join(lines) + "\n"


def _s(value: float | None) -> str:
    return "none" if value is None else f"{value:.2f} s"
