"""Attribution and grounding of answers (node/rag/attribution.py, node/rag/grounding.py):
sentences and their offsets, supporting spans, verification of the model's own `[n]`,
unsupported sentences, strict mode and its extractive answer — with the bundled
embedding model, as a node runs it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from node.rag.attribution import Attributor, cited_numbers, content_words, split_sentences
from node.rag.embedding import Embedder
from node.rag.grounding import ground
from node.replica.vocabulary import GroundingMode


@dataclass(frozen=True)
class P:
    doc_id: str
    ordinal: int
    title: str
    text: str


PASSAGES = [
    P(
        "lighthouse",
        0,
        "Lighthouse",
        "The lighthouse keeper polishes the great lens every Tuesday. "
        "The lamp burns whale oil and can be seen 20 miles out to sea.",
    ),
    P(
        "python",
        3,
        "Python",
        "Python is named after the BBC show Monty Python's Flying Circus. "
        "It has nothing to do with reptiles.",
    ),
    P("tapirs", 1, "Zoo", "The zoo keeps two tapirs named Pixel and Pica."),
]


@pytest.fixture(scope="module")
def attributor() -> Attributor:
    embedder = Embedder()  # the bundled model: missing, this fails (it is not skipped)
    return Attributor(lambda texts: embedder.encode(texts, batch_size=64))


def test_sentences_keep_their_offsets_and_markers_are_not_words() -> None:
    text = "Python is named after a show [2]. It is not about snakes!\nSee 3.11 notes."
    spans = split_sentences(text)
    assert [text[s:e] for s, e in spans] == [
        "Python is named after a show [2].",
        "It is not about snakes!",
        "See 3.11 notes.",
    ]
    assert cited_numbers("as said [1, 3] and [4-6]") == (1, 3, 4, 5, 6)
    assert content_words("The show [2] of 3.11") == {"show", "3.11"}
    assert "not" in content_words("it is not so")  # a negation counts


def test_each_sentence_is_attributed_to_the_passage_that_supports_it(
    attributor: Attributor,
) -> None:
    answer = (
        "Python takes its name from Monty Python's Flying Circus, a BBC show. "
        "The keeper polishes the lens of the lighthouse on Tuesdays. "
        "Bananas are rich in potassium and grow in tropical countries."
    )
    text, citations, grounding = ground(
        "why the name?", answer, PASSAGES, attributor, GroundingMode.ANNOTATE
    )
    assert text == answer
    by_sentence = {c["sentence"]: c for c in citations}
    assert by_sentence[0]["doc_id"] == "python" and by_sentence[0]["source"] == "attributed"
    assert by_sentence[1]["doc_id"] == "lighthouse"
    quote = by_sentence[1]["quote"]
    start, end = by_sentence[1]["span"]
    assert PASSAGES[0].text[start:end] == quote and "polishes the great lens" in quote
    assert 2 not in by_sentence  # bananas: in no passage
    assert [s["supported"] for s in grounding["sentences"]] == [True, True, False]
    assert grounding["unsupported"] == 1 and grounding["score"] == pytest.approx(2 / 3, abs=1e-3)
    assert grounding["attribution_ms"] > 0


def test_a_citation_the_model_wrote_is_verified_and_flagged_when_wrong(
    attributor: Attributor,
) -> None:
    answer = "The lamp burns whale oil [1]. The zoo keeps two tapirs called Pixel and Pica [2]."
    _, citations, _ = ground("what?", answer, PASSAGES, attributor, GroundingMode.ANNOTATE)
    model = [c for c in citations if c["source"] == "model"]
    assert [(c["n"], c["supported"]) for c in model] == [(1, True), (2, False)]
    # the passage that does support the second sentence is attributed beside the wrong one
    assert any(c["n"] == 3 and c["source"] == "attributed" for c in citations)


def test_a_number_the_passage_does_not_have_is_not_supported(attributor: Attributor) -> None:
    _, _, right = ground(
        "?",
        "The lamp can be seen 20 miles out to sea.",
        PASSAGES,
        attributor,
        GroundingMode.ANNOTATE,
    )
    _, _, wrong = ground(
        "?",
        "The lamp can be seen 75 miles out to sea.",
        PASSAGES,
        attributor,
        GroundingMode.ANNOTATE,
    )
    assert right["supported"] == 1
    assert wrong["sentences"][0]["supported"] is False


def test_strict_drops_unsupported_sentences_and_falls_back_to_the_passages(
    attributor: Attributor,
) -> None:
    answer = "Bananas are rich in potassium. Python is named after Monty Python's Flying Circus."
    text, citations, grounding = ground("?", answer, PASSAGES, attributor, GroundingMode.STRICT)
    assert text == "Python is named after Monty Python's Flying Circus."
    assert grounding["sentences"][0]["start"] == 0 and grounding["unsupported"] == 0
    assert citations[0]["sentence"] == 0 and citations[0]["doc_id"] == "python"
    assert not grounding["extractive"]

    nothing = "Bananas are rich in potassium. They grow in tropical countries."
    text, citations, grounding = ground(
        "Who polishes the lens of the lighthouse?",
        nothing,
        PASSAGES,
        attributor,
        GroundingMode.STRICT,
    )
    assert grounding["extractive"] and grounding["score"] == 1.0
    assert "polishes the great lens" in text
    assert citations and all(c["supported"] for c in citations)
    for c in citations:  # every sentence quotes its passage exactly
        s = grounding["sentences"][c["sentence"]]
        assert text[s["start"] : s["end"]] == c["quote"]


def test_sentences_that_claim_nothing_are_not_checked(attributor: Attributor) -> None:
    _, citations, grounding = ground(
        "?", "Yes. I hope so.", PASSAGES, attributor, GroundingMode.STRICT
    )
    assert citations == [] and grounding["score"] is None
    assert [s["checked"] for s in grounding["sentences"]] == [False, False]
