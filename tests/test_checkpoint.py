"""Checkpoints that survive a bad file: every unreadable file named, the newest readable
checkpoint resumed from, the newest keep_checkpoints kept."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fastsac import SAC, SACConfig, TrainConfig, train
from fastsac.cli import main
from fastsac.trainer import make_trainer


def quick(run_dir: Path, **kw) -> TrainConfig:
    cfg = dict(env="Pendulum-v1", total_steps=400, learning_starts=100, batch_size=32,
               buffer_size=2_000, eval_every=0, eval_episodes=0, log_every=100,
               checkpoint_every=200, device="cpu", progress=False, run_dir=str(run_dir),
               sac=SACConfig(hidden=(16, 16)))
    return TrainConfig(**{**cfg, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished run with checkpoints at steps 200 and 400."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    train(quick(run))
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def foreign(kind: str, path: Path) -> None:
    """Another program's file under the checkpoint's name."""
    if kind == "agent":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "trainer":
        path.write_text(json.dumps({"name": "someone else's"}))
    else:
        with path.open("wb") as f:
            np.savez(f, x=np.zeros(3))


DAMAGE = {
    "truncated": lambda kind, p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "zero-length": lambda kind, p: p.write_bytes(b""),
    "foreign": foreign,
}
FILES = {"agent": "agent-{}.pt", "trainer": "trainer-{}.json", "buffer": "buffer-{}.npz"}


def test_a_run_keeps_its_two_newest_checkpoints(trained):
    names = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert names == ["agent-200.pt", "agent-400.pt", "buffer-200.npz", "buffer-400.npz",
                     "checkpoint-200.json", "checkpoint-400.json", "latest.json",
                     "trainer-200.json", "trainer-400.json"]


@pytest.mark.parametrize("kind", list(FILES))
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_bad_newest_file_resumes_from_the_checkpoint_before(trained, tmp_path, kind, damage):
    run = copy_of(trained, tmp_path)
    bad = run / "checkpoints" / FILES[kind].format(400)
    DAMAGE[damage](kind, bad)
    with pytest.warns(UserWarning) as record:
        trainer = make_trainer(resume=run)
    messages = [str(w.message) for w in record if "checkpoint" in str(w.message)]
    assert len(messages) == 1, messages
    message = messages[0]
    assert str(bad) in message and "step 200" in message, message
    assert "\n" not in message
    assert trainer.step == 200
    metrics = (run / "metrics.csv").read_text()
    assert "\n300," not in metrics and "\n400," not in metrics  # back to step 200's rows
    trainer.close()


def test_the_resumed_run_goes_on_and_replaces_the_bad_checkpoint(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    DAMAGE["truncated"]("agent", run / "checkpoints" / "agent-400.pt")
    with pytest.warns(UserWarning, match="agent-400.pt"):
        result = train(resume=run)
    assert result.agent.updates == 400 - 99
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*checkpoint")  # 400 is whole again
        trainer = make_trainer(quick(run, total_steps=600), resume=run)
    assert trainer.step == 400
    trainer.close()


def test_a_bad_manifest_is_passed_over_by_name(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    manifest = run / "checkpoints" / "checkpoint-400.json"
    manifest.write_bytes(b"")
    with pytest.warns(UserWarning, match=f"{manifest}.*step 200"):
        trainer = make_trainer(resume=run)
    assert trainer.step == 200
    trainer.close()


def test_an_agent_of_other_networks_is_passed_over(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    other = SAC((3,), (1,), SACConfig(hidden=(8,)))
    path = run / "checkpoints" / "agent-400.pt"
    torch.save({"agent": other.state_dict(), "rng": {"cpu": torch.get_rng_state()}}, path)
    with pytest.warns(UserWarning, match="networks are not this run's"):
        trainer = make_trainer(resume=run)
    assert trainer.step == 200
    trainer.close()


def test_no_readable_checkpoint_is_one_error_naming_each_bad_file(trained, tmp_path, capsys):
    run = copy_of(trained, tmp_path)
    ckpt = run / "checkpoints"
    DAMAGE["zero-length"]("agent", ckpt / "agent-400.pt")
    DAMAGE["truncated"]("trainer", ckpt / "trainer-200.json")
    with pytest.raises(ValueError) as exc:
        make_trainer(resume=run)
    text = str(exc.value)
    assert str(ckpt / "agent-400.pt") in text and str(ckpt / "trainer-200.json") in text
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastsac train: error: no readable checkpoint") and "\n" not in err


def test_a_run_saved_with_only_latest_json_still_resumes(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    for p in (run / "checkpoints").glob("checkpoint-*.json"):
        p.unlink()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*checkpoint")
        trainer = make_trainer(resume=run)
    assert trainer.step == 400
    trainer.close()


@pytest.mark.parametrize("keep", [1, 3])
def test_keep_checkpoints_sets_how_many_stay(tmp_path, keep):
    run = tmp_path / "run"
    train(quick(run, total_steps=800, keep_checkpoints=keep))
    steps = sorted(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("agent-*.pt"))
    assert steps == [800, 600, 400][:keep][::-1]
    assert len(list((run / "checkpoints").glob("checkpoint-*.json"))) == keep


def test_keep_checkpoints_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="keep_checkpoints"):
        quick(tmp_path, keep_checkpoints=0)
    cfg = quick(tmp_path)
    assert dataclasses.replace(cfg, keep_checkpoints=5).keep_checkpoints == 5
