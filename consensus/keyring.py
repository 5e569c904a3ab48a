"""Who may speak on the cluster's ZeroMQ sockets: this node's CURVE key pair and the
public key of every node it trusts.

Each node has a key pair of its own.  Its ROUTERs serve with its secret key; a DEALER
to a peer authenticates with this node's keys and expects the peer's public key, so
a connection is made only between two nodes that each hold the other's public key.
The ZAP handler admits a client only if its key belongs to a trusted node, and names
the connection after that node (ZeroMQ's User-Id); the transports then drop any
message whose sender is not the node its connection authenticated as, or no longer
trusted.  Revoking a node (removed from the membership) therefore silences it at once,
on connections already made too, and no member can speak for another.

The older model, one key pair shared by the whole cluster (`KeyRing.shared`), is still
read: every node then holds the one secret, the ZAP handler admits that key only, and
connections cannot be told apart by key.

A KeyRing is changed from the event loop's thread (the node applies membership changes
there); the transports listen and reconnect what a change concerns.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import Counter
from collections.abc import Callable, Mapping

import zmq
import zmq.asyncio
import zmq.utils.monitor
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

from consensus.types import NodeId

log = logging.getLogger("consensus.keyring")

ChangeListener = Callable[[set[NodeId]], None]  # the nodes whose key changed


def generate_keypair() -> tuple[str, str]:
    """A fresh CURVE key pair as z85 strings: (public, secret)."""
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def z85_key(value: bytes | str, name: str = "CURVE") -> bytes:
    """A checked z85 key (40 characters for 32 bytes); ValueError otherwise."""
    raw = value.encode("ascii") if isinstance(value, str) else bytes(value)
    try:
        valid = len(raw) == 40 and len(z85.decode(raw)) == 32
    except (ValueError, KeyError, IndexError, TypeError, struct.error):  # z85 says "not z85"
        valid = False
    if not valid:
        raise ValueError(f"{name} key must be 40 z85 characters (a 32-byte key)")
    return raw


class KeyRing:
    def __init__(
        self,
        public: bytes | str,
        secret: bytes | str,
        peers: Mapping[NodeId, bytes | str] | None = None,
        *,
        shared: bool = False,
    ) -> None:
        self.public = z85_key(public, "public")
        self.secret = z85_key(secret, "secret")
        if zmq.curve_public(self.secret) != self.public:
            raise ValueError("the CURVE public key does not belong to the secret key")
        self.shared = shared
        self._peers: dict[NodeId, bytes] = {}
        self._by_key: dict[bytes, NodeId] = {}
        self._listeners: list[ChangeListener] = []
        self.stats: Counter[str] = Counter()
        for node, key in (peers or {}).items():
            self._set(node, z85_key(key, f"{node}'s public"))

    @classmethod
    def shared_pair(cls, public: bytes | str, secret: bytes | str) -> KeyRing:
        """One key pair for the whole cluster (the previous model)."""
        return cls(public, secret, shared=True)

    # ------------------------------------------------------------ reading
    def key_of(self, node: NodeId) -> bytes | None:
        """The public key a connection to `node` must find there (None: not trusted)."""
        return self.public if self.shared else self._peers.get(node)

    def node_of(self, key: bytes) -> NodeId | None:
        """The trusted node a client key (z85) belongs to; None for an unknown key,
        and always in the shared model (every node has the same key)."""
        return None if self.shared else self._by_key.get(key)

    def trusts(self, node: NodeId) -> bool:
        return self.shared or node in self._peers

    def peers(self) -> dict[NodeId, bytes]:
        return dict(self._peers)

    # ------------------------------------------------------------ changing
    def listen(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def unlisten(self, listener: ChangeListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def trust(self, node: NodeId, key: bytes | str) -> None:
        """Trust `node` with public `key` (replacing any key it had)."""
        raw = z85_key(key, f"{node}'s public")
        if self._peers.get(node) == raw:
            return
        self._set(node, raw)
        self._changed({node})

    def revoke(self, node: NodeId) -> None:
        key = self._peers.pop(node, None)
        if key is None:
            return
        self._by_key.pop(key, None)
        log.warning("CURVE key of node %s revoked: its connections are refused", node)
        self._changed({node})

    def _set(self, node: NodeId, key: bytes) -> None:
        old = self._peers.get(node)
        if old is not None:
            self._by_key.pop(old, None)
        holder = self._by_key.get(key)
        if holder is not None and holder != node:
            raise ValueError(f"node {node} cannot have the key of node {holder}")
        self._peers[node] = key
        self._by_key[key] = node

    def _changed(self, nodes: set[NodeId]) -> None:
        for listener in list(self._listeners):
            try:
                listener(nodes)
            except Exception:
                log.exception("a key ring listener failed")

    # ------------------------------------------------------------ ZAP
    def admits(self, domain: str, key: bytes) -> bool:
        """ZAP credentials callback (key: z85): a trusted node's key only."""
        allowed = key == self.public if self.shared else key in self._by_key
        if allowed:
            self.stats["auth_accepted"] += 1
            return True
        count = self.stats["auth_rejected"] = self.stats["auth_rejected"] + 1
        if count & (count - 1) == 0:  # a refused client retries every few ms: log sparsely
            log.warning(
                "CURVE client key %s belongs to no member: refused [#%d]",
                key.decode("ascii", "replace"),
                count,
            )
        return False

    # pyzmq's Authenticator asks for the connection's User-Id with the raw key.
    def user_id(self, raw_key: bytes) -> str:
        node = self.node_of(z85.encode(raw_key))
        return node if node is not None else ""

    def callback(self, domain: str, key: bytes) -> bool:
        return self.admits(domain, key)

    def sender_ok(self, user_id: str | None, src: NodeId) -> bool:
        """Whether a message claiming to come from `src` may be accepted from a
        connection authenticated as `user_id`."""
        if self.shared:
            return True
        return user_id == src and src in self._peers


class _Gate(AsyncioAuthenticator):
    def __init__(self, context: zmq.asyncio.Context, ring: KeyRing) -> None:
        super().__init__(context, log=log.getChild("zap"))
        self._ring = ring

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._ring.user_id(client_public_key)


def start_gate(context: zmq.asyncio.Context, ring: KeyRing, domain: str) -> AsyncioAuthenticator:
    """The ZAP handler of `context`, admitting the ring's trusted keys on `domain` and
    naming each connection after its node.  Start it before a ROUTER binds, or the
    first handshakes would skip authentication."""
    auth = _Gate(context, ring)
    auth.start()
    auth.configure_curve_callback(domain, ring)
    return auth


# libzmq does not reconnect a socket whose handshake the peer refused (ZAP said no):
# a node refused because its key was not trusted yet would stay cut off after it is.
REFUSED_RETRY_S = 1.0


def when_refused(
    context: zmq.asyncio.Context, sock: zmq.Socket[bytes], callback: Callable[[], None]
) -> asyncio.Task[None] | None:
    """Call `callback` (from the event loop) REFUSED_RETRY_S after the peer first refuses
    `sock`'s CURVE handshake; the caller then opens a new socket.  The task ends when
    the socket is closed.  None outside an event loop (nothing to watch with)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    # `sock` lives in `context`: its monitor is read with an asyncio socket there.
    address = f"inproc://curve-refusals-{id(sock):x}"
    sock.monitor(address, zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_MONITOR_STOPPED)
    monitor = context.socket(zmq.PAIR)
    monitor.connect(address)

    async def watch() -> None:
        try:
            while True:
                event = zmq.utils.monitor.parse_monitor_message(await monitor.recv_multipart())
                if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    break
                if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                    return
            await asyncio.sleep(REFUSED_RETRY_S)
            callback()
        except (zmq.ZMQError, asyncio.CancelledError):
            return
        finally:
            monitor.close(linger=0)

    return loop.create_task(watch(), name="curve-refusal-watch")
