"""Users (admins): create, ls, show, set (role, quota, disable/enable), passwd, rm."""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from typing import Any

from node.cli.commands.output import Output, clock
from node.client.rest import Client
from node.replica.vocabulary import QUOTA_FIELDS, quota_text


def create(client: Client, args: argparse.Namespace, out: Output) -> int:
    password, generated = _new_password(args, f"password for {args.name}")
    body: dict[str, Any] = {"name": args.name, "password": password, "role": args.role}
    quota = _quota(args)
    if quota:
        body["quota"] = quota
    answer = client.post("/api/v1/users", body)
    if out.json_mode:
        out.json({**answer, "password": password} if generated else answer)
        return 0
    out.print(f"created {answer['name']} ({answer['role']})")
    if generated:
        out.print(password)
        out.note(
            "their password, shown once: pass it on; they can change it with `ragraft user passwd`"
        )
    return 0


def ls(client: Client, args: argparse.Namespace, out: Output) -> int:
    users = client.get("/api/v1/users")
    if out.json_mode:
        out.json(users)
        return 0
    rows = [
        [
            u["name"],
            u["role"],
            "disabled" if u["disabled"] else "enabled",
            quota_text(u["quota"]),
            clock(u["created_at"]) if u.get("created_at") else "built in",
        ]
        for u in users["items"]
    ]
    out.table(["name", "role", "state", "quota", "created"], rows)
    return 0


def show(client: Client, args: argparse.Namespace, out: Output) -> int:
    user = client.get(f"/api/v1/users/{args.name}")
    if out.json_mode:
        out.json(user)
        return 0
    out.print(_line(user))
    return 0


def set_(client: Client, args: argparse.Namespace, out: Output) -> int:
    body: dict[str, Any] = {}
    if args.role:
        body["role"] = args.role
    if args.disable or args.enable:
        body["disabled"] = bool(args.disable)
    quota = _quota(args)
    if quota:
        body["quota"] = quota
    if not body:
        out.note("nothing to change: give --role, --disable, --enable or a --max-* quota")
        return 2
    user = client.request("PATCH", f"/api/v1/users/{args.name}", body)
    if out.json_mode:
        out.json(user)
        return 0
    out.print(_line(user))
    return 0


def passwd(client: Client, args: argparse.Namespace, out: Output) -> int:
    body: dict[str, Any] = {}
    if args.current:
        body["current_password"] = _read_secret(args, "current password", confirm=False)
    password, generated = _new_password(args, f"new password for {args.name}")
    body["password"] = password
    answer = client.request("PATCH", f"/api/v1/users/{args.name}", body)
    if out.json_mode:
        out.json({**answer, "password": password} if generated else answer)
        return 0
    out.print(f"password of {args.name} changed")
    if generated:
        out.print(password)
        out.note("the new password, shown once")
    return 0


def rm(client: Client, args: argparse.Namespace, out: Output) -> int:
    answer = client.delete(f"/api/v1/users/{args.name}")
    if out.json_mode:
        out.json(answer)
        return 0
    out.print(f"deleted {args.name} ({answer.get('keys_revoked', 0)} API keys revoked)")
    return 0


def _line(user: dict[str, Any]) -> str:
    state = "disabled" if user["disabled"] else "enabled"
    return f"{user['name']}: {user['role']}, {state}, quota {quota_text(user['quota'])}"


def _new_password(args: argparse.Namespace, prompt: str) -> tuple[str, bool]:
    """From stdin (--password-stdin), a prompt on a terminal, or generated."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n"), False
    if sys.stdin.isatty():
        return _read_secret(args, prompt, confirm=True), False
    return secrets.token_urlsafe(12), True


def _read_secret(args: argparse.Namespace, prompt: str, confirm: bool) -> str:
    if args.password_stdin and not confirm:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"{prompt}: ")
    if confirm and getpass.getpass("again: ") != first:
        raise SystemExit("ragraft: the passwords differ; nothing changed")
    return first


def _quota(args: argparse.Namespace) -> dict[str, int | None]:
    # --max-queued 10 sets a limit, --max-queued none lifts it; a flag not given keeps it.
    quota: dict[str, int | None] = {}
    for name in QUOTA_FIELDS:
        value: Any = getattr(args, name, "keep")
        if value != "keep":
            quota[name] = value
    return quota
