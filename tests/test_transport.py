"""Transports: ZmqTransport over real sockets on 127.0.0.1 (and across an OS
process boundary), and the in-process MemoryTransport used by driver tests.

Each test runs its own event loop with asyncio.run and bounds every wait, so a
broken transport fails a test in seconds instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import zmq

from consensus.codec import encode
from consensus.keyring import KeyRing, generate_keypair
from consensus.memtransport import MemoryNetwork, MemoryTransport
from consensus.messages import (
    AppendRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    TimeoutNow,
    VoteRequest,
)
from consensus.types import Entry
from consensus.zmq_transport import (
    CurveKeys,
    ZmqTransport,
    generate_cluster_keys,
    normalize_address,
)

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port nobody listens on right now.  ZeroMQ's own "bind to port 0" would
    not do: peers must know a node's address before it starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def addr() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


async def eventually(
    pred: Callable[[], bool],
    timeout: float = 3.0,
    what: str = "condition",
    action: Callable[[], None] | None = None,
    every: float = 0.02,
) -> None:
    """Wait until pred() holds, calling action() (a resend, typically) every
    `every` seconds meanwhile: ZeroMQ connects in the background and IMMEDIATE
    drops what is sent before, just as Raft's own retries would paper over."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        if action is not None:
            action()
        await asyncio.sleep(every)


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, msg: Message) -> None:
        self.messages.append(msg)

    def of_type(self, cls: type) -> list[Message]:
        return [m for m in self.messages if isinstance(m, cls)]


def hb(src: str, dst: str, n: int = 0, term: int = 1) -> HeartbeatRequest:
    return HeartbeatRequest(term, src, dst, commit=n, ctx=str(n).encode())


def run(coro_fn: Callable[[], Awaitable[None]], limit: float = 5.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro_fn(), limit)

    asyncio.run(bounded())


async def cluster(
    ids: list[str], curve: CurveKeys | None = None
) -> tuple[dict[str, ZmqTransport], dict[str, Inbox]]:
    addresses = {node: addr() for node in ids}
    transports = {node: ZmqTransport(node, addresses[node], curve) for node in ids}
    inboxes = {node: Inbox() for node in ids}
    for node, t in transports.items():
        await t.start(inboxes[node])
        t.set_peers(addresses)
    return transports, inboxes


async def close_all(transports: dict[str, ZmqTransport]) -> None:
    for t in transports.values():
        await t.close()


# --- ZmqTransport ------------------------------------------------------------------------


def test_two_nodes_exchange_messages_in_order() -> None:
    async def main() -> None:
        ts, inbox = await cluster(["a", "b"])
        try:
            a, b = ts["a"], ts["b"]
            await eventually(
                lambda: bool(inbox["b"].messages),
                action=lambda: a.send(hb("a", "b")),
                what="first message a -> b",
            )
            first = inbox["b"].messages[0]
            assert first == hb("a", "b")
            b.send(HeartbeatResponse(1, "b", "a", ctx=b"0"))
            await eventually(
                lambda: bool(inbox["a"].messages),
                action=lambda: b.send(HeartbeatResponse(1, "b", "a")),
                what="reply b -> a",
            )
            # once connected, a burst arrives complete and in order
            inbox["b"].messages.clear()
            entries = tuple(Entry(1, i + 1, data=os.urandom(100)) for i in range(64))
            for i in range(2000):
                a.send(AppendRequest(1, "a", "b", i, 1, entries if i % 100 == 0 else (), i))
            await eventually(lambda: len(inbox["b"].messages) >= 2000, what="2000 messages")
            got = inbox["b"].messages
            assert [m.prev_index for m in got] == list(range(2000))  # type: ignore[union-attr]
            assert got[0].entries == entries  # type: ignore[union-attr]
            sa, sb = a.stats(), b.stats()
            assert sb["received"] >= 2001 and sb["decode_errors"] == 0 and sb["spoofed"] == 0
            assert sa["sent"] >= 2001 and sa["peers"] == 1
        finally:
            await close_all(ts)

    run(main)


def test_three_nodes_all_to_all() -> None:
    async def main() -> None:
        ids = ["n1", "n2", "n3"]
        ts, inbox = await cluster(ids)
        try:

            def blast() -> None:
                for src in ids:
                    for dst in ids:
                        if src != dst:
                            ts[src].send(VoteRequest(2, src, dst, 5, 1, pre=True))

            def everyone_heard_everyone() -> bool:
                return all({m.src for m in inbox[n].messages} == set(ids) - {n} for n in ids)

            await eventually(everyone_heard_everyone, action=blast, what="all-to-all delivery")
            for n in ids:
                assert all(m.dst == n for m in inbox[n].messages)
        finally:
            await close_all(ts)

    run(main)


def test_restarted_peer_with_same_identity_is_reached_again() -> None:
    async def main() -> None:
        ts, inbox = await cluster(["a", "b"])
        a = ts["a"]
        b2: ZmqTransport | None = None
        try:
            await eventually(
                lambda: bool(inbox["b"].messages),
                action=lambda: a.send(hb("a", "b")),
                what="a -> b",
            )
            await eventually(
                lambda: bool(inbox["a"].messages),
                action=lambda: ts["b"].send(hb("b", "a")),
                what="b -> a",
            )
            # b "crashes" and comes back on the same address with the same id
            b_address = ts["b"].bind_address
            await ts["b"].close()
            inbox_b2 = Inbox()
            b2 = ZmqTransport("b", b_address)
            await b2.start(inbox_b2)
            b2.set_peers({"a": a.bind_address})
            # a's DEALER reconnects to the new ROUTER...
            await eventually(
                lambda: bool(inbox_b2.messages),
                action=lambda: a.send(hb("a", "b", 2)),
                what="a -> restarted b",
            )
            # ...and a's ROUTER lets the new "b" connection take over (ROUTER_HANDOVER)
            inbox["a"].messages.clear()
            await eventually(
                lambda: bool(inbox["a"].messages),
                action=lambda: b2.send(hb("b", "a", 3)),
                what="restarted b -> a",
            )
            assert inbox["a"].messages[0].src == "b"
        finally:
            await close_all(ts)
            if b2 is not None:
                await b2.close()

    run(main)


def test_new_connection_takes_over_an_identity_whose_old_connection_lingers() -> None:
    # The hard case of a restart: the old process hung or its machine vanished,
    # so its TCP connection still looks alive to a's ROUTER when the new "b"
    # connects.  Without ROUTER_HANDOVER the ROUTER keeps the stale connection
    # and ignores the new one until the old one times out.
    async def main() -> None:
        inbox = Inbox()
        a = ZmqTransport("a", addr())
        await a.start(inbox)
        ctx = zmq.Context()
        b2: ZmqTransport | None = None
        try:
            old_b = _raw_dealer(ctx, b"b", a.bind_address)
            old_b.send(encode(hb("b", "a", 1)))
            await eventually(lambda: bool(inbox.messages), what="the old b connection")
            b2 = ZmqTransport("b", addr())
            await b2.start(Inbox())
            b2.set_peers({"a": a.bind_address})
            await eventually(
                lambda: any(m.commit == 2 for m in inbox.messages),  # type: ignore[union-attr]
                action=lambda: b2.send(hb("b", "a", 2)),
                timeout=2.0,
                what="the new b connection to take over",
            )
        finally:
            await a.close()
            if b2 is not None:
                await b2.close()
            ctx.destroy(linger=0)

    run(main)


def test_send_to_absent_or_unknown_peer_neither_blocks_nor_raises() -> None:
    async def main() -> None:
        a = ZmqTransport("a", addr())
        await a.start(Inbox())
        try:
            a.set_peers({"ghost": f"127.0.0.1:{free_port()}"})  # "host:port" is accepted too
            assert a.peers() == {"ghost": a.peers()["ghost"]} and a.peers()["ghost"].startswith(
                "tcp://"
            )
            t0 = time.perf_counter()
            for i in range(5000):
                a.send(hb("a", "ghost", i))
            for i in range(1000):
                a.send(hb("a", "nobody", i))  # not in the peer set at all
            elapsed = time.perf_counter() - t0
            assert elapsed < 1.0, f"sends took {elapsed:.2f}s"
            s = a.stats()
            assert s["sent"] == 0
            # IMMEDIATE: nothing is queued for a peer that is not connected
            assert s["dropped_unreachable"] == 5000
            assert s["dropped_no_peer"] == 1000
            assert s["dropped"] == 6000
            # removing the peer closes its socket; its messages now count as unknown
            a.set_peers({})
            a.send(hb("a", "ghost"))
            assert a.stats()["dropped_no_peer"] == 1001 and a.stats()["peers"] == 0
        finally:
            await a.close()

    run(main)


def test_peer_address_change_reconnects() -> None:
    async def main() -> None:
        a = ZmqTransport("a", addr())
        inbox_b = Inbox()
        b = ZmqTransport("b", addr())
        await a.start(Inbox())
        await b.start(inbox_b)
        try:
            a.set_peers(
                {"a": a.bind_address, "b": f"tcp://127.0.0.1:{free_port()}"}
            )  # wrong port first
            assert set(a.peers()) == {"b"}  # never a socket to itself
            for _ in range(10):
                a.send(hb("a", "b"))
                await asyncio.sleep(0.01)
            assert not inbox_b.messages
            a.set_peers({"b": b.bind_address})
            await eventually(
                lambda: bool(inbox_b.messages),
                action=lambda: a.send(hb("a", "b")),
                what="delivery after address change",
            )
        finally:
            await a.close()
            await b.close()

    run(main)


def _raw_dealer(ctx: zmq.Context, identity: bytes, address: str) -> zmq.Socket:
    """A hand-made client: no IMMEDIATE, so what it sends waits for the connection."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, identity)
    s.connect(address)
    return s


def test_spoofed_misdirected_and_garbage_frames_are_dropped_and_counted() -> None:
    async def main() -> None:
        inbox = Inbox()
        a = ZmqTransport("a", addr())
        await a.start(inbox)
        ctx = zmq.Context()
        try:
            mallory = _raw_dealer(ctx, b"mallory", a.bind_address)
            mallory.send(encode(hb("b", "a", 1)))  # claims to be b
            mallory.send(encode(hb("mallory", "zed", 2)))  # meant for someone else
            mallory.send(b"\xc1 definitely not msgpack")
            mallory.send(
                encode(TimeoutNow(1, "mallory", "a"))[:-1] + b"\x00\x00"
            )  # wrong arity/trailing
            mallory.send_multipart([b"two", b"frames"])
            mallory.send(encode(hb("mallory", "a", 3)))  # a legitimate one, last (FIFO)
            await eventually(lambda: bool(inbox.messages), what="the legitimate message")
            assert inbox.messages == [hb("mallory", "a", 3)]
            s = a.stats()
            assert s["spoofed"] == 1
            assert s["misdirected"] == 1
            assert s["decode_errors"] == 2
            assert s["malformed_frames"] == 1
            assert s["received"] == 1
            # an anonymous client (no routing id: the ROUTER invents one) cannot
            # pass for anybody either
            anon = ctx.socket(zmq.DEALER)
            anon.setsockopt(zmq.LINGER, 0)
            anon.connect(a.bind_address)
            anon.send(encode(hb("b", "a", 4)))
            await eventually(lambda: a.stats()["spoofed"] == 2, what="anonymous spoof counted")
            assert len(inbox.messages) == 1
        finally:
            await a.close()
            ctx.destroy(linger=0)

    run(main)


def test_handler_exception_does_not_kill_the_reader() -> None:
    async def main() -> None:
        seen: list[int] = []

        def fragile(msg: Message) -> None:
            seen.append(msg.commit)  # type: ignore[union-attr]
            if msg.commit % 2 == 0:  # type: ignore[union-attr]
                raise RuntimeError("handler bug")

        a = ZmqTransport("a", addr())
        await a.start(fragile)
        ctx = zmq.Context()
        try:
            peer = _raw_dealer(ctx, b"p", a.bind_address)
            for i in range(10):
                peer.send(encode(hb("p", "a", i)))
            await eventually(lambda: len(seen) == 10, what="all 10 messages handled")
            assert seen == list(range(10))
            assert a.stats()["handler_errors"] == 5
        finally:
            await a.close()
            ctx.destroy(linger=0)

    run(main)


def test_close_is_fast_and_idempotent_with_queued_messages() -> None:
    async def main() -> None:
        # A sink that accepts the connection and never reads: everything a sends
        # piles up in a's DEALER queue and the kernel buffers.
        ctx = zmq.Context()
        sink = ctx.socket(zmq.ROUTER)
        sink.setsockopt(zmq.LINGER, 0)
        sink.setsockopt(zmq.RCVHWM, 1)
        sink_address = addr()
        sink.bind(sink_address)
        a = ZmqTransport("a", addr())
        await a.start(Inbox())
        a.set_peers({"sink": sink_address})
        big = AppendRequest(1, "a", "sink", 0, 0, (Entry(1, 1, data=b"x" * 20_000),), 0)
        try:
            await eventually(
                lambda: a.stats()["sent"] > 0,
                action=lambda: a.send(big),
                what="connection to the sink",
            )
            for _ in range(5000):
                a.send(big)
            assert a.stats()["sent"] > 1000  # queued, not delivered
            t0 = time.perf_counter()
            await a.close()
            elapsed = time.perf_counter() - t0
            assert elapsed < 1.0, f"close took {elapsed:.2f}s"
            await a.close()  # idempotent
            a.send(big)  # after close: dropped, not raised
            a.set_peers({"sink": sink_address})  # ignored
        finally:
            await a.close()
            ctx.destroy(linger=0)

    run(main)


def test_close_without_start_and_bad_arguments() -> None:
    async def main() -> None:
        t = ZmqTransport("a", "127.0.0.1:1")
        t.set_peers({"b": "tcp://127.0.0.1:2"})
        await t.close()
        await t.close()
        with pytest.raises(RuntimeError):
            await t.start(Inbox())

    run(main)
    with pytest.raises(ValueError):
        ZmqTransport("", "tcp://127.0.0.1:1")
    with pytest.raises(ValueError):
        ZmqTransport("x" * 300, "tcp://127.0.0.1:1")
    for bad in ("127.0.0.1", "tcp://:80", "tcp://h:0", "tcp://h:http", "udp://h:1"):
        with pytest.raises(ValueError):
            normalize_address(bad)
    assert normalize_address(" node-1:7001 ") == "tcp://node-1:7001"
    assert normalize_address("ipc:///tmp/x.sock") == "ipc:///tmp/x.sock"


def test_bind_conflict_is_reported() -> None:
    async def main() -> None:
        address = addr()
        a = ZmqTransport("a", address)
        await a.start(Inbox())
        try:
            b = ZmqTransport("b", address)
            t0 = time.perf_counter()
            with pytest.raises(OSError):
                await b.start(Inbox())
            assert time.perf_counter() - t0 < 2.0
            assert b.closed
        finally:
            await a.close()

    run(main)


# --- CURVE ---------------------------------------------------------------------------------


def test_curve_keys_validation() -> None:
    assert zmq.has("curve")
    public, secret = generate_cluster_keys()
    assert isinstance(public, str) and len(public) == 40 and len(secret) == 40
    keys = CurveKeys.cluster(public, secret)
    assert keys.public == public.encode() and keys.server_public == keys.public
    assert CurveKeys(public.encode(), secret.encode(), public.encode()) == keys
    other_public, other_secret = generate_cluster_keys()
    with pytest.raises(ValueError, match="does not belong"):
        CurveKeys.cluster(public, other_secret)
    with pytest.raises(ValueError, match="server_public"):
        CurveKeys(public, secret, other_public)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="40 z85"):
        CurveKeys.cluster("short", secret)


def test_curve_members_talk_and_outsiders_get_nothing_through() -> None:
    async def main() -> None:
        keys = CurveKeys.cluster(*generate_cluster_keys())
        wrong = CurveKeys.cluster(*generate_cluster_keys())
        a_addr, b_addr, c_addr = addr(), addr(), addr()
        a, b = ZmqTransport("a", a_addr, keys), ZmqTransport("b", b_addr, keys)
        c = ZmqTransport("c", c_addr, wrong)  # a node with another cluster's key
        ia, ib, ic = Inbox(), Inbox(), Inbox()
        ctx = zmq.Context()
        try:
            for t, inbox in ((a, ia), (b, ib), (c, ic)):
                await t.start(inbox)
            a.set_peers({"b": b_addr, "c": c_addr})
            b.set_peers({"a": a_addr})
            c.set_peers({"a": a_addr, "b": b_addr})

            await eventually(
                lambda: bool(ib.messages),
                action=lambda: a.send(hb("a", "b")),
                what="a -> b (CURVE)",
            )
            await eventually(
                lambda: bool(ia.messages),
                action=lambda: b.send(hb("b", "a")),
                what="b -> a (CURVE)",
            )
            assert a.stats()["auth_accepted"] >= 1

            # A client that knows the cluster's *public* key (so passes as far as
            # the server key) but has its own keypair: the ZAP allow-list refuses it.
            rogue_public, rogue_secret = zmq.curve_keypair()
            rogue = _raw_dealer_curve(ctx, b"c", a_addr, keys.public, rogue_public, rogue_secret)
            rogue.send(encode(hb("c", "a", 666)))
            # A plaintext client gets nowhere either.
            plain = _raw_dealer(ctx, b"c", a_addr)
            plain.send(encode(hb("c", "a", 667)))

            ia.messages.clear()
            ib.messages.clear()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                a.send(hb("a", "c"))
                c.send(hb("c", "a"))
                c.send(hb("c", "b"))
                await asyncio.sleep(0.02)
            await eventually(
                lambda: a.stats()["auth_rejected"] >= 1, what="ZAP rejection of the rogue client"
            )
            assert ic.messages == []  # c never heard a member
            assert ia.messages == [] and ib.messages == []  # no member heard c or the rogues
            assert a.stats()["dropped_unreachable"] > 0  # a's sends to c never found a connection
            assert c.stats()["sent"] == 0  # nor did c's
        finally:
            for t in (a, b, c):
                await t.close()
            ctx.destroy(linger=0)

    run(main)


def _raw_dealer_curve(
    ctx: zmq.Context,
    identity: bytes,
    address: str,
    server_public: bytes,
    public: bytes,
    secret: bytes,
) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, identity)
    s.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    s.setsockopt(zmq.CURVE_PUBLICKEY, public)
    s.setsockopt(zmq.CURVE_SECRETKEY, secret)
    s.connect(address)
    return s


# --- a real second process ----------------------------------------------------------------

ECHO_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from consensus.messages import HeartbeatRequest, HeartbeatResponse, TimeoutNow
    from consensus.zmq_transport import ZmqTransport

    async def main(my_address, main_address):
        done = asyncio.Event()
        transport = ZmqTransport("echo", my_address)

        def handle(msg):
            if isinstance(msg, TimeoutNow):
                done.set()
            elif isinstance(msg, HeartbeatRequest):
                ctx = msg.ctx + b"@" + str(os.getpid()).encode()
                transport.send(HeartbeatResponse(msg.term, "echo", msg.src, ctx))

        await transport.start(handle)
        transport.set_peers({"main": main_address})
        print("ready", flush=True)
        try:
            await asyncio.wait_for(done.wait(), 20)
        finally:
            await transport.close()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_echo_across_os_processes(tmp_path: Path) -> None:
    async def main() -> None:
        script = tmp_path / "echo_node.py"
        script.write_text(ECHO_SCRIPT)
        main_addr, echo_addr = addr(), addr()
        inbox = Inbox()
        t = ZmqTransport("main", main_addr)
        await t.start(inbox)
        t.set_peers({"echo": echo_addr})
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            echo_addr,
            main_addr,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 4.0)
            assert line.strip() == b"ready", line

            def answered() -> set[bytes]:
                return {m.ctx.split(b"@")[0] for m in inbox.of_type(HeartbeatResponse)}  # type: ignore[union-attr]

            def resend_missing() -> None:
                got = answered()
                for i in range(100):
                    if str(i).encode() not in got:
                        t.send(hb("main", "echo", i))

            await eventually(
                lambda: len(answered()) == 100,
                action=resend_missing,
                every=0.05,
                what="100 echoes from the other process",
            )
            pids = {m.ctx.split(b"@")[1] for m in inbox.of_type(HeartbeatResponse)}  # type: ignore[union-attr]
            assert pids == {str(proc.pid).encode()} and proc.pid != os.getpid()
            assert all(m.src == "echo" for m in inbox.messages)
            await eventually(
                lambda: proc.returncode is not None,
                timeout=3.0,
                action=lambda: t.send(TimeoutNow(1, "main", "echo")),
                every=0.05,
                what="the echo process to stop",
            )
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await t.close()

    run(main, limit=10.0)


# --- MemoryTransport ------------------------------------------------------------------------


async def mem_cluster(
    net: MemoryNetwork, ids: list[str]
) -> tuple[dict[str, MemoryTransport], dict[str, Inbox]]:
    ts = {n: net.transport(n) for n in ids}
    inboxes = {n: Inbox() for n in ids}
    for n, t in ts.items():
        await t.start(inboxes[n])
        t.set_peers({m: f"mem://{m}" for m in ids})
    return ts, inboxes


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_memory_delivery_is_asynchronous_and_ordered() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        ts, inbox = await mem_cluster(net, ["a", "b"])
        depth = 0

        def reentrancy_probe(msg: Message) -> None:
            assert depth == 0, "handler ran inside send()"
            inbox["b"](msg)

        ts["b"]._handler = reentrancy_probe  # type: ignore[assignment]
        for i in range(100):
            depth += 1
            ts["a"].send(hb("a", "b", i))
            depth -= 1
        assert inbox["b"].messages == []  # nothing yet: delivery waits for the loop
        await settle()
        assert [m.commit for m in inbox["b"].messages] == list(range(100))  # type: ignore[union-attr]
        assert inbox["b"].messages[0] is not None and ts["b"].stats()["received"] == 100

    run(main)


def test_memory_partition_isolate_heal() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        ids = ["a", "b", "c"]
        ts, inbox = await mem_cluster(net, ids)

        def all_pairs() -> None:
            for s in ids:
                for d in ids:
                    if s != d:
                        ts[s].send(hb(s, d))

        def heard() -> dict[str, set[str]]:
            out = {n: {m.src for m in inbox[n].messages} for n in ids}
            for n in ids:
                inbox[n].messages.clear()
            return out

        net.partition("a", "b")
        all_pairs()
        await settle()
        assert heard() == {"a": {"c"}, "b": {"c"}, "c": {"a", "b"}}

        net.heal()
        net.block("a", "c")  # one way only
        all_pairs()
        await settle()
        assert heard() == {"a": {"b", "c"}, "b": {"a", "c"}, "c": {"b"}}

        net.heal()
        net.isolate("c")
        all_pairs()
        await settle()
        assert heard() == {"a": {"b"}, "b": {"a"}, "c": set()}

        # a partition cuts messages already "in flight" too
        net.heal()
        ts["a"].send(hb("a", "b"))
        net.partition("a", "b")
        await settle()
        assert heard()["b"] == set()

        net.heal()
        all_pairs()
        await settle()
        assert heard() == {"a": {"b", "c"}, "b": {"a", "c"}, "c": {"a", "b"}}
        assert ts["a"].stats()["dropped_partition"] > 0

    run(main)


def test_memory_drop_rate_is_seeded_and_counted() -> None:
    async def trial(seed: int) -> list[int]:
        net = MemoryNetwork(seed=seed, drop_rate=0.3)
        ts, inbox = await mem_cluster(net, ["a", "b"])
        for i in range(1000):
            ts["a"].send(hb("a", "b", i))
        await settle()
        s = ts["a"].stats()
        assert s["dropped_random"] == s["dropped"] == 1000 - len(inbox["b"].messages)
        assert 200 < s["dropped_random"] < 400
        return [m.commit for m in inbox["b"].messages]  # type: ignore[union-attr]

    results: list[list[int]] = []

    async def main() -> None:
        results.append(await trial(1))
        results.append(await trial(1))
        results.append(await trial(2))

    run(main)
    assert results[0] == results[1] != results[2]


def test_memory_unknown_closed_and_restarted_nodes() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        ts, inbox = await mem_cluster(net, ["a", "b"])
        ts["a"].send(hb("a", "zed"))  # not a peer
        assert ts["a"].stats()["dropped_no_peer"] == 1
        ts["a"].send(hb("a", "b", 1))
        await ts["b"].close()  # closes while the message is in flight
        await settle()
        assert inbox["b"].messages == []
        ts["a"].send(hb("a", "b", 2))  # b is down
        assert ts["a"].stats()["dropped_unreachable"] == 1
        # b restarts (a new transport with the same id takes over)
        b2, inbox_b2 = net.transport("b"), Inbox()
        await b2.start(inbox_b2)
        ts["a"].send(hb("a", "b", 3))
        await settle()
        assert [m.commit for m in inbox_b2.messages] == [3]  # type: ignore[union-attr]
        with pytest.raises(ValueError):
            await net.transport("b").start(Inbox())  # two live nodes with one id
        await ts["b"].close()  # idempotent

    run(main)


def test_memory_handler_exception_is_contained() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        a, b = net.transport("a"), net.transport("b")
        seen: list[int] = []

        def fragile(msg: Message) -> None:
            seen.append(msg.commit)  # type: ignore[union-attr]
            raise RuntimeError("boom")

        await a.start(Inbox())
        await b.start(fragile)
        a.set_peers({"b": "mem://b"})
        a.send(hb("a", "b", 1))
        a.send(hb("a", "b", 2))
        await settle()
        assert seen == [1, 2] and b.stats()["handler_errors"] == 2

    run(main)


# --- a key per node -------------------------------------------------------------------------


def rings(ids: list[str]) -> dict[str, KeyRing]:
    """Each node's own key pair, each trusting every node's public key."""
    pairs = {node: generate_keypair() for node in ids}
    publics = {node: public for node, (public, _) in pairs.items()}
    return {node: KeyRing(public, secret, publics) for node, (public, secret) in pairs.items()}


def test_a_key_ring_checks_its_keys_and_maps_keys_to_nodes() -> None:
    ring = rings(["a", "b"])["a"]
    b_key = ring.key_of("b")
    assert b_key is not None and ring.node_of(b_key) == "b" and ring.trusts("b")
    assert ring.admits("*", b_key) and not ring.admits("*", generate_keypair()[0].encode())
    with pytest.raises(ValueError, match="cannot have the key of node b"):
        ring.trust("c", b_key)
    with pytest.raises(ValueError, match="40 z85"):
        ring.trust("c", "short")
    other = generate_keypair()
    with pytest.raises(ValueError, match="does not belong"):
        KeyRing(other[0], generate_keypair()[1])
    ring.revoke("b")
    assert not ring.trusts("b") and not ring.admits("*", b_key) and ring.key_of("b") is None
    assert (
        not ring.sender_ok("b", "b") and not ring.sender_ok("a", "c") and ring.sender_ok("a", "a")
    )
    shared = KeyRing.shared_pair(*other)
    assert shared.key_of("anyone") == shared.public and shared.node_of(shared.public) is None


def test_with_a_key_per_node_a_member_cannot_speak_for_another_and_a_revoked_one_is_silenced() -> (
    None
):
    async def main() -> None:
        keys = rings(["a", "b", "c"])
        addresses = {node: addr() for node in keys}
        ts = {node: ZmqTransport(node, addresses[node], keys[node]) for node in keys}
        inbox = {node: Inbox() for node in keys}
        ctx = zmq.Context()
        try:
            for node, t in ts.items():
                await t.start(inbox[node])
                t.set_peers(addresses)
            await eventually(
                lambda: bool(inbox["a"].of_type(HeartbeatRequest)),
                action=lambda: ts["b"].send(hb("b", "a", 1)),
                what="b -> a with b's own key",
            )
            # revoking b at a: b's messages, on the connection it already has, are dropped,
            # and a no longer connects to b
            keys["a"].revoke("b")
            inbox["a"].messages.clear()
            for i in range(20):
                ts["b"].send(hb("b", "a", 1000 + i))
                await asyncio.sleep(0.02)
            assert inbox["a"].messages == []
            assert ts["a"].stats()["unauthenticated"] >= 1
            assert "b" not in ts["a"].peers()
            await eventually(
                lambda: bool(inbox["a"].messages),
                action=lambda: ts["c"].send(hb("c", "a", 5)),
                what="c -> a after b's revocation",
            )
            # trusting b again (say, it rejoined) lets it through and reconnects a to it
            keys["a"].trust("b", keys["b"].public)
            await eventually(lambda: "b" in ts["a"].peers(), what="a reconnects to b")
            await eventually(
                lambda: any(m.src == "b" for m in inbox["a"].messages),
                action=lambda: ts["b"].send(hb("b", "a", 7)),
                what="b -> a once trusted again",
            )
            # c, a member with a valid key, connects under b's routing id and claims to be b;
            # a stranger with a key pair of its own is refused at the handshake
            c_public, c_secret = keys["c"].public, keys["c"].secret
            a_public = keys["a"].public
            liar = _raw_dealer_curve(ctx, b"b", addresses["a"], a_public, c_public, c_secret)
            stranger_public, stranger_secret = zmq.curve_keypair()
            stranger = _raw_dealer_curve(
                ctx, b"c", addresses["a"], a_public, stranger_public, stranger_secret
            )
            before = ts["a"].stats()["unauthenticated"]
            inbox["a"].messages.clear()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                for sock, n in ((liar, 666), (stranger, 667)):
                    with contextlib.suppress(zmq.Again):  # refused: no connection to queue on
                        sock.send(encode(hb(sock is liar and "b" or "c", "a", n)), zmq.NOBLOCK)
                await asyncio.sleep(0.02)
            await eventually(
                lambda: ts["a"].stats()["unauthenticated"] > before, what="the liar dropped"
            )
            assert ts["a"].stats()["auth_rejected"] >= 1
            assert all(m.commit not in (666, 667) for m in inbox["a"].of_type(HeartbeatRequest))
        finally:
            await close_all(ts)
            ctx.destroy(linger=0)

    run(main, limit=15)
