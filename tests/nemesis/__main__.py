"""Nemesis runs from the command line (as root):

    python -m tests.nemesis                      # the bounded run of the test suite
    python -m tests.nemesis --minutes 30 --seed 7  # soak: random faults for 30 minutes
    python -m tests.nemesis --check artifacts/nemesis  # re-check a recorded run
    python -m tests.nemesis --cleanup            # remove leftover namespaces (rg*, rgbr)

Artifacts go to artifacts/nemesis/ (or --out): history.jsonl, final-state.json,
report.json, report.txt, logs/. Exit status 0 when the checker found no violation.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from tests.nemesis import checker, netns
from tests.nemesis.history import load
from tests.nemesis.runner import ARTIFACTS, RunConfig, run, write_report


def _interrupt(*_: object) -> None:
    """SIGTERM (a CI timeout) unwinds like Ctrl-C, so the namespaces are torn down."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.nemesis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--minutes", type=float, help="soak mode: keep drawing faults for this long"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the schedule and the clients (default 1)"
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ARTIFACTS)
    parser.add_argument("--keep-data", action="store_true", help="keep the nodes' data directories")
    parser.add_argument(
        "--check", type=Path, metavar="DIR", help="re-run the checker on a recorded run"
    )
    parser.add_argument(
        "--cleanup", action="store_true", help="remove leftover namespaces and exit"
    )
    args = parser.parse_args(argv)
    if args.cleanup:
        print("removed:", netns.cleanup() or "nothing")
        return 0
    if args.check:
        history = load(args.check / "history.jsonl")
        final = json.loads((args.check / "final-state.json").read_text())
        report = checker.check(history, final)
        write_report(report, args.check)
        print(checker.render(report))
        return 0 if report["ok"] else 1
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = RunConfig(
        seed=args.seed,
        minutes=args.minutes,
        out_dir=args.out,
        clients=args.clients,
        keep_data=args.keep_data,
    )
    report = run(cfg)
    print()
    print(checker.render(report))
    print(f"artifacts in {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
