"""``fastsac bench gpu``: the CUDA path next to the seed-style learner and loop on the same GPU,
each timed in one process, block by block in turn (``benchmarks/gpu_check.sh`` runs it).

- updates/s at HalfCheetah shapes (obs 17, action 6, 256x256, batch 256), sampled from a
  ``device="cuda"`` buffer: fastsac eager, TorchScript, torch.compile (torch's CUDA graphs),
  each of the last two in fastsac's CUDA graph, and the seed-style learner fed by its numpy
  buffer;
- end to end on HalfCheetah-v5 (the mujoco extra), one env: steps/s after learning starts,
  fastsac's loop with its defaults (a CUDA graph, the update during the env step) and
  candidate variants (the update after the env step, prefetch, torch.compile) against the
  seed-style loop on the same GPU, then a profile (torch.profiler) of where the host's time
  goes in fastsac's loop;
- ``sample(256)`` to the GPU, vector (1M x 17) and images (3x84x84, stack 3; frames in host
  and in device memory), against the seed-style buffer's batch moved to the GPU;
- sample + pixel update per second with frames in host memory, prefetched, and in device
  memory;
- pixel updates/s (84x84, stack 3, batch 256), eager and CUDA graph.

Every timed block ends with ``torch.cuda.synchronize()``, so queued GPU work is counted.
``--quick`` uses tiny sizes and, without a GPU, runs on the CPU: it checks the code, not speed.
A part that raises gives one failed row (its traceback logged) and the others still run: the
first run on a GPU then shows every part that works and every error, not just the first. Each
part's rows are logged when it ends.
"""

from __future__ import annotations

import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from fastsac.batch import Batch
from fastsac.bench import _buffer_setup as buffer_setup
from fastsac.bench import train as bench_train
from fastsac.bench import update as bench_update
from fastsac.bench._util import (block, compiled_eagerly, format_table, interleaved, log, median,
                                 row, without_jit_notice)
from fastsac.bench.seed_style import SeedStyleSAC
from fastsac.bench.update import ACT, BATCH, OBS
from fastsac.buffers import ReplayBuffer
from fastsac.config import SACConfig
from fastsac.sac import SAC


def _update_rows(device: torch.device, quick: bool) -> list[dict]:
    fast_buf, seed_buf = bench_update.buffers(2_000 if quick else 20_000, device=device)
    configs = {"eager": SACConfig(compile="none", cuda_graph=False),
               "jit": SACConfig(compile="jit", cuda_graph=False),
               "torch.compile": SACConfig(compile="torch", cuda_graph=False)}
    if device.type == "cuda":
        configs["jit + graph"] = SACConfig(compile="jit", cuda_graph=True)
        configs["torch.compile + graph"] = SACConfig(compile="torch", cuda_graph=True)
    notes = {"torch.compile": "the whole update; on CUDA in mode reduce-overhead (torch's "
                              "CUDA graphs)",
             "jit + graph": "fastsac's CUDA graph (the default on CUDA)",
             "torch.compile + graph": "the compiled update in fastsac's CUDA graph"}
    agents, first = {}, {}
    with without_jit_notice():
        for name, cfg in configs.items():
            torch.manual_seed(0)
            agents[name] = SAC((OBS,), (ACT,), cfg, device)
            log(f"gpu: first update of {name} (compiles, captures)")
            t0 = time.perf_counter()
            block(lambda a=agents[name]: a.update(fast_buf.sample(BATCH)), 1, device)()
            first[name] = time.perf_counter() - t0
    seed = SeedStyleSAC(OBS, ACT, device=device)
    n, blocks = (5, 3) if quick else (100, 10)
    fns = {k: block(lambda a=a: a.update(fast_buf.sample(BATCH)), n, device)
           for k, a in agents.items()}
    fns["seed"] = block(lambda: seed.learn(seed_buf.sample(BATCH)), n, device)
    log(f"gpu: timing updates on {device} ({', '.join(fns)})")
    t = interleaved(fns, calls=1, blocks=blocks)
    ups = {k: n / median(v) for k, v in t.items()}
    best = max(agents, key=ups.get)
    return [row(f"SAC update/s on {device}, {k} (sample + update, batch {BATCH})", "1/s",
                ups[k], ups["seed"], lower_is_better=False,
                note="; ".join(x for x in (notes.get(k, ""), f"first update {first[k]:.1f} s",
                                           _fallback(agents[k]), "best" if k == best else "")
                               if x))
            for k in agents]


def _sample_rows(device: torch.device, quick: bool) -> list[dict]:
    sizes = buffer_setup.QUICK if quick else buffer_setup.FULL
    v = buffer_setup.VectorSetup(sizes, device=device)
    rows = [_sample_row("vector", v.fast, v.seed, f"{sizes.vector_capacity:,} x {OBS} f32",
                        device, quick)]
    del v
    img = buffer_setup.ImageSetup(sizes, device=device)
    rows.append(_sample_row("image", img.fast, img.seed_u8, "9x84x84 uint8 stacks", device,
                            quick))
    state, config = img.fast.state_dict(), img.fast.config()
    buffers = {"host memory": img.fast}
    for name, kw in (("prefetch", dict(prefetch=True)), ("device memory", dict(memory="device"))):
        buffers[name] = ReplayBuffer(**config, device=device, **kw)
        buffers[name].load_state_dict(state)
    del state
    rows.append(_sample_row("image, device memory,", buffers["device memory"], img.seed_u8,
                            "9x84x84 uint8 stacks", device, quick))
    return rows + _image_loop_rows(buffers, device, quick)


def _image_loop_rows(buffers: dict[str, ReplayBuffer], device: torch.device,
                     quick: bool) -> list[dict]:
    """Pixel updates fed by each kind of sampling: how much of sampling the update hides."""
    batch, n = (16, 2) if quick else (BATCH, 10)
    torch.manual_seed(0)
    agent = SAC((9, 84, 84), (ACT,), SACConfig(compile="none",
                                                cuda_graph=device.type == "cuda"), device)
    fns = {k: block(lambda b=b: agent.update(b.sample(batch, out=agent.input_batch())), n,
                      device) for k, b in buffers.items()}
    log(f"gpu: timing sample + pixel update on {device}, {', '.join(buffers)}")
    t = interleaved(fns, calls=1, blocks=2 if quick else 5, warmup=1)
    return [row(f"sample + pixel update/s on {device}, {k} (batch {batch})", "1/s",
                n / median(v), None, lower_is_better=False,
                note="CUDA graph" if device.type == "cuda" else "") for k, v in t.items()]


def _sample_row(name: str, fast: ReplayBuffer, seed, what: str, device: torch.device,
                quick: bool) -> dict:
    n, blocks = (5, 3) if quick else (50, 10)
    log(f"gpu: timing {name} sample({BATCH}) to {device}")
    t = interleaved({
        "fastsac": block(lambda: fast.sample(BATCH), n, device),
        "seed": block(lambda: [x.to(device) for x in seed.sample(BATCH)], n, device)},
        calls=1, blocks=blocks)
    us = 1e6 / n
    return row(f"{name} sample({BATCH}) to {device} ({what})", "us", median(t["fastsac"]) * us,
               median(t["seed"]) * us, lower_is_better=True,
               note="fastsac: staging (pinned on CUDA, copied without blocking); seed-style: "
                    "new tensors, then .to(device) (images: its uint8 layout, cast to float)")


def _pixel_rows(device: torch.device, quick: bool) -> list[dict]:
    batch = 16 if quick else 256
    obs = torch.randint(0, 256, (batch, 9, 84, 84), dtype=torch.uint8, device=device)
    b = Batch(obs, torch.rand(batch, ACT, device=device) * 2 - 1,
              torch.randn(batch, device=device), obs.roll(1, 0),
              torch.full((batch,), 0.99, device=device))
    configs = {"eager": SACConfig(compile="none", cuda_graph=False)}
    if device.type == "cuda":
        configs["graph"] = SACConfig(compile="none", cuda_graph=True)
    fns = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        agent = SAC((9, 84, 84), (ACT,), cfg, device)
        fns[name] = block(lambda a=agent: a.update(b), 2 if quick else 20, device)
    log(f"gpu: timing pixel updates on {device} (batch {batch})")
    t = interleaved(fns, calls=1, blocks=2 if quick else 5, warmup=1)
    n = 2 if quick else 20
    return [row(f"pixel update/s on {device}, {k} (84x84, stack 3, batch {batch})", "1/s",
                n / median(v), None, lower_is_better=False) for k, v in t.items()]


def _train_rows(device: torch.device, quick: bool, tmp: Path) -> list[dict]:
    # 12 turns of five fastsac loops and the seed-style one: about a minute at the rates of
    # earlier GPU runs.
    starts, blocks, calls = (300, 2, (10, 5)) if quick else (5_000, 12, (500, 100))
    # Candidates for the default, timed in the same turns: the updates in the other order
    # with the env step, each vector batch prefetched, torch.compile.
    cuda = device.type == "cuda"
    order = "update after the env step" if cuda else "update during the env step"
    variants = {order: {"update_during_env_step": not cuda}, "prefetch": {"prefetch": True},
                "torch.compile": {"sac": SACConfig(compile="torch")}}
    if cuda:
        variants["torch.compile + graph"] = {"sac": SACConfig(compile="torch", cuda_graph=True)}
    sps = bench_train.loop_rates(tmp / "gpu", starts, blocks, calls, device=str(device),
                                 sac=SACConfig(), variants=variants)  # a CUDA graph on CUDA
    split = ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in sps["split"].items())
    name = f"training steps/s on {device}, {bench_train.ENV}, after learning starts"
    rows = [row(name, "1/s", sps["fastsac"], sps["seed"], lower_is_better=False,
                target=1000.0 if cuda else None,
                note="one env, 256x256, batch 256, one update per step; fastsac's defaults"
                     + (" (a CUDA graph, the update during the env step)" if cuda else "")
                     + ", the seed-style loop with its learner on the same device. fastsac "
                     f"per step: {split}"
                     + (" (act includes waiting for the GPU)" if cuda else ""))]
    notes = {order: f"update_during_env_step={not cuda}", "prefetch": "prefetch=True",
             "torch.compile": "compile='torch' (on CUDA: torch's CUDA graphs)",
             "torch.compile + graph": "compile='torch', cuda_graph=True"}
    return rows + [row(f"{name}, {k}", "1/s", sps[k], sps["seed"], lower_is_better=False,
                       note=notes[k] + (f"; {FALLBACK}" if k in sps["compile_failed"] else ""))
                   for k in variants]


FALLBACK = "COMPILING FAILED: timed the eager update (see the log)"


def _fallback(agent: SAC) -> str:
    """A note for a row whose compile="torch" agent fell back to the eager update."""
    return FALLBACK if compiled_eagerly(agent) else ""


def _profile_rows(device: torch.device, quick: bool, tmp: Path) -> list[dict]:
    """No rows: logs where the host's time goes in fastsac's training steps, by torch's
    profiler (self CPU time per op and CUDA runtime call, with each train_step marked), and
    on CUDA the GPU's time per kernel."""
    from torch.profiler import ProfilerActivity, profile, record_function

    starts, warm, steps = (300, 5, 5) if quick else (5_000, 200, 300)
    trainer = bench_train._trainer(tmp / "profile", device=str(device), learning_starts=starts)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    try:
        while trainer.step < starts + warm:  # past the graph's capture
            trainer.train_step()
        log(f"gpu: profiling {steps} training steps on {device}")
        with warnings.catch_warnings():
            # (torch 2.11 warns that events are cleared between cycles; this profile has one)
            warnings.filterwarnings("ignore", message=".*Profiler clears events")
            with profile(activities=activities) as prof:
                for _ in range(steps):
                    with record_function("train_step"):
                        trainer.train_step()
    finally:
        trainer.close()
    averages = prof.key_averages()
    table = averages.table(sort_by="self_cpu_time_total", row_limit=30)
    log(f"gpu: host time of {steps} training steps, by self CPU time\n{table}")
    if device.type == "cuda":  # what the GPU spends its time on: the kernels to fuse or drop
        table = averages.table(sort_by="self_device_time_total", row_limit=30)
        log(f"gpu: GPU time of {steps} training steps, by kernel\n{table}")
    return []


def run(quick: bool = False) -> list[dict]:
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif quick:
        device = torch.device("cpu")  # a dry run of the code
    else:
        raise SystemExit("fastsac bench gpu needs a CUDA GPU (--quick runs it on the CPU)")
    try:
        import mujoco  # noqa: F401  (the end-to-end parts train HalfCheetah)
        end_to_end = True
    except ImportError:
        log("gpu: no MuJoCo, so no end-to-end rows and no profile")
        end_to_end = False
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastsac-bench-") as tmp:
        # What earlier GPU runs have not measured first, in case the time runs out.
        parts = [("updates", _update_rows)]
        if end_to_end:
            parts += [("training", partial(_train_rows, tmp=Path(tmp))),
                      ("profile", partial(_profile_rows, tmp=Path(tmp)))]
        parts += [("sampling", _sample_rows), ("pixel updates", _pixel_rows)]
        for name, part in parts:
            rows += _part(name, partial(part, device, quick))
    return rows


def _part(name: str, rows: Callable[[], list[dict]]) -> list[dict]:
    """``rows()``, or where it raises one row that names the part and its error. Logged as
    they come, so a run stopped by its time limit keeps the parts it finished."""
    try:
        done = rows()
        log(f"gpu: {name} done\n{format_table(done)}")
        return done
    except Exception as exc:  # noqa: BLE001 - reported in the table, the exit status and JSON
        trace = traceback.format_exc()
        log(f"gpu: {name} failed\n{trace}")
        first = (str(exc).splitlines() or [""])[0][:160]
        return [row(f"gpu {name}: FAILED, {type(exc).__name__}: {first}", "", None, None,
                    lower_is_better=False, error=trace)]
