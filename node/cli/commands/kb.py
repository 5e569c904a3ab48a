"""Knowledge-base commands: kb add (upload, then follow each ingest), ls, rm, search."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any
from urllib.parse import quote

from node.cli.commands.output import Output, Progress, clock, one_line, size
from node.cli.commands.tasks import follow, result_lines
from node.client.rest import Client, ClientError, Unreachable, Upload
from node.http.idempotency import new_key
from node.replica.vocabulary import TaskState


def add(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.id and len(args.files) > 1:
        raise ClientError("--id names one document: give it with a single file")
    fields = {"tags": args.tags} if args.tags else {}
    if args.id:
        fields["id"] = args.id
    failed = 0
    report: list[dict[str, Any]] = []
    watched: dict[str, tuple[str, str]] = {}
    uploads: dict[str, dict[str, Any]] = {}
    try:
        with Progress(out) as progress:
            # One request per file: each has its own bar, and one refused file (too
            # large, empty) does not stop the others.
            for index, name in enumerate(args.files):
                key, label = f"{index}:{name}", Path(name).name
                try:
                    content = Path(name).read_bytes()
                except OSError as exc:
                    out.note(f"ragraft: cannot read {name}: {exc.strerror or exc}")
                    report.append({"file": name, "error": f"cannot read: {exc.strerror or exc}"})
                    failed += 1
                    continue
                body = Upload(label, content, fields, _upload_progress(progress, key, label))
                try:
                    # One key per file: a retry on the next node makes no second version.
                    answer = client.upload(body, idempotency_key=new_key())
                except Unreachable:
                    raise
                except ClientError as exc:
                    why = exc.message.removeprefix(f"{label}: ")  # the API may name the file too
                    progress.update(key, f"{label}: refused: {why}", done=True)
                    report.append({"file": name, "error": exc.body or exc.message})
                    failed += 1
                    continue
                document, task = answer["documents"][0], answer["tasks"][0]
                progress.update(
                    key,
                    f"{label}: uploaded as {document['doc_id']} v{document['version']}; "
                    "waiting for a node to ingest it",
                )
                uploads[key] = {"file": name, "document": document}
                watched[key] = (task["id"], f"{label}:")
            if args.no_wait:
                finished: dict[str, dict[str, Any]] = {}
            else:
                finished = follow(client, progress, watched)
    except KeyboardInterrupt:
        ids = ", ".join(task_id for task_id, _ in watched.values()) or "none"
        out.note(
            f"\nragraft: stopped following; accepted uploads are still ingested (tasks: {ids})"
        )
        return 130
    for key, upload in uploads.items():
        document, task = upload["document"], finished.get(key)
        report.append({**upload, "task": task if task is not None else {"id": watched[key][0]}})
        if out.json_mode:
            continue
        name = Path(upload["file"]).name
        if task is None:
            out.print(
                f"{name}: uploaded as {document['doc_id']} v{document['version']} "
                f"(ingest task {watched[key][0]})"
            )
        elif task["state"] == TaskState.COMPLETED:
            out.print(
                f"{name}: ingested as {document['doc_id']} v{document['version']} "
                f"({_count(task['result'].get('chunks'), 'chunk')}, on {task.get('node')})"
            )
        else:
            failed += 1
            out.note(f"ragraft: {name}: not ingested: " + " ".join(result_lines(task)))
    if out.json_mode:
        out.json({"uploads": report})
    return 1 if failed else 0


def _count(n: object, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _upload_progress(progress: Progress, key: str, label: str) -> Any:
    def report(sent: int, total: int) -> None:
        if sent == total or progress.out.live:  # a line per chunk would flood a log
            progress.update(key, f"{label}: uploading {size(sent)} of {size(total)}", sent / total)

    return report


def ls(client: Client, args: argparse.Namespace, out: Output) -> int:
    docs = client.get("/api/v1/kb/documents", {"state": args.state, "tag": args.tag})
    if out.json_mode:
        out.json(docs)
        return 0
    if not docs["items"]:
        out.print(
            "no documents"
            + (" match" if args.state or args.tag else " yet: add some with `ragraft kb add FILE`")
        )
        return 0
    rows = [
        [
            d["id"],
            one_line(d.get("title") or "", 40),
            d["state"] if d.get("enabled", True) else "disabled",
            d["version"],
            d["chunk_count"],
            size(d.get("size")),
            ",".join(d.get("tags") or []) or "—",
            d.get("ingested_by") or "—",
            clock(d.get("updated_at")),
        ]
        for d in docs["items"]
    ]
    out.table(
        ["id", "title", "state", "version", "chunks", "size", "tags", "ingested by", "updated"],
        rows,
        style_column=2,
    )
    return 0


def rm(client: Client, args: argparse.Namespace, out: Output) -> int:
    failed = 0
    for doc_id in args.ids:
        try:
            answer = client.delete(f"/api/v1/kb/documents/{quote(doc_id, safe='')}")
        except Unreachable:
            raise
        except ClientError as exc:
            out.note(f"ragraft: cannot delete {doc_id}: {exc.message}")
            failed += 1
            continue
        if out.json_mode:
            out.json(answer)
        else:
            out.print(
                f"deleted {doc_id} (v{answer.get('version')}, "
                f"{_count(answer.get('removed_chunks', 0), 'chunk')} removed)"
            )
    return 1 if failed else 0


def search(client: Client, args: argparse.Namespace, out: Output) -> int:
    answer = client.get(
        "/api/v1/kb/search",
        {"q": " ".join(args.query), "k": args.k, "mode": args.mode, "tags": args.tags},
    )
    if out.json_mode:
        out.json(answer)
        return 0
    passages = answer.get("passages") or []
    if not passages:
        out.print("no passages matched")
        return 0
    out.print(
        "\n".join(result_lines({"state": TaskState.COMPLETED, "result": {"passages": passages}}))
    )
    return 0
