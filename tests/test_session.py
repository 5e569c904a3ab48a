"""consensus/session.py: client sessions apply each request once, forget what
their client acknowledged, and expire by the proposers' clocks, not by a count
of log indices."""

from __future__ import annotations

from consensus.session import EXPIRED, STALE, Request, SessionTable, pack_envelope

HOUR = 3_600_000


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def apply(self, index: int, command: bytes):
        self.n += 1
        return self.n

    def snapshot(self) -> bytes:
        return str(self.n).encode()

    def restore(self, data: bytes) -> None:
        self.n = int(data)


def env(session: str, seq: int, ack: int = 0, at: int = 1_000, started: int = 1_000) -> bytes:
    return pack_envelope(Request(session, started, seq, ack), at, b"x")


def test_a_copy_of_a_request_applies_once_and_answers_the_first_result():
    table = SessionTable(Counter())
    assert table.apply(1, env("a", 1)) == (("a", 1), 1, 1)
    assert table.apply(2, env("a", 1)) == (("a", 1), 1, 1)
    assert table.machine.n == 1 and table.duplicates == 1


def test_a_retry_long_after_is_still_recognised_however_many_entries_came_between():
    """The old table forgot a request after 20,000 log indices (about 2 s at the
    measured commit rate); a session keeps it until its client acknowledges it."""
    table = SessionTable(Counter())
    table.apply(1, env("slow", 1))
    for i in range(2, 50_002):
        table.apply(i, env("busy", i - 1, ack=i - 1, at=1_000 + i // 100))
    assert table.apply(50_002, env("slow", 1, at=2_000)) == (("slow", 1), 1, 1)
    assert table.machine.n == 50_001


def test_what_the_client_acknowledged_is_forgotten_and_a_late_copy_is_not_applied():
    table = SessionTable(Counter())
    for seq in range(1, 101):
        table.apply(seq, env("c", seq, ack=seq))  # each request acknowledges the ones before
    assert table.remembered() == 1  # only the newest is kept
    result = table.apply(101, env("c", 3, ack=1))[2]  # a late copy of request 3
    assert result is STALE and table.machine.n == 100 and table.stale == 1


def test_idle_sessions_expire_by_the_proposers_clocks_and_their_copies_are_refused():
    table = SessionTable(Counter(), ttl_ms=HOUR)
    table.apply(1, env("old", 1, at=0, started=0))
    table.apply(2, env("new", 1, at=HOUR + 1, started=HOUR))
    assert len(table) == 1  # "old" was idle for more than the ttl
    _, _, result = table.apply(3, env("old", 1, at=HOUR + 2, started=0))
    assert result is EXPIRED and table.machine.n == 2
    # a brand-new session is not mistaken for an expired one
    assert table.apply(4, env("fresh", 1, at=HOUR + 3, started=HOUR + 3))[2] == 3


def test_time_never_goes_back_and_expiry_is_the_same_on_every_replica():
    a, b = SessionTable(Counter(), ttl_ms=1_000), SessionTable(Counter(), ttl_ms=1_000)
    log = [env("s1", 1, at=5_000), env("s2", 1, at=1_000), env("s1", 2, at=7_000)]
    assert [a.apply(i, e) for i, e in enumerate(log, 1)] == [
        b.apply(i, e) for i, e in enumerate(log, 1)
    ]
    assert a.now_ms == 7_000 and a.snapshot() == b.snapshot()


def test_not_an_envelope_is_a_value_error_and_changes_nothing():
    import msgpack
    import pytest

    table = SessionTable(Counter())
    for data in (
        b"\xc1",
        msgpack.packb(["x"]),
        msgpack.packb([0, "s", 0, 1, 0, 0, b""]),
        msgpack.packb([1, "s", 0, "1", 0, 0, b""]),
    ):
        with pytest.raises(ValueError):
            table.apply(1, data)
    assert table.machine.n == 0 and len(table) == 0


def test_an_envelope_or_snapshot_of_a_newer_version_stops_instead_of_being_skipped():
    import msgpack
    import pytest

    from consensus.fsm import NewerFormat
    from consensus.session import ENVELOPE_VERSION

    table = SessionTable(Counter())
    newer = msgpack.packb([ENVELOPE_VERSION + 1, "s", 0, 1, 0, 0, b""])
    with pytest.raises(NewerFormat, match="upgrade it"):
        table.apply(1, newer)
    assert table.machine.n == 0 and len(table) == 0
    snapshot = msgpack.unpackb(table.snapshot())
    snapshot[0] = ENVELOPE_VERSION + 1
    with pytest.raises(NewerFormat, match="session table version"):
        SessionTable(Counter()).restore(msgpack.packb(snapshot))


def test_snapshot_round_trip_keeps_sessions():
    table = SessionTable(Counter())
    for i in range(1, 21):
        table.apply(i, env(f"r{i % 3}", i))
    copy = SessionTable(Counter())
    copy.restore(table.snapshot())
    assert len(copy) == 3 and copy.now_ms == table.now_ms
    assert copy.apply(21, env("r2", 5)) == (("r2", 5), 5, 5)
    assert copy.snapshot() == table.snapshot()


def test_a_client_clock_ahead_of_the_proposers_cannot_revive_an_expired_session():
    """Found by tests/sim seed 1960: the client started its session at 3405 by its
    clock, the node applied its request at 3345 by its own; once idle for a ttl
    the session was dropped, and a late retry (started 3405 >= horizon) passed
    for a brand-new session and was applied a second time."""
    table = SessionTable(Counter(), ttl_ms=1_500)
    assert table.apply(1, env("c", 4, ack=4, at=3_345, started=3_405))[2] == 1
    table.apply(2, env("other", 1, at=4_859, started=4_859))
    _, _, result = table.apply(3, env("c", 4, ack=4, at=4_892, started=3_405))
    assert result == 1 or result is EXPIRED  # the first answer, or refused: never applied again
    assert table.machine.n == 2


def test_entries_and_snapshots_written_before_sessions_still_apply():
    """A data directory started by the previous release: its envelopes were
    [request_id, command] and its snapshots [window, rows, machine]."""
    import msgpack

    table = SessionTable(Counter())
    assert table.apply(7, msgpack.packb(["n1:ab:1", b"x"]))[1:] == (7, 1)
    old_snapshot = msgpack.packb([20_000, [["n1:ab:1", 7, 1]], b"41"])
    table.restore(old_snapshot)
    assert table.machine.n == 41 and len(table) == 0
    assert table.apply(8, env("new", 1))[2] == 42
