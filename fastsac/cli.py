"""The ``fastsac`` command: ``fastsac bench buffer`` (and, later, ``fastsac train``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

# What `fastsac bench WHAT` can measure: name -> (help, module). Add "update" and "train" here;
# each module has `run(quick) -> list[dict]` returning rows (see fastsac._benchutil.row).
BENCHES: dict[str, tuple[str, str]] = {
    "buffer": ("replay buffer: sample latency, gather bandwidth, memory, fill rate",
               "fastsac.bench_buffer"),
    "update": ("SAC learner: updates per second and act() latency", "fastsac.bench_update"),
}


def cmd_bench(args: argparse.Namespace) -> int:
    # Imported here so that `fastsac --help` stays fast.
    import importlib

    from fastsac import _benchutil, tune_malloc

    tune_malloc()  # as `fastsac train` runs; process-wide, so the baselines get it too
    info = _benchutil.machine()  # before the run, so loadavg shows other work on the machine
    t0 = time.perf_counter()
    rows = importlib.import_module(BENCHES[args.what][1]).run(args.quick)
    elapsed = time.perf_counter() - t0
    print(f"fastsac bench {args.what}{' --quick' if args.quick else ''}: "
          + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(_benchutil.format_table(rows))
    print(f"total {elapsed:.1f}s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(what=args.what, quick=args.quick, elapsed_s=elapsed, machine=info,
                           rows=rows), f, indent=2)
            f.write("\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastsac", description="Soft Actor-Critic with a C++ replay-memory core.")
    from fastsac import __version__

    parser.add_argument("--version", action="version", version=f"fastsac {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("bench", help="measure fastsac next to a seed-style baseline",
                       description="Measure fastsac next to a seed-style baseline and print a "
                                   "table of medians and ratios (progress goes to stderr).")
    p.add_argument("what", choices=list(BENCHES),
                   help="; ".join(f"{k}: {v[0]}" for k, v in BENCHES.items()))
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, a few seconds: checks that the benchmark runs, not speed")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    p.set_defaults(func=cmd_bench)

    # `fastsac train ...` goes here: sub.add_parser("train", ...) with the training config's
    # fields as options and set_defaults(func=cmd_train). Not implemented yet.
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
