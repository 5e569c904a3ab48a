"""The `ragraft` client commands: login, submit, tasks, show, cancel, abort, retry,
kb add/ls/rm/search, status.  Human tables by default, `--json` for scripts."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from node.client import Client, ClientError, save_token

FINISHED = ("completed", "failed", "cancelled")


def add_parsers(sub: Any) -> None:
    def client_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", default="cluster.toml", help="cluster file: its nodes' API URLs")
        p.add_argument("--url", action="append", help="API URL of a node (repeatable); overrides --config")
        p.add_argument("--json", action="store_true", help="print the raw JSON answer")
        return p

    p = client_parser("login", "log in and keep the token for the other commands")
    p.add_argument("--user", default="admin")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p = client_parser("submit", "submit a task")
    p.add_argument("text", help="the question (qa, retrieve), prompt (generate) or duration in ms (noop)")
    p.add_argument("--type", default="qa", choices=["qa", "generate", "retrieve", "noop"])
    p.add_argument("--priority", type=int, default=5)
    p.add_argument("--top-k", type=int)
    p.add_argument("--mode", choices=["vector", "keyword", "hybrid"])
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--wait", action="store_true", help="follow the task and print its answer")
    p = client_parser("tasks", "list tasks")
    p.add_argument("--state")
    p.add_argument("--type")
    p.add_argument("--node")
    p.add_argument("--limit", type=int, default=20)
    for name, text in (("show", "a task in full"), ("cancel", "cancel a queued task"),
                       ("abort", "stop a running task"), ("retry", "resubmit a failed or cancelled task")):
        client_parser(name, text).add_argument("id")
    p = client_parser("kb", "the knowledge base")
    p.add_argument("action", choices=["add", "ls", "rm", "search"])
    p.add_argument("args", nargs="*", help="add: files; rm: document id; search: the query")
    p.add_argument("--tags", default="")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--mode", choices=["vector", "keyword", "hybrid"])
    client_parser("status", "cluster, nodes and task counts")


def run(args: argparse.Namespace, config_loader: Any) -> int:
    urls, cluster = _targets(args, config_loader)
    from node.client import saved_token

    client = Client(urls, saved_token(cluster))
    try:
        return COMMANDS[args.command](client, args, cluster)
    except ClientError as exc:
        print(f"ragraft: {exc}", file=sys.stderr)
        return 1


def _targets(args: argparse.Namespace, config_loader: Any) -> tuple[list[str], str]:
    if args.url:
        return args.url, args.url[0]
    config = config_loader(args.config)
    return [n.api_url for n in config.nodes], config.name


def _emit(args: argparse.Namespace, answer: Any, human: str) -> None:
    print(json.dumps(answer, indent=1) if args.json else human)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _clock(ms: int | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if ms else "—"


# ---------------------------------------------------------------- commands
def login(client: Client, args: argparse.Namespace, cluster: str) -> int:
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("password: ")
    answer = client.request("POST", "/api/v1/auth/token", {"username": args.user, "password": password}, auth=False)
    path = save_token(cluster, answer["access_token"])
    _emit(args, {"user": args.user, "expires_in": answer["expires_in"], "saved": str(path)},
          f"logged in as {args.user} (token valid {answer['expires_in'] // 3600} h, kept in {path})")
    return 0


def submit(client: Client, args: argparse.Namespace, _cluster: str) -> int:
    if args.type == "noop":
        task_input: dict = {"duration_ms": float(args.text)}
    else:
        task_input = {("prompt" if args.type == "generate" else "query"): args.text}
    params = {k: v for k, v in (("top_k", args.top_k), ("mode", args.mode), ("max_new_tokens", args.max_tokens),
                                ("temperature", args.temperature)) if v is not None}
    task = client.request("POST", "/api/v1/tasks", {"type": args.type, "input": task_input,
                                                    "priority": args.priority, "params": params})
    if not args.wait:
        _emit(args, task, task["id"])
        return 0
    task = _follow(client, task["id"], quiet=args.json)
    if args.json:
        print(json.dumps(task, indent=1))
    else:
        print(_result_text(task))
    return 0 if task["state"] == "completed" else 1


def _follow(client: Client, task_id: str, quiet: bool = False, label: str = "") -> dict:
    last = None
    tty = sys.stderr.isatty()
    while True:
        task = client.request("GET", f"/api/v1/tasks/{task_id}")
        line = f"{label}{task_id} {task['state']}"
        if task["state"] == "running":
            line += f" on {task['node']} {task['progress'] * 100:.0f}% {task.get('progress_note', '')}"
        if not quiet and line != last:
            print(("\r\x1b[2K" if tty else "") + line, end="" if tty else "\n", file=sys.stderr, flush=True)
            last = line
        if task["state"] in FINISHED:
            if tty and not quiet:
                print(file=sys.stderr)
            return task
        time.sleep(0.3)


def _result_text(task: dict) -> str:
    if task["state"] != "completed":
        return f"task {task['id']} {task['state']}: {task.get('error')}"
    result = task.get("result") or {}
    lines = []
    if "answer" in result:
        lines.append(result["answer"].strip())
    if result.get("citations"):
        lines.append("")
        lines += [f"[{c['n']}] {c.get('title') or c['doc_id']} (doc {c['doc_id']}, chunk {c['chunk']})"
                  for c in result["citations"]]
    elif result.get("passages") and "answer" not in result:
        lines += [f"[{p['n']}] {p.get('title') or p['doc_id']} · score {p['score']:.3f}\n    {p['text'][:200]}"
                  for p in result["passages"]]
    if not lines:
        lines.append(json.dumps(result))
    return "\n".join(lines)


def tasks(client: Client, args: argparse.Namespace, _cluster: str) -> int:
    query = {k: v for k, v in (("state", args.state), ("type", args.type), ("node", args.node)) if v}
    query["limit"] = str(args.limit)
    page = client.request("GET", f"/api/v1/tasks?{urlencode(query)}")
    rows = [[t["id"], t["type"], t["state"], str(t["priority"]), t.get("node") or "—", _clock(t["submitted_at"]),
             f"{t['progress'] * 100:.0f}%" if t["state"] == "running" else ""] for t in page["items"]]
    _emit(args, page, _table(rows, ["id", "type", "state", "prio", "node", "submitted", "progress"])
          + f"\n{len(rows)} of {page['total']} tasks")
    return 0


def show(client: Client, args: argparse.Namespace, _cluster: str) -> int:
    task = client.request("GET", f"/api/v1/tasks/{quote(args.id)}")
    history = "\n".join(f"  {_clock(h['at'])}  {h['state']:<9} node {h.get('node') or '—'}  attempt {h['attempt']}"
                        f"  {h.get('note') or ''}" for h in task["history"])
    _emit(args, task, f"{task['id']}  {task['type']}  {task['state']}  priority {task['priority']}  owner "
                      f"{task['owner']}\ninput: {json.dumps(task['input'])}\n{history}\n\n{_result_text(task)}"
          if task["state"] in FINISHED else f"{task['id']}  {task['type']}  {task['state']}\n{history}")
    return 0


def _act(method: str, suffix: str, verb: str) -> Any:
    def command(client: Client, args: argparse.Namespace, _cluster: str) -> int:
        try:
            task = client.request(method, f"/api/v1/tasks/{quote(args.id)}{suffix}")
        except ClientError as exc:
            if exc.status == 409:
                print(f"ragraft: cannot {verb} {args.id}: {exc}", file=sys.stderr)
                return 1
            raise
        _emit(args, task, f"{task['id']} is {task['state']}")
        return 0
    return command


def kb(client: Client, args: argparse.Namespace, _cluster: str) -> int:
    if args.action == "ls":
        docs = client.request("GET", "/api/v1/kb/documents")
        rows = [[d["id"], d["title"][:40], d["state"], str(d["version"]), str(d["size"]), str(d["chunk_count"]),
                 d.get("ingested_by") or "—"] for d in docs["items"]]
        _emit(args, docs, _table(rows, ["id", "title", "state", "version", "bytes", "chunks", "ingested by"]))
        return 0
    if args.action == "rm":
        for doc_id in args.args:
            _emit(args, client.request("DELETE", f"/api/v1/kb/documents/{quote(doc_id)}"), f"deleted {doc_id}")
        return 0
    if args.action == "search":
        query = {"q": " ".join(args.args), "k": str(args.k), **({"mode": args.mode} if args.mode else {})}
        answer = client.request("GET", f"/api/v1/kb/search?{urlencode(query)}")
        _emit(args, answer, "\n".join(f"[{p['n']}] {p.get('title') or p['doc_id']} · {p['score']:.3f}\n    "
                                      f"{p['text'][:200]}" for p in answer["passages"]) or "no passages")
        return 0
    failed = 0
    for name in args.args:  # add: one upload per file, each followed to the end of its ingest
        path = Path(name)
        try:
            content = path.read_bytes()
        except OSError as exc:
            print(f"ragraft: cannot read {path}: {exc.strerror}", file=sys.stderr)
            failed += 1
            continue
        answer = client.upload(path.name, content, {"tags": args.tags} if args.tags else {})
        task = _follow(client, answer["tasks"][0]["id"], quiet=args.json, label=f"{path.name}: ")
        doc = answer["documents"][0]
        if task["state"] == "completed":
            _emit(args, task, f"{path.name}: ingested as {doc['doc_id']} v{doc['version']} "
                              f"({task['result']['chunks']} chunks, on {task['node']})")
        else:
            failed += 1
            print(f"ragraft: {path.name}: {task['state']}: {task.get('error')}", file=sys.stderr)
    return 1 if failed else 0


def status(client: Client, args: argparse.Namespace, _cluster: str) -> int:
    cluster = client.request("GET", "/api/v1/cluster")
    nodes = client.request("GET", "/api/v1/nodes")
    stats = client.request("GET", "/api/v1/stats")
    if args.json:
        print(json.dumps({"cluster": cluster, "nodes": nodes, "stats": stats}, indent=1))
        return 0
    print(f"leader {cluster['leader'] or 'NONE (no quorum)'}  term {cluster['term']}  commit "
          f"{cluster['commit_index']}  applied {cluster['applied_index']}  voters "
          f"{', '.join(cluster['members']['voters'])}")
    rows = [[n["id"], n.get("raft_role") or "—", n["status"], f"{n['metrics'].get('cpu_percent', '—')}%",
             f"{n['metrics'].get('mem_percent', '—')}%", f"{n['metrics'].get('slots_used', '—')}/"
             f"{n['metrics'].get('slots_total', n.get('slots') or '—')}", str(len(n["running"]))]
            for n in nodes["items"]]
    print(_table(rows, ["node", "role", "gossip", "cpu", "memory", "slots", "running"]))
    print("tasks: " + "  ".join(f"{s} {stats[s]}" for s in ("queued", "running", "completed", "failed", "cancelled")))
    return 0


COMMANDS = {"login": login, "submit": submit, "tasks": tasks, "show": show,
            "cancel": _act("DELETE", "", "cancel"), "abort": _act("POST", "/abort", "abort"),
            "retry": _act("POST", "/retry", "retry"), "kb": kb, "status": status}
