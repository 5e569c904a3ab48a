"""Async client of consensus/kvserver.py: many requests in flight over one
DEALER per server, failing over to another server when one does not answer.
Each client is a session of the servers' session table (consensus/session.py):
a put keeps its sequence number on every retry and failover, so it applies at
most once."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import Any

import msgpack
import zmq
import zmq.asyncio


class KVError(Exception):
    def __init__(self, payload: dict[str, Any]) -> None:
        self.code = payload.get("code", "error")
        self.payload = payload
        super().__init__(f"{self.code}: {payload.get('message', '')}")


class KVClient:
    def __init__(self, rpc_addresses: list[str], timeout: float = 5.0) -> None:
        self.addresses = [a if a.startswith("tcp://") else f"tcp://{a}" for a in rpc_addresses]
        self.timeout = timeout
        self._ctx = zmq.asyncio.Context.instance()
        self._socks: list[zmq.asyncio.Socket] = []
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._readers: list[asyncio.Task[None]] = []
        self._session = f"kv:{os.urandom(8).hex()}"
        self._started_ms = int(time.time() * 1000)
        self._seqs = itertools.count(1)
        self._unanswered: set[int] = set()  # puts still waiting: ack_below is below all of them
        for address in self.addresses:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 50)
            sock.connect(address)
            self._socks.append(sock)

    def _ensure_readers(self) -> None:
        if not self._readers:
            self._readers = [asyncio.create_task(self._read(s)) for s in self._socks]

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frame = await sock.recv()
            request_id, ok, payload = msgpack.unpackb(frame, raw=False)
            fut = self._pending.pop(request_id, None)
            if fut is not None and not fut.done():
                if ok:
                    fut.set_result(payload)
                else:
                    fut.set_exception(KVError(payload))

    async def call(
        self, server: int, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any:
        """One request to one server; raises TimeoutError if it does not answer."""
        self._ensure_readers()
        request_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        await self._socks[server].send(msgpack.packb([request_id, op, args], use_bin_type=True))
        try:
            return await asyncio.wait_for(fut, timeout or self.timeout)
        finally:
            self._pending.pop(request_id, None)

    async def put(
        self, key: str, value: bytes, server: int = 0, attempts: int = 3
    ) -> dict[str, Any]:
        """Replicate key=value through `server`, failing over to the next one on
        silence.  The same request is reused so a put applies at most once."""
        seq = next(self._seqs)
        self._unanswered.add(seq)
        last: BaseException | None = None
        try:
            for attempt in range(attempts):
                target = (server + attempt) % len(self._socks)
                request = [self._session, self._started_ms, seq, min(self._unanswered)]
                try:
                    answer: dict[str, Any] = await self.call(
                        target, "put", {"key": key, "value": value, "request": request}
                    )
                    return answer
                except TimeoutError as exc:
                    last = exc
                except KVError as exc:
                    if exc.code not in ("ProposalTimeout", "NodeStopped", "NoQuorum"):
                        raise
                    last = exc
            raise TimeoutError(f"put {key!r} failed on {attempts} servers: {last}")
        finally:
            self._unanswered.discard(seq)

    async def get(self, key: str, server: int = 0) -> Any:
        return (await self.call(server, "get", {"key": key}))["value"]

    async def status(self, server: int, timeout: float = 2.0) -> dict[str, Any]:
        status: dict[str, Any] = await self.call(server, "status", {}, timeout=timeout)
        return status

    def close(self) -> None:
        for task in self._readers:
            task.cancel()
        for sock in self._socks:
            sock.close(0)
