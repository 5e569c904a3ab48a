"""Clients of the nodes' REST API: the HTTP layer, the workload clients and the probes.

The clients run as threads of the test process in the root namespace and reach the
nodes over the bridge (rgh0, 10.77.0.254): one process and one clock record the whole
history, and the nemesis only ever cuts traffic between nodes, so a client can always
talk to a cut-off node and see what it answers.

Every logical submission carries an `Idempotency-Key` (a uuid) that is reused on every
retry and failover, and the same key in `input.tag`, so the checker can count the tasks
made from one submission. A 503 (`no_quorum`), a timeout or a refused connection moves
the client on to the next node; it goes on until `op_deadline`, then records `info`.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.nemesis.history import History


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def code(self) -> str | None:
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return err.get("code") if isinstance(err, dict) else None


class Http:
    def __init__(self, urls: dict[str, str], token: str) -> None:
        self.urls = urls  # node -> http://10.77.0.N:port
        self.token = token

    def call(
        self,
        node: str,
        method: str,
        path: str,
        body: Any = None,
        headers: dict | None = None,
        timeout: float = 3.0,
    ) -> Reply:
        host, port = self.urls[node].removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            all_headers = {
                "Authorization": f"Bearer {self.token}",
                "Connection": "close",
                **(headers or {}),
            }
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                all_headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=all_headers)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode(errors="replace")[:200]
            return Reply(resp.status, parsed, {k.lower(): v for k, v in resp.getheaders()})
        finally:
            conn.close()

    def attempt(
        self,
        node: str,
        method: str,
        path: str,
        body: Any = None,
        headers: dict | None = None,
        timeout: float = 3.0,
    ) -> tuple[Reply | None, dict]:
        """One request, and its record for the history (never raises for network errors)."""
        start = time.time()
        try:
            reply = self.call(node, method, path, body, headers, timeout)
        except (OSError, http.client.HTTPException) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            return None, {
                "node": node,
                "start": start,
                "end": time.time(),
                "status": None,
                "error": kind,
            }
        record = {
            "node": node,
            "start": start,
            "end": time.time(),
            "status": reply.status,
            "code": reply.code,
        }
        if reply.headers.get("idempotent-replayed"):
            record["replayed"] = reply.headers["idempotent-replayed"]
        return reply, record


def noop_body(key: str, client: str, duration_ms: int, priority: int) -> dict:
    return {
        "type": "noop",
        "input": {"duration_ms": duration_ms, "tag": key, "client": client},
        "priority": priority,
    }


@dataclass
class Acked:
    id: str
    key: str
    body: dict
    node: str


@dataclass
class ClientSettings:
    timeout: float = 3.0  # per request
    op_deadline: float = 20.0  # per logical operation, over all retries
    think: tuple[float, float] = (0.1, 0.35)
    durations_ms: tuple[int, ...] = (0, 0, 0, 200, 200, 800, 1500, 4000)
    # operation -> weight
    mix: dict[str, float] = field(
        default_factory=lambda: {
            "submit": 45,
            "cancel": 8,
            "abort": 8,
            "replay": 4,
            "read": 20,
            "list": 15,
        }
    )
    cancel_after_submit: float = 0.15  # a fresh submission cancelled at once (races the claim)
    abort_after_submit: float = 0.08


class WorkloadClient(threading.Thread):
    """Bound to a home node (tried first), failing over to the others."""

    def __init__(
        self,
        name: str,
        home: str,
        nodes: list[str],
        http_: Http,
        history: History,
        seed: int,
        stop: threading.Event,
        settings: ClientSettings | None = None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.home = home
        self.nodes = nodes
        self.http = http_
        self.history = history
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.s = settings or ClientSettings()
        self.acked: list[Acked] = []
        self.error: BaseException | None = None

    # ------------------------------------------------------------ loop
    def run(self) -> None:
        ops = list(self.s.mix)
        weights = [self.s.mix[o] for o in ops]
        try:
            while not self.stop_event.is_set():
                op = self.rng.choices(ops, weights)[0]
                if op != "submit" and not self.acked:
                    op = "submit"
                getattr(self, op)()
                self.stop_event.wait(self.rng.uniform(*self.s.think))
        except BaseException as exc:  # recorded: the runner reports a dead client
            self.error = exc
            raise

    def order(self, first: str | None = None) -> list[str]:
        first = first or self.home
        others = [n for n in self.nodes if n != first]
        self.rng.shuffle(others)
        return [first, *others]

    def _retrying(
        self,
        f: str,
        method: str,
        path: str,
        body: Any,
        headers: dict,
        first: str | None,
        classify: Callable[[Reply, list[dict]], str | None],
        **fields: Any,
    ) -> tuple[str, Reply | None, str]:
        """Try the nodes in turn until `classify` says ok/fail or the deadline passes.
        `classify(reply, attempts)` returns "ok", "fail", "info" or None (try the next node)."""
        self.history.invoke(self.name, f, node=first or self.home, **fields)
        attempts: list[dict] = []
        deadline = time.time() + self.s.op_deadline
        last: Reply | None = None
        while True:
            for node in self.order(first):
                reply, record = self.http.attempt(node, method, path, body, headers, self.s.timeout)
                attempts.append(record)
                if reply is not None:
                    last = reply
                    verdict = classify(reply, attempts)
                    if verdict is not None:
                        self._complete(verdict, f, node, reply, attempts, **fields)
                        return verdict, reply, node
                if time.time() > deadline or self.stop_event.is_set():
                    self._complete("info", f, node, last, attempts, gave_up=True, **fields)
                    return "info", None, node
            self.stop_event.wait(self.rng.uniform(0.2, 0.5))

    def _complete(
        self,
        type_: str,
        f: str,
        node: str,
        reply: Reply | None,
        attempts: list[dict],
        **fields: Any,
    ) -> None:
        value = reply.body if reply is not None else None
        if type_ == "ok" and f in ("submit", "replay"):
            fields["id"] = value["id"]
            fields["replayed"] = reply.headers.get("idempotent-replayed")
        if isinstance(value, dict) and "history" in value:
            value = {
                k: value.get(k)
                for k in ("id", "state", "attempt", "node", "abort_requested", "result")
            }
        self.history.complete(
            self.name,
            type_,
            f,
            node=node,
            status=reply.status if reply else None,
            value=value,
            attempts=attempts,
            **fields,
        )

    # ------------------------------------------------------------ operations
    def submit(self) -> None:
        key = str(uuid.uuid4())
        body = noop_body(
            key, self.name, self.rng.choice(self.s.durations_ms), self.rng.randint(0, 9)
        )
        verdict, reply, node = self._retrying(
            "submit",
            "POST",
            "/api/v1/tasks",
            body,
            {"Idempotency-Key": key},
            None,
            _submit_verdict,
            key=key,
        )
        if verdict != "ok":
            return
        task_id = reply.body["id"]
        acked = Acked(task_id, key, body, node)
        self.acked.append(acked)
        roll = self.rng.random()
        if roll < self.s.cancel_after_submit:
            self._cancel(acked, "DELETE", f"/api/v1/tasks/{task_id}", "cancel", first=acked.node)
        elif roll < self.s.cancel_after_submit + self.s.abort_after_submit:
            self.stop_event.wait(self.rng.uniform(0.0, 1.0))
            self._cancel(acked, "POST", f"/api/v1/tasks/{task_id}/abort", "abort", first=acked.node)

    def replay(self) -> None:
        """Re-send an acknowledged submission (same key, same body) to another node: the
        idempotency contract says it returns the same task."""
        acked = self.rng.choice(self.acked)
        other = self.rng.choice([n for n in self.nodes if n != acked.node])
        self._retrying(
            "replay",
            "POST",
            "/api/v1/tasks",
            acked.body,
            {"Idempotency-Key": acked.key},
            other,
            _submit_verdict,
            key=acked.key,
            original_id=acked.id,
        )

    def cancel(self) -> None:
        acked = self.rng.choice(self.acked[-20:])
        self._cancel(acked, "DELETE", f"/api/v1/tasks/{acked.id}", "cancel")

    def abort(self) -> None:
        acked = self.rng.choice(self.acked[-20:])
        self._cancel(acked, "POST", f"/api/v1/tasks/{acked.id}/abort", "abort")

    def _cancel(
        self, acked: Acked, method: str, path: str, f: str, first: str | None = None
    ) -> None:
        self._retrying(
            f, method, path, None, {}, first, _change_verdict, id=acked.id, key=acked.key
        )

    def read(self) -> None:
        acked = self.rng.choice(self.acked[-50:])
        self._read("read", f"/api/v1/tasks/{acked.id}", id=acked.id)

    def list(self) -> None:
        state = self.rng.choice(["queued", "running", "queued,running", "completed", "cancelled"])
        self._read("list", f"/api/v1/tasks?state={state}&limit=20", query=state)

    def _read(self, f: str, path: str, **fields: Any) -> None:
        self.history.invoke(self.name, f, node=self.home, **fields)
        attempts = []
        for node in self.order()[:3]:
            reply, record = self.http.attempt(node, "GET", path, timeout=self.s.timeout)
            attempts.append(record)
            if reply is not None and reply.status < 500:
                value: Any = reply.body
                if f == "read" and reply.status == 200:
                    value = {"state": value.get("state"), "attempt": value.get("attempt")}
                elif f == "list" and reply.status == 200:
                    value = {"total": value.get("total")}
                self.history.complete(
                    self.name,
                    "ok" if reply.status == 200 else "fail",
                    f,
                    node=node,
                    status=reply.status,
                    value=value,
                    attempts=attempts,
                    **fields,
                )
                return
        self.history.complete(
            self.name, "info", f, node=self.home, status=None, attempts=attempts, **fields
        )


def _submit_verdict(reply: Reply, attempts: list[dict]) -> str | None:
    if reply.status in (200, 201) and isinstance(reply.body, dict) and "id" in reply.body:
        return "ok"
    if reply.status >= 500 or reply.status == 429:
        return None  # 503 no_quorum: this node cannot reach a quorum, try another one
    return "fail"


def _change_verdict(reply: Reply, attempts: list[dict]) -> str | None:
    """Cancel / abort. A 409 after an earlier attempt that may have applied (a timeout
    or a 5xx) is indeterminate: that earlier attempt may be what cancelled the task."""
    if reply.status == 200:
        return "ok"
    if reply.status >= 500 or reply.status == 429:
        return None
    unsure = any(a["status"] is None or a["status"] >= 500 for a in attempts[:-1])
    return "info" if unsure and reply.status == 409 else "fail"


# ---------------------------------------------------------------- probes
class Probes:
    """Single-node submissions, fired on a timer, for the two timing properties:
    how fast a cut-off node refuses writes, how fast writes are accepted after a heal."""

    def __init__(self, http_: Http, history: History) -> None:
        self.http = http_
        self.history = history

    def _one(
        self, process: str, node: str, key: str, timeout: float, attempts: list[dict], **fields: Any
    ) -> Reply | None:
        body = noop_body(key, process, 0, 5)
        reply, record = self.http.attempt(
            node, "POST", "/api/v1/tasks", body, {"Idempotency-Key": key}, timeout
        )
        attempts.append(record)
        return reply

    def cut_off(
        self,
        node: str,
        stop: threading.Event,
        interval: float = 0.5,
        timeout: float = 12.0,
        fault: str = "",
    ) -> threading.Thread:
        """Until `stop`: every `interval` a new submission to `node`, each in its own thread
        so that a held request does not delay the next one. Returns the thread to join."""

        def fire() -> None:
            key = str(uuid.uuid4())
            self.history.invoke("probe-503", "submit", node=node, key=key, fault=fault)
            attempts: list[dict] = []
            reply = self._one("probe-503", node, key, timeout, attempts)
            verdict = "info" if reply is None else (_submit_verdict(reply, attempts) or "info")
            self.history.complete(
                "probe-503",
                verdict,
                "submit",
                node=node,
                key=key,
                fault=fault,
                status=reply.status if reply else None,
                id=reply.body.get("id") if verdict == "ok" else None,
                value=_brief(reply),
                attempts=attempts,
            )

        def loop() -> None:
            workers = []
            while not stop.is_set():
                worker = threading.Thread(target=fire, daemon=True)
                worker.start()
                workers.append(worker)
                stop.wait(interval)
            for worker in workers:
                worker.join(timeout + 1)

        thread = threading.Thread(target=loop, name=f"probe-503-{node}", daemon=True)
        thread.start()
        return thread

    def after_heal(
        self, nodes: list[str], limit: float = 15.0, timeout: float = 2.0, fault: str = ""
    ) -> dict[str, float | None]:
        """From now, submit to each node (in parallel) until it acknowledges one; returns
        node -> seconds until the first acknowledgement (None: none within `limit`)."""
        start = time.time()
        gaps: dict[str, float | None] = {}

        def probe(node: str) -> None:
            key = str(uuid.uuid4())
            self.history.invoke("probe-heal", "submit", node=node, key=key, fault=fault)
            attempts: list[dict] = []
            reply = None
            while time.time() - start < limit:
                reply = self._one("probe-heal", node, key, timeout, attempts)
                if reply is not None and _submit_verdict(reply, attempts) == "ok":
                    gaps[node] = time.time() - start
                    self.history.complete(
                        "probe-heal",
                        "ok",
                        "submit",
                        node=node,
                        key=key,
                        fault=fault,
                        status=reply.status,
                        id=reply.body["id"],
                        value=_brief(reply),
                        attempts=attempts,
                    )
                    return
                time.sleep(0.1)
            gaps[node] = None
            self.history.complete(
                "probe-heal",
                "info",
                "submit",
                node=node,
                key=key,
                fault=fault,
                status=reply.status if reply else None,
                value=_brief(reply),
                attempts=attempts,
                gave_up=True,
            )

        threads = [threading.Thread(target=probe, args=(n,), daemon=True) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(limit + timeout + 1)
        return gaps


def _brief(reply: Reply | None) -> Any:
    if reply is None:
        return None
    if isinstance(reply.body, dict) and "id" in reply.body:
        return {"id": reply.body["id"], "state": reply.body.get("state")}
    return reply.body
