"""Which format of log entries the cluster may write: the newest that every voter
reads.  Each node announces the newest it reads in gossip (`format` in its
metadata); a voter not heard from yet counts as reading only the first, so during
a rolling upgrade the new format is used only once the last voter runs the new
release, and an old node never meets an entry it cannot apply."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from node.replica.codec import CODEC_VERSION

FIRST_FORMAT = 1


@dataclass(frozen=True)
class FormatView:
    in_use: int  # the newest format every voter reads
    newest: int  # what this node reads (CODEC_VERSION)
    voters: dict[str, int | None]  # the newest each voter announced; None: not heard

    def behind(self, wanted: int) -> list[str]:
        """The voters that do not read `wanted` (or have not said)."""
        return sorted(n for n, v in self.voters.items() if v is None or v < wanted)

    def to_json(self) -> dict[str, object]:
        return {"in_use": self.in_use, "newest": self.newest, "voters": self.voters}


def cluster_format(voters: Iterable[str], announced: Mapping[str, int | None]) -> FormatView:
    heard = {node: announced.get(node) for node in sorted(voters)}
    lowest = min((v if v is not None else FIRST_FORMAT for v in heard.values()), default=1)
    return FormatView(min(lowest, CODEC_VERSION), CODEC_VERSION, heard)


def announced_formats(members: Mapping[str, Mapping[str, object]]) -> dict[str, int | None]:
    """From gossip's table (node -> {"meta": {...}}): the `format` each member announces."""
    found: dict[str, int | None] = {}
    for node, member in members.items():
        meta = member.get("meta")
        value = meta.get("format") if isinstance(meta, Mapping) else None
        found[node] = value if isinstance(value, int) and not isinstance(value, bool) else None
    return found
