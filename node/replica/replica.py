"""`Replica`: the one seam between a node's code and its replicated state.

Everything that changes the state proposes a command here; everything that
reads it reads this node's replica through here.  The Raft driver
(consensus/driver.py) is an implementation detail behind it:

- `await propose(cmd)` encodes the command with the one codec, replicates it and
  returns its result once it is applied on this node (read-your-writes), or
  raises `Refused` (the state refused it: a code, a message, details) or
  `NoQuorum` (it could not be replicated now; `written` says whether it may
  still apply later, so a caller knows whether a retry needs an idempotency key);
- `propose_blocking(cmd)` does the same from a worker thread, retrying while the
  cluster has no quorum;
- `read_barrier()` makes the local reads that follow linearizable;
- the membership calls of the cluster API, and what the UI shows of the node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

from consensus import errors as raft_errors
from consensus.driver import Backup, NodeStopped, ProposalTimeout, RaftNode
from node.replica import codec
from node.replica import commands as c
from node.replica.formats import FIRST_FORMAT, FormatView, cluster_format
from node.replica.refusal import Refusal, RefusalCode, Refused, refuse
from node.replica.state import NodeState

log = logging.getLogger("ragraft.replica")

Written = Literal["no", "maybe"]
T = TypeVar("T")


class NoQuorum(Exception):
    """The command could not be replicated now.  `written`: "no" when it certainly
    did not reach the log, "maybe" when it may still apply (retry with the same
    idempotency key, or check)."""

    def __init__(self, message: str, written: Written) -> None:
        super().__init__(message)
        self.written = written


class NotLeader(Exception):
    """A membership call made on a node that is not the leader."""

    def __init__(self, leader: str | None) -> None:
        where = f"the leader is {leader}" if leader else "no leader is known"
        super().__init__(f"this node is not the leader; {where}")
        self.leader = leader


class Replica:
    def __init__(self, raft: RaftNode, state: NodeState) -> None:
        self._raft = raft
        self.state = state
        self.node_id = raft.id
        self._loop: asyncio.AbstractEventLoop | None = None
        # The newest format each node reads, as gossip announces it (set by the
        # runtime); until then, only this node is known.
        self.announced_formats: Callable[[], Mapping[str, int | None]] = lambda: {
            self.node_id: codec.CODEC_VERSION
        }

    # ------------------------------------------------------------ life
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._raft.start()

    async def stop(self) -> None:
        await self._raft.stop()

    # ------------------------------------------------------------ writes
    def formats(self) -> FormatView:
        return cluster_format(self._raft.status()["voters"], self.announced_formats())

    async def propose(self, cmd: c.Command, timeout: float | None = None) -> Any:
        needed = codec.format_of(cmd)
        if needed > FIRST_FORMAT:
            view = self.formats()
            if needed > view.in_use:
                behind = view.behind(needed)
                raise Refused(
                    refuse(
                        RefusalCode.CONFLICT,
                        f"{codec.tag_of(cmd)} needs log format {needed}, and not every voter "
                        f"is known to read it ({', '.join(behind)}: an older release, or not "
                        "heard from since this node started): finish the rolling upgrade, or "
                        "retry once they are back",
                        format=needed,
                        in_use=view.in_use,
                        behind=behind,
                    )
                )
        data = codec.encode(cmd)
        try:
            applied = await self._raft.propose(data, timeout=timeout)
        except raft_errors.NoQuorum as exc:
            raise NoQuorum(str(exc), "maybe" if exc.handed_on else "no") from None
        except ProposalTimeout as exc:
            raise NoQuorum(str(exc), "maybe") from None
        except raft_errors.StaleRequest as exc:
            raise NoQuorum(f"{exc}; retry", "no") from None
        except NodeStopped:
            raise NoQuorum("this node is stopping; another node can serve", "maybe") from None
        except raft_errors.RaftError as exc:
            raise NoQuorum(f"the cluster cannot accept writes right now: {exc}", "maybe") from None
        outcome = codec.outcome_from_wire(applied.result)
        if isinstance(outcome, Refusal):
            raise Refused(outcome)
        return outcome

    def propose_blocking(self, cmd: c.Command, retry_s: float = 0.5) -> Any:
        """For worker threads: propose on the node's loop and wait, retrying while
        there is no quorum (the commands sent this way are idempotent).  Raises
        Refused, or NoQuorum once the node is stopping."""
        loop = self._loop
        assert loop is not None, "the replica is not started"
        while True:
            future = asyncio.run_coroutine_threadsafe(self.propose(cmd), loop)
            try:
                return future.result()
            except NoQuorum as exc:
                if self._raft.fatal is not None or not loop.is_running() or self.stopping:
                    raise
                log.warning("could not commit %s yet (%s); retrying", codec.tag_of(cmd), exc)
                time.sleep(retry_s)

    # ------------------------------------------------------------ reads
    async def read_barrier(self, timeout: float | None = None) -> int:
        """After it, local reads see everything committed before the call."""
        try:
            return await self._raft.read_barrier(timeout)
        except raft_errors.NoQuorum as exc:
            raise NoQuorum(str(exc), "no") from None
        except (ProposalTimeout, NodeStopped, raft_errors.RaftError) as exc:
            raise NoQuorum(str(exc), "no") from None

    async def wait_failed(self) -> BaseException:
        """Once the Raft node has stopped on its own: why (NewerFormat: the log holds
        entries of a newer release than this one)."""
        return await self._raft.wait_failed()

    async def backup(
        self, at_cut: Callable[[], T], timeout: float | None = None
    ) -> tuple[Backup, T]:
        """The whole replicated state, consistent and with everything committed before
        the call (a read barrier, then the state as applied here), sealed as snapshots
        are; with what `at_cut()` says of the state at that very point (called before
        anything else can apply)."""
        await self.read_barrier(timeout)
        try:
            taken = self._raft.backup()
        except (NodeStopped, raft_errors.RaftError) as exc:
            raise NoQuorum(str(exc), "no") from None
        seen = at_cut()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._raft.sealed, taken), seen

    @property
    def stopping(self) -> bool:
        return self._raft.fatal is not None or self._raft.stopped

    @property
    def leader(self) -> str | None:
        return self._raft.leader

    @property
    def is_leader(self) -> bool:
        return self._raft.is_leader

    @property
    def applied_index(self) -> int:
        raw = self._raft.raw
        return raw.applied_index if raw is not None else 0

    async def wait_for_leader(self, timeout: float) -> str:
        return await self._raft.wait_for_leader(timeout)

    def status(self) -> dict[str, Any]:
        """The Raft view for the UI and /api/v1/cluster."""
        return self._raft.status()

    @property
    def membership_settled(self) -> bool:
        """The leader's membership is committed: no change of it is in flight."""
        raw = self._raft.raw
        return raw is not None and not raw.conf_change_pending

    def brief(self) -> dict[str, Any]:
        status = self._raft.status()
        return {key: status[key] for key in ("role", "term", "commit", "applied")}

    @property
    def metrics(self) -> Mapping[str, int]:
        return self._raft.metrics

    # ------------------------------------------------------------ membership
    async def add_member(self, node: str, address: str, timeout: float = 60.0) -> None:
        await self._membership(self._raft.add_member(node, address, timeout))

    async def remove_member(self, node: str, timeout: float = 30.0) -> None:
        await self._membership(self._raft.remove_member(node, timeout))

    def match_index(self, peer: str) -> int:
        """On the leader: how far `peer`'s log is known to match (0 elsewhere)."""
        raw = self._raft.raw
        return (raw.match_index(peer) or 0) if raw is not None else 0

    async def transfer_leadership(self, target: str, timeout: float = 5.0) -> None:
        await self._membership(self._raft.transfer_leadership(target, timeout))

    async def _membership(self, call: Any) -> None:
        try:
            await call
        except raft_errors.NotLeader as exc:
            raise NotLeader(exc.leader) from None
        except (raft_errors.InvalidConfChange, raft_errors.ConfChangeInProgress) as exc:
            raise Refused(refuse(RefusalCode.CONFLICT, str(exc))) from None
        except raft_errors.ChangeLost as exc:
            raise NoQuorum(str(exc), "no") from None
        except raft_errors.NoQuorum as exc:
            raise NoQuorum(str(exc), "maybe" if exc.handed_on else "no") from None
        except (ProposalTimeout, NodeStopped, raft_errors.RaftError) as exc:
            raise NoQuorum(str(exc), "maybe") from None
