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
    """Appends ``step,key,value`` rows; each write is flushed, so a killed run keeps its rows.

    With ``tensorboard``, the same values also go to TensorBoard event files in that
    directory (``torch.utils.tensorboard``, the tb extra); metrics.csv stays the source of
    truth (a resume truncates it, and tells TensorBoard to drop the events past it).
    """

    def __init__(self, path: Path, fresh: bool = True, tensorboard: Path | None = None):
        """``fresh``: start the file over; else append to it (creating it if missing)."""
        self.path = Path(path)
        if fresh or not self.path.exists():
            self.path.write_text("step,key,value\n")
        self._tb_dir = tensorboard
        self._tb = None
        if tensorboard is not None:
            self._open_tensorboard(None)

    def _open_tensorboard(self, purge_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch needs the tensorboard package for it
            raise ValueError("tensorboard needs the tb extra: pip install 'fastsac[tb]'") \
                from exc
        if self._tb is not None:
            self._tb.close()
        self._tb = SummaryWriter(str(self._tb_dir), purge_step=purge_step)

    def write(self, step: int, values: dict[str, float]) -> None:
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            for key, value in values.items():
                w.writerow((step, key, f"{value:.6g}"))
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()  # as metrics.csv: a killed run keeps its rows

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def tell(self) -> int:
        return self.path.stat().st_size

    def truncate(self, size: int, step: int | None = None) -> None:
        """Drop rows written after a checkpoint (taken at ``size`` bytes, at ``step``), when
        resuming; TensorBoard then drops its events from ``step`` on."""
        if self.path.stat().st_size > size:
            os.truncate(self.path, size)
        if self._tb is not None and step is not None:
            self._open_tensorboard(purge_step=step + 1)


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
