"""Command line of the simulation.

python -m tests.sim --seed N [-v|-vv]   replay one seed (-v: event trace, -vv: with ticks)
python -m tests.sim --seeds A:B [-j J]  run seeds A..B-1
python -m tests.sim --soak MINUTES      random seeds on every core until time is up
--profile ci|soak                       run length (soak: 200..1000 ticks of chaos)
--knob name=value                       override a drawn knob (e.g. nodes=5, net.drop_prob=0.2)
--list-knobs                            print the knobs a seed draws
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import random
import sys
import time
from collections import Counter

from tests.sim.world import PROFILES, Sim, knobs_dict, run_seed

COVERAGE = (
    ("leader change", lambda s: s.get("leaders", 0) >= 2),
    ("crash", lambda s: s.get("crashes", 0) >= 1),
    ("failpoint crash", lambda s: s.get("failpoint_crashes", 0) >= 1),
    ("graceful stop", lambda s: s.get("graceful_stops", 0) >= 1),
    ("snapshot install", lambda s: s.get("snapshots_installed", 0) >= 1),
    ("membership change", lambda s: s.get("conf_committed", 0) >= 1),
    ("read checked", lambda s: s.get("reads_checked", 0) >= 1),
    ("write acked", lambda s: s.get("writes_acked", 0) >= 1),
    (
        "retry deduplicated",
        lambda s: s.get("duplicates_suppressed", 0) + s.get("stale_refused", 0) >= 1,
    ),
)

TOTALS = (
    "events",
    "leaders",
    "crashes",
    "failpoint_crashes",
    "graceful_stops",
    "log_repairs",
    "snapshots_taken",
    "snapshot_chunks0_sent",
    "snapshots_installed",
    "conf_committed",
    "transfers",
    "swizzles",
    "reads_checked",
    "writes_acked",
    "duplicates_suppressed",
    "stale_refused",
    "unknown_outcomes",
    "ticks_to_leader",
)


def _run(args: tuple) -> tuple:
    seed, profile, overrides = args
    result = run_seed(seed, profile, 0, overrides)
    return result.seed, result.ok, result.error, result.stats


def run_many(
    seeds, profile: str = "ci", overrides=None, jobs: int | None = None, chunksize: int = 8
):
    """Yield (seed, ok, error, stats) for every seed, in a pool of `jobs` processes.
    Each worker freezes what it inherits from the parent (gc.freeze): a forked
    pytest process can hold a large heap, and every collection would scan it."""
    jobs = jobs or os.cpu_count() or 1
    work = [(s, profile, overrides or {}) for s in seeds]
    if jobs == 1:
        yield from map(_run, work)
        return
    with multiprocessing.get_context("fork").Pool(jobs, initializer=gc.freeze) as pool:
        yield from pool.imap_unordered(_run, work, chunksize=chunksize)


def coverage(all_stats: list[dict]) -> dict[str, float]:
    n = max(1, len(all_stats))
    return {name: sum(1 for s in all_stats if pred(s)) / n for name, pred in COVERAGE}


def report(all_stats: list[dict], elapsed: float) -> str:
    totals = Counter()
    for s in all_stats:
        for key in TOTALS:
            totals[key] += s.get(key, 0)
    cov = coverage(all_stats)
    lines = [f"{len(all_stats)} seeds in {elapsed:.1f}s"]
    lines.append("  totals: " + ", ".join(f"{k}={totals[k]}" for k in TOTALS))
    lines.append("  coverage: " + ", ".join(f"{k} {v:.0%}" for k, v in cov.items()))
    return "\n".join(lines)


def summary_line(stats: dict) -> str:
    keys = (
        "ticks",
        "events",
        "leaders",
        "terms",
        "crashes",
        "restarts",
        "snapshots_taken",
        "snapshot_chunks0_sent",
        "snapshots_installed",
        "conf_committed",
        "transfers",
        "reads_checked",
        "writes_acked",
        "duplicates_suppressed",
        "proposals",
        "max_committed",
        "ticks_to_leader",
        "ticks_to_settle",
    )
    return " ".join(f"{k}={stats.get(k, 0)}" for k in keys)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.sim",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--seed", type=int)
    g.add_argument("--seeds", help="A:B, seeds A..B-1")
    g.add_argument("--soak", type=float, metavar="MINUTES")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-j", "--jobs", type=int, default=None)
    p.add_argument("--profile", choices=PROFILES, default=None)
    p.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--ticks", type=int, help="shorthand for --knob chaos_ticks=N")
    p.add_argument("--list-knobs", action="store_true")
    args = p.parse_args(argv)

    overrides = {}
    for item in args.knob:
        name, _, value = item.partition("=")
        overrides[name.strip()] = value.strip()
    if args.ticks is not None:
        overrides["chaos_ticks"] = str(args.ticks)

    if args.seed is not None:
        profile = args.profile or "ci"
        if args.list_knobs:
            print(knobs_dict(Sim(args.seed, profile, 0, overrides).knobs))
        start = time.perf_counter()
        result = run_seed(args.seed, profile, args.verbose, overrides)
        sys.stdout.flush()
        elapsed = time.perf_counter() - start
        print(
            f"seed {args.seed}: {'ok' if result.ok else 'FAILED'} in {elapsed:.2f}s, trace {result.trace_hash}"
        )
        print("  " + summary_line(result.stats))
        if not result.ok:
            print(result.error)
            return 1
        return 0

    if args.seeds is not None:
        lo, _, hi = args.seeds.partition(":")
        seeds = range(int(lo), int(hi))
        profile = args.profile or "ci"
        start = time.perf_counter()
        failed = []
        all_stats = []
        for seed, ok, error, stats in run_many(seeds, profile, overrides, args.jobs):
            all_stats.append(stats)
            if not ok:
                failed.append(seed)
                print(error, "\n", flush=True)
        print(report(all_stats, time.perf_counter() - start))
        if failed:
            print(f"FAILED seeds ({len(failed)}): {sorted(failed)}")
            return 1
        return 0

    # soak: random seeds until time is up
    profile = args.profile or "soak"
    deadline = time.monotonic() + args.soak * 60
    jobs = args.jobs or os.cpu_count() or 1
    start = time.perf_counter()
    seed_rng = random.Random()  # the seeds are random; each run is still reproducible by its seed
    failed = []
    all_stats: list[dict] = []
    last_progress = time.monotonic()
    with multiprocessing.get_context("fork").Pool(jobs, initializer=gc.freeze) as pool:
        while time.monotonic() < deadline:
            batch = [(seed_rng.getrandbits(48), profile, overrides) for _ in range(jobs * 8)]
            for seed, ok, error, stats in pool.imap_unordered(_run, batch):
                all_stats.append(stats)
                if not ok:
                    failed.append(seed)
                    print(error, "\n", flush=True)
            if time.monotonic() - last_progress >= 30:
                last_progress = time.monotonic()
                print(
                    f"[soak] {len(all_stats)} seeds, {len(failed)} failed, "
                    f"{time.perf_counter() - start:.0f}s",
                    flush=True,
                )
    print(report(all_stats, time.perf_counter() - start))
    if failed:
        replay = " --profile soak" if profile == "soak" else ""
        print(
            f"FAILED seeds ({len(failed)}): {failed}  (replay: python -m tests.sim --seed N{replay})"
        )
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `... -v | head`
        os._exit(0)
