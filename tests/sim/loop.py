"""An asyncio event loop on a virtual clock, with processes that can lose power.

The simulation runs the production driver (consensus/driver.py) unchanged: its
ticker sleeps, its proposals wait on futures, its fsync runs "in a worker
thread".  SimLoop gives all of that a deterministic home:

- time is virtual: when nothing is ready, the loop jumps to the next timer
  instead of sleeping, so a run of minutes takes milliseconds and every run of
  a seed is the same run;
- `run_in_executor` runs the function on the loop itself after a disk latency
  drawn from the caller's own random stream (the write "takes time", the loop
  keeps working meanwhile, as with a real thread, but nothing is concurrent);
- every callback belongs to the Process it was scheduled from (a context
  variable, inherited by tasks, timers and future callbacks).  A process that
  loses power is marked dead and none of its callbacks ever runs again: the
  closest a shared loop gets to kill -9;
- an exception escaping a callback of a live process is a failure of the run,
  never a log line.

No real I/O exists here: adding a reader or writer raises.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Callable
from typing import Any


class PowerLoss(BaseException):
    """Raised inside a process at the moment it loses power (a failpoint).  A
    BaseException, so that no `except Exception` in the code under test goes on
    running after it."""


class Process:
    """A simulated OS process: its callbacks, its random stream, its liveness."""

    __slots__ = ("after", "alive", "context", "name", "rng")

    def __init__(
        self, name: str, rng: random.Random, after: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        self.rng = rng
        self.alive = True
        self.after = after  # called after each of its callbacks (the checker's hook)
        self.context = contextvars.copy_context()
        self.context.run(PROCESS.set, self)

    def __repr__(self) -> str:
        return f"Process({self.name}, {'alive' if self.alive else 'dead'})"


PROCESS: contextvars.ContextVar[Process | None] = contextvars.ContextVar(
    "sim_process", default=None
)


class Idle(Exception):
    """Nothing is scheduled at all: the simulated world has stopped."""


class _NoSelector:
    """Where a real loop would wait for I/O: the virtual clock jumps instead."""

    def __init__(self, loop: SimLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list:
        if timeout is None:
            raise Idle("no timer and nothing ready: the simulated world has stopped")
        if timeout > 0:
            self._loop._now += timeout
        return []

    def close(self) -> None:
        pass

    def register(self, *args: Any) -> None:
        raise NotImplementedError("no real I/O in the simulation")

    modify = unregister = register


class SimLoop(asyncio.BaseEventLoop):
    def __init__(self, disk_latency: Callable[[random.Random], float]) -> None:
        super().__init__()
        self._now = 0.0
        self._selector = _NoSelector(self)
        self._clock_resolution = 1e-9
        self._disk_latency = disk_latency
        self.callbacks = 0
        self.failure: BaseException | None = None
        self.set_exception_handler(self._on_exception)

    # -------------------------------------------------------------- the clock
    def time(self) -> float:
        return self._now

    def _process_events(self, event_list: list) -> None:
        pass

    def _write_to_self(self) -> None:
        pass

    # -------------------------------------------------------------- processes
    def _guard(
        self, callback: Callable[..., Any], context: contextvars.Context | None
    ) -> Callable[..., Any]:
        proc = context.get(PROCESS) if context is not None else PROCESS.get()
        if proc is None:
            return self._count(callback)

        def guarded(*args: Any) -> None:
            if not proc.alive:
                return  # its process lost power: this never happens
            self.callbacks += 1
            callback(*args)
            if proc.alive and proc.after is not None:
                proc.after()

        return guarded

    def _count(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> None:
            self.callbacks += 1
            callback(*args)

        return counted

    def call_soon(self, callback, *args, context=None):  # type: ignore[override]
        return super().call_soon(self._guard(callback, context), *args, context=context)

    def call_at(self, when, callback, *args, context=None):  # type: ignore[override]
        return super().call_at(when, self._guard(callback, context), *args, context=context)

    def call_soon_threadsafe(self, callback, *args, context=None):  # type: ignore[override]
        return self.call_soon(callback, *args, context=context)

    def run_in_executor(self, executor, func, *args):  # type: ignore[override]
        """The worker thread of a real loop, as a delayed call on this one: the
        function runs whole after a disk latency, unless its process dies first."""
        proc = PROCESS.get()
        fut = self.create_future()
        rng = proc.rng if proc is not None else random.Random(0)

        def work() -> None:
            if fut.cancelled():
                return
            try:
                result = func(*args)
            except PowerLoss:
                return
            except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits it
                if not fut.cancelled():
                    fut.set_exception(exc)
                return
            if not fut.cancelled():
                fut.set_result(result)

        self.call_at(self._now + self._disk_latency(rng), work)
        return fut

    # -------------------------------------------------------------- failures
    def _on_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        # Only an exception escaping a callback is a failure.  Reports made when
        # the garbage collector meets a pending task or an unretrieved exception
        # (of a process that died, mostly) come at no reproducible moment.
        if "handle" not in context:
            return
        exc = context.get("exception")
        if isinstance(exc, PowerLoss):
            return  # the process died there: what it left behind is not a failure
        if self.failure is None:
            self.failure = exc or RuntimeError(context.get("message", "loop error"))
        self.stop()

    def run_until(self, when: float) -> None:
        """Run every callback due up to `when` (virtual seconds)."""
        handle = super().call_at(when, self.stop)
        try:
            self.run_forever()
        finally:
            handle.cancel()
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
