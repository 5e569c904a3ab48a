"""Task ids: unique across the cluster and sortable by submission time.

26 characters of Crockford base32 (like a ULID): 48 bits of milliseconds, then
80 random bits.  Chosen by the node that accepts the submission, before the
command enters the log, so applying it stays deterministic.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _encode(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_task_id(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return _encode(ms, 10) + _encode(int.from_bytes(os.urandom(10), "big"), 16)


def now_ms() -> int:
    return int(time.time() * 1000)
