"""Task commands: submit [--wait], tasks, show, cancel, abort, retry; and
`follow`, which polls tasks until they finish (kb add uses it for ingests)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from node.cli.commands.output import Output, Progress, clock, duration, one_line, precise_clock
from node.client.answers import answer_view, mark, marked_text
from node.client.rest import Client, ClientError
from node.http.idempotency import new_key
from node.replica.vocabulary import FINISHED, TaskState, TaskType

POLL_SECONDS = 0.3  # progress reports are committed entries: a few per second at most


# ------------------------------------------------------------------ following
def follow(
    client: Client, progress: Progress, watched: Mapping[str, tuple[str, str]]
) -> dict[str, dict[str, Any]]:
    """Poll every watched task (key -> (task id, label)) and show its state and
    progress note until all have finished; the finished tasks by key."""
    finished: dict[str, dict[str, Any]] = {}
    while len(finished) < len(watched):
        for key, (task_id, label) in watched.items():
            if key in finished:
                continue
            task = client.get(f"/api/v1/tasks/{quote(task_id)}")
            text, fraction = describe(task, label)
            done = task["state"] in FINISHED
            progress.update(key, text, fraction, done=done)
            if done:
                finished[key] = task
        if len(finished) < len(watched):
            time.sleep(POLL_SECONDS)
    return finished


def describe(task: dict[str, Any], label: str) -> tuple[str, float | None]:
    """One line on where a task is, and how far along (None: no figure yet)."""
    state, node = task["state"], task.get("node")
    if state == TaskState.QUEUED:
        retry = f" (attempt {task['attempt'] + 1} after a failure)" if task.get("attempt") else ""
        return f"{label} queued{retry}", None
    if state == TaskState.RUNNING:
        note = task.get("progress_note") or "started"
        return f"{label} running on {node}: {note}", float(task.get("progress") or 0.0)
    if state == TaskState.COMPLETED:
        ran = _ran_ms(task)
        return f"{label} completed on {node}" + (
            f" in {duration(ran)}" if ran is not None else ""
        ), 1.0
    if state == TaskState.FAILED:
        return f"{label} failed: {task.get('error') or 'no reason given'}", None
    return f"{label} {state}", None


def _ran_ms(task: dict[str, Any]) -> int | None:
    started, finished = task.get("started_at"), task.get("finished_at")
    return finished - started if started is not None and finished is not None else None


# ------------------------------------------------------------------ results
def result_lines(task: dict[str, Any]) -> list[str]:
    """A finished task's outcome for people: the answer and its citations, the
    passages of a retrieval, or what went wrong."""
    if task["state"] == TaskState.FAILED:
        why = task.get("error") or "no reason given"
        return [f"failed after {task.get('attempt')} attempt(s): {why}"]
    if task["state"] == TaskState.CANCELLED:
        last = task.get("history", [])[-1:] or [{}]
        return [f"cancelled{': ' + last[0]['note'] if last[0].get('note') else ''}"]
    if task["state"] != TaskState.COMPLETED:
        return [f"{task['state']}: no result yet"]
    result = task.get("result")
    if not isinstance(result, dict):
        return [json.dumps(result)]
    lines: list[str] = []
    if "answer" in result:
        lines += _answer_lines(result)
    elif "passages" in result:
        lines += [
            f"{_source_line(p)}  score {p.get('score', 0):.3f}\n    {one_line(p.get('text', ''))}"
            for p in result["passages"]
        ] or ["no passages matched"]
    elif "chunks" in result and "doc_id" in result:
        lines.append(
            f"ingested {result['doc_id']} v{result.get('version')}: {result['chunks']} chunks"
        )
    elif "slept_ms" in result:
        lines.append(f"slept {duration(result['slept_ms'])}")
    else:
        lines.append(json.dumps(result, indent=2))
    return lines


def _answer_lines(result: dict[str, Any]) -> list[str]:
    """The answer with a mark after each sentence ([n]; [n?]: the model cited a passage
    that does not support it; (unsupported): no passage does), then each citation with
    the passage text that supports it."""
    view = answer_view(result)
    text = marked_text(view, " (unsupported)")
    lines = [text or "(the model gave an empty answer)"]
    if view.extractive:
        lines.append("(no sentence of the generated answer was supported: these are the passages'")
        lines.append(" own sentences closest to the question)")
    if view.score is not None:
        lines.append(
            f"grounding {view.score:.0%}: {len(view.sentences) - view.unsupported} of "
            f"{len(view.sentences)} sentences supported" + (f" ({view.mode})" if view.mode else "")
        )
    if view.citations:
        lines.append("")
        for c in view.citations:
            source = f" · {c['source']}" if c.get("source") else ""
            score = f" · support {c['score']:.2f}" if c.get("score") is not None else ""
            lines.append(f"{mark(c)} {_where(c)}{source}{score}")
            if c.get("quote"):
                lines.append(f"    “{one_line(c['quote'])}”")
    elif result.get("passages"):
        # Nothing cited: show what the model was given, so the answer can still be checked.
        lines += ["", "sources (given to the model; none supports a sentence of the answer):"]
        lines += [_source_line(p) for p in result["passages"]]
    return lines


def _source_line(item: dict[str, Any]) -> str:
    """`[1] title (doc id, chunk n)`: a citation or a passage."""
    return f"[{item.get('n')}] {_where(item)}"


def _where(item: dict[str, Any]) -> str:
    return (
        f"{item.get('title') or item.get('doc_id')} (doc {item.get('doc_id')}, "
        f"chunk {item.get('chunk')})"
    )


def timings_line(result: Any) -> str:
    timings = result.get("timings") if isinstance(result, dict) else None
    if not isinstance(timings, dict):
        return ""
    parts = []
    if timings.get("retrieve_ms") is not None:
        parts.append(f"retrieve {duration(timings['retrieve_ms'])}")
    if timings.get("generate_ms") is not None:
        parts.append(f"generate {duration(timings['generate_ms'])}")
    if timings.get("new_tokens") is not None:
        rate = f" at {timings['tokens_per_s']} tokens/s" if timings.get("tokens_per_s") else ""
        parts.append(f"{timings['new_tokens']} new tokens{rate}")
    if timings.get("embed_ms") is not None:
        parts.append(f"embed {duration(timings['embed_ms'])}")
    models = result.get("models")
    if isinstance(models, dict) and models:
        parts.append("models " + ", ".join(str(v) for v in models.values() if v))
    return " · ".join(parts)


# ------------------------------------------------------------------ commands
def submit(client: Client, args: argparse.Namespace, out: Output) -> int:
    task_input: dict[str, Any]
    if args.type == TaskType.NOOP:
        try:
            task_input = {"duration_ms": float(args.text)}
        except ValueError:
            raise ClientError(
                f"for --type noop the argument is a duration in ms, not {args.text!r} "
                "(e.g. `ragraft submit 500 --type noop`)"
            ) from None
    else:
        text_field = TaskType(args.type).text_field
        if text_field is None:  # argparse's choices are the submittable types: all have one
            raise ClientError(f"tasks of type {args.type!r} cannot be submitted")
        task_input = {text_field: args.text}
    params = {
        name: value
        for name, value in (
            ("top_k", args.top_k),
            ("mode", args.mode),
            ("max_new_tokens", args.max_tokens),
            ("temperature", args.temperature),
            ("grounding", args.grounding),
        )
        if value is not None
    }
    # One key for this submission, on every node the client tries: at most one task.
    task = client.post(
        "/api/v1/tasks",
        {"type": args.type, "input": task_input, "priority": args.priority, "params": params},
        idempotency_key=new_key(),
    )
    if not args.wait:
        if out.json_mode:
            out.json(task)
        else:
            out.print(task["id"])
        return 0
    try:
        with Progress(out) as progress:
            task = follow(client, progress, {"task": (task["id"], task["id"])})["task"]
    except KeyboardInterrupt:
        out.note(
            f"\nragraft: stopped waiting; task {task['id']} goes on (`ragraft show {task['id']}`, "
            f"`ragraft cancel {task['id']}`)"
        )
        return 130
    if out.json_mode:
        out.json(task)
    elif task["state"] == TaskState.COMPLETED:
        out.print("\n".join(result_lines(task)))
    else:
        out.note(f"ragraft: task {task['id']} " + "\n".join(result_lines(task)))
    return 0 if task["state"] == TaskState.COMPLETED else 1


def list_tasks(client: Client, args: argparse.Namespace, out: Output) -> int:
    page = client.get(
        "/api/v1/tasks",
        {"state": args.state, "type": args.type, "node": args.node, "limit": args.limit},
    )
    if out.json_mode:
        out.json(page)
        return 0
    rows = [
        [
            t["id"],
            t["type"],
            t["state"],
            t["priority"],
            t.get("node") or "—",
            clock(t["submitted_at"]),
            _progress_cell(t),
        ]
        for t in page["items"]
    ]
    if not rows:
        out.print("no tasks" + (" match" if args.state or args.type or args.node else " yet"))
        return 0
    out.table(
        ["id", "type", "state", "priority", "node", "submitted", "progress"], rows, style_column=2
    )
    more = " (the newest; --limit for more)" if page["total"] > len(rows) else ""
    out.note(f"{len(rows)} of {page['total']} tasks{more}")
    return 0


def _progress_cell(task: dict[str, Any]) -> str:
    if task["state"] == TaskState.RUNNING:
        note = task.get("progress_note")
        return f"{task.get('progress', 0) * 100:.0f}%" + (f" {one_line(note, 40)}" if note else "")
    if task["state"] == TaskState.COMPLETED:
        return "done"
    if task["state"] == TaskState.FAILED:
        return one_line(task.get("error") or "", 40)
    return ""


def show(client: Client, args: argparse.Namespace, out: Output) -> int:
    task = client.get(f"/api/v1/tasks/{quote(args.id, safe='')}")
    if out.json_mode:
        out.json(task)
        return 0
    lines = [
        f"task {task['id']}  {task['type']}  {task['state']}  priority {task['priority']}  owner "
        + task["owner"]
    ]
    waited = task["started_at"] - task["submitted_at"] if task.get("started_at") else None
    lines.append(
        f"node {task.get('node') or '—'} · attempt {task['attempt']} of {task['max_attempts']} · "
        f"submitted {clock(task['submitted_at'])} · waited {duration(waited)} · ran "
        f"{duration(_ran_ms(task))}"
    )
    lines.append("input: " + one_line(json.dumps(task["input"], ensure_ascii=False), 300))
    if task.get("params"):
        lines.append("params: " + ", ".join(f"{k}={v}" for k, v in task["params"].items()))
    if task["state"] == TaskState.RUNNING:
        lines.append(
            f"progress: {task['progress'] * 100:.0f}% {task.get('progress_note') or ''}".rstrip()
            + (" (abort requested)" if task.get("abort_requested") else "")
        )
    lines += ["", "timeline:"]
    start = task["submitted_at"]
    for step in task.get("history", []):
        lines.append(
            f"  {precise_clock(step['at'])}  +{duration(step['at'] - start):<9} {step['state']:<10}"
            f"{(step.get('node') or '—'):<6} #{step['attempt']}  {step.get('note') or ''}".rstrip()
        )
    if task["state"] in FINISHED:
        lines += ["", "result:"] + [
            "  " + line for line in "\n".join(result_lines(task)).splitlines()
        ]
        if timings := timings_line(task.get("result")):
            lines.append("  " + timings)
    out.print("\n".join(lines))
    return 0


def cancel(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _act(client, args, out, "DELETE", "", "cancel")


def abort(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _act(client, args, out, "POST", "/abort", "abort")


def retry(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _act(client, args, out, "POST", "/retry", "retry")


_REFUSALS = {
    "cancel": "only a queued task can be cancelled",
    "abort": "it has already finished",
    "retry": "only a failed or cancelled task can be retried",
}


def _act(
    client: Client, args: argparse.Namespace, out: Output, method: str, suffix: str, verb: str
) -> int:
    try:
        task = client.request(method, f"/api/v1/tasks/{quote(args.id, safe='')}{suffix}")
    except ClientError as exc:
        if exc.status != 409:
            raise
        # Refused because of the task's state: say that state plainly, and what would work.
        state = exc.details.get("state")
        if out.json_mode:
            out.json(exc.body)
        if state and f"is {state}" in exc.message:
            why = _REFUSALS[verb] + (
                "; `ragraft abort` stops a running task" if state == TaskState.RUNNING else ""
            )
            out.note(f"ragraft: cannot {verb} {args.id}: it is {state} ({why})")
        else:  # refused for another reason (an ingest task cannot be retried): the API's words
            out.note(
                f"ragraft: cannot {verb} {args.id}"
                + (f" ({state})" if state else "")
                + f": {exc.message}"
            )
        return 1
    if out.json_mode:
        out.json(task)
    elif verb == "retry":
        out.print(task["id"])
        out.note(f"resubmitted {args.id} as {task['id']} ({task['state']})")
    elif verb == "abort" and task["state"] == TaskState.RUNNING:
        out.print(
            f"{task['id']}: abort requested; it stops at its next checkpoint "
            f"(on {task.get('node')})"
        )
    else:
        out.print(f"{task['id']} is {task['state']}")
    return 0
