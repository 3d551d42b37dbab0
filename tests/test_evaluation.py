"""fastsac evaluate: a run's saved agent under the run's own evaluation protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastsac import SACConfig, TrainConfig, train
from fastsac.cli import main
from fastsac.evaluation import evaluate_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    result = train(TrainConfig(env="Pendulum-v1", total_steps=400, learning_starts=100,
                               batch_size=32, eval_every=200, eval_episodes=2,
                               checkpoint_every=200, device="cpu", progress=False,
                               run_dir=str(run_dir), sac=SACConfig(hidden=(16, 16))))
    return run_dir, result.eval_returns


@pytest.mark.parametrize("step", [200, 400])
def test_evaluate_reproduces_the_runs_own_evaluation(run, step):
    run_dir, returns = run
    result, used = evaluate_run(run_dir, step=step)
    assert used == step and len(result.returns) == 2 and result.lengths == [200, 200]
    assert sum(result.returns) / 2 == pytest.approx(returns[step], rel=1e-12)


def test_the_newest_checkpoint_by_default_and_other_seeds(run):
    run_dir, returns = run
    result, used = evaluate_run(run_dir, episodes=3, seed=5)
    assert used == 400 and len(result.returns) == 3
    assert sum(result.returns) / 3 != pytest.approx(returns[400], rel=1e-12)


def test_the_command_prints_and_writes_json(run, tmp_path, capsys):
    run_dir, returns = run
    out = tmp_path / "e.json"
    assert main(["evaluate", str(run_dir), "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["checkpoint"] == 400 and summary["episodes"] == 2
    assert summary["mean"] == pytest.approx(returns[400], rel=1e-12)
    assert summary["min"] <= summary["mean"] <= summary["max"]
    assert "at step 400: return" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "holds no run"),
    (["RUN", "--checkpoint", "300"], "no checkpoint of step 300"),
    (["RUN", "--episodes", "0"], "--episodes must be >= 1"),
])
def test_bad_run_directories_and_checkpoints_get_one_line(run, capsys, args, message):
    args = [str(run[0]) if a == "RUN" else a for a in args]
    assert main(["evaluate", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_damaged_newest_agent_falls_back_with_a_warning(run, tmp_path):
    import shutil

    copy = Path(shutil.copytree(run[0], tmp_path / "run"))
    (copy / "checkpoints" / "agent-400.pt").write_bytes(b"")
    with pytest.warns(UserWarning, match="agent-400.pt is empty"):
        result, used = evaluate_run(copy)
    assert used == 200
    assert sum(result.returns) / 2 == pytest.approx(run[1][200], rel=1e-12)
