"""The knowledge-base routes of the REST API (base /api/v1/kb).

An upload is one log entry (`Upload`) holding the file's bytes and the `ingest`
task that will index it (node/replica/state.py); the answer is 202 because
indexing happens afterwards, on whichever node claims that task.  Deletes and
enable/disable are log entries too (`DeleteDocument`, `SetEnabled`).  Every write
goes through node/http/errors.py; listing and search read this node's replica.

An upload may carry an `Idempotency-Key` header (node/http/idempotency.py): file i of
the request is submitted under that key (i = 0) or "<key>#<i>", with a print of
the file and its place in the request, so a retried upload (to any node) makes
no second version and no second ingest task; it answers 202 with what the first
copy created, each entry marked "replayed", and `Idempotent-Replayed: true` when
every file was a replay.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import BodyPartReader, web

from node.http import errors, idempotency
from node.http.body import BadBody, read_json_object
from node.http.errors import error
from node.ids import new_task_id, now_ms
from node.rag.documents import MEDIA_HTML, MEDIA_MARKDOWN, MEDIA_TEXT
from node.rag.knowledge import MAX_ID_CHARS, MAX_TAGS, KnowledgeBase
from node.replica import commands as c
from node.replica.replica import Replica
from node.replica.vocabulary import (
    DEFAULT_PRIORITY,
    KB_WRITERS,
    MAX_JSON_BODY_BYTES,
    InvalidField,
    TaskParams,
    TaskType,
    UserRole,
)

if TYPE_CHECKING:
    from node.rag.engine import RagEngine

# A document id a client may choose: what the knowledge base accepts, and safe in a URL.
_DOC_ID = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_ID_CHARS - 1}}}$")
MAX_FILES = 64  # per multipart request: each file is one log entry
# A multipart upload's other fields (title, tags, id): short text, few of them.
MAX_FORM_FIELDS = 16
MAX_FORM_FIELD_BYTES = 10_000
# One request's files together, as a multiple of the per-file limit: every file is
# held in memory until its log entry is proposed, so 64 files of the limit each would
# be a gigabyte.
UPLOAD_TOTAL_FILES_OF_LIMIT = 4
# The media types a JSON upload's text may declare (other files come as multipart),
# and the extension its source name gets, so that parsing picks the same format.
_TEXT_SUFFIX = {MEDIA_TEXT: ".txt", MEDIA_MARKDOWN: ".md", MEDIA_HTML: ".html"}
ACCEPTED_HEADER = "X-Ragraft-Accepted-Documents"


class RagStatus(Protocol):
    """What the routes read of the node's RAG service (node/execution/rag_service.py,
    which this layer may not import)."""

    @property
    def engine(self) -> RagEngine | None: ...  # None until the models are loaded

    @property
    def status(self) -> Any: ...  # ModelStatus: .state, .step, .to_dict()


class UploadError(Exception):
    """A request this node cannot turn into uploads (before anything is proposed)."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.details = status, code, details

    def response(self) -> web.Response:
        return error(self.status, self.code, str(self), **self.details)


@dataclass(frozen=True, slots=True)
class _File:
    """One file of an upload request, ready to become an `Upload` command."""

    doc: c.DocumentUpload
    given_id: str | None  # the id the client named; None when this node drew one


class KnowledgeAPI:
    def __init__(
        self, replica: Replica, kb: KnowledgeBase, rag: RagStatus, max_upload_bytes: int
    ) -> None:
        self.replica = replica  # proposes the writes; its state.tasks knows the keys
        self.kb = kb  # the replica's knowledge base (replica.state.kb), for the reads
        self.rag = rag
        self.max_upload_bytes = max_upload_bytes

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/kb/documents", self.upload)
        app.router.add_get("/api/v1/kb/documents", self.list_documents)
        app.router.add_get("/api/v1/kb/documents/{id}", self.get_document)
        app.router.add_delete("/api/v1/kb/documents/{id}", self.delete_document)
        app.router.add_patch("/api/v1/kb/documents/{id}", self.patch_document)
        app.router.add_get("/api/v1/kb/search", self.search)
        app.router.add_get("/api/v1/kb/stats", self.stats)

    # ------------------------------------------------------------ uploads
    async def upload(self, request: web.Request) -> web.Response:
        try:
            key = idempotency.from_request(request)
        except idempotency.BadKey as exc:
            return error(400, "bad_idempotency_key", str(exc), header=idempotency.HEADER)
        # Before reading a byte of the body: a user may not upload at all.  (This
        # replica's view of the role answers fast; the state machine decides.)
        if (refused := _editors_only(request)) is not None:
            return refused
        try:
            files = await self._files(request)
        except (UploadError, BadBody) as exc:
            return exc.response()
        owner = request.get("user", "anonymous")
        keys = [_file_key(key, index) for index in range(len(files))]
        documents: list[Any] = []
        tasks: list[dict[str, Any]] = []
        for index, file in enumerate(files):
            cmd = _upload_command(file, owner, keys[index], index, len(files))
            outcome = await errors.propose(self.replica, cmd)
            if outcome.failure is not None:
                # Earlier files of this request were accepted; say which.
                if documents:
                    outcome.failure.headers[ACCEPTED_HEADER] = ",".join(
                        d["doc_id"] for d in documents if d
                    )
                return outcome.failure
            documents.append(outcome.result["document"])
            tasks.append(outcome.result["task"])
        answer = web.json_response({"documents": documents, "tasks": tasks}, status=202)
        idempotency.mark_replayed(answer, all(t.get("replayed") is True for t in tasks))
        return answer

    async def _files(self, request: web.Request) -> list[_File]:
        if not request.content_type.startswith("multipart/"):
            return [await self._json_document(request)]
        try:
            return await self._multipart(request)
        except UploadError:
            raise
        except Exception as exc:  # noqa: BLE001 - aiohttp's parser raises several kinds on bad input
            raise UploadError(
                400,
                "bad_multipart",
                f"the multipart body cannot be read ({exc}); send "
                "files as multipart/form-data fields with a boundary",
            ) from None

    async def _json_document(self, request: web.Request) -> _File:
        # The body is an upload: the document's limit, with room for the JSON around it
        # (as the app's client_max_size allows); the text is checked against the limit below.
        body = await read_json_object(
            request,
            self.max_upload_bytes + MAX_JSON_BODY_BYTES,
            hint='send {"title", "text"} or a multipart upload of files',
        )
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise UploadError(422, "invalid", "text must be a non-empty string", field="text")
        title = body.get("title", "")
        if not isinstance(title, str):
            raise UploadError(422, "invalid", "title must be a string", field="title")
        media_type = body.get("media_type", MEDIA_TEXT)
        if not isinstance(media_type, str) or media_type not in _TEXT_SUFFIX:
            raise UploadError(
                422,
                "invalid",
                "media_type must be text/plain, text/markdown or text/html "
                "(upload other files as multipart)",
                field="media_type",
            )
        data = text.encode("utf-8")
        self._check_size(len(data), title or "text")
        doc = c.DocumentUpload(
            doc_id=self._doc_id(body.get("id")),
            title=title,
            source=(title or "text") + _TEXT_SUFFIX[media_type],
            media_type=media_type,
            tags=_tags(body.get("tags", [])),
            data=data,
        )
        return _File(doc, body.get("id") or None)

    async def _multipart(self, request: web.Request) -> list[_File]:
        reader = await request.multipart()
        fields: dict[str, str] = {}
        parts: list[tuple[str, str | None, bytes]] = []
        total = 0
        total_limit = UPLOAD_TOTAL_FILES_OF_LIMIT * self.max_upload_bytes
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.filename is None:
                if len(fields) >= MAX_FORM_FIELDS:
                    raise UploadError(
                        413, "too_large", f"at most {MAX_FORM_FIELDS} form fields per upload"
                    )
                value = await _read_field(part)
                fields[part.name or ""] = value.decode("utf-8", "replace")
                continue
            if len(parts) >= MAX_FILES:
                raise UploadError(413, "too_many_files", f"at most {MAX_FILES} files per upload")
            data = await self._read_limited(part)
            total += len(data)
            if total > total_limit:
                raise UploadError(
                    413,
                    "too_large",
                    f"the files of one upload may hold {total_limit // (1024 * 1024)} MiB "
                    f"together ({UPLOAD_TOTAL_FILES_OF_LIMIT} times [rag] max_upload_mb); "
                    "upload the rest in another request",
                    limit_bytes=total_limit,
                )
            content_type = part.headers.get("Content-Type")
            # a browser's "I do not know": let the parser detect the format
            if content_type == "application/octet-stream":
                content_type = None
            parts.append((part.filename, content_type, data))
        if not parts:
            raise UploadError(
                422,
                "invalid",
                "no file in the upload; send files in multipart fields",
                field="file",
            )
        given_id = fields.get("id") or None
        if given_id and len(parts) > 1:
            raise UploadError(
                422, "invalid", "id names one document; upload one file with it", field="id"
            )
        tags = _tags([t.strip() for t in fields.get("tags", "").split(",") if t.strip()])
        files = []
        for filename, content_type, data in parts:
            if not data:
                raise UploadError(422, "empty_file", f"{filename}: the file is empty", field="file")
            doc = c.DocumentUpload(
                doc_id=self._doc_id(given_id),
                title=fields.get("title") or filename,
                source=filename,
                media_type=content_type or "",
                tags=tags,
                data=data,
            )
            files.append(_File(doc, given_id))
        return files

    async def _read_limited(self, part: BodyPartReader) -> bytes:
        name = part.filename or "file"
        return await _read_part(part, lambda size: self._check_size(size, name), 256 * 1024)

    def _check_size(self, size: int, name: str) -> None:
        if size > self.max_upload_bytes:
            raise UploadError(
                413,
                "too_large",
                f"{name}: the file is larger than the limit of "
                f"{self.max_upload_bytes // (1024 * 1024)} MiB ([rag] max_upload_mb)",
                limit_bytes=self.max_upload_bytes,
            )

    @staticmethod
    def _doc_id(given: Any) -> str:
        if given in (None, ""):
            return "doc-" + new_task_id().lower()
        if not isinstance(given, str) or not _DOC_ID.match(given):
            raise UploadError(
                422,
                "invalid",
                f"id must be 1-{MAX_ID_CHARS} letters, digits or . _ : - "
                "(starting with a letter or digit)",
                field="id",
            )
        return given

    # ------------------------------------------------------------ documents
    async def list_documents(self, request: web.Request) -> web.Response:
        docs = self.kb.list_documents(
            state=request.query.get("state") or None, tag=request.query.get("tag") or None
        )
        return web.json_response({"items": docs, "total": len(docs)})

    async def get_document(self, request: web.Request) -> web.Response:
        doc_id = request.match_info["id"]
        doc = self.kb.get(doc_id)
        if doc is None:
            return error(404, "not_found", f"no document {doc_id!r}")
        return web.json_response(doc)

    async def delete_document(self, request: web.Request) -> web.Response:
        if (refused := _editors_only(request)) is not None:
            return refused
        return await errors.write(
            self.replica,
            c.DeleteDocument(request.match_info["id"], now_ms(), by=request.get("user")),
        )

    async def patch_document(self, request: web.Request) -> web.Response:
        if (refused := _editors_only(request)) is not None:
            return refused
        try:
            body = await read_json_object(request, MAX_JSON_BODY_BYTES)
        except BadBody as exc:
            return exc.response()
        if not isinstance(body.get("enabled"), bool):
            return error(422, "invalid", 'send {"enabled": true|false}', field="enabled")
        cmd = c.SetEnabled(
            request.match_info["id"], body["enabled"], now_ms(), by=request.get("user")
        )
        return await errors.write(self.replica, cmd)

    # ------------------------------------------------------------ reads
    async def search(self, request: web.Request) -> web.Response:
        # the engine module pulls in the model libraries: import on first use
        from node.rag.engine import BadInput

        engine = self.rag.engine
        if engine is None:
            return error(
                503,
                "models_not_ready",
                f"this node's models are {self.rag.status.state} "
                f"({self.rag.status.step}); try another node or retry shortly",
            )
        query = request.query.get("q", "")
        try:
            params = _search_params(request.query)
        except InvalidField as exc:
            name = exc.field.removeprefix("params.")
            return error(422, "invalid", str(exc), field=_SEARCH_NAMES.get(name, name))
        if not query.strip():
            return error(422, "invalid", "q must be a non-empty query", field="q")
        # (the engine takes the parameters in their wire form, as a task's runner does)
        wire = params.to_wire()
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                None, lambda: engine.run(TaskType.RETRIEVE, {"query": query}, wire)
            )
        except BadInput as exc:
            return error(422, "invalid", str(exc))
        return web.json_response({"query": query, **result})

    async def stats(self, _: web.Request) -> web.Response:
        kb = self.kb
        return web.json_response(
            {
                **kb.stats(),
                "digest": kb.digest(),
                "applied_index": self.replica.state.applied_index,
                "models": self.rag.status.to_dict(),
            }
        )


def _editors_only(request: web.Request) -> web.Response | None:
    if request.get("role", UserRole.ADMIN) not in KB_WRITERS:
        return error(
            403,
            "forbidden",
            "only editors and admins can add, replace, disable or delete documents; "
            "an admin can make you an editor",
        )
    return None


# A search names its retrieval parameters as a retrieve task does, but for `k`.
_SEARCH_NAMES = {"top_k": "k"}


def _search_params(query: Mapping[str, str]) -> TaskParams:
    """The retrieval parameters of a search's URL (k, mode, min_score, doc_ids, tags),
    checked like a retrieve task's; what is not given is the cluster's default."""
    raw: dict[str, Any] = {}
    try:
        if query.get("k"):
            raw["top_k"] = int(query["k"])
        if query.get("min_score"):
            raw["min_score"] = float(query["min_score"])
    except ValueError:
        raise InvalidField("k", "k must be a whole number and min_score a number") from None
    if query.get("mode"):
        raw["mode"] = query["mode"]
    for name in ("doc_ids", "tags"):
        if query.get(name):
            raw[name] = [v for v in query[name].split(",") if v]
    return TaskParams.parse(raw)


def _upload_command(file: _File, owner: str, key: str | None, index: int, count: int) -> c.Upload:
    return c.Upload(
        doc=file.doc,
        task_id=new_task_id(),
        owner=owner,
        at=now_ms(),
        priority=DEFAULT_PRIORITY,
        idem_key=key,
        fingerprint=_upload_fingerprint(file, index, count) if key is not None else None,
    )


def _tags(tags: Any) -> tuple[str, ...]:
    if (
        not isinstance(tags, list)
        or len(tags) > MAX_TAGS
        or not all(isinstance(t, str) and t for t in tags)
    ):
        raise UploadError(
            422,
            "invalid",
            f"tags must be a list of at most {MAX_TAGS} non-empty strings",
            field="tags",
        )
    return tuple(tags)


def _file_key(key: str | None, index: int) -> str | None:
    """The idempotency key of a request's index-th file: the first file takes the
    request's key itself, so reusing a task's key for an upload is a mismatch."""
    if key is None:
        return None
    return key if index == 0 else f"{key}#{index}"


def _upload_fingerprint(file: _File, index: int, count: int) -> str:
    """What makes two uploads the same: the file and its metadata, the document id
    the client named (not one this node drew), and its place in the request.  (The
    tags print as a JSON list, as the previous release's did: a retry sent to a
    node of either release matches.)"""
    doc = file.doc
    return idempotency.fingerprint(
        "upload",
        count,
        index,
        file.given_id,
        doc.title,
        doc.source,
        doc.media_type,
        list(doc.tags),
        doc.data,
    )


async def _read_part(part: BodyPartReader, check: Callable[[int], None], chunk_size: int) -> bytes:
    """A part's raw bytes, chunk by chunk; `check(size so far)` raises to stop a part
    that is too large before more of it is buffered (part.read() takes any size)."""
    chunks, size = [], 0
    while chunk := await part.read_chunk(chunk_size):
        size += len(chunk)
        check(size)
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_field(part: BodyPartReader) -> bytes:
    """A form field's value, refused once it passes MAX_FORM_FIELD_BYTES."""

    def check(size: int) -> None:
        if size > MAX_FORM_FIELD_BYTES:
            raise UploadError(
                413,
                "too_large",
                f"form field {part.name!r} is longer than {MAX_FORM_FIELD_BYTES} bytes",
                limit_bytes=MAX_FORM_FIELD_BYTES,
                field=part.name or "",
            )

    return bytes(part.decode(await _read_part(part, check, 4096)))
