"""HTML fragments the dashboard shows: state badges, a task's detail and
progress bars.

Everything from the API is escaped: task inputs and document text are user data.
"""

from __future__ import annotations

import html
import json
import time

from node.replica.vocabulary import TaskState
from ui.charts import STATE_COLOURS

GOSSIP_COLOURS = {"alive": "#2f855a", "suspect": "#b7791f", "dead": "#c53030"}


def badge(state: str, colour_of: str | None = None) -> str:
    """`state` on the colour of a task state (`colour_of`, by default itself)."""
    colour = STATE_COLOURS.get(colour_of or state, "#555")
    return (
        f'<span style="color:white;background:{colour};padding:1px 6px;'
        f'border-radius:8px">{html.escape(state)}</span>'
    )


def gossip_badge(status: str) -> str:
    colour = GOSSIP_COLOURS.get(status, "#555")
    return (
        f'<span class="gossip-{status}" style="color:{colour};font-weight:bold">'
        f"{html.escape(status)}</span>"
    )


def clock(ms: int | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if ms else ""


def progress_bar(fraction: float, note: str = "") -> str:
    percent = max(0, min(100, round(fraction * 100)))
    return (
        f'<span class="progress" data-percent="{percent}"><progress max="100" value="{percent}" '
        f'style="width:80px;vertical-align:middle"></progress> {percent}% '
        f"{html.escape(note)}</span>"
    )


def task_detail(task: dict) -> str:
    parts = [
        (
            f"<h4>{html.escape(task['id'])} · {html.escape(task['type'])} · "
            f"{badge(task['state'])}</h4>"
        ),
        f"<pre>{html.escape(json.dumps(task.get('input'), indent=1))}</pre>",
    ]
    if task["state"] == TaskState.RUNNING:
        parts.append(progress_bar(task.get("progress") or 0, task.get("progress_note") or ""))
    parts.append("<b>timeline</b><ul>")
    parts += [
        f"<li>{clock(h['at'])} {badge(h['state'])} · node {html.escape(h.get('node') or '—')} "
        f"· attempt {h['attempt']} {html.escape(h.get('note') or '')}</li>"
        for h in task.get("history", [])
    ]
    parts.append("</ul>")
    result = task.get("result") if isinstance(task.get("result"), dict) else {}
    passages = {p["n"]: p for p in result.get("passages", [])}
    if "answer" in result:
        parts.append(f'<b>answer</b><p class="answer">{html.escape(result["answer"])}</p>')
    for c in result.get("citations", []):
        p = passages.get(c["n"], {})
        parts.append(
            f'<details class="citation"><summary>[{c["n"]}] '
            f"{html.escape(c.get('title') or c['doc_id'])} "
            f"(chunk {c['chunk']}) · score {p.get('score')}</summary>"
            f"<p>{html.escape(p.get('text', ''))}</p>"
            f"<small>vector {p.get('vector_score')} · keyword "
            f"{p.get('keyword_score')}</small></details>"
        )
    if "answer" not in result and result.get("passages"):
        parts.append(passage_list(result["passages"]))
    if task.get("error"):
        parts.append(
            f'<b style="color:#c53030">error</b>'
            f'<p class="task-error">{html.escape(task["error"])}</p>'
        )
    return "".join(parts)


def passage_list(passages: list[dict]) -> str:
    return (
        "".join(
            f'<p class="passage"><b>[{p["n"]}] {html.escape(p.get("title") or p["doc_id"])}</b> '
            f"score {p['score']:.3f} (vector {p.get('vector_score')}, "
            f"keyword {p.get('keyword_score')})<br>"
            f"{html.escape(p['text'][:400])}</p>"
            for p in passages
        )
        or "no passages"
    )
