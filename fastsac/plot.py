"""Comparing runs (``fastsac plot``): runs grouped by their config, the seeds of a group drawn
as one line (their mean) with a band (their min to max), against env steps.

A CSV of (step, value) columns (an SB3 monitor's curve, a paper's) can be overlaid as a line of
its own. Uses matplotlib's object API (no pyplot, no global backend change).
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from fastsac._io import atomic_write
from fastsac._runlog import read_metrics

IGNORED = ("seed", "run_dir", "progress", "total_steps", "ray_address", "keep_checkpoints")


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{k}."))
        else:
            out[prefix + k] = tuple(v) if isinstance(v, list) else v
    return out


def _run(path: Path, key: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """(its config, steps, values of ``key``) of a run directory."""
    if not (path / "metrics.csv").is_file() or not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a run directory (no metrics.csv and config.json)")
    try:
        config = _flat(json.loads((path / "config.json").read_text()))
        series = read_metrics(path / "metrics.csv").get(key, [])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from None
    steps, values = (np.array(x, float) for x in zip(*series)) if series else \
        (np.zeros(0), np.zeros(0))
    return config, steps, values


def _csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values): the first two numeric columns of a CSV (a header row is skipped)."""
    rows = []
    try:
        with path.open(newline="") as f:
            for line in csv.reader(f):
                try:
                    rows.append((float(line[0]), float(line[1])))
                except (ValueError, IndexError):
                    if rows:  # only a first (header) row may be text
                        raise ValueError(f"row {len(rows) + 2} is not two numbers: {line}")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a CSV of (step, value) rows ({exc})") from None
    if not rows:
        raise ValueError(f"{path}: no (step, value) rows")
    steps, values = np.array(rows).T
    return steps, values


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` points at each point (fewer at the start)."""
    if window <= 1:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    n = np.minimum(np.arange(1, len(values) + 1), window)
    return (c[1:] - c[np.arange(1, len(values) + 1) - n]) / n


def curves(paths: list[str | os.PathLike], key: str = "eval/return", smooth: int = 1
           ) -> list[dict]:
    """One curve per group of runs (same config but for the seed) and per CSV: its label,
    steps, mean, low and high (the band: min and max over the group's seeds)."""
    if not paths:
        raise ValueError("give at least one run directory or CSV")
    groups: dict[tuple, list] = defaultdict(list)
    configs: dict[tuple, dict] = {}
    out, overlays = [], []
    for p in map(Path, paths):
        if p.is_file() and p.suffix == ".csv":
            steps, values = _csv(p)
            v = _smooth(values, smooth)
            overlays.append(dict(label=p.stem, steps=steps, mean=v, low=v, high=v, runs=1))
            continue
        if not p.exists():
            raise ValueError(f"{p}: no such run directory or CSV")
        config, steps, values = _run(p, key)
        if not len(steps):
            raise ValueError(f"{p}: metrics.csv has no {key!r} rows")
        group = tuple(sorted((k, v) for k, v in config.items() if k not in IGNORED))
        groups[group].append((steps, _smooth(values, smooth)))
        configs[group] = config
    # A group's label: its env and what sets it apart from the other groups.
    varying = {k for g in groups for k, v in g if any(dict(h).get(k) != v for h in groups)}
    for group, runs in groups.items():
        config = configs[group]
        label = config.get("env", "run") + "".join(
            f", {k}={config[k]}" for k in sorted(varying) if k != "env")
        grid = np.unique(np.concatenate([s for s, _ in runs]))
        lo, hi = max(s[0] for s, _ in runs), min(s[-1] for s, _ in runs)
        grid = grid[(grid >= lo) & (grid <= hi)]  # where every seed has data
        ys = np.stack([np.interp(grid, s, v) for s, v in runs])
        out.append(dict(label=f"{label} ({len(runs)} seed{'s' * (len(runs) > 1)})",
                        steps=grid, mean=ys.mean(0), low=ys.min(0), high=ys.max(0),
                        runs=len(runs)))
    return out + overlays


def plot(paths: list[str | os.PathLike], out: str | os.PathLike, key: str = "eval/return",
         smooth: int = 1, title: str = ""):
    """Draw ``curves(paths, key, smooth)`` to the PNG ``out``; returns the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = curves(paths, key, smooth)
    fig = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, c in enumerate(drawn):
        color = f"C{i % 10}"
        ax.plot(c["steps"], c["mean"], color=color, linewidth=1.5, label=c["label"])
        if c["runs"] > 1:
            ax.fill_between(c["steps"], c["low"], c["high"], color=color, alpha=0.2,
                            linewidth=0)
    ax.set_xlabel("env step")
    ax.set_ylabel(key + (f" (mean of the last {smooth})" if smooth > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    ax.set_title(title or f"{key}: mean over seeds, band from min to max")
    with atomic_write(out) as f:
        fig.savefig(f, format="png", dpi=110)
    return fig
