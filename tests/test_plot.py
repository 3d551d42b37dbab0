"""fastsac plot: runs grouped by config, seeds as a mean with a band, CSV overlays."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from fastsac import SACConfig, TrainConfig, train
from fastsac.cli import main
from fastsac.plot import curves, plot


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three seeds of one config and one run of another (batch 64)."""
    root = tmp_path_factory.mktemp("plot")
    out = {}
    for name, seed, batch in (("a0", 0, 32), ("a1", 1, 32), ("a2", 2, 32), ("b0", 0, 64)):
        train(TrainConfig(env="Pendulum-v1", total_steps=300, learning_starts=100,
                          batch_size=batch, eval_every=100, eval_episodes=1, seed=seed,
                          checkpoint_every=0, device="cpu", progress=False,
                          run_dir=str(root / name), sac=SACConfig(hidden=(16, 16))))
        out[name] = root / name
    return out


def test_seeds_of_one_config_are_one_line_with_a_band(runs, tmp_path):
    drawn = curves([runs["a0"], runs["a1"], runs["a2"]])
    assert len(drawn) == 1
    (c,) = drawn
    assert c["runs"] == 3 and c["label"] == "Pendulum-v1 (3 seeds)"
    assert c["steps"].tolist() == [100, 200, 300]
    assert np.all(c["low"] <= c["mean"]) and np.all(c["mean"] <= c["high"])
    assert np.any(c["low"] < c["high"])  # the seeds differ
    fig = plot([runs["a0"], runs["a1"], runs["a2"]], tmp_path / "p.png")
    ax = fig.axes[0]
    assert len(ax.lines) == 1 and sum(isinstance(x, PolyCollection) for x in ax.collections) == 1
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_configs_are_told_apart_and_a_csv_is_overlaid(runs, tmp_path):
    csv = tmp_path / "paper.csv"
    csv.write_text("step,return\n0,-1500\n150,-800\n300,-200\n")
    drawn = curves([runs["a0"], runs["a1"], runs["b0"], csv], smooth=2)
    labels = [c["label"] for c in drawn]
    assert labels == ["Pendulum-v1, batch_size=32 (2 seeds)",
                      "Pendulum-v1, batch_size=64 (1 seed)", "paper"]
    assert drawn[2]["mean"].tolist() == [-1500, -1150, -500]  # smoothed over 2 points


@pytest.mark.parametrize("paths, key, message", [
    (["nowhere"], "eval/return", "no such run directory"),
    (["EMPTY"], "eval/return", "not a run directory"),
    (["A0"], "no/such/key", "no 'no/such/key' rows"),
    (["BADCSV"], "eval/return", "not a CSV"),
])
def test_bad_inputs_are_refused_by_name(runs, tmp_path, capsys, paths, key, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("step,value\n1,2\nthree,4\n")
    sub = {"EMPTY": str(tmp_path / "empty"), "A0": str(runs["a0"]),
           "BADCSV": str(tmp_path / "bad.csv")}
    args = [sub.get(p, p) for p in paths]
    with pytest.raises(ValueError, match=message):
        curves(args, key)
    assert main(["plot", *args, "--key", key, "-o", str(tmp_path / "x.png")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_the_command_writes_the_png(runs, tmp_path, capsys):
    out = tmp_path / "cmp.png"
    assert main(["plot", str(runs["a0"]), str(runs["b0"]), "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000
