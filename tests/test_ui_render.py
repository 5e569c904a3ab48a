"""The dashboard's task detail of a `qa` answer (ui/render.py), on constructed results:
marks after each sentence, flagged citations and unsupported sentences marked, the
grounding line, the supporting spans marked in their passages and linked to their
marks by CSS, everything from the result escaped, and results of older releases (no
grounding) rendered as before.  How it behaves in a real browser (hovering, clicking)
is tested in tests/test_dashboard.py."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, ClassVar

from ui.render import answer_html, task_detail

LENS = "The lighthouse keeper polishes the great lens every Tuesday."
LAMP = "The lamp is lit at dusk and burns until dawn."
FIRST = f"{LENS} {LAMP}"
SECOND = "Keepers once trimmed the wicks of the oil lamps by hand."
SAID = [
    "The keeper polishes the great lens every Tuesday [1].",
    "The lamp burns from dusk until dawn.",
    "The tower was built in 1850 [2].",
    "Yes.",
]
XSS = '<img src=x onerror="alert(1)">'


def citation(n: int, sentence: int, source: str, span: tuple[int, int] | None, **kw: Any) -> dict:
    text = (FIRST, SECOND)[n - 1]
    return {
        "n": n,
        "doc_id": f"doc-{n}",
        "chunk": n - 1,
        "title": ("Lighthouses", "Old lamps")[n - 1],
        "source": source,
        "sentence": sentence,
        "span": list(span) if span else None,
        "quote": text[span[0] : span[1]] if span else None,
        "score": kw.get("score", 0.8),
        "supported": kw.get("supported", True),
    }


def grounded(said: list[str] = SAID) -> dict[str, Any]:
    """Sentence 0 cited by the model, 1 attributed (with a span overlapping 0's), 2
    cited by the model wrongly and unsupported, 3 too short to check."""
    answer = " ".join(said)
    lamp_at = FIRST.index(LAMP)
    citations = [
        citation(1, 0, "model", (0, len(LENS)), score=0.91),
        citation(1, 1, "attributed", (lamp_at - 15, len(FIRST)), score=0.64),
        citation(2, 2, "model", (0, len(SECOND)), score=0.12, supported=False),
    ]
    starts = [answer.index(s) for s in said]
    return {
        "answer": answer,
        "citations": citations,
        "grounding": {
            "mode": "annotate",
            "score": 0.667,
            "supported": 2,
            "unsupported": 1,
            "extractive": False,
            "sentences": [
                {
                    "start": at,
                    "end": at + len(s),
                    "checked": k < 3,
                    "supported": (True, True, False, None)[k],
                    "citations": [i for i, c in enumerate(citations) if c["sentence"] == k],
                }
                for k, (at, s) in enumerate(zip(starts, said))
            ],
            "attribution_ms": 12.0,
        },
        "passages": [
            {
                "n": n,
                "doc_id": f"doc-{n}",
                "title": title,
                "chunk": n - 1,
                "page": 1,
                "text": text,
                "score": 0.03,
                "vector_score": 0.6,
                "keyword_score": 2.0,
            }
            for n, title, text in ((1, "Lighthouses", FIRST), (2, "Old lamps", SECOND))
        ],
    }


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def find(self, tag: str, cls: str | None = None, **attrs: str) -> list[Element]:
        found = []
        for child in self.children:
            if isinstance(child, Element):
                if (
                    child.tag == tag
                    and (cls is None or cls in child.classes)
                    and all(child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
                ):
                    found.append(child)
                found += child.find(tag, cls, **attrs)
        return found

    def one(self, tag: str, cls: str | None = None, **attrs: str) -> Element:
        found = self.find(tag, cls, **attrs)
        assert len(found) == 1, (tag, cls, attrs, found)
        return found[0]


class Tree(HTMLParser):
    VOID: ClassVar[set[str]] = {"br", "img", "hr", "input", "meta", "link"}

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("root", {})
        self.stack = [self.root]
        self.feed(source)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        assert tag in [e.tag for e in self.stack], f"</{tag}> closes nothing"
        while self.stack.pop().tag != tag:
            pass

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(source: str) -> Element:
    tree = Tree(source)
    assert tree.stack == [tree.root], "unclosed elements"
    return tree.root


def reading(paragraph: Element) -> list[str]:
    """The answer paragraph as read: each sentence, then each of its marks."""
    out = []
    for child in paragraph.children:
        if isinstance(child, Element) and ("sentence" in child.classes or child.tag == "sup"):
            out.append(child.text)
    return out


def test_each_sentence_is_followed_by_its_marks_without_the_models_own() -> None:
    doc = parse(answer_html(grounded()))
    block = doc.one("div", "answer-block")
    assert reading(block.one("p", "answer")) == [
        "The keeper polishes the great lens every Tuesday.",
        "[1]",
        "The lamp burns from dusk until dawn.",
        "[1]",
        "The tower was built in 1850.",
        "[2?]",
        "Yes.",
    ]
    marks = block.find("sup", "cite")
    assert [m.attrs["data-cite"] for m in marks] == ["0", "1", "2"]
    assert "cite-model" in marks[0].classes and "cite-attributed" in marks[1].classes
    # each mark links to its passage, which has the id it names
    for m in marks:
        href = m.one("a").attrs["href"]
        assert href.startswith("#")
        assert block.one("div", "cited-passage", id=href[1:]).attrs["data-n"] == m.attrs["data-n"]


def test_a_flagged_citation_and_an_unsupported_sentence_are_marked() -> None:
    doc = parse(answer_html(grounded()))
    flagged = doc.one("sup", "cite-unverified")
    assert flagged.text == "[2?]" and flagged.attrs["data-cite"] == "2"
    assert flagged.attrs["title"] == (
        "the model cited [2], but that passage does not support this sentence"
    )
    unsupported = doc.one("span", "unsupported")
    assert unsupported.text == "The tower was built in 1850."
    assert unsupported.attrs["title"] == "no retrieved passage supports this sentence"
    assert "unchecked" in doc.find("span", "sentence")[3].classes  # "Yes.": not checked
    style = doc.one("style").text
    assert re.search(r"\.sentence\.unsupported \{[^}]*underline dotted #c53030", style)


def test_the_grounding_line_and_the_extractive_label() -> None:
    doc = parse(answer_html(grounded()))
    line = doc.one("p", "grounding")
    assert line.text == "grounding 67%: 2 of 3 sentences supported (1 too short to check)"
    assert not doc.find("span", "extractive")
    result = grounded(SAID[:2])
    result["citations"] = result["citations"][:2]
    result["grounding"].update(mode="strict", score=1.0, extractive=True)
    for sentence in result["grounding"]["sentences"]:
        sentence.update(checked=True, supported=True)
    doc = parse(answer_html(result))
    assert doc.one("p", "grounding").text == (
        "grounding 100%: 2 of 2 sentences supported · strict mode extractive answer"
    )
    assert "grounding-full" in doc.one("p", "grounding").classes
    assert doc.one("span", "extractive").text == "extractive answer"


def test_supporting_spans_are_marked_in_their_passages_and_linked_by_css() -> None:
    doc = parse(answer_html(grounded()))
    first, second = doc.find("div", "cited-passage")
    assert first.attrs["data-n"] == "1" and first.attrs["data-cites"] == "0 1"
    assert first.one("p", "passage-text").text == FIRST  # the whole text, in pieces
    pieces = [(m.attrs["data-cites"], m.text) for m in first.find("mark")]
    overlap = FIRST[FIRST.index(LAMP) - 15 : len(LENS)]  # the spans of 0 and 1 share it
    assert pieces == [
        ("0", LENS[: -len(overlap)]),
        ("0 1", overlap),
        ("1", FIRST[len(LENS) :]),
    ]
    # the unsupported citation's passage is listed, but nothing in it is marked
    assert second.attrs["data-cites"] == "2" and not second.find("mark")
    assert "[2?] sentence 3, support 0.12 (cited by the model, not supported)" in second.text
    style = doc.one("style").text
    for i in range(3):  # hover or focus (a click) on mark i lights its spans and passage
        assert (
            f'.answer-block:has(sup[data-cite="{i}"]:is(:hover, :focus-within)) '
            f'mark[data-cites~="{i}"]' in style
        )
        assert (
            f'.answer-block:has(sup[data-cite="{i}"]:is(:hover, :focus-within)) '
            f'.cited-passage[data-cites~="{i}"]' in style
        )
        assert f'.answer-block:has(mark[data-cites~="{i}"]:hover) sup[data-cite="{i}"] a' in style


def test_spans_outside_their_passage_are_not_marked() -> None:
    result = grounded()
    result["citations"][0]["span"] = [10, 10_000]
    result["citations"][1]["span"] = [True, 5]
    doc = parse(answer_html(result))
    assert not doc.find("mark")
    assert doc.find("div", "cited-passage")[0].one("p", "passage-text").text == FIRST


def test_everything_from_the_result_is_escaped() -> None:
    result = grounded([f"The keeper {XSS} polishes the lens [1].", *SAID[1:]])
    for c in result["citations"]:
        c["title"] = f"Lights {XSS}"
        c["doc_id"] = f"doc {XSS}"
    hostile = f"{XSS} {FIRST}"
    shift = len(XSS) + 1
    for c in result["citations"][:2]:
        c["span"] = [c["span"][0] + shift, c["span"][1] + shift]
    result["passages"][0].update(text=hostile, title=f"Lights {XSS}")
    task = {
        "id": 'odd"<id>',
        "type": "qa",
        "state": "completed",
        "input": {"query": XSS},
        "history": [],
        "result": result,
    }
    source = task_detail(task, scope="tasks")
    doc = parse(source)
    assert not doc.find("img") and "<img" not in source
    assert doc.find("span", "sentence")[0].text == f"The keeper {XSS} polishes the lens."
    assert doc.find("p", "passage-text")[0].text == hostile
    assert doc.find("mark")[0].text.startswith("The lighthouse")  # offsets into the raw text
    assert f"[1] Lights {XSS}" in doc.find("div", "passage-head")[0].text
    assert f"Lights {XSS}" in doc.find("sup", "cite")[0].attrs["title"]
    ids = [e.attrs["id"] for e in doc.find("div") + doc.find("a") if "id" in e.attrs]
    assert ids and len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", i) for i in ids), ids
    assert all(i.startswith("answer-tasks-odd--id-") for i in ids)


def test_an_answer_nothing_supports_lists_the_passages_given() -> None:
    result = grounded(SAID[2:3])
    result["citations"] = []
    result["grounding"].update(score=0.0, supported=0, unsupported=1)
    result["grounding"]["sentences"][0].update(supported=False, citations=[])
    doc = parse(answer_html(result))
    assert doc.one("span", "unsupported").text == "The tower was built in 1850."
    assert doc.one("p", "grounding").text == "grounding 0%: 0 of 1 sentences supported"
    uncited = doc.one("details", "uncited")
    assert "none supports a sentence of the answer" in uncited.one("summary").text
    assert len(uncited.find("p", "passage")) == 2


def test_an_empty_answer_says_so() -> None:
    result = grounded([])
    result.update(answer="", citations=[])
    result["grounding"].update(score=None, supported=0, unsupported=0, sentences=[])
    doc = parse(answer_html(result))
    assert doc.one("p", "answer").text == "(the model gave an empty answer)"
    assert "no sentence of the answer says enough to be checked" in doc.one("p", "grounding").text


def test_a_result_of_an_older_release_reads_as_before() -> None:
    old = {
        "answer": f"The keeper polishes the great lens [1]. {XSS}",
        "citations": [{"n": 1, "doc_id": "doc-1", "chunk": 0, "title": "Lighthouses"}],
        "passages": copy.deepcopy(grounded()["passages"]),
    }
    doc = parse(task_detail({"id": "t1", "type": "qa", "state": "completed", "result": old}))
    assert not doc.find("div", "answer-block") and not doc.find("style")
    assert doc.one("p", "answer").text == old["answer"]  # the model's markers kept
    details = doc.one("details", "citation")
    assert details.one("summary").text == "[1] Lighthouses (chunk 0) · score 0.03"
    assert details.one("p").text == FIRST
    assert not doc.find("img")


def test_marks_the_model_wrote_after_the_full_stop_follow_their_sentence() -> None:
    """ "… Paris. [1]": the grounding splits off "[1]" as a sentence of its own, too short
    to check; its mark follows the sentence before it, with no space between."""
    answer = "The capital of France is Paris. [1]"
    result = grounded([])
    result.update(
        answer=answer,
        citations=[citation(1, 1, "model", None, score=None, supported=False)],
    )
    result["grounding"].update(
        score=0.0,
        supported=0,
        unsupported=1,
        sentences=[
            {"start": 0, "end": 31, "checked": True, "supported": False, "citations": []},
            {"start": 32, "end": 35, "checked": False, "supported": None, "citations": [0]},
        ],
    )
    paragraph = parse(answer_html(result)).one("p", "answer")
    assert paragraph.text == "The capital of France is Paris.[1?]"
    assert reading(paragraph) == ["The capital of France is Paris.", "", "[1?]"]
    doc = parse(answer_html(result))
    assert doc.one("p", "grounding").text == "grounding 0%: 0 of 1 sentences supported"
    assert "[1?] sentence 1 (cited by the model, not supported)" in doc.one("small").text
