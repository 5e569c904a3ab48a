"""SWIM membership and failure detection as a pure state machine.

No sockets, clocks, threads or asyncio: time arrives as `now_ms` arguments
(any monotonic millisecond clock), randomness from an injected random.Random,
and whatever the core wants sent comes back from `tick()` and `receive()` as
`Out` values for the driver (node/gossip/driver.py) to deliver.  That is what
lets tests/test_gossip_core.py run whole clusters on a virtual clock over a
lossy, partitionable network, reproducibly.

The protocol (SWIM, with hashicorp/memberlist's adaptations as the reference):

- Probing.  Every protocol period (`probe_interval_ms`) a node pings the next
  member of its probe order.  No ack after `probe_timeout_ms`: it asks
  `indirect_checks` random alive members to ping the target for it (PingReq),
  and pings it once more itself; a helper that gets an ack forwards it.  Still
  no ack, direct or relayed, by the end of the period: the target becomes
  *suspect*.  A node that was itself stalled for more than a period judges
  nobody on that period (acks may be sitting unread in its socket).
- Suspicion.  A suspect is declared *dead* once it has been suspect for
  `suspicion_timeout_ms(n) = max(suspicion_min_ms, suspicion_mult * log10(n+1)
  * probe_interval_ms)` (memberlist scales by log10(n) with the timeout never
  below one multiple; we floor at an absolute minimum instead, which is what
  makes the small clusters we run predictable).  Every node that learns of a
  suspicion runs its own timer, so no single node's death can stall a verdict.
- Incarnations.  Each claim is about one incarnation of a member.  A node that
  hears itself suspected or declared dead at its current incarnation refutes:
  it bumps its incarnation and gossips "alive".  Claims are ordered by
  (incarnation, alive < suspect < dead < left): alive(i) overrides suspect(j<i),
  suspect(i) overrides alive(i), dead(i) overrides both, and a restarted node
  (given a higher incarnation by its driver, e.g. a millisecond clock) is alive
  again whatever its old self was.
- Dissemination.  Every change a node accepts is queued and piggybacked on its
  outgoing pings, acks and ping-reqs, each up to `retransmit_mult *
  ceil(log10(n+1))` times, at most `max_piggyback` per message, status changes
  before metadata refreshes.  The queue holds one entry per member (a newer
  claim replaces an older one), so it is bounded by the membership.  Joining,
  every `push_pull_interval_ms`, and whenever a node we know nothing about
  talks to us, a node also swaps its whole table with one member (Sync), which
  repairs whatever piggybacking missed.
- Metadata (CPU, memory, GPU, slots, running tasks, version) rides on "alive"
  claims, versioned by (incarnation, meta_version): `update_meta` bumps the
  version and queues the claim.
- Reconnection.  Dead members are not probed, but one of them is pinged every
  `dead_probe_interval_ms` with its own death notice attached, so that after a
  partition heals the "dead" side hears of it and refutes.

Detection bound.  Members are probed in a fixed random order (reshuffled only
when membership changes), so each member is probed exactly once every n-1
periods, n the number of live members including self.  A kill at time t is
therefore noticed by every survivor on its own by t + (n-1)*interval (start of
its next probe of the victim) + interval (the probe's period ends) = t + n*I,
and the victim is dead there T_s later.  Ticks arrive every `tick` ms, which
delays the suspect and the dead verdicts by at most one tick each:

    bound(n) = n * probe_interval + suspicion_timeout(n) + 2 * tick

At the defaults (500 ms, 250 ms, suspicion_mult 4, min 2000 ms, tick 100 ms):
n=3: 1500 + 2000 + 200 = 3.7 s; n=5: 2500 + 2000 + 200 = 4.7 s; n=9: 6.7 s.
Usually much sooner: the first of the n-1 survivors to probe the victim
spreads the suspicion, and each then runs its own timer from then on.  Message
loss cannot delay it (nothing the victim says can arrive); the one exception
is a victim that was refuting a suspicion when it died, whose "alive" claim at
a higher incarnation can reset a survivor's suspicion once (at most n*I more).
SWIM's usual reshuffle after every round would allow 2n-3 periods between two
probes of the same member instead of n-1.  memberlist's LAN defaults (1 s
probes, a suspicion timeout of at least 4 s at n=5, which Lifeguard starts
higher until other members confirm) take 5 s or more: hence our shorter
periods and a 2 s floor.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from node.gossip.messages import (
    MAX_INCARNATION,
    RANK,
    Ack,
    GossipMessage,
    NodeId,
    Ping,
    PingReq,
    Status,
    Sync,
    Update,
    freeze_meta,
)

_LIVE = (Status.ALIVE, Status.SUSPECT)  # probed, counted in n
_NO_META_KEY = (-1, -1)


@dataclass(frozen=True, slots=True)
class SwimConfig:
    probe_interval_ms: int = 500  # memberlist LAN: 1000
    probe_timeout_ms: int = 250  # memberlist LAN: 500; direct-ack wait before ping-req
    indirect_checks: int = 3  # as memberlist
    suspicion_mult: int = 4  # as memberlist
    suspicion_min_ms: int = 2000  # floor of the suspicion timeout
    retransmit_mult: int = 4  # as memberlist
    max_piggyback: int = 8  # updates per message (memberlist: whatever fits a UDP packet)
    push_pull_interval_ms: int = 10_000  # memberlist LAN: 30 s over TCP
    dead_probe_interval_ms: int = 2_000  # memberlist gossips to the dead for 30 s; we never stop
    max_events: int = 10_000  # events() not polled beyond this: the oldest are dropped

    def __post_init__(self) -> None:
        if self.probe_interval_ms <= 0 or not 0 < self.probe_timeout_ms < self.probe_interval_ms:
            raise ValueError("swim: need 0 < probe_timeout_ms < probe_interval_ms")
        if self.indirect_checks < 0 or self.suspicion_mult < 1 or self.suspicion_min_ms < 0:
            raise ValueError(
                "swim: indirect_checks >= 0, suspicion_mult >= 1, suspicion_min_ms >= 0"
            )
        if self.retransmit_mult < 1 or self.max_piggyback < 1 or self.max_events < 1:
            raise ValueError("swim: retransmit_mult, max_piggyback and max_events must be positive")
        if self.push_pull_interval_ms <= 0 or self.dead_probe_interval_ms <= 0:
            raise ValueError(
                "swim: push_pull_interval_ms and dead_probe_interval_ms must be positive"
            )

    def suspicion_timeout_ms(self, n: int) -> int:
        """How long a member stays suspect before it is declared dead, for a
        cluster of n live members."""
        scaled = self.suspicion_mult * math.log10(max(1, n) + 1) * self.probe_interval_ms
        return max(self.suspicion_min_ms, math.ceil(scaled))

    def retransmit_limit(self, n: int) -> int:
        """How many messages carry each update, for n live members."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(max(1, n) + 1)))

    def detection_bound_ms(self, n: int, tick_ms: int = 100) -> int:
        """Upper bound from a kill to "dead" at every survivor of a cluster of n
        (see the module docstring), when ticks come every `tick_ms`."""
        return n * self.probe_interval_ms + self.suspicion_timeout_ms(n) + 2 * tick_ms


@dataclass(frozen=True, slots=True)
class Member:
    """One member as this node sees it.  `meta` is shared: do not mutate it."""

    id: NodeId
    address: str
    status: Status
    incarnation: int
    meta: dict[str, Any]
    meta_version: int
    status_since_ms: int  # on the core's clock: when this node saw the status begin

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "status": self.status.value,
            "incarnation": self.incarnation,
            "meta": self.meta,
            "meta_version": self.meta_version,
            "status_since_ms": self.status_since_ms,
        }


@dataclass(frozen=True, slots=True)
class Event:
    """A member's status changed at this node (old_status None: newly learned)."""

    member: Member
    old_status: Status | None
    new_status: Status


@dataclass(frozen=True, slots=True)
class Out:
    """Send `message` to node `dst` at `address`."""

    dst: NodeId
    address: str
    message: GossipMessage


@dataclass(slots=True)
class _Record:
    id: NodeId
    address: str
    status: Status
    incarnation: int  # 0: a seed never heard from; such records are never gossiped
    meta: dict[str, Any]
    meta_version: int
    meta_key: tuple[int, int]  # (incarnation, meta_version) of `meta`
    since_ms: int
    timer_ms: int  # start of the suspicion timer (since_ms, shifted over our own stalls)


@dataclass(slots=True)
class _Queued:
    transmits: int
    urgent: bool  # a status change: sent before metadata refreshes
    order: int  # newer first among equals


@dataclass(slots=True)
class _Probe:
    target: NodeId
    seq: int
    started_ms: int
    acked: bool = False
    indirect_sent: bool = False


@dataclass(frozen=True, slots=True)
class _Relay:
    origin: NodeId
    origin_addr: str
    origin_seq: int
    target: NodeId
    expires_ms: int


class Swim:
    """One node's SWIM state.  See the module docstring."""

    def __init__(
        self,
        self_id: NodeId,
        address: str,
        meta: Mapping[str, Any],
        config: SwimConfig | None = None,
        rng: random.Random | None = None,
        *,
        incarnation: int = 1,
    ) -> None:
        if not self_id:
            raise ValueError("swim: empty node id")
        if incarnation < 1:
            # 0 marks seeds never heard from; a restarted node must outrank its
            # old self, so the driver passes something like a millisecond clock.
            raise ValueError("swim: incarnation must be >= 1")
        self.id = self_id
        self.address = address
        self.config = config or SwimConfig()
        self._rng = rng or random.Random()
        self._me = _Record(
            self_id,
            address,
            Status.ALIVE,
            incarnation,
            freeze_meta(meta),
            0,
            (incarnation, 0),
            0,
            0,
        )
        self._records: dict[NodeId, _Record] = {self_id: self._me}
        self._order: list[NodeId] = []  # probe order (never contains self)
        self._pos = 0
        self._queue: dict[NodeId, _Queued] = {}
        self._queue_order = 0
        self._events: deque[Event] = deque(maxlen=self.config.max_events)
        self._seq = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._pulled: dict[NodeId, int] = {}  # last Sync asked of a node we did not know
        self._seeds: dict[NodeId, str] = {}
        self._seeds_pending = False
        self._joined = True
        self._left = False
        self._last_tick_ms: int | None = None
        self._next_probe_ms: int | None = None
        self._next_join_ms = 0
        self._next_push_pull_ms: int | None = None
        self._next_dead_probe_ms: int | None = None
        self.stats: Counter[str] = Counter()
        self._enqueue(self_id, urgent=True)

    # --- inputs ----------------------------------------------------------------------

    def join(self, seeds: Mapping[NodeId, str]) -> None:
        """Contact `seeds` (id -> address): a Sync goes to each of them every
        period until some member has swapped tables with us.  Seeds we have not
        heard from are listed as suspect (incarnation 0): one that never answers
        is declared dead like any other member, which is what the runtime needs
        to requeue the tasks of a node that did not come back."""
        self._seeds.update({node: addr for node, addr in seeds.items() if node != self.id})
        if self._seeds:
            self._seeds_pending = True
            self._joined = False

    def update_meta(self, meta: Mapping[str, Any]) -> None:
        """Announce new metadata (a no-op when nothing changed).  Raises
        ValueError unless it is JSON-like (messages.check_meta)."""
        frozen = freeze_meta(meta)
        me = self._me
        if frozen == me.meta:
            return
        me.meta = frozen
        me.meta_version += 1
        me.meta_key = (me.incarnation, me.meta_version)
        self._enqueue(me.id, urgent=False)

    def leave(self, now_ms: int) -> list[Out]:
        """Say goodbye: every live member is told we left (so it marks us "left",
        not "dead"); the core sends nothing more afterwards."""
        if self._left:
            return []
        self._left = True
        self._me.status = Status.LEFT
        self._me.since_ms = now_ms
        goodbye = (self._update_of(self._me, with_meta=False),)
        # Pings, because every node answers them; the acks are ignored.
        return [
            Out(r.id, r.address, Ping(self.id, self.address, r.id, self._next_seq(), goodbye))
            for r in self._records.values()
            if r.id != self.id and r.status in _LIVE
        ]

    def forget(self, node: NodeId) -> None:
        """Drop a dead or left member (e.g. removed from the Raft cluster).  Gossip
        from a member that has not forgotten it may bring it back as dead."""
        rec = self._records.get(node)
        if rec is None or rec is self._me or rec.status in _LIVE:
            return
        del self._records[node]
        self._queue.pop(node, None)
        self._remove_from_order(node)

    def tick(self, now_ms: int) -> list[Out]:
        if self._left:
            return []
        out: list[Out] = []
        cfg = self.config
        if self._last_tick_ms is None:  # the first tick: time starts now
            self._me.since_ms = self._me.timer_ms = now_ms
            self._next_probe_ms = now_ms
            self._next_push_pull_ms = now_ms + cfg.push_pull_interval_ms
            self._next_dead_probe_ms = now_ms + cfg.dead_probe_interval_ms
        elif now_ms - self._last_tick_ms > cfg.probe_interval_ms:
            self._stalled(now_ms - self._last_tick_ms)
        self._last_tick_ms = now_ms
        if self._seeds_pending:
            self._seeds_pending = False
            for node, addr in self._seeds.items():
                if node not in self._records:
                    self._add(Update(Status.SUSPECT, node, addr, 0), now_ms)
        if not self._joined and now_ms >= self._next_join_ms:
            self._next_join_ms = now_ms + cfg.probe_interval_ms
            for node, addr in self._seeds.items():
                out.append(Out(node, addr, self._sync(node, reply=False)))

        probe = self._probe
        if (
            probe is not None
            and not probe.acked
            and not probe.indirect_sent
            and now_ms >= probe.started_ms + cfg.probe_timeout_ms
        ):
            probe.indirect_sent = True
            self._ask_helpers(probe, out)

        assert self._next_probe_ms is not None
        if now_ms >= self._next_probe_ms:
            if probe is not None and not probe.acked:
                self._probe_failed(probe, now_ms)
            self._probe = None
            self._start_probe(now_ms, out)
            # Anchored to the schedule, not to the tick, so that tick jitter does
            # not accumulate into a longer period (the detection bound counts
            # periods); after a stall, start afresh.
            self._next_probe_ms += cfg.probe_interval_ms
            if self._next_probe_ms <= now_ms:
                self._next_probe_ms = now_ms + cfg.probe_interval_ms

        timeout = cfg.suspicion_timeout_ms(self._live_count())
        for rec in list(self._records.values()):
            if rec.status is Status.SUSPECT and now_ms - rec.timer_ms >= timeout:
                self.stats["declared_dead"] += 1
                self._set_status(rec, Status.DEAD, now_ms)
                self._enqueue(rec.id, urgent=True)

        for seq in [s for s, r in self._relays.items() if now_ms >= r.expires_ms]:
            del self._relays[seq]
        if self._pulled:
            limit = now_ms - cfg.probe_interval_ms
            self._pulled = {node: at for node, at in self._pulled.items() if at > limit}

        assert self._next_push_pull_ms is not None and self._next_dead_probe_ms is not None
        if now_ms >= self._next_push_pull_ms:
            self._next_push_pull_ms = now_ms + cfg.push_pull_interval_ms
            alive = self._known(Status.ALIVE)
            if alive:
                peer = self._rng.choice(alive)
                out.append(Out(peer.id, peer.address, self._sync(peer.id, reply=False)))
        if now_ms >= self._next_dead_probe_ms:
            self._next_dead_probe_ms = now_ms + cfg.dead_probe_interval_ms
            dead = self._known(Status.DEAD)
            if dead:
                peer = self._rng.choice(dead)
                self.stats["dead_pings"] += 1
                out.append(Out(peer.id, peer.address, self._ping(peer.id, self._next_seq())))
        return out

    def receive(self, msg: GossipMessage, now_ms: int) -> list[Out]:
        if self._left:
            return []
        if msg.dst != self.id or msg.src == self.id:
            # Sent to whoever had this address before us, or looped back.
            self.stats["misdirected"] += 1
            return []
        out: list[Out] = []
        if type(msg) is not Sync:
            self._pull_if_unknown(msg.src, msg.src_addr, now_ms, out)
        if isinstance(msg, Sync):  # (no subclasses: the same test as `type(msg) is Sync`)
            self._apply_all(msg.states, now_ms)
            self._joined = True
            if not msg.reply:
                out.append(Out(msg.src, msg.src_addr, self._sync(msg.src, reply=True)))
            return out
        self._apply_all(msg.updates, now_ms)
        if type(msg) is Ping:
            self.stats["pings_received"] += 1
            ack = Ack(self.id, self.address, msg.src, msg.seq, self.id, self._piggyback(msg.src))
            out.append(Out(msg.src, msg.src_addr, ack))
        elif type(msg) is PingReq:
            seq = self._next_seq()
            self._relays[seq] = _Relay(
                msg.src, msg.src_addr, msg.seq, msg.target, now_ms + self.config.probe_interval_ms
            )
            self.stats["relayed_pings"] += 1
            out.append(Out(msg.target, msg.target_addr, self._ping(msg.target, seq)))
        elif type(msg) is Ack:
            relay = self._relays.get(msg.seq)
            if relay is not None and relay.target == msg.target:
                del self._relays[msg.seq]
                ack = Ack(
                    self.id,
                    self.address,
                    relay.origin,
                    relay.origin_seq,
                    relay.target,
                    self._piggyback(relay.origin),
                )
                out.append(Out(relay.origin, relay.origin_addr, ack))
            else:
                probe = self._probe
                if probe is not None and probe.seq == msg.seq and probe.target == msg.target:
                    probe.acked = True
                    if msg.src != msg.target:
                        self.stats["indirect_acks"] += 1
        return out

    # --- outputs ---------------------------------------------------------------------

    def members(self) -> dict[NodeId, Member]:
        return {
            r.id: Member(
                r.id, r.address, r.status, r.incarnation, r.meta, r.meta_version, r.since_ms
            )
            for r in self._records.values()
        }

    def events(self) -> list[Event]:
        """Status changes since the last call, oldest first."""
        events = list(self._events)
        self._events.clear()
        return events

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    @property
    def joined(self) -> bool:
        return self._joined

    # --- probing ---------------------------------------------------------------------

    def _start_probe(self, now_ms: int, out: list[Out]) -> None:
        order = self._order
        for _ in range(len(order)):
            if self._pos >= len(order):
                self._pos = 0
            rec = self._records[order[self._pos]]
            self._pos += 1
            if rec.status in _LIVE:
                seq = self._next_seq()
                self._probe = _Probe(rec.id, seq, now_ms)
                self.stats["probes"] += 1
                out.append(Out(rec.id, rec.address, self._ping(rec.id, seq)))
                return

    def _pull_if_unknown(self, src: NodeId, src_addr: str, now_ms: int, out: list[Out]) -> None:
        # A node is talking to us but all we know of it is a seed's name, or
        # nothing: its own "alive" was piggybacked its few times to others and
        # may never reach us (nobody re-gossips what everyone else knows).  Ask
        # for its table instead of waiting for the next push-pull, at most once
        # a period per node.
        rec = self._records.get(src)
        if rec is not None and rec.incarnation > 0:
            return
        last = self._pulled.get(src)
        if last is not None and now_ms - last < self.config.probe_interval_ms:
            return
        self._pulled[src] = now_ms
        self.stats["pulls"] += 1
        out.append(Out(src, src_addr, self._sync(src, reply=False)))

    def _ask_helpers(self, probe: _Probe, out: list[Out]) -> None:
        target = self._records.get(probe.target)
        if target is None:
            return
        # A second direct ping with the same seq goes along with the ping-reqs
        # (memberlist's TCP fallback ping plays that part): one lost ping or ack
        # then no longer leaves the verdict to the helpers alone.
        out.append(Out(target.id, target.address, self._ping(target.id, probe.seq)))
        helpers = [r for r in self._known(Status.ALIVE) if r.id != probe.target]
        k = min(self.config.indirect_checks, len(helpers))
        for helper in self._rng.sample(helpers, k):
            self.stats["ping_reqs"] += 1
            req = PingReq(
                self.id,
                self.address,
                helper.id,
                probe.seq,
                target.id,
                target.address,
                self._piggyback(helper.id),
            )
            out.append(Out(helper.id, helper.address, req))

    def _probe_failed(self, probe: _Probe, now_ms: int) -> None:
        rec = self._records.get(probe.target)
        if rec is None or rec.status is not Status.ALIVE:
            return  # already suspect (its timer runs) or already dead
        self.stats["suspected"] += 1
        self._set_status(rec, Status.SUSPECT, now_ms)
        self._enqueue(rec.id, urgent=True)

    def _stalled(self, gap_ms: int) -> None:
        # We did not run for a while (GC pause, overloaded host, SIGSTOP): acks
        # may be sitting unread in our socket, so the probe in flight proves
        # nothing, and suspects had no chance to reach us with a refutation.
        # Judging others by our own silence is how a slow node accuses healthy
        # ones (Lifeguard's point); abandon the probe and extend the timers.
        self.stats["stalls"] += 1
        self._probe = None
        for rec in self._records.values():
            if rec.status is Status.SUSPECT:
                rec.timer_ms += gap_ms

    # --- applying claims ---------------------------------------------------------------

    def _apply_all(self, updates: tuple[Update, ...], now_ms: int) -> None:
        for u in updates:
            if u.node == self.id:
                self._about_me(u)
            else:
                self._apply(u, now_ms)

    def _apply(self, u: Update, now_ms: int) -> None:
        rec = self._records.get(u.node)
        if rec is None:
            if u.incarnation == 0:
                return
            # Whatever the status: a joiner must learn of dead members too (the
            # Raft leader may be a node that restarted after the death).
            self._add(u, now_ms)
            self._enqueue(u.node, urgent=True)
            return
        if (u.incarnation, RANK[u.status]) > (rec.incarnation, RANK[rec.status]):
            if u.incarnation > rec.incarnation:
                rec.address = u.address  # a restart may move a node
            renewed = u.incarnation > rec.incarnation and u.status is rec.status
            rec.incarnation = u.incarnation
            if u.status is not rec.status:
                self._set_status(rec, u.status, now_ms)
            elif renewed and u.status is Status.SUSPECT:
                rec.timer_ms = now_ms  # suspected anew after a refutation we missed
            self._take_meta(rec, u)
            self._enqueue(rec.id, urgent=True)
        elif self._take_meta(rec, u):
            self._enqueue(rec.id, urgent=False)

    @staticmethod
    def _take_meta(rec: _Record, u: Update) -> bool:
        if u.meta is None or (u.incarnation, u.meta_version) <= rec.meta_key:
            return False
        rec.meta = u.meta
        rec.meta_version = u.meta_version
        rec.meta_key = (u.incarnation, u.meta_version)
        return True

    def _about_me(self, u: Update) -> None:
        me = self._me
        if u.status is Status.ALIVE:
            if u.incarnation > me.incarnation:
                # An earlier life of ours (a clock that went back) outranks us.
                me.incarnation = self._above(u.incarnation)
                me.meta_key = (me.incarnation, me.meta_version)
                self._enqueue(me.id, urgent=True)
            return
        if u.incarnation >= me.incarnation:
            self.stats["refuted"] += 1
            me.incarnation = self._above(u.incarnation)
            me.meta_key = (me.incarnation, me.meta_version)
        # Either a refutation or a stale rumour about an old incarnation: in both
        # cases whoever sent it must hear that we are alive, and soon.
        self._enqueue(me.id, urgent=True)

    def _above(self, incarnation: int) -> int:
        """The incarnation that outranks `incarnation`, or the wire's highest (a claim
        there, which only a forger makes, cannot be outranked: counted, not encoded
        out of range, which would stop this node from gossiping at all)."""
        if incarnation >= MAX_INCARNATION:
            self.stats["unrefutable_claims"] += 1
            return MAX_INCARNATION
        return incarnation + 1

    def _add(self, u: Update, now_ms: int) -> None:
        meta = u.meta if u.meta is not None else {}
        key = (u.incarnation, u.meta_version) if u.meta is not None else _NO_META_KEY
        rec = _Record(
            u.node,
            u.address,
            u.status,
            u.incarnation,
            meta,
            u.meta_version if u.meta is not None else 0,
            key,
            now_ms,
            now_ms,
        )
        self._records[u.node] = rec
        # A random position keeps the order a random permutation; inserting
        # before the cursor shifts it so that the rotation is not disturbed.
        at = self._rng.randint(0, len(self._order))
        self._order.insert(at, u.node)
        if at < self._pos:
            self._pos += 1
        self._emit(rec, None)

    def _remove_from_order(self, node: NodeId) -> None:
        at = self._order.index(node)
        del self._order[at]
        if at < self._pos:
            self._pos -= 1

    def _set_status(self, rec: _Record, status: Status, now_ms: int) -> None:
        old = rec.status
        rec.status = status
        rec.since_ms = rec.timer_ms = now_ms
        self._emit(rec, old)

    def _emit(self, rec: _Record, old: Status | None) -> None:
        member = Member(
            rec.id,
            rec.address,
            rec.status,
            rec.incarnation,
            rec.meta,
            rec.meta_version,
            rec.since_ms,
        )
        self._events.append(Event(member, old, rec.status))

    # --- dissemination -----------------------------------------------------------------

    def _enqueue(self, node: NodeId, *, urgent: bool) -> None:
        if self._records[node].incarnation == 0:
            return  # nothing true to say about a seed we never heard from
        self._queue_order += 1
        queued = self._queue.get(node)
        # A metadata refresh must not demote a status change still being spread.
        urgent = urgent or (queued is not None and queued.urgent)
        self._queue[node] = _Queued(0, urgent, self._queue_order)

    def _piggyback(self, dst: NodeId) -> tuple[Update, ...]:
        limit = self.config.retransmit_limit(self._live_count())
        chosen = sorted(
            self._queue.items(), key=lambda kv: (not kv[1].urgent, kv[1].transmits, -kv[1].order)
        )[: self.config.max_piggyback]
        updates = []
        for node, queued in chosen:
            rec = self._records.get(node)
            if rec is None:
                del self._queue[node]
                continue
            updates.append(self._update_of(rec, with_meta=rec.status is Status.ALIVE))
            queued.transmits += 1
            if queued.transmits >= limit:
                del self._queue[node]
        # Tell a member we doubt that we doubt it: it can refute in its ack at once
        # instead of waiting for the rumour to reach it.
        rec = self._records.get(dst)
        if (
            rec is not None
            and rec.status in (Status.SUSPECT, Status.DEAD)
            and rec.incarnation > 0
            and not any(u.node == dst for u in updates)
        ):
            updates.append(self._update_of(rec, with_meta=False))
        return tuple(updates)

    def _ping(self, dst: NodeId, seq: int) -> Ping:
        return Ping(self.id, self.address, dst, seq, self._piggyback(dst))

    def _sync(self, dst: NodeId, *, reply: bool) -> Sync:
        states = tuple(
            self._update_of(r, with_meta=r.status in _LIVE)
            for r in self._records.values()
            if r.incarnation > 0
        )
        self.stats["syncs_sent"] += 1
        return Sync(self.id, self.address, dst, reply, states)

    @staticmethod
    def _update_of(rec: _Record, *, with_meta: bool) -> Update:
        meta = rec.meta if with_meta and rec.meta_key != _NO_META_KEY else None
        return Update(rec.status, rec.id, rec.address, rec.incarnation, rec.meta_version, meta)

    # --- helpers -----------------------------------------------------------------------

    def _known(self, status: Status) -> list[_Record]:
        return [
            r
            for r in self._records.values()
            if r.status is status and r.id != self.id and r.incarnation > 0
        ]

    def _live_count(self) -> int:
        return sum(1 for r in self._records.values() if r.status in _LIVE)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq
