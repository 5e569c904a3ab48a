"""consensus/session.py: retried request ids apply once within the window."""

from __future__ import annotations

from consensus.session import SessionTable, pack_envelope


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


def test_duplicates_within_the_window_apply_once_and_answer_the_first_result():
    table = SessionTable(Counter(), window=10)
    assert table.apply(1, pack_envelope("a", b"x")) == ("a", 1, 1)
    assert table.apply(2, pack_envelope("a", b"x")) == ("a", 1, 1)
    assert table.machine.n == 1 and table.duplicates == 1


def test_the_table_forgets_after_the_window_so_it_stays_bounded():
    table = SessionTable(Counter(), window=10)
    for i in range(1, 101):
        table.apply(i, pack_envelope(f"r{i}", b"x"))
    assert len(table) == 10
    table.apply(101, pack_envelope("r1", b"x"))  # long forgotten: applies again
    assert table.machine.n == 101


def test_snapshot_round_trip_keeps_dedup_state():
    table = SessionTable(Counter(), window=50)
    for i in range(1, 21):
        table.apply(i, pack_envelope(f"r{i}", b"x"))
    copy = SessionTable(Counter())
    copy.restore(table.snapshot())
    assert copy.window == 50 and len(copy) == 20
    assert copy.apply(21, pack_envelope("r5", b"x")) == ("r5", 5, 5)
    assert copy.snapshot() == table.snapshot()
