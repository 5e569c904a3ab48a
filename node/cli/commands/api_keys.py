"""API keys: create one (shown once), list them, revoke one."""

from __future__ import annotations

import argparse

from node.cli.commands.output import Output, clock
from node.client.rest import Client


def create(client: Client, args: argparse.Namespace, out: Output) -> int:
    body: dict[str, object] = {"label": args.label, "scope": args.scope}
    if args.user:
        body["user"] = args.user
    if args.expires_in_days is not None:
        body["expires_in_s"] = round(args.expires_in_days * 86400)
    answer = client.post("/api/v1/auth/keys", body)
    if out.json_mode:
        out.json(answer)
        return 0
    expires = clock(answer["expires_at"]) if answer.get("expires_at") else "never"
    out.print(answer["key"])
    out.note(
        f"API key {answer['id']} for {answer['user']}, scope {answer['scope']}, expires "
        f"{expires}: shown once (only its SHA-256 is kept); send it as Authorization: Bearer"
    )
    return 0


def ls(client: Client, args: argparse.Namespace, out: Output) -> int:
    keys = client.get("/api/v1/auth/keys")
    if out.json_mode:
        out.json(keys)
        return 0
    rows = [
        [
            k["id"],
            k["user"],
            k.get("scope", "admin"),
            clock(k["created_at"]),
            clock(k["expires_at"]) if k.get("expires_at") else "never",
            k.get("label", ""),
        ]
        for k in keys["items"]
    ]
    if not rows:
        out.print("no API keys")
        return 0
    out.table(["id", "user", "scope", "created", "expires", "label"], rows)
    return 0


def revoke(client: Client, args: argparse.Namespace, out: Output) -> int:
    answer = client.delete(f"/api/v1/auth/keys/{args.id}")
    if out.json_mode:
        out.json(answer)
        return 0
    out.print(f"revoked {args.id}")
    return 0
