"""Cluster commands: login (keeps a token per cluster) and status."""

from __future__ import annotations

import argparse
import getpass
import sys

from node.cli.commands.output import Output, duration, percent
from node.client.rest import Client, ClientError, save_token, token_cluster
from node.replica.vocabulary import TaskState

COUNTED = tuple(TaskState)  # the task counts shown, in the lifecycle's order


def login(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = getpass.getpass(f"password for {args.user}: ")
        except (EOFError, KeyboardInterrupt):
            out.note("")
            return 130
    if not password:
        raise ClientError(
            "no password given (type it at the prompt, or pipe it in with --password-stdin)"
        )
    answer = client.request(
        "POST", "/api/v1/auth/token", {"username": args.user, "password": password}, auth=False
    )
    token = answer["access_token"]
    # Filed under the name this command was given (cluster.toml's name, or the
    # --url) and under the cluster that issued it, so either way finds it later.
    keys = [args.credential_key]
    issuer = token_cluster(token)
    if issuer and issuer not in keys:
        keys.append(issuer)
    path = save_token(keys, token, args.user, answer.get("expires_in", 0))
    client.token = token  # so that the command's end learns the cluster's nodes with it
    if out.json_mode:
        out.json({**answer, "user": args.user, "saved": str(path), "saved_as": keys})
        return 0
    hours = answer.get("expires_in", 0) / 3600
    out.print(
        f"logged in to {args.cluster_name} as {args.user} "
        f"via {client.label(client.answered_by or '')}; "
        f"the token is valid for {hours:g} h and kept in {path}"
    )
    return 0


def status(client: Client, args: argparse.Namespace, out: Output) -> int:
    cluster = client.get("/api/v1/cluster")
    nodes = client.get("/api/v1/nodes")
    stats = client.get("/api/v1/stats")
    if out.json_mode:
        out.json({"cluster": cluster, "nodes": nodes, "stats": stats})
        return 0
    members = cluster["members"]
    learners = f", learners {', '.join(members['learners'])}" if members.get("learners") else ""
    quorum = "yes" if cluster.get("quorum") else "NO — writes are refused until a majority is back"
    out.print(
        f"cluster {args.cluster_name}: leader {cluster.get('leader') or 'none'} · "
        f"term {cluster['term']} · commit {cluster['commit_index']} · "
        f"applied {cluster['applied_index']} · quorum {quorum}"
    )
    out.print(
        f"voters {', '.join(members['voters'])}{learners} · answered by {cluster['node']}"
        + (" (no leader: this view may be stale)" if client.stale else "")
    )
    out.print()
    rows = []
    for node in nodes["items"]:
        # A dead node's metrics are its last report, not its state now: leave them out.
        metrics = (node.get("metrics") or {}) if node.get("status") != "dead" else {}
        total = metrics.get("slots_total", node.get("slots"))
        rows.append(
            [
                node["id"],
                node.get("status", "unknown"),
                (node.get("raft_role") or "—") + (" (draining)" if node.get("draining") else ""),
                percent(metrics.get("cpu_percent")),
                percent(metrics.get("mem_percent")),
                f"{metrics.get('slots_used', '—')}/{total if total is not None else '—'}",
                len(node.get("running") or []),
            ]
        )
    out.table(["node", "gossip", "raft", "cpu", "memory", "slots", "running"], rows, style_column=1)
    out.print()
    out.print(
        "tasks: "
        + " · ".join(f"{state} {stats.get(state, 0)}" for state in COUNTED)
        + f" · total {stats.get('total', 0)}"
    )
    throughput = stats.get("throughput") or {}
    wait, run = stats.get("wait_ms") or {}, stats.get("run_ms") or {}
    if wait.get("count"):
        out.print(
            f"throughput {throughput.get('completed_per_s_1m', 0)}/s (1 min), "
            f"{throughput.get('completed_per_s_5m', 0)}/s (5 min) · "
            f"wait p50 {duration(wait.get('p50'))} p95 {duration(wait.get('p95'))} · "
            f"run p50 {duration(run.get('p50'))} p95 {duration(run.get('p95'))} "
            f"({stats.get('window', '')})"
        )
    return 0
