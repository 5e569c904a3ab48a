"""The nemesis schedule, drawn from a seed (and written to the history before the run).

Kinds:
    isolate-leader  the current leader cut off from every peer
    split           a minority (one node of three) cut off from the majority
    one-way         the leader's messages to the others are lost ("mute"), or the others'
                    messages to the leader ("deaf")
    loss            random loss of packets between nodes (probability p)
    bandwidth       each node's link limited to `kbit` (tc tbf)
    delay           netem delay (only where the kernel has netem)
    pause           SIGSTOP a node (the leader or a random one), SIGCONT at the heal
    kill            kill -9 a node (the leader or a random one), restart it from its data
                    directory at the heal

Each fault lasts `duration` seconds, then everything is healed and the cluster runs
healthy for `rest` seconds. Targets named "leader" are resolved when the fault starts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

KINDS = ("isolate-leader", "split", "one-way", "loss", "bandwidth", "pause", "kill")
CUT_OFF_KINDS = ("isolate-leader", "split", "one-way")  # leave one node without a quorum


@dataclass
class Fault:
    kind: str
    duration: float
    rest: float
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _params(kind: str, rng: random.Random, nodes: list[str], soak: bool) -> dict:
    if kind == "split":
        return {"minority": [rng.choice(nodes)]}
    if kind == "one-way":
        return {"orientation": rng.choice(["mute", "deaf"])}
    if kind == "loss":
        return {"p": round(rng.uniform(0.1, 0.4), 2) if soak else 0.25}
    if kind == "bandwidth":
        return {"kbit": rng.choice([64, 128, 256, 512]) if soak else 128}
    if kind == "delay":
        return {"ms": rng.choice([20, 50, 100, 200]), "jitter_ms": 10}
    if kind in ("pause", "kill"):
        return {"target": "leader" if rng.random() < 0.6 else rng.choice(nodes)}
    return {}


def bounded(seed: int, nodes: list[str], netem: bool = False) -> list[Fault]:
    """Every kind once, in a seeded order: about 100 s of faults and rests."""
    rng = random.Random(seed)
    kinds = list(KINDS) + (["delay"] if netem else [])
    rng.shuffle(kinds)
    durations = {
        "isolate-leader": 10.0,
        "split": 10.0,
        "one-way": 10.0,
        "loss": 8.0,
        "bandwidth": 8.0,
        "delay": 6.0,
        "pause": 6.0,
        "kill": 6.0,
    }
    return [
        Fault(kind, durations[kind], 4.0, _params(kind, rng, nodes, soak=False)) for kind in kinds
    ]


def soak(seed: int, nodes: list[str], netem: bool = False) -> Iterator[Fault]:
    """An endless seeded stream (the runner stops drawing when its time is up); every
    kind keeps coming back, with random durations, targets and strengths."""
    rng = random.Random(seed)
    kinds = list(KINDS) + (["delay"] if netem else [])
    while True:
        round_ = list(kinds)
        rng.shuffle(round_)
        for kind in round_:
            duration = round(rng.uniform(4.0, 15.0), 1)
            yield Fault(
                kind,
                duration,
                round(rng.uniform(3.0, 8.0), 1),
                _params(kind, rng, nodes, soak=True),
            )
