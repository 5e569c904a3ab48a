"""HTML fragments the dashboard shows: state badges, a task's detail (a `qa` answer
with its citations and grounding) and progress bars.

Everything from the API is escaped: task inputs and document text are user data.
"""

from __future__ import annotations

import html
import itertools
import json
import re
import time

from node.client.answers import AnswerView, Sentence, answer_view, mark
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


def task_detail(task: dict, scope: str = "") -> str:
    """`scope`: which view shows it, to keep the ids of its citation links apart from
    those of another view showing the same task."""
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
    if "answer" in result:
        parts.append(answer_html(result, _anchor(scope, str(task.get("id", "")))))
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


def answer_html(result: dict, anchor: str = "answer") -> str:
    """A `qa` result's answer.  Grounded (node/rag/grounding.py): sentence by sentence,
    each followed by its citation marks, an unsupported sentence underlined in dotted
    red, the grounding score, then the cited passages with their supporting spans in
    `<mark>`.  Hovering a mark, or clicking it (it keeps the focus), highlights its
    spans; hovering a span highlights its marks: CSS only (`:has()`), in a `<style>` of
    the same fragment, since Panel renders each HTML pane in its own shadow root.
    `anchor` prefixes the ids (a valid id, unique on the page).  A result of a release
    before grounding reads as it always did: the answer, then its citations."""
    if not isinstance(result.get("grounding"), dict):
        return _plain_answer(result)
    view = answer_view(result)
    passages = {p.get("n"): p for p in result.get("passages") or [] if isinstance(p, dict)}
    # a sentence of marks only (the model's "… lens. [1]"): its marks follow the last one
    sentences = "".join(
        ("" if k == 0 or not s.text else " ") + _sentence_html(k, s, view.citations, anchor)
        for k, s in enumerate(view.sentences)
    )
    parts = [
        f'<div class="answer-block" id="{anchor}">',
        _answer_style(len(view.citations)),
        "<b>answer</b>",
        f'<p class="answer">{sentences or "<i>(the model gave an empty answer)</i>"}</p>',
        _grounding_line(view),
    ]
    if view.citations:
        parts.append(_cited_passages(view.citations, passages, anchor, _numbers(view)))
    elif passages:
        parts.append(
            '<details class="uncited"><summary>passages given to the model (none supports '
            f"a sentence of the answer)</summary>{passage_list(list(passages.values()))}"
            "</details>"
        )
    parts.append("</div>")
    return "".join(parts)


def _plain_answer(result: dict) -> str:
    passages = {p["n"]: p for p in result.get("passages", [])}
    parts = [f'<b>answer</b><p class="answer">{html.escape(str(result["answer"]))}</p>']
    for c in result.get("citations", []):
        p = passages.get(c["n"], {})
        parts.append(
            f'<details class="citation"><summary>[{_text(c["n"])}] '
            f"{html.escape(c.get('title') or c['doc_id'])} "
            f"(chunk {_text(c['chunk'])}) · score {_text(p.get('score'))}</summary>"
            f"<p>{html.escape(p.get('text', ''))}</p>"
            f"<small>vector {_text(p.get('vector_score'))} · keyword "
            f"{_text(p.get('keyword_score'))}</small></details>"
        )
    return "".join(parts)


UNSUPPORTED_TITLE = "no retrieved passage supports this sentence"


def _sentence_html(k: int, sentence: Sentence, citations: tuple[dict, ...], anchor: str) -> str:
    if sentence.supported is False:
        opening = f'<span class="sentence unsupported" title="{UNSUPPORTED_TITLE}"'
    elif sentence.supported is None:
        opening = '<span class="sentence unchecked"'
    else:
        opening = '<span class="sentence supported"'
    marks = "".join(_cite_mark(i, citations[i], anchor) for i in sentence.citations)
    return f'{opening} data-sentence="{k}">{html.escape(sentence.text)}</span>{marks}'


def _cite_mark(i: int, c: dict, anchor: str) -> str:
    n = _text(c.get("n"))
    name = c.get("title") or c.get("doc_id") or ""
    support = f", support {c['score']:.2f}" if isinstance(c.get("score"), (int, float)) else ""
    if not c.get("supported", True):
        kind = "cite-unverified"
        title = f"the model cited [{n}], but that passage does not support this sentence"
    elif c.get("source") == "attributed":
        kind = "cite-attributed"
        title = f"[{n}] {name}: found by the grounding check{support}"
    else:
        kind = "cite-model"
        title = f"[{n}] {name}: cited by the model{support}"
    return (
        f'<sup class="cite {kind}" data-cite="{i}" data-n="{n}" '
        f'title="{html.escape(title)}"><a id="{anchor}-ref-{i}" '
        f'href="#{anchor}-passage-{_id_part(c.get("n"))}">{html.escape(mark(c))}</a></sup>'
    )


def _grounding_line(view: AnswerView) -> str:
    checked = [s for s in view.sentences if s.supported is not None]
    supported = sum(1 for s in checked if s.supported)
    unchecked = sum(1 for s in view.sentences if s.supported is None and s.text)
    if view.score is None or not checked:
        text = "grounding: no sentence of the answer says enough to be checked"
    else:
        text = f"grounding {view.score:.0%}: {supported} of {len(checked)} sentences supported"
    if unchecked and checked:
        text += f" ({unchecked} too short to check)"
    if view.mode and view.mode != "annotate":
        text += f" · {view.mode} mode"
    label = (
        ' <span class="extractive" title="no sentence of the generated answer was supported:'
        " these are the passages' own sentences closest to the question\">extractive answer"
        "</span>"
        if view.extractive
        else ""
    )
    full = view.score is not None and checked and supported == len(checked)
    return (
        f'<p class="grounding {"grounding-full" if full else "grounding-partial"}">'
        f"{html.escape(text)}{label}</p>"
    )


def _numbers(view: AnswerView) -> list[int]:
    """Each sentence's number as the reader counts them, from 1: a sentence of marks
    only is counted with the sentence before it."""
    numbers: list[int] = []
    for sentence in view.sentences:
        numbers.append((numbers[-1] if numbers else 0) + (1 if sentence.text or not numbers else 0))
    return numbers


def _cited_passages(
    citations: tuple[dict, ...], passages: dict, anchor: str, numbers: list[int]
) -> str:
    """Each cited passage once, in number order, its supporting spans marked."""
    by_n: dict[object, list[int]] = {}
    for i, c in enumerate(citations):
        by_n.setdefault(c.get("n"), []).append(i)
    parts = ['<div class="cited-passages"><b>cited passages</b>']
    for n in sorted(by_n, key=lambda x: (not isinstance(x, int), x if isinstance(x, int) else 0)):
        indexes = by_n[n]
        first = citations[indexes[0]]
        p = passages.get(n, {})
        text = str(p.get("text") or "")
        spans = [
            (i, span[0], span[1])
            for i in indexes
            if citations[i].get("supported", True)
            and (span := _span(citations[i].get("span"), len(text))) is not None
        ]
        name = p.get("title") or first.get("title") or p.get("doc_id") or first.get("doc_id")
        head = (
            f"<b>[{_text(n)}] {html.escape(str(name or ''))}</b> "
            f"(doc {html.escape(str(p.get('doc_id') or first.get('doc_id') or ''))}, chunk "
            f"{_text(p.get('chunk', first.get('chunk')))}) · retrieval score "
            f"{_number(p.get('score'))}"
        )
        body = _marked(text, spans) if text else "<i>(its text is not in the result)</i>"
        uses = " · ".join(_use(citations[i], numbers) for i in indexes)
        parts.append(
            f'<div class="cited-passage" id="{anchor}-passage-{_id_part(n)}" '
            f'data-n="{_text(n)}" data-cites="{" ".join(map(str, indexes))}">'
            f'<div class="passage-head">{head}</div><p class="passage-text">{body}</p>'
            f"<small>{uses} · vector {_number(p.get('vector_score'))} · keyword "
            f"{_number(p.get('keyword_score'))}</small></div>"
        )
    parts.append("</div>")
    return "".join(parts)


def _use(c: dict, numbers: list[int]) -> str:
    """How a citation uses its passage: `[1] sentence 2, support 0.82 (cited by the model)`."""
    k = c.get("sentence")
    where = f" sentence {numbers[k]}" if isinstance(k, int) and 0 <= k < len(numbers) else ""
    support = f", support {c['score']:.2f}" if isinstance(c.get("score"), (int, float)) else ""
    if not c.get("supported", True):
        how = " (cited by the model, not supported)"
    else:
        how = {"model": " (cited by the model)", "attributed": " (found by the check)"}.get(
            str(c.get("source")), ""
        )
    return html.escape(f"{mark(c)}{where}{support}{how}")


def _span(span: object, length: int) -> tuple[int, int] | None:
    if (
        isinstance(span, (list, tuple))
        and len(span) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in span)
        and 0 <= span[0] < span[1] <= length
    ):
        return span[0], span[1]
    return None


def _marked(text: str, spans: list[tuple[int, int, int]]) -> str:
    """`text` escaped, each piece some spans cover in one `<mark>` naming them all
    (`data-cites="0 2"`: spans of two citations may overlap)."""
    cuts = sorted({0, len(text), *(s for _, s, _ in spans), *(e for _, _, e in spans)})
    out = []
    for start, end in itertools.pairwise(cuts):
        piece = html.escape(text[start:end])
        covering = [i for i, s, e in spans if s <= start and end <= e]
        if covering:
            names = " ".join(map(str, covering))
            out.append(f'<mark data-cites="{names}">{piece}</mark>')
        else:
            out.append(piece)
    return "".join(out)


ANSWER_CSS = """
.answer-block .sentence.unsupported {text-decoration: underline dotted #c53030;
  text-decoration-thickness: 2px; text-underline-offset: 3px; cursor: help}
.answer-block sup.cite a {text-decoration: none; color: #2b6cb0; padding: 0 1px;
  border-radius: 3px}
.answer-block sup.cite-attributed a {color: #2f855a}
.answer-block sup.cite-unverified a {color: #c53030; text-decoration: underline dotted}
.answer-block sup.cite a:focus {outline: 2px solid #dd6b20; outline-offset: 1px}
.answer-block mark {background: #fefcbf; color: inherit; border-radius: 2px}
.answer-block .grounding {color: #4a5568; margin: 2px 0 8px}
.answer-block .grounding-partial {color: #9c4221}
.answer-block .extractive {background: #ebf8ff; color: #2c5282; border-radius: 8px;
  padding: 1px 6px}
.answer-block .cited-passage {border-left: 3px solid #cbd5e0; padding: 2px 8px;
  margin: 6px 0}
.answer-block .passage-text {margin: 4px 0}
"""


def _answer_style(citations: int) -> str:
    """The fragment's CSS: one selector per citation links its marks and its spans."""
    active = ":is(:hover, :focus-within)"
    spans = ", ".join(
        f'.answer-block:has(sup[data-cite="{i}"]{active}) mark[data-cites~="{i}"]'
        for i in range(citations)
    )
    boxes = ", ".join(
        f'.answer-block:has(sup[data-cite="{i}"]{active}) .cited-passage[data-cites~="{i}"]'
        for i in range(citations)
    )
    marks = ", ".join(
        f'.answer-block:has(mark[data-cites~="{i}"]:hover) sup[data-cite="{i}"] a'
        for i in range(citations)
    )
    rules = [ANSWER_CSS]
    if citations:
        rules += [
            f"{spans} {{background: #f6ad55; outline: 1px solid #c05621}}",
            f"{boxes} {{border-left-color: #dd6b20; background: #fffaf0}}",
            f"{marks} {{background: #f6ad55}}",
        ]
    return "<style>" + "\n".join(rules) + "</style>"


def _anchor(scope: str, task_id: str) -> str:
    return "answer-" + _id_part(f"{scope}-{task_id}" if scope else task_id)


def _id_part(value: object) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", str(value))


def _text(value: object) -> str:
    return html.escape(str(value))


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return html.escape(str(value)) if value is not None else "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
