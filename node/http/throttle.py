"""Login attempts, throttled per user name and per client address.

Password guessing is bounded on each node: after too many failed logins within a
window, the name (or the address) is refused with 429 and Retry-After until the
oldest failure in the window ages out; a success never counts.  Kept in memory,
per node, on purpose: a guesser that rotates over the nodes multiplies its rate by
the number of nodes at most, and nothing about an attacker's guesses belongs in the
replicated log.  The number of names and addresses followed is bounded too, so
that guesses at random names cannot grow it without end.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

from node.replica.vocabulary import (
    LOGIN_FAILURES_PER_ADDRESS,
    LOGIN_FAILURES_PER_USER,
    LOGIN_WINDOW_S,
)

MAX_TRACKED = 10_000  # names and addresses followed at once; the least recent go first


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def retry_after(self, user: str, address: str) -> float | None:
        """Seconds until a login for `user` from `address` may be tried, or None."""
        now = self._clock()
        waits = [
            self._wait(("user", user), LOGIN_FAILURES_PER_USER, now),
            self._wait(("address", address), LOGIN_FAILURES_PER_ADDRESS, now),
        ]
        known = [w for w in waits if w is not None]
        return max(known) if known else None

    def failed(self, user: str, address: str) -> None:
        now = self._clock()
        for key in (("user", user), ("address", address)):
            times = self._failures.pop(key, None) or deque()
            times.append(now)
            self._failures[key] = times  # the most recent last
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    def _wait(self, key: tuple[str, str], allowed: int, now: float) -> float | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - LOGIN_WINDOW_S:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        if len(times) < allowed:
            return None
        return times[0] + LOGIN_WINDOW_S - now
