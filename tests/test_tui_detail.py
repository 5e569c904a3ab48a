"""The terminal UI's task detail of a `qa` answer (tui/views/detail.py render_task), as
Rich renders its markup: marks after each sentence, unsupported sentences and flagged
citations marked, the grounding line, the citations with their quotes wrapped to fit
80 columns; results of older releases as before."""

from __future__ import annotations

import copy
from typing import Any

from rich.text import Text

from tests.test_tui_snapshots import DETAIL, GROUNDED
from tui.views.detail import render_task


def rendered(task: dict[str, Any]) -> list[Text]:
    return [Text.from_markup(line) for line in render_task(task).split("\n")]


def styled(line: Text, style: str) -> list[str]:
    return [line.plain[s.start : s.end] for s in line.spans if str(s.style) == style]


def section(lines: list[Text], title: str) -> list[Text]:
    start = next(i for i, line in enumerate(lines) if line.plain == title) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].plain), len(lines))
    return lines[start:end]


def test_a_grounded_answer_reads_sentence_by_sentence_with_its_marks() -> None:
    lines = rendered(GROUNDED)
    answer, grounding = section(lines, "answer")
    assert answer.plain == (
        "The keeper polishes the great lens every Tuesday. [1] The lamp burns from dusk "
        "until dawn. [1] The tower was built in 1850. [2?] (unsupported) Yes."
    )
    assert styled(answer, "red") == ["(unsupported)"]
    assert styled(answer, "yellow") == ["[2?]"]  # the model cited it, it does not support
    assert grounding.plain == "grounding 67%: 2 of 3 sentences supported"


def test_each_citation_with_its_quote_within_80_columns() -> None:
    cites = section(rendered(GROUNDED), "citations")
    assert [line.plain for line in cites] == [
        "  [1] Lighthouses (doc doc-1, chunk 0) · model · support 0.91",
        "      “The lighthouse keeper polishes the great lens every",
        "      Tuesday.”",
        "  [1] Lighthouses (doc doc-1, chunk 0) · attributed · support 0.64",
        "      “The lamp is lit at dusk and burns until dawn, its beam",
        "      turning once every ten seconds so that ships far out at sea",
        "      can tell this light from its neighbours.”",
        "  [2?] Old lamps (doc doc-2, chunk 0) · model · not supported 0.12",
        "      “Keepers once trimmed the wicks of the oil lamps by hand.”",
    ]
    # the detail box of an 80-column terminal leaves about 72 columns inside
    assert max(line.cell_len for line in cites) <= 70


def test_a_long_quote_is_cut_after_three_lines() -> None:
    task = copy.deepcopy(GROUNDED)
    task["result"]["citations"][0]["quote"] = "word " * 200
    cites = section(rendered(task), "citations")
    quote = [line.plain for line in cites[1:4]]
    assert cites[4].plain.startswith("  [1] Lighthouses")
    assert quote[-1].endswith(" …”") and all(len(line) <= 66 for line in quote)


def test_a_sentence_of_marks_only_follows_the_sentence_before_it() -> None:
    task = copy.deepcopy(GROUNDED)
    result = task["result"]
    result["answer"] = "The capital of France is Paris. [2]"
    result["citations"] = [{**result["citations"][2], "sentence": 1, "span": None, "quote": None}]
    result["grounding"]["sentences"] = [
        {"start": 0, "end": 31, "checked": True, "supported": False, "citations": []},
        {"start": 32, "end": 35, "checked": False, "supported": None, "citations": [0]},
    ]
    result["grounding"]["score"] = 0.0
    answer, grounding = section(rendered(task), "answer")
    assert answer.plain == "The capital of France is Paris. (unsupported) [2?]"
    assert grounding.plain == "grounding 0%: 0 of 1 sentences supported"


def test_an_extractive_answer_says_so() -> None:
    task = copy.deepcopy(GROUNDED)
    task["result"]["grounding"].update(mode="strict", extractive=True)
    _, grounding = section(rendered(task), "answer")
    assert grounding.plain.endswith(
        " · strict mode · extractive answer (the passages' own sentences)"
    )


def test_a_result_of_an_older_release_reads_as_before() -> None:
    lines = rendered(DETAIL)
    assert [line.plain for line in section(lines, "answer")] == [
        "The keeper polishes the great lens [1]."
    ]
    assert [line.plain for line in section(lines, "citations")] == [
        "  [1] Lighthouses (doc doc-1, chunk 0)"
    ]
    assert not any(line.plain.startswith("grounding") for line in lines)
