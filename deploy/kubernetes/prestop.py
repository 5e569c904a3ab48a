"""preStop hook of a ragraft pod in the Helm chart's StatefulSet: a pod that a
scale-down takes away leaves the cluster's membership before it stops; a pod that
is only restarted (a rolling update, a node drain, a crash) stays a member.

Kubernetes lowers the StatefulSet's spec.replicas before it deletes the pods above
it, so this pod is being scaled away exactly when its ordinal (the number at the end
of its name) is >= spec.replicas.  Then it asks its own node's API (which passes the
request on to the leader) to remove it, DELETE /api/v1/cluster/members/<id>, with the
admin's credentials (RAGRAFT_API_KEY, else RAGRAFT_ADMIN_PASSWORD exchanged for a
token: a node has no credential of its own for the REST API), and waits until the
cluster no longer lists it.  A node listed in RAGRAFT_NODES, one of the first members,
is never removed: those are the bootstrap membership, which the chart never scales
below.

Only the standard library (it runs in the node's image, inside the grace period).
Exit status 0: nothing to do, or removed; 1: the removal could not be confirmed in
RAGRAFT_PRESTOP_TIMEOUT_S (kubelet reports a FailedPreStopHook event; the pod stops
all the same and an admin removes the member by hand).

Environment: RAGRAFT_NODE_ID (the pod's name), RAGRAFT_STATEFULSET (default: the pod's
name without its ordinal), RAGRAFT_NODES, RAGRAFT_API_PORT (8100), RAGRAFT_JOIN (the
client Service, asked when the local API does not answer), RAGRAFT_PRESTOP_TIMEOUT_S
(90), KUBERNETES_SERVICE_HOST/PORT and the service account's files.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_TIMEOUT_S = 90.0
REQUEST_TIMEOUT_S = 10.0


class PrestopError(Exception):
    """Something the hook could not do; the message says what and what to do."""


# ------------------------------------------------------------------ the decision


def ordinal_of(pod_name: str) -> int:
    """The ordinal a StatefulSet gives its pod: the number after the last '-'."""
    _, sep, number = pod_name.rpartition("-")
    if not sep or not number.isdigit():
        raise PrestopError(f"{pod_name!r} is not a StatefulSet pod's name (<set>-<ordinal>)")
    return int(number)


def initial_members(nodes_env: str) -> set[str]:
    """The ids RAGRAFT_NODES lists (id=host,...)."""
    return {part.partition("=")[0].strip() for part in nodes_env.split(",") if part.strip()}


def leaving(node_id: str, replicas: int, initial: set[str]) -> bool:
    """Whether this pod is being scaled away (and may leave the membership)."""
    return ordinal_of(node_id) >= replicas and node_id not in initial


# ------------------------------------------------------------------ HTTP


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any


def request(
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    context: ssl.SSLContext | None = None,
    timeout: float = REQUEST_TIMEOUT_S,
) -> Answer:
    """One JSON request; an HTTP error status is an Answer too, a network error an
    OSError."""
    data = json.dumps(body).encode() if body is not None else None
    all_headers = {"Accept": "application/json", **(headers or {})}
    if data is not None:
        all_headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as response:
            return Answer(response.status, _json(response.read()))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, _json(exc.read()))


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")


def _reason(answer: Answer) -> str:
    body = answer.body
    if isinstance(body, dict):
        message = (body.get("error") or {}).get("message") or body.get("message")
        if message:
            return f"{answer.status}: {message}"
    return f"{answer.status}: {body!r}"


# ------------------------------------------------------------------ Kubernetes


@dataclass(frozen=True)
class Kubernetes:
    """The in-cluster API as the pod's service account reaches it."""

    url: str
    token: str
    namespace: str
    context: ssl.SSLContext | None

    @classmethod
    def in_cluster(cls, env: Mapping[str, str], account: Path = SERVICE_ACCOUNT) -> Kubernetes:
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise PrestopError("KUBERNETES_SERVICE_HOST/PORT are not set: not in a pod?")
        try:
            token = (account / "token").read_text().strip()
            namespace = (account / "namespace").read_text().strip()
        except OSError as exc:
            raise PrestopError(
                f"no service account token in {account} ({exc}); the chart mounts it "
                "(automountServiceAccountToken)"
            ) from None
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        ca = account / "ca.crt"
        context = ssl.create_default_context(cafile=str(ca)) if ca.exists() else None
        return cls(f"https://{host}:{port}", token, namespace, context)

    def statefulset_replicas(self, name: str) -> int:
        path = f"/apis/apps/v1/namespaces/{self.namespace}/statefulsets/{name}"
        answer = request(
            "GET",
            self.url + urllib.parse.quote(path),
            {"Authorization": f"Bearer {self.token}"},
            context=self.context,
        )
        if answer.status != 200 or not isinstance(answer.body, dict):
            raise PrestopError(
                f"GET statefulset {self.namespace}/{name}: {_reason(answer)} (the chart's "
                "Role lets the pods get their StatefulSet)"
            )
        spec = answer.body.get("spec") or {}
        replicas = spec.get("replicas", 1)  # the API's default when unset
        if not isinstance(replicas, int):
            raise PrestopError(f"statefulset {name}: spec.replicas is {replicas!r}")
        return replicas


# ------------------------------------------------------------------ ragraft


@dataclass
class Ragraft:
    """A member's REST API with an admin's credentials, trying each URL in turn (this
    node's own first, then the client Service)."""

    urls: list[str]
    api_key: str | None = None
    password: str | None = None
    context: ssl.SSLContext | None = None
    _headers: dict[str, str] | None = None

    def _auth(self, url: str) -> dict[str, str]:
        if self._headers is None:
            if self.api_key:
                self._headers = {"Authorization": f"Bearer {self.api_key}"}
            elif self.password:
                answer = request(
                    "POST",
                    f"{url}/api/v1/auth/token",
                    body={"username": "admin", "password": self.password},
                    context=self.context,
                )
                if answer.status >= 500:  # initialising, no quorum: ask again
                    raise OSError(f"admin login: {_reason(answer)}")
                if answer.status != 200 or not isinstance(answer.body, dict):
                    raise PrestopError(f"admin login refused ({_reason(answer)})")
                self._headers = {"Authorization": f"Bearer {answer.body['access_token']}"}
            else:
                raise PrestopError(
                    "removing a member takes an admin: set RAGRAFT_API_KEY or "
                    "RAGRAFT_ADMIN_PASSWORD (the chart sets it from the Secret)"
                )
        return self._headers

    def call(self, method: str, path: str) -> Answer:
        problems = []
        for url in self.urls:
            try:
                return request(method, url + path, self._auth(url), context=self.context)
            except OSError as exc:  # not answering: the next URL
                problems.append(f"{url}: {exc}")
        raise OSError("; ".join(problems) or "no URL to ask")

    def views(self) -> list[dict[str, Any]]:
        """GET /api/v1/cluster from every URL that answers: each node's own view."""
        views = []
        for url in self.urls:
            try:
                answer = request(
                    "GET", f"{url}/api/v1/cluster", self._auth(url), None, self.context
                )
            except OSError:
                continue
            if answer.status == 200 and isinstance(answer.body, dict):
                views.append(answer.body)
        return views

    def remove(self, node_id: str) -> Answer:
        return self.call("DELETE", f"/api/v1/cluster/members/{urllib.parse.quote(node_id)}")


def members_of(view: Mapping[str, Any]) -> set[str]:
    members = view.get("members") or {}
    return set(members.get("voters", [])) | set(members.get("learners", []))


def still_member(views: list[dict[str, Any]], node_id: str) -> bool | None:
    """Whether the cluster still lists `node_id`: no as soon as a view leaves it out
    (changes count once committed); yes if another node lists it.  A node removed
    may never hear that its removal committed, so its own view alone proves nothing
    (None)."""
    if any(node_id not in members_of(view) for view in views):
        return False
    if any(view.get("node") != node_id for view in views):
        return True
    return None


def remove_and_wait(
    api: Ragraft,
    node_id: str,
    timeout_s: float,
    poll_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = print,
) -> None:
    """Ask for the removal until the cluster no longer lists `node_id`.  A refusal
    because another membership change is under way (409) or there is no quorum
    (503) is asked again; PrestopError once `timeout_s` has passed, or at once when
    the credentials are refused."""
    deadline = clock() + timeout_s
    last = "nothing answered"
    while True:
        if still_member(api.views(), node_id) is False:
            say(f"prestop: {node_id} is no longer a member of the cluster")
            return
        try:
            answer = api.remove(node_id)
        except OSError as exc:
            last = str(exc)
        else:
            last = f"DELETE answered {_reason(answer)}"
            if answer.status in (401, 403):
                raise PrestopError(f"removing {node_id}: {_reason(answer)}")
            removed = isinstance(answer.body, dict) and node_id not in members_of(answer.body)
            if answer.status == 200 and removed:  # the leader's view, after the change
                say(f"prestop: the leader removed {node_id}")
                return
        if clock() >= deadline:
            raise PrestopError(
                f"{node_id} is still a member of the cluster after {timeout_s:g} s (last: "
                f"{last}); remove it by hand: ragraft node remove {node_id} --url <a member>"
            )
        sleep(poll_s)


# ------------------------------------------------------------------ main


def local_api_url(env: Mapping[str, str]) -> str:
    port = env.get("RAGRAFT_API_PORT") or "8100"
    scheme = "https" if env.get("RAGRAFT_TLS_CERT") else "http"
    return f"{scheme}://127.0.0.1:{port}"


def api_context(env: Mapping[str, str]) -> ssl.SSLContext | None:
    """With [tls] the node serves its own certificate, which loopback's name is not
    in: trust that certificate, without the host name check."""
    cert = env.get("RAGRAFT_CA_FILE") or env.get("RAGRAFT_TLS_CERT")
    if not env.get("RAGRAFT_TLS_CERT"):
        return None
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    return context


def run(
    env: Mapping[str, str],
    kubernetes: Kubernetes | None = None,
    account: Path = SERVICE_ACCOUNT,
    poll_s: float = 1.0,
) -> int:
    node_id = env.get("RAGRAFT_NODE_ID") or env.get("HOSTNAME") or ""
    ordinal = ordinal_of(node_id)
    statefulset = env.get("RAGRAFT_STATEFULSET") or node_id.rpartition("-")[0]
    initial = initial_members(env.get("RAGRAFT_NODES", ""))
    if node_id in initial:
        print(f"prestop: {node_id} is one of the first members: it stays a member")
        return 0
    kube = kubernetes or Kubernetes.in_cluster(env, account)
    replicas = kube.statefulset_replicas(statefulset)
    if not leaving(node_id, replicas, initial):
        print(f"prestop: {node_id} (ordinal {ordinal}) stays: {statefulset} keeps {replicas}")
        return 0
    print(f"prestop: {statefulset} is scaled to {replicas}: {node_id} leaves the cluster")
    urls = [local_api_url(env)]
    if env.get("RAGRAFT_JOIN"):
        urls.append(env["RAGRAFT_JOIN"].rstrip("/"))
    api = Ragraft(
        urls,
        api_key=env.get("RAGRAFT_API_KEY") or None,
        password=env.get("RAGRAFT_ADMIN_PASSWORD") or None,
        context=api_context(env),
    )
    timeout = float(env.get("RAGRAFT_PRESTOP_TIMEOUT_S") or DEFAULT_TIMEOUT_S)
    remove_and_wait(api, node_id, timeout, poll_s)
    return 0


def main() -> int:
    try:
        return run(os.environ)
    except PrestopError as exc:
        print(f"prestop: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
