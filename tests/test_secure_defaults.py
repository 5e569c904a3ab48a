"""Secure without configuration (node/secrets.py): the secrets bundle, what a node does
without one, and an attacker on the network against a default and an insecure cluster."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from consensus.codec import encode
from consensus.messages import ProposeRequest
from consensus.session import Request, pack_envelope
from node.config import ConfigError, parse
from node.replica import codec
from node.replica import commands as c
from node.secrets import (
    BUNDLE_NAME,
    ClusterSecrets,
    ensure_bundle,
    insecurity,
    node_key,
    node_key_path,
    read_bundle,
    with_secrets,
    write_bundle,
)
from tests.nodecluster import ADMIN_PASSWORD, NodeCluster

NODES = {"nodes": [{"id": "n1", "host": "127.0.0.1", "raft_port": 7101, "gossip_port": 7201,
                    "api_port": 8101, "dashboard_port": 8301}]}  # fmt: skip


def config(tmp_path: Path, env: dict[str, str] | None = None, **security: object):
    raw = {"cluster": {"name": "c1"}, **NODES, "security": security}
    return parse(raw, tmp_path / "cluster.toml", env or {})


# ------------------------------------------------------------------ configuration
def test_secure_is_the_default_and_insecure_must_be_asked_for(tmp_path: Path) -> None:
    default = config(tmp_path)
    assert not default.insecure
    assert default.secrets_dir == tmp_path / ".ragraft" / "secrets"  # beside the file
    assert config(tmp_path, insecure=True).insecure
    assert config(tmp_path, env={"RAGRAFT_INSECURE": "1"}).insecure
    assert not config(tmp_path, env={"RAGRAFT_INSECURE": "0"}, insecure=True).insecure
    moved = config(tmp_path, env={"RAGRAFT_SECRETS_DIR": "/etc/ragraft/secrets"})
    assert moved.secrets_dir == Path("/etc/ragraft/secrets")
    with pytest.raises(ConfigError, match="security.insecure"):
        config(tmp_path, insecure="yes")


def test_a_secure_node_without_a_bundle_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ragraft init") as refused:
        with_secrets(config(tmp_path))
    assert "insecure = true" in str(refused.value)
    plain = config(tmp_path, insecure=True)
    assert with_secrets(plain) is plain  # nothing read
    assert len(insecurity(plain)) == 2  # traffic and data at rest, both named


# ------------------------------------------------------------------ the bundle
def test_bundle_is_private_and_fills_what_the_file_does_not_set(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    path = write_bundle(ClusterSecrets.generate("c1", ["n1", "n2"]), cfg.secrets_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cfg.secrets_dir.stat().st_mode) == 0o700
    secured = with_secrets(cfg)
    bundle = read_bundle(cfg.secrets_dir, "c1")
    # a key pair per node: the bundle holds the public halves, each node-<id>.key its own
    assert secured.curve_enabled and secured.curve_public is None
    assert secured.node_keys == bundle.node_keys and set(bundle.node_keys) == {"n1", "n2"}
    assert "secret_key" not in path.read_text() and bundle.node_secrets == {}
    for node in ("n1", "n2"):
        key_file = node_key_path(cfg.secrets_dir, node)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert node_key(cfg.secrets_dir, node)[0] == bundle.node_keys[node]
    with pytest.raises(ConfigError, match="no key for node n3"):
        node_key(cfg.secrets_dir, "n3")
    made = node_key(cfg.secrets_dir, "n3", create=True)  # a node added later makes its own
    assert node_key(cfg.secrets_dir, "n3") == made and made[0] not in bundle.node_keys.values()
    assert secured.encryption_key == bundle.encryption_key
    assert secured.security.token_secret == bundle.token_secret
    assert insecurity(secured) == []
    # a key set in the file or the environment wins over the bundle's
    own = "t" * 32
    assert with_secrets(config(tmp_path, token_secret=own)).security.token_secret == own
    with pytest.raises(ConfigError, match="already there"):
        write_bundle(ClusterSecrets.generate("c1"), cfg.secrets_dir)  # its keys seal the data


def test_a_first_release_bundle_with_one_key_pair_for_the_cluster_is_still_read(
    tmp_path: Path,
) -> None:
    from consensus.keyring import generate_keypair

    cfg = config(tmp_path)
    public, secret = generate_keypair()
    fresh = ClusterSecrets.generate("c1")
    cfg.secrets_dir.mkdir(mode=0o700, parents=True)
    document = {"version": 1, "cluster": "c1", "curve_public_key": public,
                "curve_secret_key": secret, "encryption_key": fresh.encryption_key,
                "token_secret": fresh.token_secret}  # fmt: skip
    (cfg.secrets_dir / BUNDLE_NAME).write_text(json.dumps(document))
    os.chmod(cfg.secrets_dir / BUNDLE_NAME, 0o600)
    secured = with_secrets(cfg)
    assert secured.curve_public == public and secured.curve_secret == secret
    assert secured.node_keys == {}


def test_bundle_readable_by_others_or_for_another_cluster_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    path = write_bundle(ClusterSecrets.generate("c1"), directory)
    with pytest.raises(ConfigError, match="for cluster 'c1', not 'c2'"):
        read_bundle(directory, "c2")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_bundle(directory, "c1")
    os.chmod(path, 0o600)
    os.chmod(directory, 0o755)
    with pytest.raises(ConfigError, match="chmod 700"):
        read_bundle(directory, "c1")
    os.chmod(directory, 0o700)
    document = json.loads(path.read_text())
    document["encryption_key"] = "not base64 of 32 bytes"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="encryption_key"):
        read_bundle(directory, "c1")


def test_first_start_writes_a_bundle_but_not_over_plaintext_data(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (cfg.nodes[0].data_dir / "raft" / "log").mkdir(parents=True)  # a pre-secrets cluster
    with pytest.raises(ConfigError, match="insecure = true"):
        ensure_bundle(cfg)
    assert not (cfg.secrets_dir / BUNDLE_NAME).exists()
    fresh = config(tmp_path / "fresh")
    path = ensure_bundle(fresh)
    assert path is not None and path.exists()
    assert ensure_bundle(fresh) == path  # the second start reads it
    assert ensure_bundle(config(tmp_path, insecure=True)) is None


# ------------------------------------------------------------------ on the network
def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _port(cluster: NodeCluster, node: str, kind: str) -> int:
    text = cluster.config.read_text()
    start = text.index(f'id = "{node}"')
    return int(text[text.index(f"{kind}_port = ", start) :].split("\n")[0].split("= ")[1])


# The stranger is a process of its own, as it would be.  Its ZeroMQ context is never
# terminated: against a CURVE server the handshake is still pending, and libzmq's
# zmq_ctx_term can then block for ever (seen once in a clean-clone run, where it held
# the whole suite, out of reach of pytest-timeout's signal).
_STRANGER = """
import os, sys, time, zmq
import msgpack
sock = zmq.Context().socket(zmq.DEALER)
sock.setsockopt(zmq.ROUTING_ID, sys.argv[2].encode())
sock.setsockopt(zmq.LINGER, 0)
sock.setsockopt(zmq.SNDTIMEO, 500)
if len(sys.argv) > 3:  # a CURVE client: the server's public key, then our own pair
    sock.setsockopt(zmq.CURVE_SERVERKEY, sys.argv[3].encode())
    sock.setsockopt(zmq.CURVE_PUBLICKEY, sys.argv[4].encode())
    sock.setsockopt(zmq.CURVE_SECRETKEY, sys.argv[5].encode())
sock.connect(sys.argv[1])
messages = msgpack.unpackb(sys.stdin.buffer.read())
for _ in range(5):  # a few times, in case the first goes before the handshake
    for message in messages:
        try:
            sock.send(message)
        except zmq.Again:
            pass
    time.sleep(0.2)
sys.stdout.flush()
os._exit(0)
"""


def _send_as_stranger(
    port: int, identity: str, messages: list[bytes], curve: tuple[str, str, str] | None = None
) -> None:
    """Send `messages` to a node's ZeroMQ port from a process holding no key, or, with
    `curve` (the server's public key, a public and a secret key), the keys given."""
    import msgpack

    done = subprocess.run(
        [sys.executable, "-c", _STRANGER, f"tcp://127.0.0.1:{port}", identity, *(curve or ())],
        input=msgpack.packb(messages),
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done


def _plant_admin_key(cluster: NodeCluster, leader: str, term: int) -> str:
    """What a stranger on the network tries: a ProposeRequest straight to the leader's
    Raft port, with a command that gives it an admin API key.  Returns the key's id."""
    now = int(time.time() * 1000)
    key_id = f"planted-{now}"
    digest = hashlib.sha256(b"rgk_attacker").hexdigest()
    command = codec.encode(c.PutKey(key_id, "admin", digest, now, "planted"))
    envelope = pack_envelope(Request(f"mallory:{now}", now, 1, 1), now, command)
    message = encode(ProposeRequest(term, "mallory", leader, (envelope,)))
    _send_as_stranger(_port(cluster, leader, "raft"), "mallory", [message])
    return key_id


def _planted(cluster: NodeCluster, leader: str, key_id: str, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        status, keys = cluster.request(leader, "GET", "/api/v1/auth/keys")
        assert status == 200, keys
        if any(k.get("id") == key_id for k in keys["items"]):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _propose_as(
    cluster: NodeCluster, leader: str, term: int, node: str, speaker: str, key_id: str
) -> None:
    """What a node holding `node`'s key can do: propose a command (a PutKey of an admin
    API key) to the leader, sealed with the cluster's data key as every node seals,
    over a connection that says it is `speaker`."""
    from consensus.cipher import Cipher

    secrets_dir = cluster.root / ".ragraft" / "secrets"
    bundle = read_bundle(secrets_dir, "test")
    public, secret = node_key(secrets_dir, node)
    now = int(time.time() * 1000)
    command = codec.encode(
        c.PutKey(key_id, "admin", hashlib.sha256(key_id.encode()).hexdigest(), now)
    )
    envelope = pack_envelope(Request(f"{speaker}:{now}", now, 1, 1), now, command)
    sealed = Cipher.from_base64(bundle.encryption_key).seal(envelope)
    message = encode(ProposeRequest(term, speaker, leader, (sealed,)))
    curve = (bundle.node_keys[leader], public, secret)
    _send_as_stranger(_port(cluster, leader, "raft"), speaker, [message], curve)


@pytest.mark.e2e
def test_a_removed_nodes_key_is_revoked_and_no_member_speaks_for_another(tmp_path: Path) -> None:
    """Each node has its own key: a member's key works (the control), a member cannot
    pass for another, and once a node is removed its key is refused."""
    cluster = NodeCluster(tmp_path)
    cluster.start_all()
    try:
        leader = cluster.wait_ready(timeout=60)
        view = cluster.request(leader, "GET", "/api/v1/cluster")[1]
        victim, other = [n for n in cluster.ids if n != leader]
        _propose_as(cluster, leader, view["term"], victim, victim, "as-itself")
        assert _planted(cluster, leader, "as-itself", wait=10.0)  # the control: a member may
        _propose_as(cluster, leader, view["term"], victim, other, "as-another")
        assert not _planted(cluster, leader, "as-another", wait=3.0)
        status, body = cluster.request(leader, "DELETE", f"/api/v1/cluster/members/{victim}")
        assert status == 200, body
        for node in (leader, other):
            cluster.read_barrier(node)
        deadline = time.monotonic() + 10  # the leader revokes it once the removal committed
        while f"CURVE key of node {victim} revoked" not in (
            log := (tmp_path / f"{leader}.log").read_text()
        ):
            assert time.monotonic() < deadline, "the removed node's key was never revoked"
            time.sleep(0.2)
        # refused at the handshake, by the key (not only by the membership)
        view = cluster.request(leader, "GET", "/api/v1/cluster")[1]
        _propose_as(cluster, leader, view["term"], victim, victim, "after-removal")
        assert not _planted(cluster, leader, "after-removal", wait=3.0)
        log = (tmp_path / f"{leader}.log").read_text()
        victim_key = node_key(tmp_path / ".ragraft" / "secrets", victim)[0]
        assert f"CURVE client key {victim_key} belongs to no member: refused" in log
    finally:
        cluster.stop_all()


@pytest.mark.e2e
@pytest.mark.parametrize("insecure", [False, True], ids=["default", "insecure"])
def test_a_stranger_without_keys_cannot_write_the_log(tmp_path: Path, insecure: bool) -> None:
    """The default cluster refuses the stranger's proposal (CURVE: no handshake without the
    cluster's key); the insecure one is the control, showing the attack is real."""
    cluster = NodeCluster(tmp_path, insecure=insecure)
    cluster.start_all()
    try:
        leader = cluster.wait_ready(timeout=60)
        status, view = cluster.request(leader, "GET", "/api/v1/cluster")
        assert status == 200, view
        term = view["term"]
        ready = _get(cluster.api[leader] + "/readyz")
        assert ("insecure" in ready) == insecure
        key_id = _plant_admin_key(cluster, leader, term)
        assert _planted(cluster, leader, key_id, wait=3.0 if not insecure else 10.0) == insecure
        if not insecure:
            log = (tmp_path / f"{leader}.log").read_text()
            assert "INSECURE" not in log
            # every file the nodes wrote is their owner's alone
            for node in cluster.ids:
                for path in [tmp_path / "data" / node, *(tmp_path / "data" / node).rglob("*")]:
                    mode = stat.S_IMODE(path.stat().st_mode)
                    assert mode & 0o077 == 0, f"{path} is {mode:03o}"
        else:
            assert "INSECURE" in (tmp_path / f"{leader}.log").read_text()
    finally:
        cluster.stop_all()


@pytest.mark.e2e
@pytest.mark.parametrize("insecure", [False, True], ids=["default", "insecure"])
def test_a_stranger_without_keys_cannot_join_gossip_or_declare_a_node_dead(
    tmp_path: Path, insecure: bool
) -> None:
    """Gossip injections from a keyless process: a Sync announcing a fake member, and a
    death claim about a live node at an incarnation above its own.  The default cluster
    hears neither; on the insecure one (the control) the fake member is listed and the
    live node is declared dead."""
    from node.gossip.codec import encode as gossip_encode
    from node.gossip.messages import Status, Sync, Update

    cluster = NodeCluster(tmp_path, insecure=insecure)
    cluster.start_all()
    try:
        cluster.wait_ready(timeout=60)
        target, victim = "n1", "n2"
        ghost_addr = "tcp://127.0.0.1:9"  # nothing listens there
        victim_addr = f"tcp://127.0.0.1:{_port(cluster, victim, 'gossip')}"
        forged = Sync(
            "ghost",
            ghost_addr,
            target,
            reply=False,
            states=(
                Update(Status.ALIVE, "ghost", ghost_addr, 1),
                Update(Status.DEAD, victim, victim_addr, 1 << 62),
            ),
        )
        _send_as_stranger(_port(cluster, target, "gossip"), "ghost", [gossip_encode(forged)])
        deadline = time.monotonic() + (10.0 if insecure else 4.0)
        listed, declared = False, False
        while time.monotonic() < deadline and not (listed and declared):
            status, nodes = cluster.request(target, "GET", "/api/v1/nodes")
            assert status == 200, nodes
            listed = any(item["id"] == "ghost" for item in nodes["items"])
            log = (tmp_path / f"{target}.log").read_text()
            declared = f"gossip: {victim} alive -> dead" in log
            time.sleep(0.2)
        assert listed == insecure, nodes
        assert declared == insecure, log[-2000:]
        if not insecure:
            assert all(
                item["status"] == "alive" for item in nodes["items"] if item["id"] in cluster.ids
            ), nodes
    finally:
        cluster.stop_all()


def test_the_dashboard_shows_an_insecure_cluster_on_every_view() -> None:
    from ui.app import Dashboard

    warned = Dashboard("http://127.0.0.1:9", "n1", {}, ["data at rest <b>is</b> plain"])
    assert warned.insecure.visible and warned.insecure in list(warned.root)  # the login view
    assert "&lt;b&gt;is&lt;/b&gt;" in warned.insecure.object  # escaped like any data
    assert not Dashboard("http://127.0.0.1:9", "n1", {}).insecure.visible


def _files_holding(root: Path, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """Which files under `root` hold each needle, as `grep -r` would find them."""
    found: dict[str, list[str]] = {name: [] for name in needles}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            for name, needle in needles.items():
                if needle in data:
                    found[name].append(str(path.relative_to(root)))
    return found


@pytest.mark.e2e
@pytest.mark.parametrize("insecure", [False, True], ids=["default", "insecure"])
def test_the_data_directories_hold_no_user_text_and_no_secret(
    tmp_path: Path, insecure: bool
) -> None:
    """A default cluster's log, snapshots and every other file in its data directories
    hold no knowledge-base text, no query, no password or password hash and none of the
    bundle's secrets, and are their owner's alone.  The insecure cluster is the control:
    the same search finds the text there, so the search could fail."""
    marker = uuid.uuid4().hex
    cluster = NodeCluster(
        tmp_path,
        insecure=insecure,
        extra_toml="[raft]\nsnapshot_entries = 10\n",  # snapshots get written too
        env={"RAGRAFT_TOKEN_SECRET": ""},  # the bundle's, or (insecure) one in the log
    )
    cluster.start_all()
    try:
        leader = cluster.wait_ready(timeout=60)
        token = cluster.login(leader)  # with the password: no token secret is shared
        status, body = cluster.request(
            leader,
            "POST",
            "/api/v1/kb/documents",
            {"title": f"doc-{marker}", "text": f"The lighthouse code is DOC{marker}."},
            token=token,
        )
        assert status == 202, body
        for i in range(12):
            status, body = cluster.request(
                leader,
                "POST",
                "/api/v1/tasks",
                {"type": "qa", "input": {"query": f"What is QUERY{marker} number {i}?"}},
                token=token,
            )
            assert status == 201, body
        for node in cluster.ids:
            cluster.read_barrier(node, token=token)
        snapshots = [p for p in (tmp_path / "data").rglob("*") if "snap" in p.name]
    finally:
        cluster.stop_all()
    assert snapshots, "no snapshot was written: the test would not look at one"
    needles = {
        "document text": f"DOC{marker}".encode(),
        "document title": f"doc-{marker}".encode(),
        "query text": f"QUERY{marker}".encode(),
        "admin password": ADMIN_PASSWORD.encode(),
        "password hash": b"scrypt$",
    }
    if not insecure:
        bundle = read_bundle(tmp_path / ".ragraft" / "secrets", "test")
        needles |= {
            "token secret": bundle.token_secret.encode(),
            "encryption key": bundle.encryption_key.encode(),
        }
        for node in cluster.ids:
            secret = node_key(tmp_path / ".ragraft" / "secrets", node)[1]
            needles[f"{node}'s CURVE secret key"] = secret.encode()
    found = _files_holding(tmp_path / "data", needles)
    if insecure:
        for name in ("document text", "query text", "password hash"):
            assert found[name], f"the control found no {name}: the search is broken"
        return
    assert not any(found.values()), {k: v for k, v in found.items() if v}
    for path in [tmp_path / "data", *(tmp_path / "data").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {mode:03o}"


def test_dashboard_origins_are_the_nodes_own_names_never_a_wildcard() -> None:
    import socket

    from ui.server import allowed_origins

    assert allowed_origins("10.0.0.5", 8301) == ["10.0.0.5:8301"]
    local = allowed_origins("127.0.0.1", 8301, ["proxy.example:443"])
    assert {"127.0.0.1:8301", "localhost:8301", f"{socket.gethostname()}:8301"} <= set(local)
    assert "proxy.example:443" in local and "*" not in local
    assert not any(o.startswith("0.0.0.0") for o in allowed_origins("0.0.0.0", 8301))


@pytest.mark.e2e
def test_a_page_on_another_site_cannot_open_the_dashboards_websocket(tmp_path: Path) -> None:
    """Bokeh sessions are driven over one websocket; with websocket_origin="*" a page on
    any site could open it from a visitor's browser.  Origins other than the node's own
    names are now refused in the handshake."""
    import asyncio

    import aiohttp

    cluster = NodeCluster(tmp_path, size=1, dashboard=True)
    cluster.start_all()
    try:
        cluster.wait_ready(timeout=60)
        url = cluster.dashboard_urls["n1"]
        deadline = time.monotonic() + 60
        while True:  # the dashboard starts after the API
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    assert r.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.5)

        async def handshake(origin: str) -> int:
            async with aiohttp.ClientSession() as session:
                try:
                    async with session.ws_connect(
                        url.replace("http", "ws") + "/ws", headers={"Origin": origin}
                    ):
                        return 101
                except aiohttp.WSServerHandshakeError as exc:
                    return exc.status

        port = url.rsplit(":", 1)[1]
        assert asyncio.run(handshake("http://evil.example")) == 403
        assert asyncio.run(handshake(f"http://127.0.0.1:{port}.evil.example")) == 403
        assert asyncio.run(handshake(f"http://127.0.0.1:{port}")) != 403
    finally:
        cluster.stop_all()


def test_dashboard_origins_come_from_the_file_or_the_environment(tmp_path: Path) -> None:
    assert config(tmp_path).dashboard_origins == ()
    assert config(tmp_path, dashboard_origins=["rag.example:443"]).dashboard_origins == (
        "rag.example:443",
    )
    env = {"RAGRAFT_DASHBOARD_ORIGINS": "a.example:80, b.example:8301"}
    assert config(tmp_path, env).dashboard_origins == ("a.example:80", "b.example:8301")
    for bad in ("a.example:80", ["https://a.example/x"], [""], [3]):
        with pytest.raises(ConfigError, match="security.dashboard_origins"):
            config(tmp_path, dashboard_origins=bad)
