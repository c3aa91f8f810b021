"""Memory known before it is allocated: each learner's estimate against the bytes its buffers
really allocate and the peak RSS of a tiny real run, and ``run`` refusing a grid that cannot fit
before anything starts or is written."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from baselines.qmix import QMix
from baselines.qmix_replay import EpisodeBatch, EpisodeReplay, update_bytes
from marpo_bench import memory
from marpo_bench.algos import get_algorithm
from marpo_bench.algos.ppo_core import rollout_bytes
from marpo_bench.algos.rollout import Rollout
from marpo_bench.cli import app
from marpo_bench.config import ConfigError, RunSpec
from marpo_bench.envs import make_env
from marpo_bench.recipes import build_config
from tests.helpers import fake_info

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SMALL_TASKS = ["jax_mpe:simple_spread", "smax:3m"]


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _cfg(algo: str, env: str, *sets: tuple[str, str]):
    fam, task = env.split(":")
    return build_config(RunSpec(algo, fam, task, 0, 1000, tuple(sets)))


def _info(env: str, cfg) -> object:
    fam, task = env.split(":")
    return memory.task_info(fam, task, cfg.num_envs, cfg.agent_id)


# ---------------------------------------------------------------------------------------- the estimates


@pytest.mark.parametrize("env", SMALL_TASKS)
def test_replay_estimate_equals_the_bytes_its_tensors_allocate(env):
    cfg = _cfg("qmix", env)
    info = _info(env, cfg)
    replay = EpisodeReplay(37, 5, info, torch.device("cpu"))
    fields = [f.name for f in dataclasses.fields(EpisodeBatch)]
    allocated = _bytes([getattr(b, f) for b in (replay.data, replay.stage) for f in fields] + [replay.t, replay.rows])
    assert EpisodeReplay.nbytes(37, 5, info) == allocated


def test_the_batched_learner_keeps_one_replay_per_seed_and_the_estimate_counts_them(monkeypatch):
    cfg = _cfg("qmix", "jax_mpe:simple_spread", ("buffer_size", "40"), ("batch_size", "8"), ("num_envs", "4"))
    seen: list[EpisodeReplay] = []
    init = EpisodeReplay.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen.append(self)

    monkeypatch.setattr(EpisodeReplay, "__init__", spy)
    envs = [make_env("jax_mpe", "simple_spread", cfg.num_envs, agent_id=cfg.agent_id) for _ in range(3)]
    info = envs[0].info
    learner = QMix.batched(cfg, info, "cpu", [0, 1, 2])
    learner.learn(envs, 400, [0, 1, 2], [lambda s, m: None] * 3)
    fields = [f.name for f in dataclasses.fields(EpisodeBatch)]
    allocated = sum(_bytes([getattr(b, f) for b in (r.data, r.stage) for f in fields] + [r.t, r.rows]) for r in seen)
    assert len(seen) == 3 and allocated == 3 * EpisodeReplay.nbytes(40, 4, info)
    assert QMix.memory_estimate(cfg, info, seeds=3) >= allocated + 3 * update_bytes(cfg, info)


@pytest.mark.parametrize("env", SMALL_TASKS)
def test_rollout_estimate_equals_the_bytes_of_a_collected_rollout(env):
    cfg = _cfg("mappo", env, ("num_envs", "4"))  # the recipe's GRU actor and critic: their states are stored
    fam, task = env.split(":")
    e = make_env(fam, task, cfg.num_envs, agent_id=cfg.agent_id)
    algo = get_algorithm("mappo")(cfg, e.info, "cpu", 0)
    ro, _, _ = algo.collect(e, e.reset(0))
    e.close()
    tensors = [getattr(ro, f.name) for f in dataclasses.fields(Rollout) if getattr(ro, f.name) is not None]
    assert ro.hidden is not None and ro.hidden_critic is not None
    assert rollout_bytes(cfg, e.info) == _bytes(tensors)


def test_the_estimate_covers_the_allocations_that_failed_on_the_big_maps():
    """The issue's failed allocations: the replay's obs tensor alone, 41.7 GB on 27m_vs_30m and
    33.9 GB on 25m (5,000 episodes x 101 slots x agents x obs floats)."""
    for task, failed in (("27m_vs_30m", 41.7e9), ("25m", 33.9e9)):
        cfg = _cfg("qmix", f"smax:{task}")
        info = _info(f"smax:{task}", cfg)
        obs = 4 * cfg.buffer_size * (info.episode_limit + 1) * info.num_agents * info.obs_dim
        assert abs(obs - failed) < 0.05e9
        assert memory.learner_bytes(QMix, cfg, info) > obs


def test_an_algorithm_without_an_estimate_gets_the_default_floor():
    class Plain:
        pass

    cfg = _cfg("mappo", "jax_mpe:simple_spread")
    info = fake_info()
    assert memory.learner_bytes(Plain, cfg, info, seeds=2) == memory.default_estimate(cfg, info, seeds=2) > 0
    assert memory.memory_setting(Plain)[0] == "num_envs"


# The peak RSS growth of one learner's learn() on a small task, in a fresh process: the envs are built
# and their step compiled first (JAX's compilation is not the learner's), then the peak is reset
# (/proc/self/clear_refs) and read after learn (VmHWM).
_PEAK = r"""
import json, sys, torch
torch.set_num_threads(1)
from marpo_bench.algos import get_algorithm
from marpo_bench.config import RunSpec
from marpo_bench.envs import make_env
from marpo_bench.memory import learner_bytes
from marpo_bench.recipes import build_config

def status(key):
    return next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith(key))

algo, fam, task, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = build_config(RunSpec(algo, fam, task, 0, steps, ()))
env = make_env(fam, task, cfg.num_envs, agent_id=cfg.agent_id)
ts = env.reset(0)
env.step(torch.stack([a.nonzero()[0, 0] for a in ts.avail_actions.reshape(-1, ts.avail_actions.shape[-1])])
         .reshape(ts.avail_actions.shape[:2]))
learner = get_algorithm(algo)(cfg, env.info, "cpu", 0)
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS")
learner.learn(env, steps, 0, lambda s, m: None)
print(json.dumps({"growth": status("VmHWM") - base, "estimate": learner_bytes(type(learner), cfg, env.info)}))
"""


@pytest.mark.parametrize("algo,env,steps,factor", [
    ("qmix", "jax_mpe:simple_spread", 1000, 1.5),  # replay 67 MB of 98 MB estimated; measured 102 MB
    ("qmix", "smax:3m", 3000, 1.5),  # replay 647 MB of 782 MB; measured 676 MB
    ("mappo", "jax_mpe:simple_spread", 3200, 2.0),  # one rollout and update: 134 MB; measured 109 MB
])
def test_the_estimate_is_within_a_stated_factor_of_the_peak_rss_of_a_tiny_run(algo, env, steps, factor):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc to reset and read a process's peak RSS")
    out = subprocess.run([sys.executable, "-c", _PEAK, algo, *env.split(":"), str(steps)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert 1 / factor <= got["estimate"] / got["growth"] <= factor, got


# ---------------------------------------------------------------------------------------- the check


@pytest.mark.parametrize("text,expected", [("8G", 8 * 10**9), ("8GB", 8 * 10**9), ("16GiB", 16 * 2**30),
                                           ("512M", 512 * 10**6), ("1.5T", 1_500_000_000_000)])
def test_max_memory_reads_sizes_with_units(text, expected):
    assert memory.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "8X", "", "0", "-1G"])
def test_a_bad_max_memory_is_a_one_line_error(text):
    with pytest.raises(ConfigError, match="bad --max-memory"):
        memory.parse_memory(text)


def test_available_memory_is_memavailable_else_the_total():
    text = "MemTotal:       24000000 kB\nMemFree:        1000 kB\nMemAvailable:   20000000 kB\n"
    assert memory.meminfo_available(text) == 20_000_000 * 1024
    assert memory.meminfo_available("MemTotal:       24000000 kB\n") == 24_000_000 * 1024
    assert memory.available_memory(torch.device("cpu")).bytes > 0


def _need(env: str = "jax_mpe:simple_spread", seeds: int = 1) -> memory.Need:
    cfg = _cfg("qmix", env)
    info = _info(env, cfg)
    fam, task = env.split(":")
    return memory.Need(RunSpec("qmix", fam, task, 0, 1000, ()), seeds, cfg, info,
                       memory.learner_bytes(QMix, cfg, info, seeds))


def test_runs_trained_at_once_share_the_budget_and_each_process_needs_its_overhead():
    need = _need()
    fits_alone = memory.Budget(need.bytes + 10**6, "available")
    memory.check_fits([need], fits_alone, concurrent=1, overhead=0)  # no error
    with pytest.raises(ConfigError, match="to each of 2 runs at once") as err:
        memory.check_fits([need], fits_alone, concurrent=2, overhead=0)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="for its process"):
        memory.check_fits([need], fits_alone, concurrent=1, overhead=memory.RUN_OVERHEAD_BYTES)


def test_the_suggested_setting_fits_and_is_a_valid_config():
    need = _need("smax:3m")
    limit = need.bytes // 4
    value = memory.largest_fitting(QMix, need.cfg, need.info, 1, "buffer_size", limit)
    smaller = dataclasses.replace(need.cfg, buffer_size=value)
    smaller.validate()
    assert value >= smaller.batch_size and len(str(value).rstrip("0")) <= 2  # two significant digits
    assert memory.learner_bytes(QMix, smaller, need.info) <= limit
    assert memory.largest_fitting(QMix, need.cfg, need.info, 1, "buffer_size", 1000) is None  # nothing fits


def test_run_refuses_a_replay_that_cannot_fit_before_allocating_or_writing_anything(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the replay was allocated: the memory check must come first")

    monkeypatch.setattr(EpisodeReplay, "__init__", never)  # a run that started would fail here, not swap
    results = tmp_path / "results"
    res = runner.invoke(app, ["run", "--algos", "qmix", "--envs", "smax:27m_vs_30m", "--steps", "2k",
                              "--max-memory", "4G", "--results", str(results)])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    text = " ".join(res.output.split())
    assert "qmix on smax:27m_vs_30m needs about 46.2 GB for its replay of 5000 episodes (buffer_size)" in text
    assert "4.0 GB is allowed by --max-memory, less 400.0 MB for its process: lower it, e.g. --set " \
           "qmix.buffer_size=" in text
    assert "raise --max-memory" in text
    assert not results.exists() and not any(tmp_path.iterdir())  # nothing written


def test_run_counts_every_seed_of_a_batched_learner(tmp_path, monkeypatch):
    monkeypatch.setattr(EpisodeReplay, "__init__", lambda *a, **k: pytest.fail("allocated"))
    args = ["run", "--algos", "qmix", "--envs", "jax_mpe:simple_spread", "--seeds", "3", "--steps", "2k",
            "--max-memory", "250M", "--results", str(tmp_path)]
    res = runner.invoke(app, [*args, "--vectorize-seeds"])  # 3 x 98 MB in one learner
    assert res.exit_code == 2, res.output
    assert "3 seeds in one learner (--vectorize-seeds)" in " ".join(res.output.split())
    assert not any(tmp_path.iterdir())


def test_a_grid_that_fits_still_runs(tmp_path):
    res = runner.invoke(app, ["run", "--algos", "qmix", "--envs", "jax_mpe:simple_spread", "--seeds", "1",
                              "--steps", "400", "--set", "num_envs=8", "--set", "batch_size=8",
                              "--set", "eval_episodes=4", "--max-memory", "64G", "--results", str(tmp_path),
                              "--study", "s"])
    assert res.exit_code == 0, res.output
    assert "finished: 1 trained" in " ".join(res.output.split())
