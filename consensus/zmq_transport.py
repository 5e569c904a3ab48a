"""Raft messages over ZeroMQ (pyzmq, asyncio), optionally CURVE-encrypted.

Topology: every node binds one ROUTER for everything it receives, and opens one
DEALER per peer, connected to that peer's ROUTER, whose routing identity is our
node id.  A reply therefore travels on the replier's own DEALER, never back
through the ROUTER: a ROUTER that sends silently drops messages for unknown or
slow peers, and here it never sends at all.  Each message is one frame (the
codec's bytes); the ROUTER prepends the sender's identity, which lets the reader
check that a message's `src` is the node that actually sent it.

The ZeroMQ pitfalls this is built around (see MISSION.md):
- ROUTER_HANDOVER: a peer restarted with the same identity takes over its old
  connection instead of being ignored while the stale one lingers.
- IMMEDIATE on DEALERs: no queueing for a peer that is not connected; the send
  fails at once and the message is dropped and counted.  Raft retransmits, and
  a message delivered seconds late is worse than one lost.
- LINGER=0 everywhere: close() discards whatever is still queued and returns.
- sends are NOBLOCK on plain (non-asyncio) DEALER sockets: zmq.Again means
  "not connected or queue full" and becomes a counted drop.  pyzmq's asyncio
  sockets would turn EAGAIN into a Future nobody awaits, so outgoing sockets
  are deliberately synchronous; they never block and never receive.
- ZeroMQ never says whether a message arrived: liveness is Raft's heartbeats.
  ZMTP heartbeats on the DEALERs only serve to notice a dead TCP connection
  (a peer machine that vanished) soon, so that IMMEDIATE starts failing sends.

Security: without CURVE anyone who can reach the port can connect and claim any
node id.  With CURVE (a consensus.keyring.KeyRing) every node has a key pair of its
own, the ZAP handler admits only the keys of trusted nodes, and a message is
accepted only from the node its connection authenticated as, while that node is
trusted; the older model of one key pair for the whole cluster (CurveKeys) is a
ring of that one key.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from consensus.codec import CodecError, decode, encode
from consensus.keyring import KeyRing, generate_keypair, start_gate, when_refused, z85_key
from consensus.messages import Message
from consensus.transport import MessageHandler
from consensus.types import NodeId

log = logging.getLogger(__name__)

_ZAP_DOMAIN = "ragraft"

# Socket tuning (milliseconds where relevant).
RECONNECT_IVL_MS = 50  # a restarted peer is found again within ~50 ms...
RECONNECT_IVL_MAX_MS = 1000  # ...and a dead one is retried at most once a second
ZMTP_HEARTBEAT_IVL_MS = 1000
ZMTP_HEARTBEAT_TIMEOUT_MS = 3000
BIND_RETRY_S = 1.0  # a restarted node may find its port still held for a moment


def normalize_address(address: str) -> str:
    """ "host:port" -> "tcp://host:port"; any "scheme://..." is kept as is."""
    address = address.strip()
    if "://" not in address:
        address = "tcp://" + address
    scheme, _, rest = address.partition("://")
    if scheme == "tcp":
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad ZeroMQ tcp address {address!r}: expected tcp://host:port")
    elif scheme not in ("ipc", "inproc") or not rest:
        raise ValueError(f"bad ZeroMQ address {address!r}: expected tcp://host:port")
    return address


def generate_cluster_keys() -> tuple[str, str]:
    """A fresh CURVE keypair as z85 strings: (public, secret)."""
    return generate_keypair()


_z85_key = z85_key


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """CURVE keys, z85-encoded (40 characters; str is accepted and converted).

    The model is one keypair for the whole cluster: every ROUTER is a CURVE
    server with `secret`, every DEALER a CURVE client with (public, secret)
    as its own keys and `server_public` as the server's key, and the ZAP
    handler admits exactly the client key `public`.  A node without the
    cluster secret can therefore neither complete a handshake with a member
    nor accept one from it.  As the ROUTER serves with `secret`,
    `server_public` must equal `public`; left empty, it is set to it.
    """

    public: bytes
    secret: bytes
    server_public: bytes = b""  # empty: the same as `public`

    def __post_init__(self) -> None:
        public = _z85_key(self.public, "public")
        secret = _z85_key(self.secret, "secret")
        server_public = (
            _z85_key(self.server_public, "server public") if self.server_public else public
        )
        if zmq.curve_public(secret) != public:
            raise ValueError("CURVE public key does not belong to the secret key")
        if server_public != public:
            raise ValueError(
                "server_public must be the cluster public key (one shared keypair per cluster)"
            )
        object.__setattr__(self, "public", public)
        object.__setattr__(self, "secret", secret)
        object.__setattr__(self, "server_public", server_public)

    @classmethod
    def cluster(cls, public: bytes | str, secret: bytes | str) -> CurveKeys:
        return cls(public, secret, public)  # type: ignore[arg-type]


async def bind_with_retry(socket: zmq.Socket[bytes], address: str) -> None:
    """Bind, retrying EADDRINUSE for BIND_RETRY_S: a restarted node may find its
    port still held for a moment by the process it replaces."""
    deadline = time.monotonic() + BIND_RETRY_S
    while True:
        try:
            socket.bind(address)
            return
        except zmq.ZMQError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise OSError(exc.errno, f"cannot bind {address}: {exc}") from exc
        await asyncio.sleep(0.05)


class ZmqTransport:
    """consensus.transport.Transport over ZeroMQ.  See the module docstring."""

    def __init__(
        self,
        node_id: NodeId,
        bind_address: str,
        curve: CurveKeys | KeyRing | None = None,
        *,
        sndhwm: int = 10_000,
        rcvhwm: int = 10_000,
        max_message_bytes: int = 64 << 20,
        max_batch: int = 512,
    ) -> None:
        identity = node_id.encode("utf-8")
        # ZeroMQ routing ids are 1..255 bytes; ids starting with a zero byte are
        # the ones a ROUTER makes up for anonymous peers.
        if not 0 < len(identity) <= 255 or identity[0] == 0:
            raise ValueError(
                f"node id {node_id!r} cannot be a ZeroMQ routing id "
                "(1..255 bytes, not starting with NUL)"
            )
        if curve is not None and not zmq.has("curve"):
            raise RuntimeError(
                "this libzmq has no CURVE support; install a pyzmq wheel (it bundles libsodium)"
            )
        self.node_id = node_id
        self.bind_address = normalize_address(bind_address)
        self._identity = identity
        # One model inside: a key pair shared by the cluster is a ring of one key.
        self._ring = (
            KeyRing.shared_pair(curve.public, curve.secret)
            if isinstance(curve, CurveKeys)
            else curve
        )
        self._addresses: dict[NodeId, str] = {}  # wanted peers, with a key or not yet
        self._watches: set[asyncio.Task[None]] = set()  # refusal watchers of the DEALERs
        self._sndhwm = sndhwm
        self._rcvhwm = rcvhwm
        self._max_message_bytes = max_message_bytes
        self._max_batch = max(1, max_batch)
        # A context of its own: the ZAP handler is per context, and close() can
        # then terminate everything this transport created and nothing else.
        self._ctx = zmq.asyncio.Context()
        self._router: zmq.Socket[bytes] | None = None
        self._dealers: dict[NodeId, tuple[str, zmq.Socket[bytes]]] = {}
        self._auth: AsyncioAuthenticator | None = None
        self._reader: asyncio.Task[None] | None = None
        self._handler: MessageHandler | None = None
        self._closed = False
        self._stats: Counter[str] = Counter()

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, handler: MessageHandler) -> None:
        if self._closed:
            raise RuntimeError("transport is closed")
        if self._router is not None:
            raise RuntimeError("transport already started")
        self._handler = handler
        if self._ring is not None:
            # The ZAP handler must be listening before the ROUTER accepts its
            # first handshake, or that handshake would skip authentication.
            self._auth = start_gate(self._ctx, self._ring, _ZAP_DOMAIN)
            self._ring.listen(self._keys_changed)
        # A plain socket: the reader waits on its ZMQ_FD itself (see _read_loop).
        router: zmq.Socket[bytes] = zmq.Socket(self._ctx, zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        router.setsockopt(zmq.RCVHWM, self._rcvhwm)
        router.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
        self._set_keepalive(router)
        if self._ring is not None:
            router.setsockopt(zmq.CURVE_SERVER, 1)
            router.setsockopt(zmq.CURVE_SECRETKEY, self._ring.secret)
            router.setsockopt(zmq.CURVE_PUBLICKEY, self._ring.public)
            router.setsockopt(zmq.ZAP_DOMAIN, _ZAP_DOMAIN.encode())
        self._router = router
        try:
            await bind_with_retry(router, self.bind_address)
        except BaseException:
            await self.close()
            raise
        self._reader = asyncio.create_task(
            self._read_loop(router), name=f"zmq-reader-{self.node_id}"
        )

    async def close(self) -> None:
        """Stop at once; everything still queued is discarded (LINGER=0).  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._ring is not None:
            self._ring.unlisten(self._keys_changed)
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            # wait() neither raises the reader's CancelledError nor swallows a
            # cancellation of close() itself.
            await asyncio.wait([reader])
        for watch in list(self._watches):
            watch.cancel()
        if self._watches:
            await asyncio.wait(list(self._watches))
        for _, sock in self._dealers.values():
            sock.close(linger=0)
        self._dealers.clear()
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        # Every socket is closed with LINGER=0, so terminating cannot wait on
        # pending messages; destroy() also closes anything we might have missed.
        self._ctx.destroy(linger=0)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- peers -----------------------------------------------------------------------

    def set_peers(self, addresses: Mapping[NodeId, str]) -> None:
        if self._closed:
            return
        wanted = {
            node: normalize_address(addr)
            for node, addr in addresses.items()
            if node != self.node_id
        }
        self._addresses = wanted
        for node, (address, sock) in list(self._dealers.items()):
            if wanted.get(node) != address:
                # Gone, or moved: whatever was queued for the old address is stale.
                sock.close(linger=0)
                del self._dealers[node]
        for node, address in wanted.items():
            if node not in self._dealers:
                self._connect(node, address)

    def _connect(self, node: NodeId, address: str) -> None:
        server_key = self._ring.key_of(node) if self._ring is not None else None
        if self._ring is not None and server_key is None:
            return  # not trusted (yet): no connection, messages for it are dropped
        sock = self._open_dealer(address, server_key)
        self._dealers[node] = (address, sock)
        if server_key is not None:
            watch = when_refused(self._ctx, sock, lambda: self._retry_refused(node, sock))
            if watch is not None:
                self._watches.add(watch)
                watch.add_done_callback(self._watches.discard)

    def _retry_refused(self, node: NodeId, sock: zmq.Socket[bytes]) -> None:
        # The peer refused our key (it did not trust us yet): a new socket tries again.
        entry = self._dealers.get(node)
        if self._closed or entry is None or entry[1] is not sock:
            return
        self._stats["refused_by_peer"] += 1
        del self._dealers[node]
        sock.close(linger=0)
        self._connect(node, entry[0])

    def _keys_changed(self, nodes: set[NodeId]) -> None:
        """A peer's key was trusted, replaced or revoked: reconnect with the new one."""
        if self._closed:
            return
        for node in nodes:
            entry = self._dealers.pop(node, None)
            if entry is not None:
                entry[1].close(linger=0)
            address = self._addresses.get(node)
            if address is not None:
                self._connect(node, address)

    def _open_dealer(self, address: str, server_key: bytes | None) -> zmq.Socket[bytes]:
        # A plain socket on our asyncio context: it is only ever used for
        # NOBLOCK sends (see the module docstring).
        sock: zmq.Socket[bytes] = zmq.Socket(self._ctx, zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, self._identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, self._sndhwm)
        sock.setsockopt(zmq.RCVHWM, 1)  # nothing is ever sent to a DEALER
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS)
        self._set_keepalive(sock)
        if self._ring is not None and server_key is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self._ring.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self._ring.secret)
        sock.connect(address)  # asynchronous: returns at once, connects in the background
        return sock

    @staticmethod
    def _set_keepalive(sock: zmq.Socket[bytes]) -> None:
        # Only a backstop for half-open connections; Raft heartbeats decide liveness.
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 10)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 5)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)

    # --- outgoing --------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Hand `message` to ZeroMQ without waiting.  Never raises for a peer that
        is unknown, unreachable or slow: the message is dropped and counted.
        Call it from the event loop's thread (ZeroMQ sockets are not thread-safe)."""
        peer = self._dealers.get(message.dst)
        if peer is None:
            self._drop("dropped_no_peer", message.dst)
            return
        try:
            data = encode(message)
        except CodecError:
            # A bug in whoever built the message; losing one message is what Raft
            # tolerates anyway, so keep the node alive and make it loud in the log.
            self._stats["encode_errors"] += 1
            self._stats["dropped"] += 1
            log.exception("cannot encode %s for %s", type(message).__name__, message.dst)
            return
        try:
            peer[1].send(data, zmq.NOBLOCK)
        except zmq.Again:
            # Not connected (IMMEDIATE) or SNDHWM reached: Raft will resend.
            self._drop("dropped_unreachable", message.dst)
        except zmq.ZMQError as exc:
            self._drop("dropped_error", message.dst)
            log.debug("send to %s failed: %s", message.dst, exc)
        else:
            self._stats["sent"] += 1
            self._stats["bytes_sent"] += len(data)

    def _drop(self, reason: str, peer: NodeId) -> None:
        self._stats["dropped"] += 1
        count = self._stats[reason] = self._stats[reason] + 1
        if count & (count - 1) == 0:  # 1st, 2nd, 4th, 8th...: visible but never a flood
            log.debug("%s: message to %s dropped (%s so far)", reason, peer, count)

    # --- incoming --------------------------------------------------------------------

    async def _read_loop(self, router: zmq.Socket[bytes]) -> None:
        # The event loop watches the ROUTER's ZMQ_FD directly: no pyzmq Future,
        # no failed receive (zmq.Again is an exception, built with a formatted
        # message) and no Python-level event juggling per message, which made
        # up most of a lightly loaded node's CPU time.  ZMQ_FD is edge-like: it
        # only says "look at ZMQ_EVENTS again", so each wake-up drains with
        # non-blocking receives while ZMQ_EVENTS reports POLLIN, up to
        # max_batch at a time, then yields to the loop so a flood of incoming
        # messages cannot starve the driver's other tasks.
        loop = asyncio.get_running_loop()
        fd = cast(int, router.getsockopt(zmq.FD))  # ZMQ_FD is an int option
        readable = asyncio.Event()
        loop.add_reader(fd, readable.set)
        batch = self._max_batch
        # Plain ints and the socket's own get()/recv(): pyzmq's getsockopt()
        # and recv_multipart() turn every option and result into an enum.
        events, pollin = int(zmq.EVENTS), int(zmq.POLLIN)
        rcvmore, noblock = int(zmq.RCVMORE), int(zmq.NOBLOCK)
        # ZMQ_EVENTS and ZMQ_RCVMORE are int options: the stubs' int | bytes is too wide.
        get, recv = cast(Callable[[int], int], router.get), router.recv
        # With a key per node, the last frame says which node its connection
        # authenticated as (ZAP's User-Id): frames are read as zmq.Frame for that.
        per_node = self._ring is not None and not self._ring.shared
        try:
            while True:
                received = 0
                while received < batch and get(events) & pollin:
                    if per_node:
                        parts = [recv(noblock, copy=False)]
                        while get(rcvmore):
                            parts.append(recv(noblock, copy=False))
                        user = cast(str, parts[-1].get("User-Id"))
                        self._on_frames([p.bytes for p in parts], user)
                    else:
                        frames = [recv(noblock)]
                        while get(rcvmore):
                            frames.append(recv(noblock))
                        self._on_frames(frames)
                    received += 1
                if received == batch:
                    await asyncio.sleep(0)
                    continue
                readable.clear()
                # Reading ZMQ_EVENTS above consumed the FD's signal; a message
                # that arrived since then signals it again.
                if not get(events) & pollin:
                    await readable.wait()
        except asyncio.CancelledError:
            raise
        except zmq.ZMQError as exc:
            if not self._closed:
                log.error("ZeroMQ reader of %s stopped: %s", self.node_id, exc)
        except Exception:  # pragma: no cover - _on_frames catches everything it expects
            log.exception("ZeroMQ reader of %s crashed", self.node_id)
        finally:
            if not loop.is_closed():
                loop.remove_reader(fd)

    def _on_frames(self, frames: list[bytes], user: str | None = None) -> None:
        stats = self._stats
        if len(frames) != 2:
            stats["malformed_frames"] += 1
            self._sparse_warning(
                "malformed_frames", "message with %d frames (expected identity + 1)", len(frames)
            )
            return
        identity, data = frames
        stats["bytes_received"] += len(data)
        try:
            message = decode(data)
        except CodecError as exc:
            stats["decode_errors"] += 1
            self._sparse_warning("decode_errors", "undecodable message from %r: %s", identity, exc)
            return
        if message.src.encode("utf-8") != identity:
            # Without this check any connected client could speak for another node.
            stats["spoofed"] += 1
            self._sparse_warning(
                "spoofed", "connection %r claims to be %r; dropped", identity, message.src
            )
            return
        if self._ring is not None and not self._ring.sender_ok(user, message.src):
            # Its connection authenticated as another node, or as one revoked since.
            stats["unauthenticated"] += 1
            self._sparse_warning(
                "unauthenticated",
                "message from %r over a connection of %r (not, or no longer, trusted); dropped",
                message.src,
                user,
            )
            return
        if message.dst != self.node_id:
            # e.g. a peer with a stale address book: the address now belongs to us.
            stats["misdirected"] += 1
            self._sparse_warning(
                "misdirected", "message for %r arrived at %r; dropped", message.dst, self.node_id
            )
            return
        stats["received"] += 1
        handler = self._handler
        assert handler is not None
        try:
            handler(message)
        except Exception:  # noqa: BLE001 - deliberately blind, see below
            # The reader must outlive a handler bug: one bad message must not
            # leave the node deaf.  The traceback is logged (sparsely).
            stats["handler_errors"] += 1
            self._sparse_warning(
                "handler_errors",
                "handler failed on %s from %s",
                type(message).__name__,
                message.src,
                exc_info=True,
            )

    def _sparse_warning(self, counter: str, fmt: str, *args: Any, exc_info: bool = False) -> None:
        # Logs the 1st, 2nd, 4th, 8th... occurrence: a peer sending garbage in a
        # loop is visible in the log without flooding it.  stats() has the totals.
        count = self._stats[counter]
        if count & (count - 1) == 0:
            log.warning(fmt + " [%s #%d]", *args, counter, count, exc_info=exc_info)

    # --- introspection ---------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        out = dict.fromkeys(
            (
                "sent",
                "received",
                "dropped",
                "dropped_no_peer",
                "dropped_unreachable",
                "decode_errors",
                "malformed_frames",
                "spoofed",
                "unauthenticated",
                "misdirected",
                "handler_errors",
            ),
            0,
        )
        out.update(self._stats)
        if self._ring is not None:
            out.update(self._ring.stats)
        out["peers"] = len(self._dealers)
        return out

    def peers(self) -> dict[NodeId, str]:
        return {node: address for node, (address, _) in self._dealers.items()}
