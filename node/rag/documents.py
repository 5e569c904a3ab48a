"""Documents of the knowledge base: their metadata and their parsing into page texts.

`parse` turns the raw bytes of an upload into plain page texts for the chunker:

* plain text and Markdown are one page each; Markdown loses its markup (headings
  stay as lines of their own, the first level-1 heading becomes the title);
* HTML keeps only the visible text, with headings, paragraphs and list items on
  lines of their own; scripts, styles and navigation menus are dropped;
* PDF is one page text per PDF page, extracted by pypdf.

Anything that cannot give text fails with `BadDocument`, whose message is meant for
the user who uploaded the file: the ingest task of that file fails with it, and no
other task or document is affected.  `parse` is a plain blocking function; the
runtime calls it from a worker.
"""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath
from typing import Any

from pypdf import PasswordType, PdfReader

ParseProgressFn = Callable[[int, int, str], None]
from node.replica.vocabulary import CancelledFn

MEDIA_TEXT = "text/plain"
MEDIA_MARKDOWN = "text/markdown"
MEDIA_HTML = "text/html"
MEDIA_PDF = "application/pdf"

# Extensions are matched case-insensitively.
EXTENSION_MEDIA_TYPES: dict[str, str] = {
    ".txt": MEDIA_TEXT,
    ".text": MEDIA_TEXT,
    ".md": MEDIA_MARKDOWN,
    ".markdown": MEDIA_MARKDOWN,
    ".html": MEDIA_HTML,
    ".htm": MEDIA_HTML,
    ".pdf": MEDIA_PDF,
}
# Other names clients send for the same four types.
MEDIA_TYPE_ALIASES: dict[str, str] = {
    "text/x-markdown": MEDIA_MARKDOWN,
    "application/xhtml+xml": MEDIA_HTML,
    "application/x-pdf": MEDIA_PDF,
}
SUPPORTED_MEDIA_TYPES = (MEDIA_TEXT, MEDIA_MARKDOWN, MEDIA_HTML, MEDIA_PDF)
# Types that say nothing about the content: the file name decides instead.
GENERIC_MEDIA_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
PDF_MAGIC = b"%PDF-"
# Leading whitespace some tools emit before the header is tolerated.
_PDF_LEADING_JUNK = b"\x00\t\n\r\x0c "


class BadDocument(ValueError):
    """The upload cannot be turned into text; the message is shown to the user as is."""


class ParseCancelled(Exception):
    """`parse` stopped between two PDF pages because `cancelled()` said so."""


@dataclass(frozen=True)
class DocumentMeta:
    """What the knowledge base records about a document besides its text.

    `version` starts at 1 and grows by one each time the document's content is
    replaced; `size` is the byte size of the uploaded file.
    """

    id: str
    title: str
    source: str
    media_type: str
    version: int
    size: int
    tags: tuple[str, ...] = ()
    enabled: bool = True

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a document needs a non-empty id")
        if self.version < 1:
            raise ValueError(f"document version must be at least 1, not {self.version}")
        if self.size < 0:
            raise ValueError(f"document size cannot be negative ({self.size})")
        if not isinstance(self.tags, tuple) or not all(isinstance(t, str) for t in self.tags):
            raise ValueError("document tags must be a tuple of strings")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, for msgpack log entries and JSON responses."""
        return {
            "id": self.id,
            "title": self.title,
            "source": self.source,
            "media_type": self.media_type,
            "version": self.version,
            "size": self.size,
            "tags": list(self.tags),
            "enabled": self.enabled,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DocumentMeta:
        return cls(
            id=data["id"],
            title=data["title"],
            source=data["source"],
            media_type=data["media_type"],
            version=int(data["version"]),
            size=int(data["size"]),
            tags=tuple(data.get("tags", ())),
            enabled=bool(data.get("enabled", True)),
        )


@dataclass(frozen=True)
class ParsedDocument:
    """Page texts in reading order (one page for non-PDF types; PDF pages may be empty)."""

    pages: list[str]
    media_type: str
    title: str | None = None


def parse(
    data: bytes,
    filename: str,
    media_type: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: ParseProgressFn | None = None,
    encoding: str | None = None,
    cancelled: CancelledFn | None = None,
) -> ParsedDocument:
    """Extract the text of an uploaded file, or raise `BadDocument` saying why not.

    The type comes from `media_type` when it names a supported type, else from the
    extension of `filename`; bytes starting with ``%PDF-`` are a PDF whatever the
    name says.  Text types are UTF-8 unless `encoding` (or a ``charset`` parameter
    of `media_type`) says otherwise.  `progress(done, total, "pages parsed")` is
    called after each page.
    """
    if len(data) > max_bytes:
        raise BadDocument(
            f"{filename}: the file is too large ({_human_size(len(data))}); "
            f"the limit is {_human_size(max_bytes)}"
        )
    if not data:
        raise BadDocument(f"{filename}: the file is empty")
    kind = detect_media_type(data, filename, media_type)
    if encoding is None:
        encoding = _charset_parameter(media_type)

    if kind == MEDIA_PDF:
        parsed = _parse_pdf(data, filename, progress, cancelled)
    else:
        text = decode_text(data, filename, encoding)
        if "\x00" in text:
            # Valid UTF-8 can still be binary data; text files do not hold NUL characters.
            raise BadDocument(f"{filename}: the file holds binary data, not text")
        if kind == MEDIA_HTML:
            body, title = html_to_text(text)
        elif kind == MEDIA_MARKDOWN:
            body, title = markdown_to_text(text)
        else:
            body, title = _normalise_newlines(text), None
        parsed = ParsedDocument(pages=[body], media_type=kind, title=title)
        if progress is not None:
            progress(1, 1, "pages parsed")

    if not any(page.strip() for page in parsed.pages):
        if kind == MEDIA_PDF:
            raise BadDocument(
                f"{filename}: the PDF has no extractable text (a scanned PDF without a text layer?)"
            )
        raise BadDocument(f"{filename}: the file holds no text (only whitespace or markup)")
    return parsed


def detect_media_type(data: bytes, filename: str, media_type: str | None = None) -> str:
    """One of `SUPPORTED_MEDIA_TYPES`, or `BadDocument` naming the supported ones."""
    if data[:64].lstrip(_PDF_LEADING_JUNK).startswith(PDF_MAGIC):
        return MEDIA_PDF
    declared = _bare_media_type(media_type)
    declared = MEDIA_TYPE_ALIASES.get(declared, declared)
    extension = PurePath(filename).suffix.lower()
    by_extension = EXTENSION_MEDIA_TYPES.get(extension)
    # Browsers and HTTP clients label many text files text/plain; a .md or .html name
    # is the more specific hint then.
    if declared == MEDIA_TEXT and by_extension in (MEDIA_MARKDOWN, MEDIA_HTML):
        return by_extension
    if declared in SUPPORTED_MEDIA_TYPES:
        return declared
    if declared in GENERIC_MEDIA_TYPES and extension in EXTENSION_MEDIA_TYPES:
        return EXTENSION_MEDIA_TYPES[extension]
    if declared not in GENERIC_MEDIA_TYPES:
        what = f"type {declared}"
    elif extension:
        what = f"extension {extension}"
    else:
        what = "no extension"
    raise BadDocument(
        f"{filename}: unsupported document type ({what}); supported are plain text "
        "(.txt), Markdown (.md, .markdown), HTML (.html, .htm) and PDF (.pdf)"
    )


def decode_text(data: bytes, filename: str, encoding: str | None = None) -> str:
    """Decode as `encoding`, or as UTF-8 (a byte-order mark, also UTF-16's, is honoured)."""
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise BadDocument(f"{filename}: unknown text encoding {encoding!r}") from None
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as err:
            raise BadDocument(
                f"{filename}: the file is not valid {encoding} text "
                f"(bad byte 0x{data[err.start]:02x} at byte offset {err.start})"
            ) from None
    for bom, codec in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError as err:
                raise BadDocument(
                    f"{filename}: the file starts with a {codec} byte-order mark but is not "
                    f"valid {codec} (error at byte offset {err.start})"
                ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadDocument(
            f"{filename}: the file is not UTF-8 text (bad byte 0x{data[err.start]:02x} "
            f"at byte offset {err.start}); convert it to UTF-8 or give its encoding"
        ) from None


# ---------------------------------------------------------------- PDF


def _parse_pdf(
    data: bytes,
    filename: str,
    progress: ParseProgressFn | None,
    cancelled: CancelledFn | None,
) -> ParsedDocument:
    # pypdf raises many exception types (its own, plus ValueError, KeyError,
    # struct.error, RecursionError ... on damaged files); every one of them means
    # "this PDF cannot be read", so none may escape as anything but BadDocument.
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            _unlock_or_refuse(reader, filename)
        page_count = len(reader.pages)
    except BadDocument:
        raise
    except Exception as err:  # noqa: BLE001 - any failure here means an unreadable PDF
        raise BadDocument(f"{filename}: the PDF is corrupt or unreadable ({_brief(err)})") from None
    if page_count == 0:
        raise BadDocument(f"{filename}: the PDF has no pages")

    pages: list[str] = []
    for number in range(page_count):
        if cancelled is not None and cancelled():
            raise ParseCancelled(f"cancelled after {number} of {page_count} pages")
        try:
            text = reader.pages[number].extract_text() or ""
        except Exception as err:  # noqa: BLE001 - see above
            raise BadDocument(
                f"{filename}: page {number + 1} of the PDF is corrupt or unreadable ({_brief(err)})"
            ) from None
        pages.append(_normalise_newlines(text))
        if progress is not None:
            progress(number + 1, page_count, "pages parsed")
    return ParsedDocument(pages=pages, media_type=MEDIA_PDF, title=_pdf_title(reader))


def _unlock_or_refuse(reader: PdfReader, filename: str) -> None:
    # Many PDFs are encrypted only to carry permission flags, with an empty user
    # password: every viewer opens them without asking, so we do too.
    try:
        opened = reader.decrypt("") != PasswordType.NOT_DECRYPTED
    except Exception:  # noqa: BLE001 - unknown or broken encryption: treat as locked
        opened = False
    if not opened:
        raise BadDocument(
            f"{filename}: the PDF is password-protected (encrypted); "
            "upload a copy without a password"
        )


def _pdf_title(reader: PdfReader) -> str | None:
    try:
        title = reader.metadata.title if reader.metadata is not None else None
    except Exception:  # noqa: BLE001 - a broken info dictionary costs the title only
        return None
    if not isinstance(title, str):
        return None
    return title.strip() or None


def _brief(err: Exception) -> str:
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {message[:200]}" if message else type(err).__name__


# ---------------------------------------------------------------- HTML

# Elements whose content is never shown, or is navigation rather than content.
# (<head> is not among them: its end tag is optional, and its children are hidden anyway.)
_HIDDEN_ELEMENTS = frozenset({"script", "style", "noscript", "template", "nav", "svg"})
# Elements that break text into paragraphs.
_PARAGRAPH_ELEMENTS = frozenset(
    {
        "address",
        "article",
        "aside",
        "blockquote",
        "caption",
        "details",
        "div",
        "dl",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "main",
        "ol",
        "p",
        "pre",
        "section",
        "summary",
        "table",
        "ul",
    }
)
# Elements that start a line of their own without a blank line.
_LINE_ELEMENTS = frozenset({"br", "dd", "dt", "li", "tr"})
_CELL_ELEMENTS = frozenset({"td", "th"})
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
# Elements that never have an end tag, so they cannot open a hidden region.
_VOID_ELEMENTS = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }
)
# Permalink anchors ("¶" after each heading, as Sphinx and MkDocs render them).
_PERMALINK_CLASSES = frozenset({"headerlink"})


class _VisibleTextExtractor(HTMLParser):
    """Collects visible text with paragraph structure; also the <title> and first <h1>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] | None = None
        self.title: str | None = None
        self.first_h1: str | None = None
        self._h1_parts: list[str] | None = None
        self._pre_depth = 0
        # While hiding: the tag that opened the hidden region and how deeply it nests.
        self._hidden_tag: str | None = None
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title" and self.title is None:
            self.title_parts = []
            return
        if self._hidden_tag is not None:
            if tag == self._hidden_tag:
                self._hidden_depth += 1
            return
        if tag not in _VOID_ELEMENTS and self._hides(tag, dict(attrs)):
            self._hidden_tag, self._hidden_depth = tag, 1
            return
        self._break_before(tag)
        if tag == "pre":
            self._pre_depth += 1
        if tag == "h1" and self.first_h1 is None:
            self._h1_parts = []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._hidden_tag is None:
            self._break_before(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self.title_parts is not None:
            self.title = _collapse_spaces("".join(self.title_parts)) or None
            self.title_parts = None
            return
        if self._hidden_tag is not None:
            if tag == self._hidden_tag:
                self._hidden_depth -= 1
                if self._hidden_depth == 0:
                    self._hidden_tag = None
            return
        if tag == "pre" and self._pre_depth:
            self._pre_depth -= 1
        if tag == "h1" and self._h1_parts is not None:
            self.first_h1 = _collapse_spaces("".join(self._h1_parts)) or None
            self._h1_parts = None
        if tag in _PARAGRAPH_ELEMENTS:
            self._line_breaks(2)
        elif tag in _LINE_ELEMENTS:
            self._line_breaks(1)

    def handle_data(self, data: str) -> None:
        if self.title_parts is not None:
            self.title_parts.append(data)  # the title is metadata, not body text
            return
        if self._hidden_tag is not None:
            return
        if self._h1_parts is not None:
            self._h1_parts.append(data)
        if self._pre_depth:
            self.parts.append(data)
            return
        text = re.sub(r"\s+", " ", data)
        if self._at_line_start():
            text = text.lstrip()
        if text:
            self.parts.append(text)

    def _hides(self, tag: str, attrs: dict[str, str | None]) -> bool:
        if tag in _HIDDEN_ELEMENTS or "hidden" in attrs:
            return True
        if attrs.get("aria-hidden") == "true" or attrs.get("role") == "navigation":
            return True
        classes = set((attrs.get("class") or "").split())
        return bool(classes & _PERMALINK_CLASSES)

    def _break_before(self, tag: str) -> None:
        if tag == "br":
            self.parts.append("\n")  # every <br> counts, even several in a row
        elif tag in _PARAGRAPH_ELEMENTS:
            self._line_breaks(2)
        elif tag in _LINE_ELEMENTS:
            self._line_breaks(1)
        elif tag in _CELL_ELEMENTS and not self._at_line_start():
            self.parts.append(" ")

    def _line_breaks(self, wanted: int) -> None:
        """End the current line so that `wanted` newlines follow the last text."""
        missing = wanted - self._trailing_newlines()
        if missing > 0:
            self.parts.append("\n" * missing)

    def _trailing_newlines(self) -> int:
        count = 0
        for part in reversed(self.parts):
            stripped = part.rstrip(" ")
            if not stripped:
                continue
            newlines = len(stripped) - len(stripped.rstrip("\n"))
            count += newlines
            if newlines < len(stripped):
                return count
        return 2  # at the start of the document no break is needed

    def _at_line_start(self) -> bool:
        return self._trailing_newlines() > 0


def html_to_text(html: str) -> tuple[str, str | None]:
    """(visible text with blank lines between blocks, title from <title> or the first <h1>)."""
    extractor = _VisibleTextExtractor()
    extractor.feed(html)
    extractor.close()
    text = _tidy_blank_lines("".join(extractor.parts))
    return text, extractor.title or extractor.first_h1


# ---------------------------------------------------------------- Markdown

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n.*?\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_THEMATIC_BREAK = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_BLOCKQUOTE = re.compile(r"^ {0,3}> ?")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_REFERENCE_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s+\S+.*$")
_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_EMPHASIS_STAR = re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])")
# Underscores only count at word edges, so snake_case names survive.
_EMPHASIS_UNDERSCORE = re.compile(r"(?<![\w_])_(?=\S)(.+?)(?<=\S)_(?![\w_])")
_INLINE_CODE = re.compile(r"`+([^`]+?)`+")
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>")


def markdown_to_text(markdown: str) -> tuple[str, str | None]:
    """(text without Markdown markup, the first level-1 heading as title)."""
    source = _FRONT_MATTER.sub("", _normalise_newlines(markdown), count=1)
    lines = source.split("\n")
    out: list[str] = []
    title: str | None = None
    in_fence = False
    for index, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            out.append(line)  # Code is content: kept verbatim.
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if line.strip() and _SETEXT_UNDERLINE.match(following) and not _THEMATIC_BREAK.match(line):
            # "Title\n=====": the heading line stays, its underline goes (below).
            text = _inline_markdown(line.strip())
            if title is None and following.strip().startswith("="):
                title = text
            out.extend(["", text, ""])
            continue
        if _SETEXT_UNDERLINE.match(line) and out and out[-1] == "":
            continue
        if _THEMATIC_BREAK.match(line) or _LINK_DEFINITION.match(line):
            out.append("")
            continue
        heading = _ATX_HEADING.match(line)
        if heading:
            text = _inline_markdown(heading.group(2))
            if title is None and len(heading.group(1)) == 1 and text:
                title = text
            out.extend(["", text, ""])
            continue
        out.append(_inline_markdown(_BLOCKQUOTE.sub("", line)))
    return _tidy_blank_lines("\n".join(out)), title


def _inline_markdown(line: str) -> str:
    # Code spans first, so markup characters inside code are left alone.
    pieces = _INLINE_CODE.split(line)
    for i in range(0, len(pieces), 2):  # even pieces are outside code spans
        text = _IMAGE.sub(r"\1", pieces[i])
        text = _LINK.sub(r"\1", text)
        text = _REFERENCE_LINK.sub(r"\1", text)
        text = _HTML_TAG.sub("", text)
        text = _STRONG.sub(r"\2", text)
        text = _EMPHASIS_STAR.sub(r"\1", text)
        pieces[i] = _EMPHASIS_UNDERSCORE.sub(r"\1", text)
    return "".join(pieces).rstrip()


# ---------------------------------------------------------------- shared helpers


def _normalise_newlines(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _tidy_blank_lines(text: str) -> str:
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _collapse_spaces(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _bare_media_type(media_type: str | None) -> str:
    return (media_type or "").split(";", 1)[0].strip().lower()


def _charset_parameter(media_type: str | None) -> str | None:
    for parameter in (media_type or "").split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return None


def _human_size(n_bytes: int) -> str:
    if n_bytes >= 1024 * 1024:
        return f"{n_bytes / (1024 * 1024):.1f} MiB ({n_bytes:,} bytes)"
    if n_bytes >= 1024:
        return f"{n_bytes / 1024:.1f} KiB ({n_bytes:,} bytes)"
    return f"{n_bytes} bytes"


def normalise_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Tags as stored: stripped, empty ones dropped, duplicates removed, order kept."""
    seen: dict[str, None] = {}
    for tag in tags:
        cleaned = tag.strip()
        if cleaned:
            seen.setdefault(cleaned, None)
    return tuple(seen)
