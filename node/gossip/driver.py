"""SWIM gossip over ZeroMQ on asyncio: the thin driver around core.Swim.

Topology as in consensus/zmq_transport.py, on a port of its own: every node
binds one ROUTER for everything it receives and opens one DEALER per member,
connected to that member's ROUTER, with our node id as routing identity.  A
reply travels on the replier's own DEALER, never back through the ROUTER (a
ROUTER silently drops what it cannot route).  One frame per message (the
codec's bytes); the ROUTER prepends the sender's identity, which must match
the message's `src`.

The ZeroMQ pitfalls (MISSION.md), handled as in the Raft transport:
- ROUTER_HANDOVER: a restarted node (same identity) takes over its old
  connection instead of being ignored.
- IMMEDIATE on DEALERs: a message for a member that is not connected fails at
  once and is dropped, never delivered seconds late.  For SWIM a late ack is
  a lie about the present; a lost one is what the protocol is built for.
- LINGER=0: close() returns at once.
- NOBLOCK sends on plain (non-asyncio) DEALERs: zmq.Again ("not connected" or
  "queue full") becomes a counted drop; nothing here ever waits on a send.
- ZeroMQ never confirms delivery: liveness comes from SWIM's acks only.
  DEALERs reconnect every 50 ms at first, backing off to 500 ms (not the Raft
  transport's 1 s): a restarted member should answer our pings well within a
  suspicion timeout.  And when a member comes back from the dead its DEALER is
  recreated at once, so that no backoff is left to wait out.

Timers: `tick()` every `tick_ms` (100 ms: the detection bound counts two
ticks, see core.py); the metadata provider every `meta_interval_ms` (1 s), on
the event loop, so it must be quick (NodeMetrics is: psutil and NVML calls
only).  Time is time.monotonic() in ms, which on Linux is one clock for every
process on the machine: status_since_ms can be compared across processes.

CURVE: the same key ring as the Raft transport (consensus.keyring.KeyRing), applied
the same way: a ZAP handler that admits only trusted nodes' keys, and a message
accepted only from the node its connection authenticated as, while trusted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, cast

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from consensus.keyring import KeyRing, start_gate, when_refused
from consensus.zmq_transport import CurveKeys, bind_with_retry, normalize_address
from node.gossip.codec import CodecError, decode, encode
from node.gossip.core import Event, Member, Out, Swim, SwimConfig
from node.gossip.messages import NodeId, Status

log = logging.getLogger(__name__)

_ZAP_DOMAIN = "ragraft-gossip"
RECONNECT_IVL_MS = 50
RECONNECT_IVL_MAX_MS = 500
LEAVE_GRACE_S = 0.1  # time for the goodbye pings to leave before LINGER=0 drops them

MetaProvider = Callable[[], Mapping[str, Any]]
ChangeHandler = Callable[[Event], None]


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Gossip:
    """One node's gossip endpoint.  Construct, `await start()`, read
    `members()` whenever you like, `await stop()`."""

    def __init__(
        self,
        node_id: NodeId,
        bind_address: str,
        seeds: Mapping[NodeId, str],
        meta_provider: MetaProvider | None = None,
        on_change: ChangeHandler | None = None,
        *,
        curve: CurveKeys | KeyRing | None = None,
        config: SwimConfig | None = None,
        advertise_address: str | None = None,
        incarnation: int | None = None,
        tick_ms: int = 100,
        meta_interval_ms: int = 1000,
        rng: random.Random | None = None,
        max_message_bytes: int = 1 << 20,
    ) -> None:
        identity = node_id.encode("utf-8")
        if not 0 < len(identity) <= 255 or identity[0] == 0:
            raise ValueError(f"node id {node_id!r} cannot be a ZeroMQ routing id")
        if curve is not None and not zmq.has("curve"):
            raise RuntimeError("this libzmq has no CURVE support")
        self.node_id = node_id
        self.bind_address = normalize_address(bind_address)
        address = normalize_address(advertise_address or bind_address)
        host = address.partition("://")[2].rpartition(":")[0]
        if host in ("*", "0.0.0.0", "[::]", "::"):
            raise ValueError(f"bind address {bind_address!r} is a wildcard: pass advertise_address")
        self.address = address
        self._identity = identity
        self._seeds = {node: normalize_address(addr) for node, addr in seeds.items()}
        if meta_provider is None:
            from node.gossip.metrics import NodeMetrics

            meta_provider = NodeMetrics()
        self._meta_provider = meta_provider
        self._on_change = on_change
        self._ring = (
            KeyRing.shared_pair(curve.public, curve.secret)
            if isinstance(curve, CurveKeys)
            else curve
        )
        self._tick_s = tick_ms / 1000
        self._meta_interval_ms = meta_interval_ms
        self._max_message_bytes = max_message_bytes
        # A restarted node must outrank its old self: a wall-clock millisecond
        # count does, unless the clock went back (the core then bumps past it
        # when it hears of its old self).
        self.core = Swim(
            node_id,
            address,
            {},
            config,
            rng,
            incarnation=incarnation if incarnation is not None else time.time_ns() // 1_000_000,
        )
        self._ctx: zmq.asyncio.Context | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._auth: AsyncioAuthenticator | None = None
        self._dealers: dict[NodeId, tuple[str, zmq.Socket[bytes]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._watches: set[asyncio.Task[None]] = set()  # refusal watchers of the DEALERs
        self._stats: Counter[str] = Counter()
        self._started = self._stopped = False

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("gossip already started")
        self._started = True
        self._refresh_meta()
        self.core.join(self._seeds)
        # A context of our own: the ZAP handler is per context, and stop() can
        # then destroy everything gossip created and nothing else.
        self._ctx = zmq.asyncio.Context()
        try:
            if self._ring is not None:
                # Listening before the ROUTER accepts its first handshake, or that
                # handshake would skip authentication.
                self._auth = start_gate(self._ctx, self._ring, _ZAP_DOMAIN)
                self._ring.listen(self._keys_changed)
            router = self._ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            router.setsockopt(zmq.RCVHWM, 1000)
            router.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
            if self._ring is not None:
                router.setsockopt(zmq.CURVE_SERVER, 1)
                router.setsockopt(zmq.CURVE_SECRETKEY, self._ring.secret)
                router.setsockopt(zmq.CURVE_PUBLICKEY, self._ring.public)
                router.setsockopt(zmq.ZAP_DOMAIN, _ZAP_DOMAIN.encode())
            self._router = router
            # bind_with_retry calls only the synchronous bind(), the same on an asyncio
            # socket, but consensus types its parameter as a plain zmq.Socket[bytes].
            await bind_with_retry(router, self.bind_address)  # type: ignore[arg-type]
        except BaseException:
            await self.stop(leave=False)
            raise
        for node, addr in self._seeds.items():
            if node != self.node_id:
                self._dealer(node, addr)  # connecting while the first tick is prepared
        self._tasks = [
            asyncio.create_task(self._read_loop(router), name=f"gossip-reader-{self.node_id}"),
            asyncio.create_task(self._tick_loop(), name=f"gossip-ticker-{self.node_id}"),
        ]

    async def stop(self, *, leave: bool = True) -> None:
        """Stop; with `leave`, tell the members first, so that they list us as
        "left" rather than suspecting us and declaring us dead.  Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._ring is not None:
            self._ring.unlisten(self._keys_changed)
        if leave and self._router is not None:
            self._send(self.core.leave(_now_ms()))
            await asyncio.sleep(LEAVE_GRACE_S)
        current = asyncio.current_task()
        tasks = [t for t in [*self._tasks, *self._watches] if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for _, sock in self._dealers.values():
            sock.close(linger=0)
        self._dealers.clear()
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None

    # --- reading ---------------------------------------------------------------------

    def members(self) -> dict[NodeId, Member]:
        return self.core.members()

    def snapshot(self) -> dict[NodeId, dict[str, Any]]:
        """members() as JSON-ready dicts for the API and the UI, with
        `status_age_ms` and `status_since_unix_ms` (status_since_ms is on this
        process's monotonic clock, meaningless to a browser)."""
        now = _now_ms()
        wall = time.time_ns() // 1_000_000
        table = {}
        for node, member in self.members().items():
            row = member.to_dict()
            age = max(0, now - member.status_since_ms)
            row["status_age_ms"] = age
            row["status_since_unix_ms"] = wall - age
            row["self"] = node == self.node_id
            table[node] = row
        return table

    def stats(self) -> dict[str, int]:
        out = dict.fromkeys(
            (
                "sent",
                "received",
                "dropped",
                "decode_errors",
                "malformed_frames",
                "spoofed",
                "stale_connection",
            ),
            0,
        )
        out.update(self._stats)
        out.update({f"swim_{k}": v for k, v in self.core.stats.items()})
        return out

    # --- loops -----------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        next_meta = _now_ms() + self._meta_interval_ms
        while True:
            now = _now_ms()
            if now >= next_meta:
                next_meta = now + self._meta_interval_ms
                self._refresh_meta()
                self._sync_dealers(self.core.members())  # e.g. a member that moved
            try:
                self._send(self.core.tick(now))
                self._after_step()
            except Exception:  # noqa: BLE001 - the ticker must outlive a bug
                self._stats["tick_errors"] += 1
                self._sparse("tick_errors", "gossip tick failed", exc_info=True)
            await asyncio.sleep(self._tick_s)

    async def _read_loop(self, router: zmq.asyncio.Socket) -> None:
        # With a key per node, a frame says which node its connection authenticated as.
        per_node = self._ring is not None and not self._ring.shared
        try:
            while True:
                if per_node:
                    parts = await router.recv_multipart(copy=False)
                    user = cast(str, parts[-1].get("User-Id"))
                    self._on_frames([p.bytes for p in parts], user)
                else:
                    self._on_frames(await router.recv_multipart())
        except asyncio.CancelledError:
            raise
        except zmq.ZMQError as exc:
            if not self._stopped:
                log.error("gossip reader of %s stopped: %s", self.node_id, exc)

    def _on_frames(self, frames: list[bytes], user: str | None = None) -> None:
        if len(frames) != 2:
            self._stats["malformed_frames"] += 1
            self._sparse("malformed_frames", "message with %d frames", len(frames))
            return
        identity, data = frames
        try:
            msg = decode(data)
        except CodecError as exc:
            self._stats["decode_errors"] += 1
            self._sparse("decode_errors", "undecodable gossip from %r: %s", identity, exc)
            return
        if msg.src.encode("utf-8") != identity:
            if identity[:1] == b"\x00":
                # A routing id ZeroMQ made up: with ROUTER_HANDOVER, a peer that
                # reconnected under its name leaves its previous connection renamed
                # like this, and a message still in flight on it arrives here.  It
                # cannot be verified, so it is dropped, but it is no impostor.
                self._stats["stale_connection"] += 1
                return
            # Without this check any connected client could speak for another node.
            self._stats["spoofed"] += 1
            self._sparse("spoofed", "connection %r claims to be %r", identity, msg.src)
            return
        if self._ring is not None and not self._ring.sender_ok(user, msg.src):
            # Its connection authenticated as another node, or one revoked since.
            self._stats["unauthenticated"] += 1
            self._sparse("unauthenticated", "gossip from %r over %r's connection", msg.src, user)
            return
        self._stats["received"] += 1
        try:
            self._send(self.core.receive(msg, _now_ms()))
            self._after_step()
        except Exception:  # noqa: BLE001 - one bad message must not leave the node deaf
            self._stats["handler_errors"] += 1
            self._sparse("handler_errors", "gossip handler failed", exc_info=True)

    def _refresh_meta(self) -> None:
        try:
            meta = self._meta_provider()
            self.core.update_meta(meta)
        except Exception:  # noqa: BLE001 - keep announcing the last good metadata
            self._stats["meta_errors"] += 1
            self._sparse("meta_errors", "metadata provider failed", exc_info=True)

    def _after_step(self) -> None:
        events = self.core.events()
        if not events:
            return
        self._sync_dealers(self.core.members())
        for event in events:
            if event.new_status is Status.ALIVE and event.old_status in (Status.DEAD, Status.LEFT):
                # Back from the dead: drop its DEALER, whose reconnect backoff may
                # still have hundreds of ms to run, and connect afresh.
                self._close_dealer(event.member.id)
                self._dealer(event.member.id, event.member.address)
            log.info(
                "gossip: %s %s -> %s (incarnation %d)",
                event.member.id,
                event.old_status.value if event.old_status else "new",
                event.new_status.value,
                event.member.incarnation,
            )
            if self._on_change is not None:
                try:
                    self._on_change(event)
                except Exception:  # noqa: BLE001 - a callback bug must not stop gossip
                    self._stats["callback_errors"] += 1
                    self._sparse("callback_errors", "on_change failed", exc_info=True)

    # --- sending ---------------------------------------------------------------------

    def _sync_dealers(self, members: Mapping[NodeId, Member]) -> None:
        # Connect ahead of the first ping: with IMMEDIATE, a DEALER opened at
        # the moment of sending would drop that message.
        for member in members.values():
            if member.id != self.node_id and member.status is not Status.LEFT:
                self._dealer(member.id, member.address)
        for node in [n for n in self._dealers if n not in members]:
            self._close_dealer(node)

    def _dealer(self, node: NodeId, address: str) -> zmq.Socket[bytes] | None:
        current = self._dealers.get(node)
        if current is not None:
            if current[0] == address:
                return current[1]
            self._close_dealer(node)  # moved: whatever is queued is for the old address
        if self._ctx is None:
            return None
        server_key = self._ring.key_of(node) if self._ring is not None else None
        if self._ring is not None and server_key is None:
            self._stats["untrusted_peers"] += 1  # no key for it (yet): nothing to connect to
            return None
        try:
            address = normalize_address(address)
        except ValueError:
            self._stats["bad_addresses"] += 1
            return None
        sock: zmq.Socket[bytes] = zmq.Socket(self._ctx, zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, self._identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RCVHWM, 1)  # nothing is ever sent to a DEALER
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        if self._ring is not None and server_key is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self._ring.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self._ring.secret)
        sock.connect(address)
        self._dealers[node] = (address, sock)
        if server_key is not None and self._ctx is not None:
            # libzmq gives up on a peer that refused our key: try again with a new socket.
            watch = when_refused(self._ctx, sock, lambda: self._retry_refused(node, sock))
            if watch is not None:
                self._watches.add(watch)
                watch.add_done_callback(self._watches.discard)
        return sock

    def _retry_refused(self, node: NodeId, sock: zmq.Socket[bytes]) -> None:
        entry = self._dealers.get(node)
        if not self._stopped and entry is not None and entry[1] is sock:
            self._stats["refused_by_peer"] += 1
            self._close_dealer(node)
            self._dealer(node, entry[0])

    def _keys_changed(self, nodes: set[NodeId]) -> None:
        # A key trusted, replaced or revoked: the next send reconnects with the new one.
        for node in nodes:
            self._close_dealer(node)

    def _close_dealer(self, node: NodeId) -> None:
        entry = self._dealers.pop(node, None)
        if entry is not None:
            entry[1].close(linger=0)

    def _send(self, outs: list[Out]) -> None:
        for out in outs:
            sock = self._dealer(out.dst, out.address)
            if sock is None:
                self._stats["dropped"] += 1
                continue
            try:
                data = encode(out.message)
            except CodecError:
                self._stats["encode_errors"] += 1
                self._stats["dropped"] += 1
                log.exception("cannot encode gossip %s", type(out.message).__name__)
                continue
            try:
                sock.send(data, zmq.NOBLOCK)
            except zmq.Again:
                self._stats["dropped"] += 1  # not connected (IMMEDIATE) or queue full
            except zmq.ZMQError as exc:
                self._stats["dropped"] += 1
                log.debug("gossip send to %s failed: %s", out.dst, exc)
            else:
                self._stats["sent"] += 1

    def _sparse(self, counter: str, fmt: str, *args: Any, exc_info: bool = False) -> None:
        # The 1st, 2nd, 4th, 8th... occurrence: visible, never a flood.
        count = self._stats[counter]
        if count & (count - 1) == 0:
            log.warning(fmt + " [%s #%d]", *args, counter, count, exc_info=exc_info)
