"""The knowledge-base routes of the REST API (base /api/v1/kb).

An upload is one log entry holding the file's bytes and the `ingest` task that
will index it (node/state.py `kb.upload`); the answer is 202 because indexing
happens afterwards, on whichever node claims that task.  Deletes and
enable/disable are log entries too.  Listing and search read this node's replica.

An upload may carry an `Idempotency-Key` header (node/idempotency.py): file i of
the request is submitted under that key (i = 0) or "<key>#<i>", with a print of
the file and its place in the request, so a retried upload (to any node) makes
no second version and no second ingest task; it answers 202 with what the first
copy created, each entry marked "replayed", and `Idempotent-Replayed: true` when
every file was a replay.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import BodyPartReader, web

from node import idempotency
from node.ids import new_task_id, now_ms

Write = Callable[[dict, int], Awaitable[web.Response]]
ErrorFn = Callable[..., web.Response]

_DOC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
MAX_TAGS = 32
MAX_FILES = 64


class UploadError(Exception):
    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.details = status, code, details


class KnowledgeAPI:
    def __init__(
        self, state: Any, write: Write, error: ErrorFn, rag: Any, max_upload_bytes: int
    ) -> None:
        self.state = state  # NodeState: .kb, .tasks, .apply
        self.write = write
        self.error = error
        self.rag = rag  # RagService: .engine once models are loaded, .status
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
            return self.error(400, "bad_idempotency_key", str(exc), header=idempotency.HEADER)
        try:
            if request.content_type.startswith("multipart/"):
                try:
                    files = await self._multipart(request)
                except UploadError:
                    raise
                except Exception as exc:  # noqa: BLE001 - aiohttp's parser raises several kinds on bad input
                    raise UploadError(
                        400,
                        "bad_multipart",
                        f"the multipart body cannot be read ({exc}); send "
                        "files as multipart/form-data fields with a boundary",
                    ) from None
            else:
                files = [await self._json_document(request)]
        except UploadError as exc:
            return self.error(exc.status, exc.code, str(exc), **exc.details)
        owner = request.get("user", "anonymous")
        keys = [_file_key(key, index) for index in range(len(files))]
        # A user's retry of their own first upload of a named document is a replay,
        # not a replacement (the document exists now because the first copy applied).
        if request.get("role", "admin") != "admin" and any(
            self.state.kb.get(d["doc_id"]) and not (k and self.state.tasks.known_key(owner, k))
            for d, k in zip(files, keys)
        ):
            return self.error(
                403, "forbidden", "only an admin can replace a document; upload without an id"
            )
        documents, tasks = [], []
        replays = 0
        for index, doc in enumerate(files):
            given_id = doc.pop("given_id")
            task = {"id": new_task_id(), "priority": 5, "owner": owner}
            if keys[index] is not None:
                task.update(
                    idem_key=keys[index],
                    fingerprint=_upload_fingerprint(doc, given_id, index, len(files)),
                )
            cmd = {"op": "kb.upload", "doc": doc, "at": now_ms(), "task": task}
            response = await self.write(cmd, 202)
            if response.status != 202:
                # Earlier files of this request were accepted; say which.
                if documents:
                    response.headers["X-Ragraft-Accepted-Documents"] = ",".join(
                        d["doc_id"] for d in documents if d
                    )
                return response
            body = _json_body(response)
            documents.append(body["document"])
            tasks.append(body["task"])
            replays += body["task"].get("replayed") is True
        answer = web.json_response({"documents": documents, "tasks": tasks}, status=202)
        return idempotency.mark_replayed(answer, replays == len(files))

    async def _json_document(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise UploadError(
                400,
                "bad_json",
                'the body is not valid JSON; send {"title", "text"} or a multipart upload of files',
            ) from None
        if not isinstance(body, dict):
            raise UploadError(422, "invalid", "the body must be a JSON object", field="body")
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise UploadError(422, "invalid", "text must be a non-empty string", field="text")
        title = body.get("title", "")
        if not isinstance(title, str):
            raise UploadError(422, "invalid", "title must be a string", field="title")
        media_type = body.get("media_type", "text/plain")
        if media_type not in ("text/plain", "text/markdown", "text/html"):
            raise UploadError(
                422,
                "invalid",
                "media_type must be text/plain, text/markdown or text/html "
                "(upload other files as multipart)",
                field="media_type",
            )
        data = text.encode("utf-8")
        self._check_size(len(data), title or "text")
        suffix = {"text/plain": ".txt", "text/markdown": ".md", "text/html": ".html"}[media_type]
        return {
            "doc_id": self._doc_id(body.get("id")),
            "title": title,
            "source": (title or "text") + suffix,
            "media_type": media_type,
            "tags": _tags(body.get("tags", [])),
            "data": data,
            "given_id": body.get("id") or None,
        }

    async def _multipart(self, request: web.Request) -> list[dict]:
        reader = await request.multipart()
        fields: dict[str, str] = {}
        files: list[tuple[str, str | None, bytes]] = []
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.filename is None:
                fields[part.name or ""] = (await part.read(decode=True)).decode("utf-8", "replace")[
                    :10_000
                ]
                continue
            if len(files) >= MAX_FILES:
                raise UploadError(413, "too_many_files", f"at most {MAX_FILES} files per upload")
            data = await self._read_limited(part)
            content_type = part.headers.get("Content-Type")
            files.append(
                (
                    part.filename,
                    None if content_type == "application/octet-stream" else content_type,
                    data,
                )
            )
        if not files:
            raise UploadError(
                422,
                "invalid",
                "no file in the upload; send files in multipart fields",
                field="file",
            )
        if fields.get("id") and len(files) > 1:
            raise UploadError(
                422, "invalid", "id names one document; upload one file with it", field="id"
            )
        tags = _tags([t.strip() for t in fields.get("tags", "").split(",") if t.strip()])
        docs = []
        for filename, content_type, data in files:
            if not data:
                raise UploadError(422, "empty_file", f"{filename}: the file is empty", field="file")
            docs.append(
                {
                    "doc_id": self._doc_id(fields.get("id")),
                    "title": fields.get("title") or filename,
                    "source": filename,
                    "media_type": content_type or "",
                    "tags": tags,
                    "data": data,
                    "given_id": fields.get("id") or None,
                }
            )
        return docs

    async def _read_limited(self, part: BodyPartReader) -> bytes:
        chunks, size = [], 0
        while chunk := await part.read_chunk(256 * 1024):
            size += len(chunk)
            self._check_size(size, part.filename or "file")
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_size(self, size: int, name: str) -> None:
        if size > self.max_upload_bytes:
            raise UploadError(
                413,
                "too_large",
                f"{name}: the file is larger than the limit of "
                f"{self.max_upload_bytes // (1024 * 1024)} MiB ([rag] max_upload_mb)",
                limit_bytes=self.max_upload_bytes,
            )

    def _doc_id(self, given: Any) -> str:
        if given in (None, ""):
            return "doc-" + new_task_id().lower()
        if not isinstance(given, str) or not _DOC_ID.match(given):
            raise UploadError(
                422,
                "invalid",
                "id must be 1-200 letters, digits or . _ : - (starting with a letter or digit)",
                field="id",
            )
        return given

    # ------------------------------------------------------------ documents
    async def list_documents(self, request: web.Request) -> web.Response:
        kb = self.state.kb
        docs = kb.list_documents(
            state=request.query.get("state") or None, tag=request.query.get("tag") or None
        )
        return web.json_response({"items": docs, "total": len(docs)})

    async def get_document(self, request: web.Request) -> web.Response:
        doc = self.state.kb.get(request.match_info["id"])
        if doc is None:
            return self.error(404, "not_found", f"no document {request.match_info['id']!r}")
        return web.json_response(doc)

    def _admin_only(self, request: web.Request) -> web.Response | None:
        if request.get("role", "admin") != "admin":
            return self.error(
                403, "forbidden", "only an admin can delete, replace or disable documents"
            )
        return None

    async def delete_document(self, request: web.Request) -> web.Response:
        if (refused := self._admin_only(request)) is not None:
            return refused
        return await self.write(
            {"op": "kb.delete", "doc_id": request.match_info["id"], "at": now_ms()}, 200
        )

    async def patch_document(self, request: web.Request) -> web.Response:
        if (refused := self._admin_only(request)) is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return self.error(400, "bad_json", "the body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            return self.error(422, "invalid", 'send {"enabled": true|false}', field="enabled")
        return await self.write(
            {
                "op": "kb.set_enabled",
                "doc_id": request.match_info["id"],
                "enabled": body["enabled"],
                "at": now_ms(),
            },
            200,
        )

    # ------------------------------------------------------------ reads
    async def search(self, request: web.Request) -> web.Response:
        from node.rag.engine import (
            BadInput,  # the engine module pulls in torch: import on first use
        )

        engine = self.rag.engine
        if engine is None:
            return self.error(
                503,
                "models_not_ready",
                f"this node's models are {self.rag.status.state} "
                f"({self.rag.status.step}); try another node or retry shortly",
            )
        q = request.query
        query = q.get("q", "")
        params: dict[str, Any] = {"mode": q.get("mode", engine.settings.mode)}
        try:
            params["top_k"] = int(q.get("k", engine.settings.top_k))
            if q.get("min_score"):
                params["min_score"] = float(q["min_score"])
        except ValueError:
            return self.error(
                422, "invalid", "k must be a whole number and min_score a number", field="k"
            )
        for key in ("doc_ids", "tags"):
            if q.get(key):
                params[key] = [v for v in q[key].split(",") if v]
        if not query.strip():
            return self.error(422, "invalid", "q must be a non-empty query", field="q")
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                None, lambda: engine.run("retrieve", {"query": query}, params)
            )
        except BadInput as exc:
            return self.error(422, "invalid", str(exc))
        return web.json_response({"query": query, **result})

    async def stats(self, _: web.Request) -> web.Response:
        kb = self.state.kb
        return web.json_response(
            {
                **kb.stats(),
                "digest": kb.digest(),
                "applied_index": self.state.applied_index,
                "models": self.rag.status.to_dict(),
            }
        )


def _tags(tags: Any) -> list[str]:
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
    return tags


def _file_key(key: str | None, index: int) -> str | None:
    """The idempotency key of a request's index-th file: the first file takes the
    request's key itself, so reusing a task's key for an upload is a mismatch."""
    if key is None:
        return None
    return key if index == 0 else f"{key}#{index}"


def _upload_fingerprint(doc: dict, given_id: str | None, index: int, count: int) -> str:
    """What makes two uploads the same: the file and its metadata, the document id
    the client named (not one this node drew), and its place in the request."""
    return idempotency.fingerprint(
        "upload",
        count,
        index,
        given_id,
        doc["title"],
        doc["source"],
        doc["media_type"],
        doc["tags"],
        doc["data"],
    )


def _json_body(response: web.Response) -> Any:
    assert isinstance(response.body, bytes)
    return json.loads(response.body)
