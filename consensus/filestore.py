"""Durable stores: checksummed files, fsynced where the protocols promise it.

Log (`FileLogStore`)
    A directory of append-only segment files `log-<seq>.seg`.  Each record is
    a 9-byte header (payload length, CRC-32 of the record type and payload,
    record type) followed by a msgpack payload:

    ENTRY    [term, index, kind, data]; it also *truncates*: an entry at index i
             replaces i and everything after it, exactly like append(), so an
             overwrite needs no separate marker.
    COMPACT  upto: entries <= upto are gone (they are in a snapshot).
    RESET    s: the whole log is gone; the next entry is s + 1.

    The whole log is kept in memory as well (snapshots bound it), so reads
    never touch the disk; the files are only replayed at open.  A damaged tail
    of the newest segment is what a crash leaves behind (unsynced writes are
    torn, or zero-filled by the file system): it is logged and cut off.
    Damage anywhere else was synced once, so it is reported, not repaired.

Hard state (`FileStableStore`)
    save(sync=True) writes `<path>` atomically and durably.  save(sync=False),
    which the driver uses for commit-index updates, goes to `<path>.lazy`
    instead, never over `<path>`: an unsynced replace can leave an empty or
    torn file after a power cut, and that must never be the only copy of the
    term and vote.  Both carry a sequence number; load() takes the newest
    valid one.  A damaged `.lazy` is expected after a crash and ignored; a
    damaged `<path>` is an error (starting over at term 0 could double-vote).

Snapshots (`FileSnapshotStore`)
    `snap-<index>-<term>.bin` holds the data and `snap-<index>-<term>.meta`
    (checksummed msgpack) describes it; the rename of the .meta file is the
    commit point.  An incoming snapshot is received into `partial.bin`, which
    does not survive a restart (the leader starts the transfer again).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack

from consensus.memstore import KEEP_SNAPSHOTS, LogWindow, check_chunk, check_finish, check_size
from consensus.types import Entry, EntryKind, HardState, Membership, SnapshotMeta

log = logging.getLogger("ragraft.consensus")

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024

# fdatasync skips flushing metadata no read needs (mtime) but still flushes a
# grown file size, which is all an append-only file needs.
_datasync = getattr(os, "fdatasync", os.fsync)


class CorruptStorageError(Exception):
    """Data that was once durably written does not read back correctly.
    Raised instead of guessing: a node that forgets its log or its vote can
    break Raft's safety, so an operator has to look."""


# --------------------------------------------------------------------------
# small file helpers


def _fsync_dir(path: Path) -> None:
    """Make renames, creations and deletions in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _replace_file(path: Path, data: bytes, durable: bool) -> None:
    """Replace `path` with `data` atomically (temp file + rename); with
    `durable`, also make the new content and the rename survive a crash."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        _fsync_dir(path.parent)


def _lock_dir(path: Path) -> int:
    """Hold an exclusive lock on `path`/LOCK so two processes (or two store
    objects) never write the same files."""
    fd = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"{path} is already in use by another store") from None
    return fd


# Checksummed msgpack blobs for the small files (hard state, snapshot meta).
_BLOB_HEADER = struct.Struct("<4sI")  # magic, crc32 of the payload


def _seal(magic: bytes, value: object) -> bytes:
    payload = msgpack.packb(value)
    return _BLOB_HEADER.pack(magic, zlib.crc32(payload)) + payload


def _unseal(magic: bytes, raw: bytes) -> Any:
    """The value in a sealed blob; ValueError says what is wrong with it."""
    if len(raw) < _BLOB_HEADER.size:
        raise ValueError(f"{len(raw)} bytes is shorter than the header")
    found, crc = _BLOB_HEADER.unpack_from(raw)
    if found != magic:
        raise ValueError(f"bad magic {found!r}, expected {magic!r}")
    payload = raw[_BLOB_HEADER.size :]
    if zlib.crc32(payload) != crc:
        raise ValueError("checksum mismatch")
    try:
        return msgpack.unpackb(payload)
    except (ValueError, TypeError) as exc:  # msgpack's errors derive from these
        raise ValueError(f"undecodable payload: {exc}") from None


# --------------------------------------------------------------------------
# the log

_RECORD_HEADER = struct.Struct("<IIB")  # payload length, crc32, record type
_ENTRY, _COMPACT, _RESET = 1, 2, 3
# The CRC covers the type byte too: crc32(payload, seed) continues a CRC
# started over that one byte, so no bytes are concatenated to compute it.
_CRC_SEED = [zlib.crc32(bytes((t,))) for t in range(256)]
_SEGMENT_NAME = re.compile(r"log-(\d{12})\.seg")


def _frame(rtype: int, payload: bytes) -> bytes:
    return _RECORD_HEADER.pack(len(payload), zlib.crc32(payload, _CRC_SEED[rtype]), rtype) + payload


def _decode(rtype: int, payload: memoryview) -> Entry | int:
    """The value of one record whose checksum matched; ValueError or
    TypeError if it is still not what a record of its type holds."""
    value = msgpack.unpackb(payload)
    if rtype == _ENTRY:
        term, index, kind, data = value
        if type(term) is not int or type(index) is not int or type(data) is not bytes:
            raise ValueError(f"entry fields of the wrong types: {value!r:.80}")
        return Entry(term, index, EntryKind(kind), data)
    if rtype in (_COMPACT, _RESET):
        if type(value) is not int:
            raise ValueError(f"record type {rtype} holds {value!r}, not an index")
        return value
    raise ValueError(f"unknown record type {rtype}")


def _scan(buf: bytes) -> tuple[list[tuple[int, int, Entry | int]], int, str | None]:
    """Parse a segment: its good records as (offset, type, value), the offset
    where the good records end, and why parsing stopped there (None at EOF)."""
    records: list[tuple[int, int, Entry | int]] = []
    view = memoryview(buf)
    pos, size, hsize = 0, len(buf), _RECORD_HEADER.size
    while pos < size:
        if size - pos < hsize:
            return records, pos, f"short header ({size - pos} of {hsize} bytes)"
        length, crc, rtype = _RECORD_HEADER.unpack_from(buf, pos)
        end = pos + hsize + length
        if end > size:
            return records, pos, f"short payload ({size - pos - hsize} of {length} bytes)"
        payload = view[pos + hsize : end]
        if zlib.crc32(payload, _CRC_SEED[rtype]) != crc:
            return records, pos, "checksum mismatch"
        try:
            records.append((pos, rtype, _decode(rtype, payload)))
        except (ValueError, TypeError) as exc:
            return records, pos, f"malformed record: {exc}"
        pos = end
    return records, pos, None


class _Segment:
    __slots__ = ("min_index", "path", "seq", "size")

    def __init__(self, seq: int, path: Path, size: int = 0) -> None:
        self.seq = seq
        self.path = path
        self.size = size
        # Lowest entry index written to this segment.  Writing index i drops
        # every i' >= i, so a segment's entries at or above the min_index of
        # any later segment are dead; that is what decides deletion.
        self.min_index: int | None = None

    def note_entry(self, index: int) -> None:
        if self.min_index is None or index < self.min_index:
            self.min_index = index


class FileLogStore:
    """LogStore in segment files; see the module docstring for the format."""

    def __init__(
        self, directory: str | os.PathLike[str], segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> None:
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._lock: int | None = _lock_dir(self._dir)
        self._window = LogWindow()
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the newest segment, open for appending
        self._dirty = False  # written since the last fsync of _fd
        self._dir_dirty = False  # a segment was created since the last sync
        self._pack = msgpack.Packer().pack
        try:
            self._replay()
        except BaseException:
            self.close()
            raise

    # ---- LogStore

    def bounds(self) -> tuple[int, int]:
        return self._window.bounds()

    def entries(self, lo: int, hi: int) -> list[Entry]:
        return self._window.slice(lo, hi)

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        start = self._window.check_append(entries)
        # One buffer, one write() per call: with group commit the cost per
        # entry is msgpack and a CRC, not a system call.
        buf = bytearray()
        pack, header, crc32, seed = self._pack, _RECORD_HEADER.pack, zlib.crc32, _CRC_SEED[_ENTRY]
        for e in entries:
            payload = pack((e.term, e.index, int(e.kind), e.data))
            buf += header(len(payload), crc32(payload, seed), _ENTRY)
            buf += payload
        self._write(buf).note_entry(start)
        self._window.write(start, entries)

    def sync(self) -> None:
        if self._dirty:
            assert self._fd is not None
            _datasync(self._fd)
            self._dirty = False
        if self._dir_dirty:
            _fsync_dir(self._dir)
            self._dir_dirty = False

    def compact(self, upto: int) -> None:
        self._window.check_compact(upto)
        if upto < self._window.first:
            return
        # Durable at the next sync(); if it is lost, the log merely starts
        # lower again (the entries are still there, and in the snapshot).
        self._write(_frame(_COMPACT, self._pack(upto)))
        self._window.compact(upto)
        self._drop_segments_upto(upto)

    def reset(self, snapshot_index: int) -> None:
        # The RESET record starts a fresh segment so that every older one can
        # be deleted.  _roll() fsyncs the current segment first: if we crash
        # before the deletions, the old segments are replayed ahead of the
        # new one and must not look corrupt in the middle.
        segment = self._roll()
        self._write(_frame(_RESET, self._pack(snapshot_index)))
        self.sync()
        self._window.reset(snapshot_index)
        self._delete_segments(self._segments.index(segment))

    # ---- lifecycle

    def close(self) -> None:
        """Sync and release the directory.  The object is unusable after."""
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # ---- internals

    def _write(self, buf: bytes | bytearray) -> _Segment:
        """Append records to the newest segment (rolling over when it is
        full) and return the segment written to."""
        segment = self._segments[-1] if self._segments else None
        if segment is None or segment.size >= self._segment_bytes:
            segment = self._roll()
        assert self._fd is not None
        try:
            _write_all(self._fd, buf)
        except BaseException:
            # A half-written record followed by later good ones would look
            # like corruption in the middle of the file: cut it off.
            os.ftruncate(self._fd, segment.size)
            raise
        segment.size += len(buf)
        self._dirty = True
        return segment

    def _roll(self) -> _Segment:
        """Start a new segment.  The previous one is fsynced and closed so
        that only the newest segment can ever have a torn tail."""
        if self._fd is not None:
            if self._dirty:
                _datasync(self._fd)
                self._dirty = False
            os.close(self._fd)
            self._fd = None
        seq = self._segments[-1].seq + 1 if self._segments else 1
        path = self._dir / f"log-{seq:012d}.seg"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._dir_dirty = True
        segment = _Segment(seq, path)
        self._segments.append(segment)
        return segment

    def _drop_segments_upto(self, upto: int) -> None:
        """Delete the oldest segments holding no live entry above `upto`."""
        # highest_live[k]: the highest index still alive in segment k, at
        # most one below the lowest index any later segment wrote.
        segments = self._segments
        bound = self._window.last + 1
        highest_live = [0] * len(segments)
        for k in range(len(segments) - 1, -1, -1):
            highest_live[k] = bound - 1
            lowest = segments[k].min_index
            if lowest is not None and lowest < bound:
                bound = lowest
        count = 0
        # The newest segment holds the COMPACT record and is never deleted.
        while count < len(segments) - 1 and highest_live[count] <= upto:
            count += 1
        if count:
            # Replay of what remains needs the COMPACT record: make it
            # durable before the segments it stands in for disappear.
            self.sync()
            self._delete_segments(count)

    def _delete_segments(self, count: int) -> None:
        """Delete the `count` oldest segments, oldest first, so that a crash
        part way leaves a contiguous history."""
        for segment in self._segments[:count]:
            segment.path.unlink(missing_ok=True)
        del self._segments[:count]
        _fsync_dir(self._dir)

    def _replay(self) -> None:
        found = []
        for path in self._dir.iterdir():
            match = _SEGMENT_NAME.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), path))
        found.sort()
        window = self._window
        anchored = False  # has a record fixed where the log starts?
        replayed: list[tuple[_Segment, Path, int, int, Any]] = []
        for number, (seq, path) in enumerate(found):
            segment = _Segment(seq, path)
            self._segments.append(segment)
            buf = path.read_bytes()
            records, good_end, problem = _scan(buf)
            if problem is not None:
                if number != len(found) - 1:
                    raise CorruptStorageError(
                        f"{path}: corrupt record at offset {good_end} ({problem}) in a segment "
                        "that is not the newest; it was synced, so this is not a torn write"
                    )
                log.warning(
                    "log segment %s: torn or corrupt tail at offset %d (%s); truncating %d bytes "
                    "(writes not yet synced when the node stopped)",
                    path,
                    good_end,
                    problem,
                    len(buf) - good_end,
                )
                with open(path, "r+b") as f:
                    f.truncate(good_end)
                    os.fsync(f.fileno())
            segment.size = good_end
            replayed.extend(
                (segment, path, offset, rtype, value) for offset, rtype, value in records
            )
        # Where the log starts is decided by the newest RESET and the highest COMPACT
        # after it, wherever they lie: compaction may delete the segment holding the
        # entry just above an older COMPACT record while that record survives in a
        # segment that is kept (found by the storage contract's property test).
        last_reset = max((i for i, r in enumerate(replayed) if r[3] == _RESET), default=-1)
        floor = replayed[last_reset][4] if last_reset >= 0 else None
        for record in replayed[last_reset + 1 :]:
            if record[3] == _COMPACT:
                floor = record[4] if floor is None else max(floor, record[4])
        if floor is not None:
            window.reset(floor)
            anchored = True
        for position, (segment, path, offset, rtype, value) in enumerate(replayed):
            if rtype != _ENTRY:
                continue
            assert isinstance(value, Entry)
            index = value.index
            segment.note_entry(index)
            if position < last_reset:
                continue  # superseded by the newest RESET
            if floor is not None and index <= floor:
                # Compacted away; but writing it cut off every entry above it, and
                # those may sit above the floor: drop them as the write did.
                if window.items:
                    window.reset(floor)
                continue
            if not anchored:
                # Older segments were deleted by compaction: the log starts at
                # the first entry still on disk.
                window.reset(index - 1)
                anchored = True
            if index == window.first + len(window.items):
                window.items.append(value)
            elif window.first <= index <= window.last:
                window.write(index, [value])
            else:
                raise CorruptStorageError(
                    f"{path}: entry {index} at offset {offset} does not fit the log "
                    f"{window.bounds()} replayed so far"
                )
        if self._segments:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
            # If only the process died, the newest segment's directory entry
            # may never have been fsynced; entries synced into it from now on
            # must not vanish with it in a later power cut.
            _fsync_dir(self._dir)


# --------------------------------------------------------------------------
# the hard state

_HARD_STATE_MAGIC = b"RGHS"


class FileStableStore:
    """StableStore in a small file (plus `<path>.lazy` for unsynced saves)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lazy = self._path.with_name(self._path.name + ".lazy")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._seq = 0
        self._state = HardState()
        durable = self._read(self._path, lazy=False)
        lazy = self._read(self._lazy, lazy=True)
        for seq, state in sorted((f for f in (durable, lazy) if f is not None), key=lambda f: f[0]):
            self._seq, self._state = seq, state

    def load(self) -> HardState:
        return self._state

    def save(self, state: HardState, sync: bool) -> None:
        self._seq += 1
        blob = _seal(_HARD_STATE_MAGIC, [self._seq, state.term, state.vote, state.commit])
        _replace_file(self._path if sync else self._lazy, blob, durable=sync)
        self._state = state

    def _read(self, path: Path, lazy: bool) -> tuple[int, HardState] | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            value = _unseal(_HARD_STATE_MAGIC, raw)
            seq, term, vote, commit = value
            if not (type(seq) is int and type(term) is int and type(commit) is int):
                raise ValueError("fields of the wrong type")
            if vote is not None and type(vote) is not str:
                raise ValueError("vote is not a node id")
        except (ValueError, TypeError) as exc:
            if lazy:
                # Never fsynced, so damage is the expected result of a crash;
                # the durable file has everything that was promised.
                log.warning("ignoring damaged unsynced hard state %s: %s", path, exc)
                return None
            raise CorruptStorageError(
                f"{path}: hard state is damaged ({exc}); refusing to start with term 0 and no vote"
            ) from None
        return seq, HardState(term=term, vote=vote, commit=commit)


# --------------------------------------------------------------------------
# snapshots

_SNAPSHOT_MAGIC = b"RGSM"
_SNAPSHOT_NAME = re.compile(r"snap-(\d{20})-(\d{20})\.meta")
_PARTIAL = "partial.bin"
_CREATE_TMP = "create.tmp"


class FileSnapshotStore:
    """SnapshotStore in a directory; keeps the newest KEEP_SNAPSHOTS."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._complete: dict[tuple[int, int], SnapshotMeta] = {}
        self._partial: SnapshotMeta | None = None
        self._partial_fd: int | None = None
        self._partial_size = 0
        self._open()

    # ---- SnapshotStore

    def latest(self) -> SnapshotMeta | None:
        return self._complete[max(self._complete)] if self._complete else None

    def read(self, meta: SnapshotMeta, offset: int, size: int) -> bytes:
        if (meta.index, meta.term) not in self._complete:
            # KeyError: what RawNode expects when a newer snapshot has replaced
            # the one it was sending (it then sends the newest instead).
            raise KeyError(f"snapshot at index {meta.index} term {meta.term} is not stored")
        if offset < 0 or size < 0:
            raise ValueError(f"read({offset}, {size}): negative offset or size")
        with open(self._data_path(meta), "rb") as f:
            f.seek(offset)
            return f.read(size)

    def create(self, meta: SnapshotMeta, data: bytes) -> None:
        check_size(meta, len(data))
        tmp = self._dir / _CREATE_TMP
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._data_path(meta))
        self._commit(meta)

    def write_chunk(self, meta: SnapshotMeta, offset: int, data: bytes) -> None:
        if offset == 0:
            check_chunk(meta, offset, len(data), meta, 0)
            self._drop_partial()
            self._partial_fd = os.open(
                self._dir / _PARTIAL, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644
            )
            self._partial = meta
        else:
            check_chunk(meta, offset, len(data), self._partial, self._partial_size)
        assert self._partial_fd is not None
        # Not fsynced: a partial snapshot is thrown away at restart anyway,
        # so only finish() needs the data on disk.
        _write_all(self._partial_fd, data)
        self._partial_size += len(data)

    def finish(self, meta: SnapshotMeta) -> None:
        check_finish(meta, self._partial, self._partial_size)
        assert self._partial_fd is not None
        os.fsync(self._partial_fd)
        os.close(self._partial_fd)
        self._partial_fd, self._partial, self._partial_size = None, None, 0
        os.replace(self._dir / _PARTIAL, self._data_path(meta))
        self._commit(meta)

    # ---- lifecycle

    def close(self) -> None:
        self._drop_partial()

    # ---- internals

    def _data_path(self, meta: SnapshotMeta) -> Path:
        return self._dir / f"snap-{meta.index:020d}-{meta.term:020d}.bin"

    def _meta_path(self, meta: SnapshotMeta) -> Path:
        return self._dir / f"snap-{meta.index:020d}-{meta.term:020d}.meta"

    def _commit(self, meta: SnapshotMeta) -> None:
        """The data file is durable in place: publish the snapshot by writing
        its meta file (the rename is the commit point; _replace_file also
        fsyncs the directory, which makes the data file's rename durable)."""
        wire = [meta.index, meta.term, meta.membership.to_wire(), meta.size]
        _replace_file(self._meta_path(meta), _seal(_SNAPSHOT_MAGIC, wire), durable=True)
        self._complete[(meta.index, meta.term)] = meta
        for key in sorted(self._complete)[:-KEEP_SNAPSHOTS]:
            old = self._complete.pop(key)
            # Meta first: a crash in between leaves an orphaned data file,
            # which _open() removes, never a meta without its data.
            self._meta_path(old).unlink(missing_ok=True)
            self._data_path(old).unlink(missing_ok=True)

    def _drop_partial(self) -> None:
        if self._partial_fd is not None:
            os.close(self._partial_fd)
        self._partial_fd, self._partial, self._partial_size = None, None, 0

    def _open(self) -> None:
        # Only our own leftovers: the directory may be shared with other stores.
        for leftover in (
            *self._dir.glob("snap-*.meta.tmp"),
            self._dir / _CREATE_TMP,
            self._dir / _PARTIAL,
        ):
            leftover.unlink(missing_ok=True)
        for path in sorted(self._dir.iterdir()):
            match = _SNAPSHOT_NAME.fullmatch(path.name)
            if not match:
                continue
            try:
                index, term, membership, size = _unseal(_SNAPSHOT_MAGIC, path.read_bytes())
                meta = SnapshotMeta(index, term, Membership.from_wire(membership), size)
            except (ValueError, TypeError) as exc:
                raise CorruptStorageError(f"{path}: snapshot metadata is damaged ({exc})") from None
            if (index, term) != (int(match.group(1)), int(match.group(2))):
                raise CorruptStorageError(
                    f"{path}: describes snapshot {index}/{term}, not the one it names"
                )
            data = self._data_path(meta)
            if not data.exists() or data.stat().st_size != size:
                raise CorruptStorageError(f"{data}: missing or not {size} bytes as {path} records")
            self._complete[(index, term)] = meta
        published = {self._data_path(meta) for meta in self._complete.values()}
        for path in self._dir.glob("snap-*.bin"):
            if path not in published:
                # create() or finish() stopped before its commit point.
                log.info("removing unpublished snapshot data %s", path)
                path.unlink()
