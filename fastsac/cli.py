"""The ``fastsac`` command: ``fastsac train``, ``bench``, ``evaluate`` and ``plot``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from collections.abc import Sequence

from fastsac import __version__, bench, tune_process
from fastsac._configargs import add_options, split_prefixed
from fastsac.bench._util import format_table
from fastsac.config import (
    PRESETS,
    RESUME_MAY_CHANGE,
    SACConfig,
    TrainConfig,
    read_run_config,
    with_preset,
)
from fastsac.trainer import make_trainer


def cmd_bench(args: argparse.Namespace) -> int:
    tune_process()  # as `fastsac train` runs; process-wide, so the baselines get it too
    report = bench.run(args.what, args.quick)
    print(f"fastsac bench {args.what}{' --quick' if args.quick else ''}: "
          + ", ".join(f"{k} {v}" for k, v in report["machine"].items()))
    print(format_table(report["rows"]))
    print(f"total {report['elapsed_s']:.1f}s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    failed = [r["case"] for r in report["rows"] if r.get("error")]
    if failed:
        print(f"{len(failed)} part(s) of the bench failed: their errors are above", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastsac", description="Soft Actor-Critic with a C++ replay-memory core.")
    parser.add_argument("--version", action="version", version=f"fastsac {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("bench", help="measure fastsac next to a seed-style baseline",
                       description="Measure fastsac next to a seed-style baseline (a faithful "
                                   "re-implementation of the plain numpy buffer and eager SAC "
                                   "learner of the tutorial fastsac grew from) and print a "
                                   "table of medians and ratios (progress goes to stderr).")
    p.add_argument("what", choices=list(bench.BENCHES),
                   help="; ".join(f"{k}: {v[0]}" for k, v in bench.BENCHES.items()))
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, a few seconds: checks that the benchmark runs, not speed")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    p.set_defaults(func=cmd_bench)

    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_plot_parser(sub)
    return parser


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a run's saved agent",
        description="Load a run's agent from a checkpoint and run the run's evaluation "
                    "protocol (deterministic actions, episode i reset with seed + 100 + i): "
                    "prints the mean, std, min and max return and the episode lengths.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a directory fastsac train wrote")
    p.add_argument("--checkpoint", type=int, metavar="STEP",
                   help="the checkpoint's step (default: the newest readable one)")
    p.add_argument("--episodes", type=int, metavar="N",
                   help="episodes (default: the run's eval_episodes, or 10)")
    p.add_argument("--seed", type=int, help="episode i resets with SEED + 100 + i (default: "
                                            "the run's seed, as its evaluations)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the agent runs (a GPU-trained agent loads on the CPU too)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--video", metavar="PATH",
                   help="also record the first episode as an MP4 at PATH (the video extra)")
    p.add_argument("--video-size", type=int, default=256, metavar="N",
                   help="side in pixels of the video's frames (default: 256)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fastsac.config import read_run_config
    from fastsac.evaluation import evaluate_agent, load_run_agent, write_json

    if args.episodes is not None and args.episodes < 1:
        return _error("evaluate", "--episodes must be >= 1")
    warnings.formatwarning = _one_line_warning
    try:
        config = read_run_config(args.run_dir)
        agent, step = load_run_agent(args.run_dir, args.checkpoint, args.device)
        result = evaluate_agent(agent, config, args.episodes, args.seed)
    except (ValueError, TypeError) as exc:
        return _error("evaluate", exc)
    summary = {"run_dir": str(args.run_dir), "checkpoint": step, **result.summary()}
    print(f"{args.run_dir} at step {step}: return {summary['mean']:.2f} ± {summary['std']:.2f} "
          f"(min {summary['min']:.2f}, max {summary['max']:.2f}) over {summary['episodes']} "
          f"episodes of {summary['mean_length']:.0f} steps on average")
    if args.json:
        write_json(args.json, summary)
    if args.video:
        from fastsac.video import record_episode

        c = config
        try:
            frames = record_episode(agent, c.env, args.video,
                                    seed=c.seed if args.seed is None else args.seed,
                                    pixels=c.pixels, image_size=c.image_size,
                                    full_render=c.full_render, frame_stack=c.frame_stack,
                                    size=args.video_size)
        except ValueError as exc:
            return _error("evaluate", exc)
        print(f"wrote {args.video} ({frames} frames)")
    return 0


def add_plot_parser(sub) -> None:
    p = sub.add_parser(
        "plot", help="compare runs on one plot",
        description="Plot a metric of several runs against env steps. Runs with the same "
                    "config but for the seed are one line (their mean) with a band (min to "
                    "max). A CSV of (step, value) rows is drawn as a line of its own.")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_CSV")
    p.add_argument("--key", default="eval/return",
                   help="the metrics.csv key to plot (default: eval/return)")
    p.add_argument("--smooth", type=int, default=1, metavar="W",
                   help="average each point with the W - 1 before it (default: 1, none)")
    p.add_argument("-o", "--output", default="runs.png", metavar="PATH",
                   help="the PNG to write (default: runs.png)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    from fastsac.plot import plot

    if args.smooth < 1:
        return _error("plot", "--smooth must be >= 1")
    try:
        plot(args.paths, args.output, args.key, args.smooth)
    except ValueError as exc:
        return _error("plot", exc)
    print(f"wrote {args.output}")
    return 0


def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train SAC on a gymnasium task (default: Pendulum-v1, about a minute on 2 cores)",
        description="Train SAC on a gymnasium task, vector or pixels. Writes config.json, "
                    "metrics.csv, progress.png and checkpoints to the run directory.",
        epilog=f"--resume DIR continues a run from its latest checkpoint with its own "
               f"config.json; options given with it may change only "
               f"{', '.join(RESUME_MAY_CHANGE)} (others must equal the run's).")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="start from a named config; options given with it override it. "
                        "seed: the HalfCheetah-v4 run of the SAC tutorial fastsac grew from "
                        "(1M steps, lr 1e-4, fixed alpha 0.2, 5,000 random steps, tanh "
                        "log-std)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR")
    add_options(p.add_argument_group("training"), TrainConfig)
    add_options(p.add_argument_group("learner"), SACConfig, dest_prefix="sac.")
    p.set_defaults(func=cmd_train)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed options describe: options typed on the command line, over a
    preset or the run being resumed, over the defaults."""
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


def _error(command: str, message) -> int:
    """Print ``fastsac COMMAND: error: MESSAGE`` to stderr; the exit status 2."""
    print(f"fastsac {command}: error: {message}", file=sys.stderr)
    return 2


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"fastsac train: warning: {message}\n"


def cmd_train(args: argparse.Namespace) -> int:
    warnings.formatwarning = _one_line_warning  # e.g. a checkpoint passed over on resume
    try:  # every check happens here, before the first step
        trainer = make_trainer(train_config(args), resume=args.resume)
    except (ValueError, TypeError) as exc:
        return _error("train", exc)
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
