"""`fastsac bench buffer|update --quick` run end to end and their numbers make sense."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fastsac import cli
from fastsac.bench import gpu

EXPECTED = ("vector sample", "image sample, batch", "image sample vs seed uint8",
            "image gather bandwidth", "memcpy bandwidth (np.copyto", "memcpy bandwidth (32.5",
            "memory per image step vs seed float32", "memory per image step vs seed uint8",
            "memory per vector step", "vector fill", "image fill",
            "prefetched vector sample, batch 256, Python",
            "prefetched vector sample, batch 256, GIL",
            "vector ingest", "image ingest")


def test_bench_buffer_quick(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "buffer", "--quick", "--json", str(out)]) == 0

    report = json.loads(out.read_text())
    assert report["what"] == "buffer" and report["quick"] is True
    rows = report["rows"]

    def find(prefix: str) -> dict:
        found = [r for r in rows if r["case"].startswith(prefix)]
        assert len(found) == 1, (prefix, [r["case"] for r in rows])
        return found[0]

    for prefix in EXPECTED[:5] + EXPECTED[6:]:  # quick mode copies less than 32.5 MB
        find(prefix)
    assert len(rows) == len(EXPECTED)
    for r in rows:
        assert isinstance(r["fastsac"], float) and math.isfinite(r["fastsac"]), r
        assert r["fastsac"] > 0, r
        if r["seed"] is not None:
            assert math.isfinite(r["seed"]) and r["seed"] > 0 and r["ratio"] > 0, r

    # The layout claim itself: one frame per image step beats both seed layouts.
    for dtype, seed_obs_bytes in (("float32", 508_032), ("uint8", 127_008)):
        mem = find(f"memory per image step vs seed {dtype}")
        assert mem["seed"] >= seed_obs_bytes  # s + s_prime alone, plus a, r, done
        assert mem["fastsac"] >= 3 * 84 * 84  # at least the frame itself
        assert mem["fastsac"] < mem["seed"]

    table = capsys.readouterr().out
    assert "seed-style (median)" in table and "vector sample" in table


def test_bench_update_quick(tmp_path, capsys):
    out = tmp_path / "update.json"
    assert cli.main(["bench", "update", "--quick", "--json", str(out)]) == 0
    rows = {r["case"].split(" (")[0].split(",")[0]: r
            for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"SAC update/s", "act() latency"}
    for r in rows.values():
        assert r["fastsac"] > 0 and r["seed"] > 0 and math.isfinite(r["ratio"])
    assert "update" in capsys.readouterr().out


def test_bench_train_quick(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mujoco", reason="the mujoco extra is not installed")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "train.json"
    assert cli.main(["bench", "train", "--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["case"].split(",")[0].split(":")[0] for r in rows] == \
        ["training steps/s", "pixel training steps/s", "pixel encoder forward + backward",
         "render one 84x84 frame"]
    for r in rows:
        assert r["fastsac"] > 0 and math.isfinite(r["fastsac"]), r
    assert rows[0]["seed"] > 0 and rows[2]["seed"] > 0 and rows[3]["seed"] > 0
    assert "update" in rows[1]["note"] and "render" in rows[1]["note"]
    assert "training steps/s" in capsys.readouterr().out
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_bench_gpu_quick_runs_on_whatever_device_there_is(tmp_path, monkeypatch, capsys):
    """Without a GPU, --quick is a dry run of the GPU bench's code on the CPU."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "gpu.json"
    assert cli.main(["bench", "gpu", "--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    cases = [r["case"].split(" on ")[0].split(" to ")[0] for r in rows]
    # eager, TorchScript, torch.compile (and each in a graph on CUDA)
    assert cases[:3] == ["SAC update/s"] * 3
    assert {"vector sample(256)", "image sample(256)", "pixel update/s"} <= set(cases)
    try:
        import mujoco  # noqa: F401
    except ImportError:
        return  # (the mujoco extra: no end-to-end rows)
    # The end-to-end loop with its defaults and three variants (four on CUDA), then its
    # profile (logged).
    assert cases.count("training steps/s") == 4 + torch.cuda.is_available()
    profile = capsys.readouterr().err.split("host time of", 1)[1]
    names = [line.split()[0] for line in profile.splitlines() if line.strip()[:1].isalpha()]
    assert "train_step" in names
    for r in rows:
        assert r["fastsac"] > 0 and math.isfinite(r["fastsac"]), r


def test_a_failing_part_of_the_gpu_bench_leaves_the_others_and_fails_the_command(
        tmp_path, monkeypatch, capsys):
    def broken(device, quick):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")
    monkeypatch.setattr(gpu, "_pixel_rows", broken)
    for part in ("_train_rows", "_profile_rows"):  # (run by the test above)
        monkeypatch.setattr(gpu, part, lambda *args, **kwargs: [])
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "gpu.json"
    assert cli.main(["bench", "gpu", "--quick", "--json", str(out)]) == 1
    rows = json.loads(out.read_text())["rows"]
    failed = [r for r in rows if r.get("error")]
    assert [r["case"] for r in failed] == [
        "gpu pixel updates: FAILED, RuntimeError: CUDA error: operation not permitted when "
        "stream is capturing"]
    assert "in broken" in failed[0]["error"] and failed[0]["fastsac"] is None
    cases = [r["case"].split(" on ")[0].split(" to ")[0] for r in rows]
    assert {"SAC update/s", "vector sample(256)", "image sample(256)"} <= set(cases)
    assert "pixel update/s" not in cases
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "in broken" in captured.err
    assert "1 part(s) of the bench failed" in captured.err


def test_bench_workers_quick(tmp_path, monkeypatch):
    pytest.importorskip("mujoco", reason="the mujoco extra is not installed")
    pytest.importorskip("ray", reason="the ray extra is not installed")
    monkeypatch.chdir(tmp_path)  # Ray's workers import from the working directory
    out = tmp_path / "workers.json"
    assert cli.main(["bench", "workers", "--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["case"].split(",")[0] for r in rows] == \
        ["collection"] * 4 + ["a one-step chunk from a Ray worker (round trip)"] \
        + ["learner ingest of a 10-step chunk"] * 2 \
        + ["training env steps/s", "training updates/s"] \
        + ["Ray workers that saturate one learner"] * 2
    for r in rows:
        assert r["fastsac"] > 0 and math.isfinite(r["fastsac"]), r
    for r in rows[:5] + rows[7:9]:
        assert r["seed"] > 0, r  # each measured beside its baseline
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_bench_storage_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTSAC_BENCH_DIR", str(tmp_path))
    out = tmp_path / "storage.json"
    assert cli.main(["bench", "storage", "--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["case"].split(",")[0].split(" (")[0] for r in rows] == \
        ["image fill", "image sample(256)", "checkpoint of a 2"]
    for r in rows:
        assert r["fastsac"] > 0 and r["seed"] > 0 and math.isfinite(r["ratio"]), r
    assert list(tmp_path.iterdir()) == [out]  # its files are gone


def test_bench_sb3_quick(tmp_path):
    pytest.importorskip("stable_baselines3", reason="the sb3 extra is not installed")
    out = tmp_path / "sb3.json"
    assert cli.main(["bench", "sb3", "--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["case"].split(",")[0] for r in rows] == \
        ["memory per stored step", "sample(256)"] * 2
    for r in rows:
        assert r["fastsac"] > 0 and r["seed"] > 0 and math.isfinite(r["ratio"]), r
    pixels = rows[0]
    assert pixels["seed"] >= 2 * 12 * 84 * 84  # SB3 keeps obs and next_obs stacks
    assert 3 * 84 * 84 <= pixels["fastsac"] < 2 * 3 * 84 * 84  # one frame, and a header
