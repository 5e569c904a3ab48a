"""TLS for the REST API and the dashboard, when cluster.toml has a [tls] table
(node/config.py `TlsSettings`): the server context every node's API listens with, and
the context with which a node's own processes (its dashboard, `ragraft up`) reach it.

Stdlib only; Bokeh builds the dashboard's server context itself from the same two
files (ui/server.py).  Clients elsewhere trust what the system trusts plus
RAGRAFT_CA_FILE (node/client/rest.py `ssl_context`).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.config import TlsSettings


class EncryptedKey(ValueError):
    """The private key needs a passphrase: a node starts unattended, so it takes none."""


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and the node would hang.
    raise EncryptedKey("the private key is encrypted with a passphrase")


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context with the certificate chain and its key; TLS 1.2 at least.
    Raises OSError (unreadable), ssl.SSLError (not PEM, the key is not the
    certificate's) or EncryptedKey."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=cert_file, keyfile=key_file, password=_no_passphrase)
    return context


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The API's server context; None when TLS is off (plain http)."""
    if tls.cert_file is None or tls.key_file is None:
        return None
    return server_context(tls.cert_file, tls.key_file)


def pinned_client_context(cert_file: Path) -> ssl.SSLContext:
    """A client context that trusts exactly the certificates in `cert_file` (the
    node's own, from [tls]) and nothing from the system store.

    The host name is not checked: it is for a node's processes reaching their own
    node at a loopback address (127.0.0.1, which the certificate need not name).
    That is safe because the certificate is pinned: only a server holding the
    private key of the configured certificate completes the handshake, and that
    is the node itself.  VERIFY_X509_PARTIAL_CHAIN lets a CA-issued leaf (or an
    intermediate in its chain file) be the trust anchor, not only a self-signed one.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # (before verify_mode: see the docstring)
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.load_verify_locations(cafile=cert_file)
    return context
