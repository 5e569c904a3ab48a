"""Parsing of uploads (node.rag.documents) and sentence-aware chunking (node.rag.chunking)."""

from __future__ import annotations

import itertools
import re

import pytest
from fpdf import FPDF
from fpdf.enums import EncryptionMethod
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.rag.chunking import ChunkText, chunk_pages, chunk_spans
from node.rag.documents import (
    MEDIA_HTML,
    MEDIA_MARKDOWN,
    MEDIA_PDF,
    MEDIA_TEXT,
    BadDocument,
    DocumentMeta,
    ParseCancelled,
    ParsedDocument,
    detect_media_type,
    normalise_tags,
    parse,
)

# ---------------------------------------------------------------- helpers


def make_pdf(pages: list[str], title: str | None = None, **encryption: object) -> bytes:
    """A real PDF written by fpdf2, one text page per entry (empty entries stay blank)."""
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    if title:
        pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 8, text)
    if encryption:
        pdf.set_encryption(**encryption)
    return bytes(pdf.output())


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------- formats


def test_plain_text_is_one_page_with_newlines_normalised() -> None:
    parsed = parse(b"Line one.\r\nLine two.\r\n", "notes.txt")
    assert parsed == ParsedDocument(pages=["Line one.\nLine two.\n"], media_type=MEDIA_TEXT)


def test_utf8_byte_order_mark_is_dropped() -> None:
    parsed = parse("café au lait".encode("utf-8-sig"), "menu.txt")
    assert parsed.pages == ["café au lait"]


def test_utf16_with_byte_order_mark_is_decoded() -> None:
    parsed = parse("naïve text".encode("utf-16"), "utf16.txt")
    assert parsed.pages == ["naïve text"]


def test_explicit_encoding_and_charset_parameter() -> None:
    latin1 = "Gruß aus Köln".encode("latin-1")
    assert parse(latin1, "a.txt", encoding="latin-1").pages == ["Gruß aus Köln"]
    assert parse(latin1, "a.txt", media_type="text/plain; charset=latin-1").pages == [
        "Gruß aus Köln"
    ]


def test_markdown_loses_markup_and_keeps_headings_as_lines() -> None:
    source = (
        "---\nlayout: post\n---\n"
        "# Getting *started*\n\n"
        "Some **bold** text with a [link](https://example.org) and `snake_case_name`.\n\n"
        "## Install ##\n\n"
        "> Quoted advice.\n\n"
        "```python\nprint('**not bold**')\n```\n\n"
        "Other\n-----\n\n"
        "* item one\n* item two\n\n"
        "![diagram](d.png) my_variable stays.\n"
    )
    parsed = parse(source.encode(), "guide.md")
    assert parsed.media_type == MEDIA_MARKDOWN
    assert parsed.title == "Getting started"
    text = parsed.pages[0]
    lines = text.split("\n")
    assert "Getting started" in lines
    assert "Install" in lines
    assert "Other" in lines
    assert "Some bold text with a link and snake_case_name." in lines
    assert "Quoted advice." in lines
    assert "print('**not bold**')" in lines  # code is kept verbatim
    assert "diagram my_variable stays." in lines
    assert "layout: post" not in text
    assert "-----" not in text and "#" not in text and "](" not in text


def test_setext_title_is_used_when_there_is_no_atx_heading() -> None:
    parsed = parse(b"The Title\n=========\n\nBody sentence.\n", "doc.markdown")
    assert parsed.title == "The Title"
    assert parsed.pages == ["The Title\n\nBody sentence."]


def test_html_keeps_visible_text_and_block_structure() -> None:
    html = """<!DOCTYPE html><html><head><title>Page &amp; Title</title>
    <style>body { color: red }</style><script>var hidden = "script text";</script></head>
    <body><nav>Home | About</nav>
    <div role="navigation">Previous topic</div>
    <h1>Main heading<a class="headerlink" href="#x">¶</a></h1>
    <p>First   paragraph
    spans lines.</p><p>Second<br>line two</p>
    <ul><li>alpha</li><li>beta</li></ul>
    <pre>def f():
    return 1</pre>
    <table><tr><td>a</td><td>b</td></tr></table>
    <p hidden>invisible</p><noscript>enable js</noscript>
    </body></html>"""
    parsed = parse(html.encode(), "page.html")
    assert parsed.media_type == MEDIA_HTML
    assert parsed.title == "Page & Title"
    text = parsed.pages[0]
    for gone in (
        "script text",
        "color: red",
        "Home | About",
        "Previous topic",
        "¶",
        "invisible",
        "enable js",
        "Page & Title",
    ):
        assert gone not in text
    assert text.startswith("Main heading\n\nFirst paragraph spans lines.\n\nSecond\nline two")
    assert "alpha\nbeta" in text
    assert "def f():\n    return 1" in text  # preformatted text keeps its layout
    assert "a b" in text


def test_html_title_falls_back_to_first_h1() -> None:
    parsed = parse(b"<h1>Only <em>heading</em></h1><p>Body.</p>", "x.htm")
    assert parsed.title == "Only heading"
    assert parsed.pages == ["Only heading\n\nBody."]


def test_pdf_pages_title_and_progress() -> None:
    data = make_pdf(["First page. It has two sentences.", "", "Third page text."], title="Report")
    calls: list[tuple[int, int, str]] = []
    parsed = parse(data, "report.pdf", progress=lambda *call: calls.append(call))
    assert parsed.media_type == MEDIA_PDF
    assert parsed.title == "Report"
    assert [squash(p) for p in parsed.pages] == [
        "First page. It has two sentences.",
        "",
        "Third page text.",
    ]
    assert calls == [(1, 3, "pages parsed"), (2, 3, "pages parsed"), (3, 3, "pages parsed")]


def test_pdf_is_recognised_by_its_magic_bytes_whatever_the_name() -> None:
    data = make_pdf(["Hello from a PDF."])
    assert parse(data, "misnamed.txt").media_type == MEDIA_PDF
    assert detect_media_type(data, "upload.bin", "application/octet-stream") == MEDIA_PDF


def test_pdf_parse_can_be_cancelled_between_pages() -> None:
    data = make_pdf(["one", "two", "three"])
    with pytest.raises(ParseCancelled):
        parse(data, "a.pdf", cancelled=lambda: True)


def test_media_type_wins_over_extension_and_generic_types_defer_to_it() -> None:
    assert detect_media_type(b"x", "a.txt", "text/markdown") == MEDIA_MARKDOWN
    assert detect_media_type(b"x", "a.MD", "application/octet-stream") == MEDIA_MARKDOWN
    assert detect_media_type(b"x", "a.html", None) == MEDIA_HTML
    assert detect_media_type(b"x", "a", "text/html; charset=utf-8") == MEDIA_HTML
    # text/plain is what many clients send for any text file: the name is more specific.
    assert detect_media_type(b"x", "notes.md", "text/plain") == MEDIA_MARKDOWN
    assert detect_media_type(b"x", "notes.txt", "text/plain") == MEDIA_TEXT


def test_pdf_with_only_an_owner_password_opens() -> None:
    data = make_pdf(["Readable by anyone."], owner_password="owner-secret")
    assert squash(parse(data, "perm.pdf").pages[0]) == "Readable by anyone."


# ---------------------------------------------------------------- bad documents


@pytest.mark.parametrize(
    "method", [EncryptionMethod.RC4, EncryptionMethod.AES_128, EncryptionMethod.AES_256]
)
def test_password_protected_pdf_is_refused(method: EncryptionMethod) -> None:
    data = make_pdf(
        ["Top secret."], owner_password="owner", user_password="user", encryption_method=method
    )
    with pytest.raises(BadDocument, match="password-protected"):
        parse(data, "secret.pdf")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_pdf_is_refused_as_corrupt(fraction: float) -> None:
    data = make_pdf(["Some text on a page.", "More text."])
    with pytest.raises(BadDocument, match="corrupt"):
        parse(data[: int(len(data) * fraction)], "cut.pdf")


def test_garbage_after_pdf_header_is_refused_as_corrupt() -> None:
    with pytest.raises(BadDocument, match="corrupt"):
        parse(b"%PDF-1.7\n" + bytes(range(256)) * 4, "junk.pdf")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damaged_pdf_never_raises_anything_but_bad_document(data: st.DataObject) -> None:
    original = bytearray(make_pdf(["Alpha beta gamma. Delta epsilon.", "Zeta eta theta."]))
    for _ in range(data.draw(st.integers(1, 20))):
        position = data.draw(st.integers(0, len(original) - 1))
        original[position] = data.draw(st.integers(0, 255))
    try:
        parsed = parse(bytes(original), "damaged.pdf")
    except BadDocument:
        return
    assert all(isinstance(page, str) for page in parsed.pages)


def test_pdf_without_text_layer_is_refused() -> None:
    with pytest.raises(BadDocument, match="scanned PDF without a text layer"):
        parse(make_pdf(["", ""]), "scan.pdf")


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n  ", b"<html><body> <p> </p></body></html>"])
def test_empty_or_whitespace_only_files_are_refused(data: bytes) -> None:
    name = "page.html" if data.startswith(b"<") else "empty.txt"
    with pytest.raises(BadDocument, match="empty|no text"):
        parse(data, name)


def test_binary_junk_as_text_names_the_bad_byte_offset() -> None:
    data = b"valid start " + bytes([0xFF, 0xFE, 0x00, 0x81]) + b" rest"
    with pytest.raises(BadDocument, match=r"not UTF-8 .*byte offset 12"):
        parse(data, "junk.txt")


def test_valid_utf8_with_nul_bytes_is_binary_not_text() -> None:
    with pytest.raises(BadDocument, match="binary"):
        parse(b"abc\x00\x00\x01def", "blob.txt")


def test_wrong_declared_encoding_and_unknown_encoding() -> None:
    with pytest.raises(BadDocument, match="not valid ascii .*byte offset 3"):
        parse("abcé".encode(), "a.txt", encoding="ascii")
    with pytest.raises(BadDocument, match="unknown text encoding"):
        parse(b"abc", "a.txt", encoding="no-such-codec")


def test_unsupported_type_names_the_supported_ones() -> None:
    docx = b"PK\x03\x04" + b"\x00" * 100  # a .docx is a zip archive
    with pytest.raises(BadDocument, match=r"unsupported .*\.docx.*\.txt.*\.md.*\.html.*\.pdf"):
        parse(docx, "report.docx")
    with pytest.raises(BadDocument, match="type application/msword"):
        parse(b"abc", "report.doc", media_type="application/msword")


def test_too_large_names_size_and_limit() -> None:
    with pytest.raises(BadDocument, match=r"too large \(1\.0 KiB \(1,025 bytes\)\).*1\.0 KiB"):
        parse(b"a" * 1025, "big.txt", max_bytes=1024)
    assert parse(b"a" * 1024, "ok.txt", max_bytes=1024).pages == ["a" * 1024]


# ---------------------------------------------------------------- metadata


def test_document_meta_round_trips_and_validates() -> None:
    meta = DocumentMeta(
        id="d1",
        title="T",
        source="t.md",
        media_type=MEDIA_MARKDOWN,
        version=2,
        size=10,
        tags=("a", "b"),
    )
    assert DocumentMeta.from_dict(meta.to_dict()) == meta
    assert meta.enabled
    with pytest.raises(ValueError):
        DocumentMeta(id="d", title="", source="", media_type=MEDIA_TEXT, version=0, size=1)
    with pytest.raises(ValueError):
        DocumentMeta(
            id="d", title="", source="", media_type=MEDIA_TEXT, version=1, size=1, tags=["list"]
        )  # type: ignore[arg-type]
    assert normalise_tags([" a ", "", "b", "a"]) == ("a", "b")


# ---------------------------------------------------------------- chunking

PROSE = (
    "The quick brown fox jumps over the lazy dog. It was not amused! Why would it be? "
    "Foxes, e.g. red ones, are quick.\n\nA new paragraph starts here. It has a second "
    "sentence that is a little longer than the first one.\n\nShort.\n"
)


def non_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_chunks_are_sentence_aligned_slices_with_overlap() -> None:
    chunks = chunk_pages([PROSE], size=120, overlap=40)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert all(c.page == 1 and c.text and len(c.text) <= 120 for c in chunks)
    assert all(c.text in PROSE for c in chunks)
    for chunk in chunks:
        assert chunk.text[-1] in ".!?", chunk.text  # no sentence is cut
    assert "e.g. red ones" in chunks[0].text  # an abbreviation did not end the sentence
    # The next chunk repeats the last whole sentence that fits in the overlap.
    assert chunks[0].text.endswith("Foxes, e.g. red ones, are quick.")
    assert chunks[1].text.startswith("Foxes, e.g. red ones, are quick.\n\nA new paragraph")


def test_small_text_is_one_chunk_and_pages_are_not_mixed() -> None:
    chunks = chunk_pages(["One page.", "", "  \n ", "Another page."])
    assert chunks == [ChunkText(0, 1, "One page."), ChunkText(1, 4, "Another page.")]


def test_a_sentence_longer_than_size_is_split_at_whitespace() -> None:
    sentence = " ".join(f"word{i}" for i in range(100)) + "."
    chunks = chunk_pages([sentence], size=50, overlap=10)
    assert all(len(c.text) <= 50 for c in chunks)
    assert all(not c.text[0].isspace() and not c.text[-1].isspace() for c in chunks)
    words = [w for c in chunks for w in c.text.split()]
    assert set(words) == set(sentence.split())  # no word was cut in two


def test_an_unbroken_run_longer_than_size_is_hard_cut() -> None:
    chunks = chunk_pages(["x" * 25], size=10, overlap=0)
    assert [c.text for c in chunks] == ["x" * 10, "x" * 10, "x" * 5]


@pytest.mark.parametrize(
    ("size", "overlap", "message"),
    [
        (0, 0, "size"),
        (-5, 0, "size"),
        (100, -1, "overlap"),
        (100, 100, "smaller"),
        (100, 150, "smaller"),
        (10.5, 0, "size"),
        (True, 0, "size"),
    ],
)
def test_bad_sizes_are_refused(size: object, overlap: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chunk_pages(["text"], size=size, overlap=overlap)  # type: ignore[arg-type]


_WORDS = st.text(alphabet="abcdefghijXYZ0123456789é", min_size=1, max_size=14)
_SEPARATORS = st.sampled_from([" ", " ", " ", ". ", "! ", "? ", "\n", "\n\n", ".\n\n", "  ", "\t"])


@st.composite
def page_texts(draw: st.DrawFn) -> str:
    pieces = draw(st.lists(st.tuples(_WORDS, _SEPARATORS), max_size=120))
    return draw(st.sampled_from(["", " ", "\n"])) + "".join(w + s for w, s in pieces)


@settings(max_examples=300, deadline=None)
@given(
    pages=st.lists(page_texts(), min_size=1, max_size=3),
    size=st.integers(min_value=1, max_value=300),
    overlap_fraction=st.floats(min_value=0, max_value=0.9),
)
def test_chunking_properties(pages: list[str], size: int, overlap_fraction: float) -> None:
    overlap = int(size * overlap_fraction)
    chunks = chunk_pages(pages, size=size, overlap=overlap)
    assert chunks == chunk_pages(pages, size=size, overlap=overlap)  # deterministic
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for page_number, page in enumerate(pages, start=1):
        on_page = [c for c in chunks if c.page == page_number]
        assert all(c.text.strip() == c.text and c.text for c in on_page)  # trimmed, not empty
        assert all(len(c.text) <= size for c in on_page)
        # Every chunk is a slice of its page, slices advance, and together they
        # cover every non-whitespace character of the page.
        spans = chunk_spans(page, size=size, overlap=overlap)
        assert [page[start:end] for start, end in spans] == [c.text for c in on_page]
        covered_until = 0
        for (start, end), (next_start, _) in zip(spans, spans[1:] + [(len(page), 0)]):
            assert start < next_start  # every chunk brings new text
            assert page[covered_until:start].strip() == "", "text lost between chunks"
            covered_until = max(covered_until, end)
        assert page[covered_until:].strip() == ""
        # Overlap is whole units and never more than `overlap` characters.
        for (_, end), (next_start, _) in itertools.pairwise(spans):
            assert end - next_start <= overlap


def test_overlap_repeats_trailing_sentences_up_to_the_limit() -> None:
    sentences = [f"Sentence number {i:02d} is here." for i in range(30)]  # 29 chars each
    text = " ".join(sentences)
    chunks = chunk_pages([text], size=200, overlap=65)
    for before, after in itertools.pairwise(chunks):
        shared = [s for s in sentences if s in before.text and s in after.text]
        assert len(shared) == 2  # two sentences (59 chars with the space) fit in 65
        assert after.text.startswith(shared[0])
    chunks_without = chunk_pages([text], size=200, overlap=0)
    assert " ".join(c.text for c in chunks_without) == text
