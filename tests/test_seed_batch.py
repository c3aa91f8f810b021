"""Seed stacks (marpo_bench.seedstack) and the QMix learner over S seeds (baselines.qmix_learner.QMixSeeds):
each stacked piece equals its torch counterpart seed by seed, and seed k of a batched QMix run
follows the unbatched run of seed k (same initialisation, same data) within float tolerance."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from baselines.qmix import QMix
from baselines.qmix_recipes import QMixConfig
from marpo_bench.envs import make_env
from marpo_bench.seedstack import Stack, StackedOptimizer, clip_grad_norm, gru, linear, relu_mlp


def _modules(make, S: int) -> list[nn.Module]:
    out = []
    for k in range(S):
        torch.manual_seed(100 + k)
        out.append(make())
    return out


def test_stacked_linear_gru_and_mlp_equal_torch_modules_seed_by_seed():
    S, L, M, D, H = 3, 5, 4, 6, 8
    grus = _modules(lambda: nn.GRU(D, H), S)
    lins = _modules(lambda: nn.Linear(D, H), S)
    mlps = _modules(lambda: nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, 2)), S)
    g, lin, mlp = Stack(grus), Stack(lins), Stack([_wrap(m) for m in mlps])
    x = torch.randn(S, L, M, D, generator=torch.Generator().manual_seed(0))
    h0 = torch.randn(S, M, H, generator=torch.Generator().manual_seed(1))
    out, hn = gru(x, h0, g["weight_ih_l0"], g["weight_hh_l0"], g["bias_ih_l0"], g["bias_hh_l0"])
    y = linear(x, lin["weight"], lin["bias"])
    z = relu_mlp(x, mlp, "net", 2)
    for k in range(S):
        ref_out, ref_hn = grus[k](x[k], h0[k].unsqueeze(0))
        torch.testing.assert_close(out[k], ref_out, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(hn[k], ref_hn[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(y[k], lins[k](x[k]), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(z[k], mlps[k](x[k]), atol=1e-6, rtol=1e-5)
    # Gradients flow to each seed's own parameters only, and equal the module's.
    out[1].sum().backward()
    grus[1](x[1], h0[1].unsqueeze(0))[0].sum().backward()
    assert g["weight_hh_l0"].grad[0].abs().max() == 0 and g["weight_hh_l0"].grad[2].abs().max() == 0
    torch.testing.assert_close(g["weight_hh_l0"].grad[1], grus[1].weight_hh_l0.grad, atol=1e-5, rtol=1e-4)


def _wrap(seq: nn.Module) -> nn.Module:
    holder = nn.Module()
    holder.net = seq
    return holder


def test_per_seed_grad_clipping_equals_clip_grad_norm_of_each_seed():
    S = 3
    mods = _modules(lambda: nn.Linear(4, 3), S)
    st = Stack(mods)
    gen = torch.Generator().manual_seed(2)
    scale = torch.tensor([0.01, 1.0, 100.0])  # below, near and far above the bound
    grads = {n: torch.randn(st[n].shape, generator=gen) * scale.view(-1, *([1] * (st[n].dim() - 1)))
             for n in st.names}
    for n in st.names:
        st[n].grad = grads[n].clone()
    norms = clip_grad_norm(st.tensors(), 1.0)
    for k, m in enumerate(mods):
        for n, p in m.named_parameters():
            p.grad = grads[n][k].clone()
        ref = nn.utils.clip_grad_norm_(list(m.parameters()), 1.0)
        torch.testing.assert_close(norms[k], ref)
        for n, p in m.named_parameters():
            torch.testing.assert_close(st[n].grad[k], p.grad)
    assert norms[0] < 1.0 < norms[2]


@pytest.mark.parametrize("kind", ["adam", "rmsprop"])
def test_stacked_optimizer_steps_each_seed_bit_for_bit_like_torch_and_leaves_inactive_seeds_untouched(kind):
    S = 3
    mods = _modules(lambda: nn.Linear(4, 3), S)
    st = Stack(mods)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) if kind == "adam"
            else torch.optim.RMSprop(m.parameters(), lr=1e-2, alpha=0.99, eps=1e-5) for m in mods]
    sopt = StackedOptimizer(st.tensors(), kind, 1e-2, alpha=0.99, eps=1e-8 if kind == "adam" else 1e-5)
    gen = torch.Generator().manual_seed(3)
    # Seed 1 sits out rounds 1 and 3: its parameters and state must stay, its step count lag.
    plan = [[True, True, True], [True, False, True], [True, True, True], [False, False, True]]
    for active in plan:
        grads = {n: torch.randn(st[n].shape, generator=gen) for n in st.names}
        for n in st.names:
            st[n].grad = grads[n].clone()
        before = {n: st[n].detach().clone() for n in st.names}
        sopt.step(torch.tensor(active))
        for k, m in enumerate(mods):
            if not active[k]:
                for n in st.names:
                    assert torch.equal(st[n][k], before[n][k])
                continue
            for n, p in m.named_parameters():
                p.grad = grads[n][k].clone()
            opts[k].step()
    for k, m in enumerate(mods):  # torch's own update rule per element: the same bits
        for n, p in m.named_parameters():
            assert torch.equal(st[n][k], p), (kind, k, n)
    assert sopt.steps.tolist() == [3.0, 2.0, 4.0]
    # The state converts to each seed's torch optimiser and back.
    fresh = [torch.optim.Adam(m.parameters(), lr=1e-2) if kind == "adam"
             else torch.optim.RMSprop(m.parameters(), lr=1e-2) for m in mods]
    for k, m in enumerate(mods):
        sopt.write_to(k, fresh[k], list(m.parameters()))
        ref = opts[k].state_dict()["state"]
        got = fresh[k].state_dict()["state"]
        for i in ref:
            assert float(got[i]["step"]) == float(ref[i]["step"])
            for key in ref[i]:
                if key != "step":
                    torch.testing.assert_close(got[i][key], ref[i][key], atol=1e-7, rtol=1e-5)
    again = StackedOptimizer(st.tensors(), kind, 1e-2)
    for k, m in enumerate(mods):
        again.read_from(k, fresh[k], list(m.parameters()))
    assert again.steps.tolist() == sopt.steps.tolist()
    for a, b in zip(again.state, sopt.state, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key])


def _runs(family: str, task: str, steps: int, cfg: QMixConfig, seeds: list[int]):
    """Seed by seed unbatched, then batched: (single learners, their logs, batched, its logs)."""
    singles, single_logs = [], []
    for s in seeds:
        env = make_env(family, task, cfg.num_envs, device="cpu", agent_id=True)
        algo = QMix(copy.deepcopy(cfg), env.info, "cpu", s)
        log: list = []
        algo.learn(env, steps, s, lambda st, m, log=log: log.append((st, m)))
        singles.append(algo)
        single_logs.append(log)
    envs = [make_env(family, task, cfg.num_envs, device="cpu", agent_id=True) for _ in seeds]
    batched = QMix.batched(copy.deepcopy(cfg), envs[0].info, "cpu", seeds)
    logs: list[list] = [[] for _ in seeds]
    batched.learn(envs, steps, seeds, [lambda st, m, log=log: log.append((st, m)) for log in logs])
    return singles, single_logs, batched, logs


def _assert_follows(single: QMix, single_log: list, member: QMix, log: list, atol: float = 1e-5) -> None:
    assert [s for s, _ in log] == [s for s, _ in single_log]  # same iterations reported
    assert member.updates == single.updates and member.episodes == single.episodes
    for (_, a), (_, b) in zip(single_log, log, strict=True):
        assert a.keys() == b.keys()
        assert a["train_return_mean"] == pytest.approx(b["train_return_mean"], rel=1e-6, nan_ok=True)
        for key in ("td_loss", "q_mean", "grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    for p, q in zip(single.params, member.params, strict=True):
        torch.testing.assert_close(q, p, atol=atol, rtol=1e-4)
    for p, q in zip(single.target_agent.parameters(), member.target_agent.parameters(), strict=True):
        torch.testing.assert_close(q, p, atol=atol, rtol=1e-4)
    ref, got = single.state_dict(), member.state_dict()
    assert got["opt"]["state"].keys() == ref["opt"]["state"].keys()
    for i, st in ref["opt"]["state"].items():
        assert float(got["opt"]["state"][i]["step"]) == float(st["step"])
    assert got["reward_ms"]["count"] == ref["reward_ms"]["count"]


# GRU agent | feed-forward agent without last action | the same, rewards standardised per batch
@pytest.mark.parametrize("lineage, stats", [("pymarl", "running"), ("epymarl", "running"), ("epymarl", "batch")])
def test_seed_k_of_a_batched_qmix_run_follows_the_single_seed_run_on_mpe(lineage, stats):
    """MPE's recipe (no bootstrap at the limit, standardised rewards) with Adam, TD(lambda) and
    soft target updates: 12 iterations, 24 updates per seed."""
    cfg = QMixConfig(lineage=lineage, num_envs=4, batch_size=4, buffer_size=64, epsilon_anneal_steps=500,
                     standardise_rewards=True, reward_stats=stats, bootstrap_truncation=False, optimizer="adam",
                     td_lambda=0.6, target_update="soft")
    singles, single_logs, batched, logs = _runs("jax_mpe", "simple_spread", 1200, cfg, [0, 1, 2])
    # Per-batch standardisation divides by a small-batch std: rounding differences of the batched
    # matmuls grow to about 3e-5 in a few of the 1,344 agent weights after 24 Adam steps of 5e-4.
    atol = 1e-4 if stats == "batch" else 1e-5
    for k in range(3):
        _assert_follows(singles[k], single_logs[k], batched.members[k], logs[k], atol)
    assert singles[0].updates == 24


def test_seed_k_of_a_batched_qmix_run_follows_the_single_seed_run_on_smax_with_unequal_updates():
    """SMAX: episodes end at different times, so seeds owe different numbers of updates in an
    iteration and sit rounds out; hard target updates every 8 episodes; rewards x 10."""
    cfg = QMixConfig(num_envs=4, batch_size=4, buffer_size=64, epsilon_anneal_steps=500, reward_scale=10.0,
                     target_update_interval=8)
    singles, single_logs, batched, logs = _runs("smax", "3m", 2000, cfg, [0, 1, 2])
    for k in range(3):
        _assert_follows(singles[k], single_logs[k], batched.members[k], logs[k])
    assert len({s.updates for s in singles}) > 1  # the seeds did owe different numbers of updates


def test_a_batched_member_checkpoint_loads_into_an_unbatched_qmix_and_back():
    cfg = QMixConfig(num_envs=4, batch_size=4, buffer_size=64, epsilon_anneal_steps=500)
    envs = [make_env("jax_mpe", "simple_spread", 4, device="cpu", agent_id=True) for _ in range(2)]
    batched = QMix.batched(copy.deepcopy(cfg), envs[0].info, "cpu", [0, 1])
    batched.learn(envs, 500, [0, 1], [lambda *a: None] * 2)
    sd = batched.members[1].state_dict()
    single = QMix(copy.deepcopy(cfg), envs[0].info, "cpu", 1)
    single.load_state_dict(sd)
    for p, q in zip(single.params, batched.members[1].params, strict=True):
        assert torch.equal(p, q)
    # Loaded into a fresh batched learner, the stacks pick the member's state up (sync_in).
    again = QMix.batched(copy.deepcopy(cfg), envs[0].info, "cpu", [0, 1])
    again.members[1].load_state_dict(sd)
    again.sync_in()
    assert torch.equal(again.agent["fc1.weight"][1], single.agent.fc1.weight)
    assert again.opt.steps[1] == float(sd["opt"]["state"][0]["step"])


# ----------------------------------------------------------------------------------------------
# the seeds' envs stepped in one call (marpo_bench.envs.jax_stack)


@pytest.mark.parametrize(("family", "task", "S", "steps"), [("jax_mpe", "simple_spread", 8, 60),
                                                            ("smax", "3m", 4, 120)])
def test_stacked_jax_envs_follow_each_env_stepped_alone(family, task, S, steps):
    """S envs stepped as one stack (through the runner's wrapper) against twins stepped one by
    one: the same streams across auto-resets, floats within 1e-5 (XLA may vectorise S x E envs
    differently), flags equal; after ``sync`` each env's own state is its stacked slice."""
    from marpo_bench.envs.base import SeedEnvs
    from marpo_bench.resume import CheckpointableEnv

    E = 8
    wrapped = [CheckpointableEnv(make_env(family, task, E, device="cpu")) for _ in range(S)]
    twins = [make_env(family, task, E, device="cpu") for _ in range(S)]
    seed_envs = SeedEnvs(wrapped)
    assert seed_envs.stacked
    tss, refs = seed_envs.reset(list(range(S))), [t.reset(k) for k, t in enumerate(twins)]
    g = torch.Generator().manual_seed(0)
    ended = 0
    for _ in range(steps):
        actions = [torch.rand(ts.avail_actions.shape, generator=g).masked_fill(~ts.avail_actions, -1).argmax(-1)
                   for ts in refs]
        tss = seed_envs.step(actions)
        refs = [t.step(a) for t, a in zip(twins, actions, strict=True)]
        for w, ts, ref in zip(wrapped, tss, refs, strict=True):
            assert w.last is ts
            for f in ("obs", "state", "reward", "final_obs", "episode_return", "won"):
                assert torch.allclose(getattr(ts, f), getattr(ref, f), atol=1e-5, equal_nan=True), f
            for f in ("avail_actions", "alive", "terminated", "truncated", "episode_length"):
                assert torch.equal(getattr(ts, f), getattr(ref, f)), f
            ended += int(ref.done.sum())
    assert ended >= S  # the comparison ran across auto-resets
    seed_envs.sync()
    for w, t in zip(wrapped, twins, strict=True):
        for a, b in zip(w.env.snapshot()["leaves"], t.snapshot()["leaves"], strict=True):
            assert torch.allclose(a.double(), b.double(), atol=1e-5)


def test_python_envs_and_mixed_configurations_step_one_by_one():
    from marpo_bench.envs.base import SeedEnvs

    assert not SeedEnvs([make_env("mpe", "simple_spread", 2, device="cpu") for _ in range(2)]).stacked
    mixed = [make_env("jax_mpe", "simple_spread", n, device="cpu") for n in (2, 4)]
    seed_envs = SeedEnvs(mixed)
    assert not seed_envs.stacked
    tss = seed_envs.reset([0, 1])
    tss = seed_envs.step([torch.zeros(ts.obs.shape[:2], dtype=torch.int64) for ts in tss])
    assert [ts.obs.shape[0] for ts in tss] == [2, 4]


# ----------------------------------------------------------------------------------------------
# run --vectorize-seeds: each seed stored as its own ordinary run


QMIX_TINY = ["--algos", "qmix", "--envs", "jax_mpe:simple_spread", "--seeds", "3", "--steps", "600",
             "--set", "num_envs=4", "--set", "batch_size=4", "--set", "epsilon_anneal_steps=500",
             "--set", "eval_episodes=4", "--set", "eval_interval=200"]


def _study(root, name):
    import pandas as pd

    runs = {}
    for d in sorted((root / name / "runs").iterdir()):
        runs[d.name] = (json.loads((d / "run.json").read_text()), pd.read_parquet(d / "metrics.parquet"),
                        sorted(p.name for p in d.iterdir()))
    return runs


def test_vectorized_seeds_are_stored_as_the_ordinary_runs_an_unbatched_grid_stores(tmp_path):
    from typer.testing import CliRunner

    from marpo_bench.cli import app

    runner = CliRunner()
    for study, extra in (("plain", []), ("batched", ["--vectorize-seeds"])):
        res = runner.invoke(app, ["run", "--results", str(tmp_path), "--study", study, *QMIX_TINY, *extra])
        assert res.exit_code == 0, res.output
    plain, batched = _study(tmp_path, "plain"), _study(tmp_path, "batched")
    assert plain.keys() == batched.keys() and len(plain) == 3  # the same run ids
    for run_id, (rec, df, files) in plain.items():
        brec, bdf, bfiles = batched[run_id]
        assert bfiles == files and "policy.pt" in files and "checkpoint.pt" in files
        assert brec["status"] == "complete" and brec["config"] == rec["config"]
        assert list(bdf.columns) == list(df.columns) and list(bdf["env_steps"]) == list(df["env_steps"])
        for col in df.columns:
            if col != "wall_seconds" and df[col].dtype.kind == "f":
                assert np.allclose(bdf[col], df[col], rtol=1e-4, atol=1e-5, equal_nan=True), (run_id, col)


def test_one_seed_failing_stops_its_batch_and_the_rerun_resumes_every_seed_from_its_checkpoint(tmp_path,
                                                                                                monkeypatch):
    from typer.testing import CliRunner

    from marpo_bench.cli import app

    runner = CliRunner()
    args = ["run", "--results", str(tmp_path), "--study", "g", "--retries", "0", "--vectorize-seeds", *QMIX_TINY]
    monkeypatch.setenv("MARPO_BENCH_FAULT", "raise@300:__s1__")
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    runs = _study(tmp_path, "g")
    by_seed = {rec["seed"]: rec for rec, _, _ in runs.values()}
    assert by_seed[1]["status"] == "failed" and "injected fault" in by_seed[1]["message"]
    for k in (0, 2):
        assert by_seed[k]["status"] == "failed" and "stopped with its batch" in by_seed[k]["message"]
        assert "__s1__" in by_seed[k]["message"]
    monkeypatch.delenv("MARPO_BENCH_FAULT")
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    for rec, df, _ in _study(tmp_path, "g").values():
        assert rec["status"] == "complete" and rec["resumed_from"] == 200  # the checkpoint at the 200 eval
        assert list(df["env_steps"]) == [0, 200, 400, 600]


MAPPO_TINY = ["--algos", "mappo", "--envs", "jax_mpe:simple_spread", "--seeds", "2", "--steps", "400",
              "--set", "num_envs=4", "--set", "eval_episodes=4", "--set", "eval_interval=100"]


@pytest.mark.parametrize("rerun_batched", [True, False])
def test_a_batched_run_resumes_bit_exact_in_its_mode_and_is_flagged_inexact_in_the_other(tmp_path, monkeypatch,
                                                                                         rerun_batched):
    """MAPPO resumes bit for bit in the mode it was checkpointed in; resumed unbatched from a
    batched checkpoint it follows the same math in another summation order: resume_exact false."""
    from typer.testing import CliRunner

    from marpo_bench.cli import app

    runner = CliRunner()
    base = ["run", "--results", str(tmp_path), "--study", "m", "--retries", "0", *MAPPO_TINY]
    # seed 0 fails at 200 before either seed's checkpoint there: both resume from 100, together
    monkeypatch.setenv("MARPO_BENCH_FAULT", "raise@200:__s0__")
    assert runner.invoke(app, [*base, "--vectorize-seeds"]).exit_code == 1
    monkeypatch.delenv("MARPO_BENCH_FAULT")
    res = runner.invoke(app, [*base, *(["--vectorize-seeds"] if rerun_batched else [])])
    assert res.exit_code == 0, res.output
    for rec, _, _ in _study(tmp_path, "m").values():
        assert rec["status"] == "complete" and rec["resumed_from"] == 100
        assert rec["seed_batch"] == (2 if rerun_batched else 1)
        assert rec["resume_exact"] is rerun_batched
        if not rerun_batched:
            assert "checkpointed in a batch of 2" in rec["resume_note"]
    if rerun_batched:  # and bit for bit the uninterrupted batched run (the envs' state was synced)
        res = runner.invoke(app, ["run", "--results", str(tmp_path), "--study", "u", *MAPPO_TINY, "--vectorize-seeds"])
        assert res.exit_code == 0, res.output
        whole = _study(tmp_path, "u")
        for run_id, (_, df, _) in _study(tmp_path, "m").items():
            cols = [c for c in df.columns if c != "wall_seconds"]
            assert df[cols].equals(whole[run_id][1][cols]), run_id


# ----------------------------------------------------------------------------------------------
# MAPPO and MARPO (marpo_bench.algos.ppo_learner.OnPolicyLearner)


class Float64Env:
    """An env whose float outputs are float64, stepped on its own (it offers no ``stack``), so a
    batched and an unbatched learner see bit-identical observations and rewards."""

    def __init__(self, env) -> None:
        self.env, self.info = env, env.info

    @staticmethod
    def _cast(ts):
        return dataclasses.replace(ts, **{f.name: getattr(ts, f.name).double() for f in dataclasses.fields(ts)
                                          if getattr(ts, f.name).is_floating_point()})

    def reset(self, seed: int):
        return self._cast(self.env.reset(seed))

    def step(self, actions):
        return self._cast(self.env.step(actions))

    def __getattr__(self, name: str):
        return getattr(self.env, name)


@contextlib.contextmanager
def _float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _ppo_runs(algo: str, family: str, task: str, steps: int, seeds: list[int], sets: tuple = ()):
    """Seed by seed unbatched, then batched, in float64 on float64 envs stepped one by one: the
    comparison is of the math, not of float32 summation orders (which differ by CPU)."""
    from marpo_bench.algos import get_algorithm
    from marpo_bench.config import RunSpec
    from marpo_bench.recipes import build_config

    cfg = build_config(RunSpec(algo, family, task, 0, steps, (("num_envs", "8"), *sets)))
    cls = get_algorithm(algo)

    def env():
        return Float64Env(make_env(family, task, cfg.num_envs, device="cpu", agent_id=cfg.agent_id))

    singles, single_logs = [], []
    with _float64():
        for s in seeds:
            learner = cls(copy.deepcopy(cfg), env().info, "cpu", s)
            log: list = []
            learner.learn(env(), steps, s, lambda st, m, log=log: log.append((st, m)))
            singles.append(learner)
            single_logs.append(log)
        envs = [env() for _ in seeds]
        batched = cls.batched(copy.deepcopy(cfg), envs[0].info, "cpu", seeds)
        logs: list[list] = [[] for _ in seeds]
        batched.learn(envs, steps, seeds, [lambda st, m, log=log: log.append((st, m)) for log in logs])
    assert singles[0].actor.parameters().__next__().dtype == torch.float64
    return singles, single_logs, batched, logs


def _assert_ppo_follows(single, single_log, member, log, param_atol: float, metric_rtol: float) -> None:
    assert [s for s, _ in log] == [s for s, _ in single_log]
    for (_, a), (_, b) in zip(single_log, log, strict=True):
        assert a.keys() == b.keys()
        assert b["train_return_mean"] == pytest.approx(a["train_return_mean"], rel=1e-6, nan_ok=True)
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=metric_rtol, abs=metric_rtol), key
    params = [*single.actor.parameters(), *single.critic.parameters()]
    for p, q in zip(params, [*member.actor.parameters(), *member.critic.parameters()], strict=True):
        torch.testing.assert_close(q, p, atol=param_atol, rtol=0)
    ref, got = single.state_dict(), member.state_dict()
    for key in ("actor_opt", "critic_opt"):
        for i, st in ref[key]["state"].items():
            assert float(got[key]["state"][i]["step"]) == float(st["step"])
    if ref["value_norm"] is not None:
        torch.testing.assert_close(got["value_norm"]["mean"], ref["value_norm"]["mean"], rtol=0, atol=param_atol)
    for key in ("rollout_h", "rollout_hc"):
        if ref[key] is not None:
            torch.testing.assert_close(got[key], ref[key], atol=param_atol, rtol=0)


# The tolerance, derived: float64 rounds at 1.1e-16; the float32 version of these runs (stacked
# envs, float32 learners) measured parameter gaps of 1e-7 to 1.2e-3 on different CPUs, i.e. the
# learner amplifies a rounding difference by up to about 2e4 in two iterations (a ratio crossing a
# clip boundary switches its gradient). 1e-16 x 2e4 = 2e-12, so 1e-9 leaves a 500x margin while a
# change in the math (e.g. another seed's minibatch or advantage statistics) moves parameters by
# 1e-6 or more. Measured in float64: 2e-16 to 9e-16 on MPE.
F64_ATOL = 1e-9


@pytest.mark.parametrize(("algo", "task", "sets"), [
    ("mappo", "simple_spread", ()),  # on-policy's recurrent spread recipe: GRU actor and critic, Tanh
    ("marpo", "simple_spread", (("minibatches", "2"),)),  # per-seed permutations; MARPO's delta per seed
    ("mappo", "simple_speaker_listener", ()),  # one actor per agent
    ("marpo", "simple_reference", (("recurrent", "false"), ("recurrent_critic", "false"),
                                   ("bootstrap_truncation", "true"))),  # MLP nets, bootstrap at the limit
])
def test_seed_k_of_a_batched_ppo_run_follows_the_single_seed_run_on_mpe(algo, task, sets):
    """Two iterations (20-30 PPO updates) per seed, in float64: parameters and every metric
    within F64_ATOL."""
    singles, single_logs, batched, logs = _ppo_runs(algo, "jax_mpe", task, 400, [0, 1], sets)
    for k in range(2):
        _assert_ppo_follows(singles[k], single_logs[k], batched.members[k], logs[k], F64_ATOL, F64_ATOL)
        if algo == "marpo":
            assert batched.members[k].delta == pytest.approx(singles[k].delta, rel=F64_ATOL)


def test_seed_k_of_a_batched_marpo_run_follows_the_single_seed_run_on_smax():
    """SMAX 3m (dead agents, 15 epochs, GRU actor and critic), two iterations, in float64. In
    float32 the batched matmuls' other summation order, amplified by 15 epochs of clipped updates,
    moved parameters by up to 2e-3; float64 leaves the math alone to compare."""
    singles, single_logs, batched, logs = _ppo_runs("marpo", "smax", "3m", 800, [0, 2])
    for k in range(2):
        _assert_ppo_follows(singles[k], single_logs[k], batched.members[k], logs[k], F64_ATOL, F64_ATOL)


def test_a_subclass_replacing_what_the_learner_computes_is_refused_and_one_with_its_own_learn_is_unbatched():
    from baselines.mappo import MAPPO
    from marpo_bench.executors.pool import seed_units

    with pytest.raises(TypeError, match="overrides update, which the on-policy learner computes"):
        class OwnUpdate(MAPPO):  # the learner would bypass this
            def update(self, ro, env_steps):
                return super().update(ro, env_steps)

    class OwnLearn(MAPPO):  # its own training loop: trained through it, alone
        def learn(self, env, total_steps, seed, on_iteration, start_steps=0):
            return super().learn(env, total_steps, seed, on_iteration, start_steps)

    class OwnObjective(MAPPO):
        def policy_objective(self, mb, logp_all, logp_next, adv, env_steps):  # runs per seed: fine
            return super().policy_objective(mb, logp_all, logp_next, adv, env_steps)

    assert OwnLearn.batched is None and OwnObjective.batched is not None and MAPPO.batched is not None
    from marpo_bench.config import RunSpec

    jobs = [(RunSpec(a, "jax_mpe", "simple_spread", s, 1000), "st") for a in ("mappo", "qmix") for s in (0, 1)]
    units = seed_units(jobs, vectorize_seeds=True)
    assert [tuple(sp.seed for sp in specs) for specs, _ in units] == [(0, 1), (0, 1)]
    assert len(seed_units(jobs, vectorize_seeds=False)) == 4
