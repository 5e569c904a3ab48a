"""The `ragraft` client commands' arguments and their dispatch.

Each command talks REST to the nodes of cluster.toml (or --url), through
`node.client.rest.Client`, which fails over between them.  The implementations live
in `node/cli/commands/` and are imported only when their command runs, so that
`ragraft --help` and friends start fast.  Every command takes --config, --url,
--json (print the API's raw JSON, for scripts) and --timeout.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from node.replica.vocabulary import (
    DEFAULT_PRIORITY,
    PRIORITY_MAX,
    PRIORITY_MIN,
    SUBMITTABLE_TYPES,
    GroundingMode,
    KeyScope,
    SearchMode,
    TaskState,
    TaskType,
    UserRole,
)

# path -> node.config.ClusterConfig (exits with a message if bad)
ConfigLoader = Callable[[str], Any]

MODES = tuple(m.value for m in SearchMode)


def _one_of(values: Any) -> str:
    """`a, b or c`, for help texts."""
    names = [str(v) for v in values]
    return ", ".join(names[:-1]) + " or " + names[-1]


def add_parsers(sub: Any) -> None:
    """Add the client commands to the `ragraft` subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default="cluster.toml",
        help="cluster file: its nodes' API URLs (default: cluster.toml)",
    )
    common.add_argument(
        "--url",
        action="append",
        metavar="URL",
        help="API URL of a node, e.g. http://127.0.0.1:8101 (repeatable; overrides --config)",
    )
    common.add_argument(
        "--json", action="store_true", help="print the API's raw JSON (for scripts)"
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="per request and node, before trying the next node (default: 15)",
    )

    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        handler: str,
        help_text: str,
    ) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, parents=[common], help=help_text, description=help_text)
        parser.set_defaults(handler=handler)
        return parser

    p = command(sub, "login", "cluster:login", "log in and keep the token for the other commands")
    p.add_argument("--user", default="admin", help="user name (default: admin)")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input instead of asking for it",
    )

    p = command(sub, "submit", "tasks:submit", "submit a task; --wait follows it to its answer")
    p.add_argument(
        "text", help="the question (qa, retrieve), the prompt (generate) or a duration in ms (noop)"
    )
    p.add_argument(
        "--type",
        default=TaskType.QA.value,
        choices=[t.value for t in SUBMITTABLE_TYPES],
        help=f"default: {TaskType.QA}",
    )
    p.add_argument(
        "--priority",
        type=int,
        default=DEFAULT_PRIORITY,
        help=f"{PRIORITY_MIN} (lowest) to {PRIORITY_MAX} (most urgent); default {DEFAULT_PRIORITY}",
    )
    p.add_argument("--top-k", type=int, help="passages to retrieve")
    p.add_argument(
        "--mode", choices=MODES, help="retrieval mode (default: the cluster's [rag] mode)"
    )
    p.add_argument("--max-tokens", type=int, help="most new tokens to generate")
    p.add_argument("--temperature", type=float, help="sampling temperature (0 = greedy)")
    p.add_argument(
        "--grounding",
        choices=[m.value for m in GroundingMode],
        help="qa: annotate (default) marks sentences no passage supports; strict drops them, "
        "and answers with the passages' own sentences if nothing is left",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="show progress until it finishes; print the answer "
        "(exit 1 if it failed or was cancelled)",
    )

    p = command(sub, "tasks", "tasks:list_tasks", "list tasks, newest first")
    p.add_argument(
        "--state",
        help=f"{_one_of(TaskState)} (comma-separated for several)",
    )
    p.add_argument("--type", help=_one_of(TaskType))
    p.add_argument("--node", help="the node that ran them, e.g. n2")
    p.add_argument("--limit", type=int, default=20, help="how many (default: 20)")

    for name, text in (
        ("show", "a task in full: input, timeline and result"),
        ("cancel", "cancel a queued task"),
        ("abort", "stop a running task (a queued one is cancelled)"),
        ("retry", "resubmit a failed or cancelled task as a new one"),
    ):
        command(sub, name, f"tasks:{name}", text).add_argument("id", help="task id")

    kb = sub.add_parser(
        "kb",
        help="the knowledge base: add, ls, rm, search",
        description="the knowledge base: add, ls, rm, search",
    )
    actions = kb.add_subparsers(dest="kb_command", required=True, metavar="{add,ls,rm,search}")
    p = command(actions, "add", "kb:add", "upload files and follow their ingestion")
    p.add_argument("files", nargs="+", metavar="FILE", help="text, Markdown, HTML or PDF files")
    p.add_argument("--tags", default="", help="comma-separated tags, e.g. a,b")
    p.add_argument(
        "--id", help="document id: replaces that document with a new version (one file only)"
    )
    p.add_argument(
        "--no-wait", action="store_true", help="return once uploaded, without following the ingest"
    )
    p = command(actions, "ls", "kb:ls", "list documents")
    p.add_argument("--state", help="uploaded, ingesting, ready or failed")
    p.add_argument("--tag", help="only documents with this tag")
    p = command(actions, "rm", "kb:rm", "delete documents")
    p.add_argument("ids", nargs="+", metavar="ID", help="document ids (see `ragraft kb ls`)")
    p = command(actions, "search", "kb:search", "retrieve passages now (no generation)")
    p.add_argument("query", nargs="+", help="the query")
    p.add_argument("-k", type=int, default=5, help="how many passages (default: 5)")
    p.add_argument(
        "--mode", choices=MODES, help="retrieval mode (default: the cluster's [rag] mode)"
    )
    p.add_argument("--tags", help="only passages of documents with these comma-separated tags")

    api_key = sub.add_parser(
        "api-key",
        help="API keys: create, ls, revoke",
        description="API keys: create (shown once), ls, revoke",
    )
    actions = api_key.add_subparsers(
        dest="api_key_command", required=True, metavar="{create,ls,revoke}"
    )
    p = command(actions, "create", "api_keys:create", "make an API key; it is printed once")
    p.add_argument("--label", default="", help="what the key is for")
    p.add_argument("--user", help="whose key (admins only; default: yourself)")
    p.add_argument(
        "--scope",
        default=KeyScope.ADMIN.value,
        choices=[s.value for s in KeyScope],
        help="read: GET only; submit: reads and tasks; admin: all its user may do (default)",
    )
    p.add_argument(
        "--expires-in-days", type=float, metavar="DAYS", help="default: the key never expires"
    )
    command(actions, "ls", "api_keys:ls", "list API keys (yours; an admin sees all)")
    command(actions, "revoke", "api_keys:revoke", "revoke an API key").add_argument(
        "id", help="key id (see `ragraft api-key ls`)"
    )

    _user_parsers(sub, command)

    p = command(
        sub,
        "backup",
        "backup:backup",
        "save the whole cluster's state (tasks, knowledge base, users) to FILE, from any node; "
        "admins only (`ragraft restore FILE` starts a new cluster from it)",
    )
    p.add_argument("file", help="where to write it (0600)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")

    command(
        sub,
        "status",
        "cluster:status",
        "the cluster (leader, term, quorum), its nodes and task counts",
    )


def _quota_value(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or none") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a quota is 0 or more")
    return value


def _user_parsers(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    user = sub.add_parser(
        "user",
        help="users (admins): create, ls, show, set, passwd, rm",
        description="users, their roles (admin, editor, user) and quotas",
    )
    actions = user.add_subparsers(
        dest="user_command", required=True, metavar="{create,ls,show,set,passwd,rm}"
    )

    def with_quota(p: argparse.ArgumentParser) -> None:
        for name, what in (
            ("max-queued", "tasks waiting at once"),
            ("max-running", "tasks running at once"),
            ("max-priority", f"the highest priority allowed ({PRIORITY_MIN}-{PRIORITY_MAX})"),
        ):
            p.add_argument(
                f"--{name}",
                dest=name.replace("-", "_"),
                type=_quota_value,
                default=argparse.SUPPRESS,
                metavar="N|none",
                help=f"quota: {what} (none: no limit)",
            )

    def with_password(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from standard input (default: ask on a terminal, "
            "else generate one and print it once)",
        )

    roles = [r.value for r in UserRole]
    p = command(actions, "create", "users:create", "create a user")
    p.add_argument("name", help="lower-case letters, digits, . _ -")
    p.add_argument("--role", default=UserRole.USER.value, choices=roles, help="default: user")
    with_password(p)
    with_quota(p)
    command(actions, "ls", "users:ls", "list users")
    command(actions, "show", "users:show", "one user").add_argument("name")
    p = command(actions, "set", "users:set_", "change a user's role, quota or state")
    p.add_argument("name")
    p.add_argument("--role", choices=roles)
    state = p.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true", help="refuse their logins and keys")
    state.add_argument("--enable", action="store_true")
    with_quota(p)
    p = command(actions, "passwd", "users:passwd", "set a password (an admin's reset, or your own)")
    p.add_argument("name")
    p.add_argument(
        "--current",
        action="store_true",
        help="your own password: give the current one too (with --password-stdin: the "
        "current on the first line, the new on the second)",
    )
    with_password(p)
    command(actions, "rm", "users:rm", "delete a user and their API keys").add_argument("name")


@dataclass(frozen=True)
class Targets:
    urls: list[str]
    names: dict[str, str]  # url -> node id, for messages
    cluster_name: str  # for people
    credential_key: str  # the credentials file's entry
    ca_file: Any = None  # cluster.toml's [tls] certificate: trusted besides the system's


def targets(args: argparse.Namespace, load_config: ConfigLoader) -> Targets:
    """Where to send requests: --url if given, else every node of --config."""
    from node.client.rest import normalize_url

    if args.url:
        urls = [normalize_url(u) for u in args.url]
        return Targets(urls, {}, urls[0], "url:" + urls[0])
    config = load_config(args.config)
    return Targets(
        [n.api_url for n in config.nodes],
        {n.api_url: n.id for n in config.nodes},
        config.name,
        config.name,
        config.tls.cert_file if config.tls.enabled else None,
    )


def _refresh_known_nodes(client: Any, key: str, age: float) -> None:
    """After a command that worked, learn the cluster's nodes again if the list kept
    is old or a node did not answer; best effort (a node list is not what was asked)."""
    from node.client.rest import KNOWN_NODES_FRESH_S, ClientError, remember_nodes

    if client.token is None or (age < KNOWN_NODES_FRESH_S and not client.failed_over):
        return
    try:
        nodes = client.learn_nodes()
        remember_nodes(key, nodes)
    except (ClientError, OSError):
        pass


def run(args: argparse.Namespace, load_config: ConfigLoader) -> int:
    """Run the client command `args` names; its exit code."""
    from node.cli.commands.output import Output
    from node.client.rest import Client, ClientError, known_nodes, known_under, token_source

    where = targets(args, load_config)
    token, _ = token_source(where.credential_key)
    if token is None and args.url and args.handler != "cluster:login":
        # --url of a node that a logged-in cluster listed: that cluster's login
        key = known_under(where.urls)
        if key is not None and token_source(key)[0] is not None:
            where = replace(where, credential_key=key)
            token, _ = token_source(key)
    args.cluster_name, args.credential_key = where.cluster_name, where.credential_key
    out = Output(json_mode=args.json)
    # The nodes the cluster listed last time come after the configured ones.
    learnt, age = known_nodes(where.credential_key)
    urls = where.urls + [u for u in learnt if u not in where.urls]
    client = Client(
        urls, token, timeout=args.timeout, names={**learnt, **where.names}, ca_file=where.ca_file
    )
    module, _, function = args.handler.partition(":")
    handler = getattr(importlib.import_module(f"node.cli.commands.{module}"), function)
    try:
        code = handler(client, args, out)
    except ClientError as exc:
        if out.json_mode and exc.body is not None:
            out.json(exc.body)
        out.note(f"ragraft: {exc}")
        return 1
    except KeyboardInterrupt:
        out.note("\nragraft: interrupted")
        return 130
    # A login always asks: it is where a client first meets the cluster.
    fresh = age if args.handler != "cluster:login" else float("inf")
    _refresh_known_nodes(client, where.credential_key, fresh)
    if client.stale and args.handler != "cluster:status":
        out.note(
            f"ragraft: note: {client.label(client.answered_by or '')} has no leader right now; "
            "its answer may be stale"
        )
    return int(code)
