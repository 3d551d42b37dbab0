"""A run's metrics.csv (rows of step, key, value) and its plot."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

from fastsac._io import atomic_write

PANELS = (("eval/return", "average return"), ("loss/actor", "policy loss"),
          ("loss/critic", "value loss"))


class MetricsLog:
    """Appends ``step,key,value`` rows; each write is flushed, so a killed run keeps its rows."""

    def __init__(self, path: Path, fresh: bool = True):
        """``fresh``: start the file over; else append to it (creating it if missing)."""
        self.path = Path(path)
        if fresh or not self.path.exists():
            self.path.write_text("step,key,value\n")

    def write(self, step: int, values: dict[str, float]) -> None:
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            for key, value in values.items():
                w.writerow((step, key, f"{value:.6g}"))

    def tell(self) -> int:
        return self.path.stat().st_size

    def truncate(self, size: int) -> None:
        """Drop rows written after a checkpoint (taken at ``size`` bytes), when resuming."""
        if self.path.stat().st_size > size:
            os.truncate(self.path, size)


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """key -> [(step, value), ...] from a metrics.csv."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            series[row["key"]].append((int(row["step"]), float(row["value"])))
    return dict(series)


def plot_run(metrics_csv: Path, png: Path, title: str = "") -> None:
    """Three panels (average return, policy loss, value loss against step), written
    atomically. Uses matplotlib's object API: no pyplot, no global backend change."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = read_metrics(metrics_csv)
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (key, label) in zip(fig.subplots(1, 3), PANELS):
        points = series.get(key, [])
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if key == "eval/return" else None,
                    markersize=3, linewidth=1, label="evaluation" if key == "eval/return"
                    else None)
        train = series.get("train/episode_return", []) if key == "eval/return" else []
        if train:  # the training episodes' return beside the evaluation's
            steps, values = zip(*train)
            ax.plot(steps, values, linewidth=1, alpha=0.6, label="training episodes")
        if points and train:
            ax.legend(fontsize="small")
        ax.set_title(label)
        ax.set_xlabel("env step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    with atomic_write(png) as f:
        fig.savefig(f, format="png", dpi=100)
