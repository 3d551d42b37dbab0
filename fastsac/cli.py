"""The ``fastsac`` command: ``fastsac train`` and ``fastsac bench``."""

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
    "train": ("end-to-end training on HalfCheetah-v5, vector and pixels (needs the mujoco "
              "extra)", "fastsac.bench_train"),
}


def cmd_bench(args: argparse.Namespace) -> int:
    # Imported here so that `fastsac --help` stays fast.
    import importlib

    from fastsac import _benchutil, tune_process

    tune_process()  # as `fastsac train` runs; process-wide, so the baselines get it too
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

    add_train_parser(sub)
    return parser


def add_train_parser(sub) -> None:
    from fastsac._configargs import add_options
    from fastsac.sac import SACConfig
    from fastsac.train import PRESETS, RESUME_MAY_CHANGE, TrainConfig

    p = sub.add_parser(
        "train", help="train SAC on a gymnasium task (default: Pendulum-v1, a few minutes)",
        description="Train SAC on a gymnasium task, vector or pixels. Writes config.json, "
                    "metrics.csv, progress.png and checkpoints to the run directory.",
        epilog=f"--resume DIR continues a run from its latest checkpoint with its own "
               f"config.json; options given with it may change only "
               f"{', '.join(RESUME_MAY_CHANGE)} (others must equal the run's).")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="start from a named config; options given with it override it. "
                        "seed: the seed's HalfCheetah-v4 run (1M steps, lr 1e-4, fixed alpha "
                        "0.2, 5,000 random steps, tanh log-std)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR")
    add_options(p.add_argument_group("training"), TrainConfig)
    add_options(p.add_argument_group("learner"), SACConfig, dest_prefix="sac.")
    p.set_defaults(func=cmd_train)


def train_config(args: argparse.Namespace):
    """The TrainConfig the parsed options describe: options typed on the command line, over a
    preset or the run being resumed, over the defaults."""
    import dataclasses

    from fastsac._configargs import split_prefixed
    from fastsac.train import TrainConfig, read_run_config, with_preset

    typed = {k: v for k, v in vars(args).items()
             if k not in ("command", "func", "preset", "resume")}
    plain, sac = split_prefixed(typed, "sac.")
    if args.resume:
        if args.preset or "run_dir" in plain:
            raise ValueError("--resume DIR takes the run's own config and directory: drop "
                             f"{'--preset' if args.preset else '--run-dir'}")
        saved = read_run_config(args.resume)
        return dataclasses.replace(saved, **plain, sac=dataclasses.replace(saved.sac, **sac))
    if args.preset:
        return with_preset(args.preset, **plain, sac=sac)
    return TrainConfig.from_dict({**plain, "sac": sac})


def cmd_train(args: argparse.Namespace) -> int:
    from fastsac import tune_process
    from fastsac.train import make_trainer

    try:  # every check happens here, before the first step
        trainer = make_trainer(train_config(args), resume=args.resume)
    except (ValueError, TypeError) as exc:
        print(f"fastsac train: error: {exc}", file=sys.stderr)
        return 2
    tune_process()
    result = trainer.run()
    last = max(result.eval_returns) if result.eval_returns else None
    print(f"run: {result.run_dir}" + (f"  eval return at step {last}: "
                                      f"{result.eval_returns[last]:.1f}" if last else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
