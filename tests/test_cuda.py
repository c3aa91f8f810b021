"""The GPU path, end to end (``-m cuda``; skipped where torch sees no CUDA device).

On a machine without CUDA these tests are skipped: they are the checks to run where a GPU
exists (README, "Throughput"). They train on ``--device cuda`` through the CLI, as a user would:
the learners' networks, buffers and updates on the GPU, the envs on their backend (JAX on its
default platform), each env step crossing once each way (``TimeStep.to``).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from marpo_bench.cli import app

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = {
    "mappo": ["--set", "num_envs=4", "--set", "eval_episodes=4", "--set", "eval_interval=100"],
    "marpo": ["--set", "num_envs=4", "--set", "eval_episodes=4", "--set", "eval_interval=100"],
    "qmix": ["--set", "num_envs=4", "--set", "batch_size=4", "--set", "epsilon_anneal_steps=300",
             "--set", "eval_episodes=4", "--set", "eval_interval=100"],
}


def _runs(root, study):
    out = {}
    for d in sorted((root / study / "runs").iterdir()):
        out[d.name] = (json.loads((d / "run.json").read_text()), pd.read_parquet(d / "metrics.parquet"))
    return out


@pytest.mark.parametrize("algo", ["mappo", "marpo", "qmix"])
@pytest.mark.parametrize("vectorize", [False, True])
def test_training_on_cuda_completes_and_records_the_gpu(tmp_path, algo, vectorize):
    args = ["run", "--results", str(tmp_path), "--study", "g", "--algos", algo, "--envs", "jax_mpe:simple_spread",
            "--seeds", "2", "--steps", "400", "--device", "cuda", *TINY[algo],
            *(["--vectorize-seeds"] if vectorize else [])]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    for rec, df in _runs(tmp_path, "g").values():
        assert rec["status"] == "complete" and rec["device"].startswith("cuda") and rec["host"]["gpu"]
        assert list(df["env_steps"]) == [0, 100, 200, 300, 400]
        assert df["eval_return_mean"].notna().all()


def test_a_cuda_run_resumes_from_its_checkpoint_on_cuda(tmp_path, monkeypatch):
    args = ["run", "--results", str(tmp_path), "--study", "r", "--retries", "0", "--algos", "mappo", "--envs",
            "jax_mpe:simple_spread", "--seeds", "1", "--steps", "400", "--device", "cuda", *TINY["mappo"]]
    monkeypatch.setenv("MARPO_BENCH_FAULT", "raise@200")
    assert CliRunner().invoke(app, args).exit_code == 1
    monkeypatch.delenv("MARPO_BENCH_FAULT")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    (rec, df), = _runs(tmp_path, "r").values()
    assert rec["status"] == "complete" and rec["resumed_from"] == 100 and list(df["env_steps"])[-1] == 400


def test_batched_seeds_on_cuda_follow_the_cpu_batched_learner():
    """The same QMix seeds batched on the GPU and on the CPU, fed the same episodes: parameters
    after 10 updates within 1e-4 (GPU matmuls add up in another order)."""
    import copy
    import dataclasses

    import numpy as np

    from baselines.qmix import QMix
    from baselines.qmix_replay import EpisodeReplay
    from marpo_bench.config import RunSpec
    from marpo_bench.envs import make_env
    from marpo_bench.recipes import build_config

    cfg = build_config(RunSpec("qmix", "jax_mpe", "simple_spread", 0, 10**6, (("batch_size", "8"),)))
    env = make_env("jax_mpe", "simple_spread", cfg.num_envs, agent_id=cfg.agent_id)
    cpu = QMix.batched(copy.deepcopy(cfg), env.info, "cpu", [0, 1])
    gpu = QMix.batched(copy.deepcopy(cfg), env.info, "cuda", [0, 1])
    replay = EpisodeReplay(cfg.buffer_size, cfg.num_envs, env.info, "cpu")
    single = cpu.members[0]
    ts, state = env.reset(0), single.initial_act_state(cfg.num_envs)
    for _ in range(env.info.episode_limit * 2):
        replay.add_obs(ts)
        actions, state = single.act(ts, state, deterministic=False)
        nxt = env.step(actions)
        replay.add_step(actions, nxt)
        ts = nxt
    rng = np.random.default_rng(0)
    for _ in range(10):
        batches = [replay.sample(8, rng) for _ in range(2)]
        cpu.update(batches)
        gpu.update([type(b)(**{f.name: getattr(b, f.name).to("cuda") for f in dataclasses.fields(b)})
                    for b in batches])
    for name in cpu.agent.names:
        assert torch.allclose(gpu.agent[name].cpu(), cpu.agent[name], atol=1e-4), name


def test_bench_times_training_on_cuda(tmp_path):
    out = tmp_path / "bench.parquet"
    res = CliRunner().invoke(app, ["bench", "--algos", "mappo", "--envs", "jax_mpe:simple_spread", "--num-envs", "8",
                                   "--seconds", "2", "--device", "cuda", "--seed-stacks", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    assert (df.loc[df["kind"] != "env", "device"] == "cuda").all()
    assert (df["env_steps_per_s"] > 0).all()
