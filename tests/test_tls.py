"""TLS for the REST API and the dashboard ([tls] in cluster.toml, node/tls.py).

The configuration is refused with the key and the fix when the pair is incomplete,
unreadable or mismatched; then one real node with a self-signed certificate (made
here with `cryptography`, SAN localhost and 127.0.0.1) serves its API and its
dashboard over https only: clients that trust the certificate (the stdlib, the CLI's
client and the asyncio one through RAGRAFT_CA_FILE, `ragraft up`'s pinned probe)
get answers, plain http and clients that do not trust it get none, and the
dashboard works in real Chromium: its page over https, its Bokeh websocket over
wss, and the API's data, which the dashboard reads from its own node over https.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node.client.aio import ApiClient
from node.client.rest import Client, ClientError, Unreachable, ssl_context
from node.config import ConfigError, load, parse
from node.tls import pinned_client_context, server_context, server_ssl_context
from tests.nodecluster import ADMIN_PASSWORD, NodeCluster

CHROMIUM = "/usr/bin/chromium"  # Debian's, as tests/test_dashboard.py drives it
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


# ------------------------------------------------------------------ certificates
def make_cert(
    directory: Path,
    name: str,
    dns: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = ("127.0.0.1",),
    passphrase: bytes | None = None,
) -> tuple[Path, Path]:
    """A self-signed certificate and its key (PEM) as directory/name.crt, name.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else name)])
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    key_path.chmod(0o600)
    return cert_path, key_path


# ------------------------------------------------------------------ configuration
NODE = {"id": "n1", "host": "127.0.0.1", "raft_port": 7101, "gossip_port": 7201,
        "api_port": 8101, "dashboard_port": 8301}  # fmt: skip


def config(tmp_path: Path, tls: Any = None, env: dict[str, str] | None = None):
    raw: dict[str, Any] = {"cluster": {"name": "c1"}, "nodes": [dict(NODE)]}
    if tls is not None:
        raw["tls"] = tls
    return parse(raw, tmp_path / "cluster.toml", env or {})


def test_without_tls_the_node_speaks_plain_http(tmp_path: Path) -> None:
    plain = config(tmp_path)
    assert not plain.tls.enabled
    assert plain.nodes[0].api_url == "http://127.0.0.1:8101"
    assert plain.nodes[0].dashboard_url == "http://127.0.0.1:8301"
    assert server_ssl_context(plain.tls) is None


def test_a_pair_relative_to_the_file_turns_every_url_to_https(tmp_path: Path) -> None:
    make_cert(tmp_path / "tls", "node")
    cfg = config(tmp_path, {"cert_file": "tls/node.crt", "key_file": "tls/node.key"})
    assert cfg.tls.enabled
    assert cfg.tls.cert_file == tmp_path / "tls" / "node.crt"  # beside the file, as data_dir
    assert cfg.tls.key_file == tmp_path / "tls" / "node.key"
    assert cfg.nodes[0].api_url == "https://127.0.0.1:8101"
    assert cfg.nodes[0].dashboard_url == "https://127.0.0.1:8301"
    assert "tls" not in cfg.extra
    context = server_ssl_context(cfg.tls)
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_the_repository_file_loads_with_tls_from_the_environment(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "node")
    root = Path(__file__).parent.parent
    cfg = load(
        root / "cluster.toml", env={"RAGRAFT_TLS_CERT": str(cert), "RAGRAFT_TLS_KEY": str(key)}
    )
    assert cfg.tls.cert_file == cert and cfg.tls.key_file == key  # absolute: as given
    assert all(n.api_url.startswith("https://") for n in cfg.nodes)


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    make_cert(tmp_path, "file")
    other_cert, other_key = make_cert(tmp_path / "elsewhere", "env")
    cfg = config(
        tmp_path,
        {"cert_file": "file.crt", "key_file": "file.key"},
        env={"RAGRAFT_TLS_CERT": str(other_cert), "RAGRAFT_TLS_KEY": str(other_key)},
    )
    assert (cfg.tls.cert_file, cfg.tls.key_file) == (other_cert, other_key)
    # the environment alone is enough, and an empty variable leaves the file's value
    only_env = config(tmp_path, env={"RAGRAFT_TLS_CERT": "file.crt", "RAGRAFT_TLS_KEY": "file.key"})
    assert only_env.tls.cert_file == tmp_path / "file.crt"
    kept = config(
        tmp_path,
        {"cert_file": "file.crt", "key_file": "file.key"},
        env={"RAGRAFT_TLS_CERT": "", "RAGRAFT_TLS_KEY": ""},
    )
    assert kept.tls.cert_file == tmp_path / "file.crt"


@pytest.mark.parametrize(
    ("tls", "env", "match"),
    [
        ({"cert_file": "a.crt"}, {}, r"tls\.cert_file: is set without key_file; set both"),
        ({}, {"RAGRAFT_TLS_KEY": "a.key"}, r"RAGRAFT_TLS_KEY: is set without cert_file"),
        ({"cert_file": "gone.crt", "key_file": "a.key"}, {}, r"tls\.cert_file: cannot read .*gone\.crt \(No such file"),
        ({"cert_file": "a.crt", "key_file": "gone.key"}, {}, r"tls\.key_file: cannot read .*gone\.key"),
        ({"cert_file": "a.crt"}, {"RAGRAFT_TLS_KEY": "gone.key"}, r"RAGRAFT_TLS_KEY: cannot read"),
        ({"cert_file": "a.crt", "key_file": "b.key"}, {}, r"tls\.cert_file/key_file: .* do not load as a certificate chain and its key \(.*KEY_VALUES_MISMATCH"),
        ({"cert_file": "a.key", "key_file": "a.key"}, {}, r"do not load as a certificate chain"),
        ({"cert_file": "a.crt", "key_file": "locked.key"}, {}, r"tls\.key_file: .*locked\.key is encrypted with a passphrase"),
        ({"cert_file": "a.crt", "key_file": "a.key", "ca_file": "a.crt"}, {}, r"tls\.ca_file: unknown key; use only cert_file, key_file"),
        ({"cert_file": 5, "key_file": "a.key"}, {}, r"tls\.cert_file: 5 is not a path"),
        ("on", {}, r"tls: must be a table"),
    ],
    ids=["only-cert", "only-key-env", "missing-cert", "missing-key", "missing-key-env",
         "key-of-another-cert", "key-as-cert", "encrypted-key", "unknown-key", "not-a-path",
         "not-a-table"],
)  # fmt: skip
def test_a_bad_tls_section_is_refused_with_the_key_and_the_fix(
    tmp_path: Path, tls: Any, env: dict[str, str], match: str
) -> None:
    make_cert(tmp_path, "a")
    make_cert(tmp_path, "b")
    make_cert(tmp_path, "locked", passphrase=b"secret")  # would prompt on a terminal
    with pytest.raises(ConfigError, match=match) as refused:
        config(tmp_path, tls, env)
    assert str(refused.value).startswith(f"{tmp_path / 'cluster.toml'}: ")


def test_an_unreadable_key_is_refused(tmp_path: Path) -> None:
    # A directory where the key should be: unreadable for root too (a mode-0 file is not).
    make_cert(tmp_path, "a")
    (tmp_path / "a.key").unlink()
    (tmp_path / "a.key").mkdir()
    with pytest.raises(ConfigError, match=r"tls\.key_file: cannot read .*a\.key"):
        config(tmp_path, {"cert_file": "a.crt", "key_file": "a.key"})


def test_a_bad_ca_file_is_a_client_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    monkeypatch.setenv("RAGRAFT_CA_FILE", str(tmp_path / "junk.pem"))
    with pytest.raises(ClientError, match="RAGRAFT_CA_FILE .*junk.pem") as refused:
        ssl_context()
    assert refused.value.code == "bad_ca_file"


# ------------------------------------------------------------------ pinning, in process
def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str) -> str:
    """Connect `client` to a TLS server on 127.0.0.1; the version it negotiated."""

    async def run() -> str:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        listener = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server)
        port = listener.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname=server_hostname
            )
            writer.write(b"ping\n")
            assert await reader.readline() == b"ping\n"
            version = writer.get_extra_info("ssl_object").version()
            writer.close()
            return version
        finally:
            listener.close()

    return asyncio.run(run())


def test_the_pinned_context_trusts_the_nodes_own_certificate_at_any_address(
    tmp_path: Path,
) -> None:
    """The dashboard reaches its own node's API at 127.0.0.1, which a certificate for a
    host name does not name: the pinned context accepts exactly that certificate there,
    where host name verification would refuse, and refuses any other certificate."""
    cert, key = make_cert(tmp_path, "named", dns=("node1.example",), ips=())
    other, _ = make_cert(tmp_path, "other", dns=("node1.example",), ips=())
    server = server_context(cert, key)
    assert _handshake(server, pinned_client_context(cert), "127.0.0.1") in ("TLSv1.2", "TLSv1.3")
    verified = ssl.create_default_context(cafile=cert)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(server, verified, "127.0.0.1")
    assert _handshake(server, verified, "node1.example")  # by its name it verifies
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, pinned_client_context(other), "127.0.0.1")  # same name, not pinned


# ------------------------------------------------------------------ one real node
@dataclass
class TlsNode:
    cluster: NodeCluster
    cert: Path
    api: str  # https://127.0.0.1:PORT
    dashboard: str
    trusted: ssl.SSLContext  # the stdlib's verification, with the certificate as CA
    token: str


def _get(url: str, context: ssl.SSLContext | None, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _json(
    method: str,
    url: str,
    context: ssl.SSLContext,
    body: Any = None,
    token: str | None = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    root = tmp_path_factory.mktemp("tls")
    cert, _ = make_cert(root / "tls", "node")
    cluster = NodeCluster(
        root,
        size=1,
        dashboard=True,
        extra_toml='[tls]\ncert_file = "tls/node.crt"\nkey_file = "tls/node.key"\n',
    )
    api = cluster.api["n1"].replace("http://", "https://")
    dashboard = cluster.dashboard_urls["n1"].replace("http://", "https://")
    trusted = ssl.create_default_context(cafile=cert)  # host name checked: 127.0.0.1 is named
    cluster.start_all()
    try:
        deadline = time.monotonic() + 90
        token = None
        while token is None:  # a leader, then the accounts it sets up, then a login
            assert time.monotonic() < deadline, f"no https login within 90 s; logs in {root}"
            try:
                status, answer = _json(
                    "POST",
                    api + "/api/v1/auth/token",
                    trusted,
                    {"username": "admin", "password": ADMIN_PASSWORD},
                )
                if status == 200:
                    token = answer["access_token"]
            except OSError:
                pass
            time.sleep(0.3)
        yield TlsNode(cluster, cert, api, dashboard, trusted, token)
    finally:
        cluster.stop_all()


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_the_api_answers_over_https_to_a_client_that_trusts_the_certificate(
    node: TlsNode,
) -> None:
    status, body = _get(node.api + "/healthz", node.trusted)
    assert status == 200, body
    log = (node.cluster.root / "n1.log").read_text()
    assert f"api {node.api}" in log  # the node announces https itself
    status, task = _json(
        "POST",
        node.api + "/api/v1/tasks",
        node.trusted,
        {"type": "noop", "input": {"duration_ms": 1}},
        node.token,
    )
    assert status == 201, task
    deadline = time.monotonic() + 30
    while True:
        status, seen = _json(
            "GET", f"{node.api}/api/v1/tasks/{task['id']}", node.trusted, token=node.token
        )
        if status == 200 and seen["state"] == "completed":
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)
    # the negotiated protocol is TLS 1.2 or better
    port = int(node.api.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        node.trusted.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_plain_http_and_untrusting_clients_get_nothing(node: TlsNode, tmp_path: Path) -> None:
    plain_api = node.api.replace("https://", "http://")
    plain_dashboard = node.dashboard.replace("https://", "http://")
    for url in (plain_api + "/healthz", plain_dashboard + "/"):
        with pytest.raises((OSError, http.client.HTTPException)):
            _get(url, None)
    # the system's trust store alone does not know a self-signed certificate
    with pytest.raises(urllib.error.URLError) as untrusted:
        _get(node.api + "/healthz", ssl.create_default_context())
    assert isinstance(untrusted.value.reason, ssl.SSLCertVerificationError)
    # nor does one that trusts another certificate with the same names
    other, _ = make_cert(tmp_path, "impostor")
    with pytest.raises(urllib.error.URLError) as wrong:
        _get(node.dashboard + "/", ssl.create_default_context(cafile=other))
    assert isinstance(wrong.value.reason, ssl.SSLCertVerificationError)


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_the_cli_and_tui_clients_trust_the_cluster_through_ragraft_ca_file(
    node: TlsNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAGRAFT_CA_FILE", raising=False)
    refused = Client([node.api], node.token, timeout=5)
    with pytest.raises(Unreachable, match="TLS certificate is not trusted.*RAGRAFT_CA_FILE"):
        refused.get("/api/v1/cluster")
    monkeypatch.setenv("RAGRAFT_CA_FILE", str(node.cert))
    client = Client([node.api], node.token, timeout=5)
    assert client.get("/api/v1/cluster")["leader"] == "n1"
    assert client.get("/api/v1/tasks", {"limit": 1})["total"] >= 0
    with pytest.raises(Unreachable):  # the same port, as http: no answer
        Client([node.api.replace("https://", "http://")], node.token, timeout=5).get("/healthz")

    async def tui_view() -> Any:
        api = ApiClient([node.api], node.token)
        try:
            return await api.request("GET", "/api/v1/cluster")
        finally:
            await api.close()

    assert asyncio.run(tui_view())["leader"] == "n1"


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_ragraft_up_probes_its_nodes_with_the_certificate_pinned(node: TlsNode) -> None:
    from node.cli.launcher import _get_json, _trust

    config = load(node.cluster.config, env={})
    assert config.nodes[0].api_url == node.api
    ready = _get_json(config.nodes[0].api_url + "/readyz", timeout=5, context=_trust(config))
    assert ready is not None and ready["leader"] == "n1"
    assert _get_json(config.nodes[0].api_url + "/readyz", timeout=5) is None  # unpinned


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_the_dashboard_over_https_in_chromium_shows_the_apis_data(node: TlsNode) -> None:
    from playwright.sync_api import expect, sync_playwright

    status, html = _get(node.dashboard + "/", node.trusted, timeout=30)
    assert status == 200 and b"<html" in html.lower() and b"bokeh" in html.lower()
    log = (node.cluster.root / "n1.log").read_text()
    assert f"dashboard on https://127.0.0.1:{node.dashboard.rsplit(':', 1)[1]}" in log
    assert "Launching server at http://" not in log  # (Panel's line, which says http)
    status, task = _json(
        "POST",
        node.api + "/api/v1/tasks",
        node.trusted,
        {"type": "noop", "input": {"duration_ms": 1}, "priority": 7},
        node.token,
    )
    assert status == 201, task
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            # (the browser does not know the self-signed certificate; the other tests
            # verify it: here what counts is that page and websocket are TLS)
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            sockets: list[str] = []
            page.on("websocket", lambda ws: sockets.append(ws.url))
            page.goto(node.dashboard + "/")
            assert page.url.startswith("https://")
            page.get_by_placeholder("username").fill("admin")
            page.fill("input[type=password]", ADMIN_PASSWORD)
            page.get_by_role("button", name="Log in").click()
            # logged in: the dashboard's own client reached its node's API over https
            expect(page.locator(".bk-tab", has_text="Overview")).to_be_visible(timeout=30_000)
            card = page.locator('.node-card[data-node="n1"] .gossip')
            expect(card).to_have_text("alive", timeout=15_000)
            page.locator(".bk-tab", has_text="Tasks").click()
            expect(page.locator(".tabulator-row", has_text=task["id"])).to_have_count(
                1, timeout=15_000
            )
            assert sockets and all(url.startswith("wss://") for url in sockets), sockets
            context.close()
        finally:
            browser.close()
