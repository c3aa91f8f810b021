"""The generic PettingZoo adapter (``pettingzoo:import.path``): the same numbers as the mpe family
on mpe2, dead agents, masks, termination apart from truncation, and another suite end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from marpo_bench.envs import make_env, parse_env

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("obs", "state", "avail_actions", "alive", "reward", "terminated", "truncated", "final_obs",
          "final_state", "episode_return", "episode_length")


def _same(x: torch.Tensor, y: torch.Tensor) -> bool:
    return torch.equal(torch.nan_to_num(x.float(), nan=-12345.0), torch.nan_to_num(y.float(), nan=-12345.0))


@pytest.mark.parametrize("agent_id", [False, True])
def test_mpe2_spread_through_the_adapter_equals_the_mpe_family_step_for_step(agent_id) -> None:
    ours = make_env("pettingzoo", "mpe2.simple_spread_v3", 4, agent_id=agent_id, trust_imports=True)
    ref = make_env("mpe", "simple_spread", 4, agent_id=agent_id)
    try:
        assert (ours.info.obs_dim, ours.info.state_dim, ours.info.episode_limit, ours.info.reward_scale) == \
            (ref.info.obs_dim, ref.info.state_dim, ref.info.episode_limit, ref.info.reward_scale)
        a, b = ours.reset(7), ref.reset(7)
        g = torch.Generator().manual_seed(0)
        for t in range(60):  # two whole episodes and a reset
            for f in FIELDS:
                assert _same(getattr(a, f), getattr(b, f)), (t, f)
            actions = torch.randint(0, 5, (4, 3), generator=g)
            a, b = ours.step(actions), ref.step(actions)
    finally:
        ours.close()
        ref.close()


def test_heterogeneous_agents_are_padded_like_the_mpe_family() -> None:
    ours = make_env("pettingzoo", "mpe2.simple_speaker_listener_v4", 2, agent_id=False, trust_imports=True)
    ref = make_env("mpe", "simple_speaker_listener", 2, agent_id=False)
    try:
        a, b = ours.reset(3), ref.reset(3)
        for t in range(30):
            for f in ("obs", "avail_actions", "reward", "truncated", "episode_return"):
                assert _same(getattr(a, f), getattr(b, f)), (t, f)
            actions = torch.stack([torch.tensor([t % 3, t % 5])] * 2)
            a, b = ours.step(actions), ref.step(actions)
        assert ours.info.state_dim == 3 + 11  # the env's own state(): its observations unpadded
    finally:
        ours.close()
        ref.close()


_FAKE = '''
import numpy as np
from gymnasium import spaces


class Env:
    """Two agents. Agent b terminates at step 2, agent a at step 3 (or both truncate at 5 when
    truncate=True). Reward 1 per live agent per step. Agent a's mask allows only action 1."""

    metadata = {"name": "fake"}

    def __init__(self, truncate=False, max_cycles=5):
        self.possible_agents = ["a", "b"]
        self.truncate, self.max_cycles = truncate, max_cycles

    def observation_space(self, agent):
        return spaces.Box(-1, 1, (2 if agent == "a" else 3,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(3 if agent == "a" else 2)

    def reset(self, seed=None, options=None):
        self.t, self.agents = 0, list(self.possible_agents)
        return self._obs(), {a: {"action_mask": np.array([0, 1, 0])} if a == "a" else {} for a in self.agents}

    def _obs(self):
        return {a: np.full(2 if a == "a" else 3, self.t / 10, np.float32) for a in self.agents}

    def step(self, actions):
        self.t += 1
        rew = {a: 1.0 for a in self.agents}
        if self.truncate:
            term = {a: False for a in self.agents}
            trunc = {a: self.t >= self.max_cycles for a in self.agents}
        else:
            term = {a: (a == "b" and self.t >= 2) or self.t >= 3 for a in self.agents}
            trunc = {a: False for a in self.agents}
        obs = self._obs()
        infos = {a: {"action_mask": np.array([0, 1, 0])} if a == "a" else {} for a in self.agents}
        self.agents = [a for a in self.agents if not (term[a] or trunc[a])]
        return obs, rew, term, trunc, infos


def parallel_env(**kwargs):
    return Env(**kwargs)
'''


@pytest.fixture
def fake_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "fake_pz.py").write_text(_FAKE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fake_pz"


def test_dead_agents_masks_and_termination_apart_from_truncation(fake_module) -> None:
    env = make_env("pettingzoo", fake_module, 1, agent_id=False, trust_imports=True)
    assert env.info.episode_limit == 5 and env.info.num_actions == 3 and env.info.state_dim == 2 * 3
    ts = env.reset(0)
    assert ts.avail_actions[0].tolist() == [[False, True, False], [True, True, False]]  # a's mask; b's 2 actions
    ts = env.step(torch.tensor([[1, 0]]))
    assert ts.alive[0].tolist() == [True, True] and float(ts.reward[0]) == 2.0
    ts = env.step(torch.tensor([[1, 1]]))  # b terminates: dead from now on, a goes on
    assert ts.alive[0].tolist() == [True, False] and not bool(ts.done[0])
    assert ts.obs[0, 1].abs().sum() == 0 and ts.avail_actions[0, 1].tolist() == [True, False, False]
    ts = env.step(torch.tensor([[1, 0]]))  # a terminates: the episode ends, terminated not truncated
    assert bool(ts.terminated[0]) and not bool(ts.truncated[0])
    assert float(ts.episode_return[0]) == 2 + 2 + 1 and int(ts.episode_length[0]) == 3
    assert ts.alive[0].tolist() == [True, True]  # the next episode's first step


def test_a_time_limit_is_truncation_and_parameters_reach_the_env(fake_module) -> None:
    family, task = parse_env(f"pettingzoo:{fake_module}?truncate=True&max_cycles=4", trust_imports=True)
    env = make_env(family, task, 2, agent_id=False, trust_imports=True)
    assert env.info.episode_limit == 4
    ts = env.reset(0)
    for _ in range(4):
        ts = env.step(torch.tensor([[1, 0], [1, 1]]))
    assert ts.truncated.tolist() == [True, True] and not bool(ts.terminated.any())


@pytest.mark.parametrize("name, must_mention", [
    ("pettingzoo:no_such_module_here", "no module 'no_such_module_here' is installed"),
    ("pettingzoo:not a path", "is not an import path"),
    ("pettingzoo:mpe2.simple_spread_v3?N", "has no value"),
])
def test_bad_pettingzoo_names_get_one_line_errors(name, must_mention) -> None:
    with pytest.raises(ValueError, match=must_mention):
        parse_env(name, trust_imports=True)


def test_an_env_from_another_suite_trains_and_reports_end_to_end(tmp_path) -> None:
    """SISL's pursuit (PettingZoo's own suite, from the package registry): 3 pursuers, 50-step episodes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    task = "pettingzoo:pettingzoo.sisl.pursuit_v5?n_pursuers=3&max_cycles=50"
    run = subprocess.run([sys.executable, "-m", "marpo_bench", "run", "--algos", "mappo,qmix", "--envs", task,
                          "--seeds", "2", "--steps", "3200", "--results", str(tmp_path), "--study", "p",
                          "--set", "eval_episodes=4", "--set", "qmix.num_envs=4"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr
    runs = list((tmp_path / "p" / "runs").iterdir())
    assert len(runs) == 4 and all(".sisl.pursuit_v5.max_cycles=50,n_pursuers=3__" in r.name for r in runs)
    report = subprocess.run([sys.executable, "-m", "marpo_bench", "report", str(tmp_path / "p"), "--format", "html",
                             "--reps", "1000"], capture_output=True, text=True, env=env, timeout=600)
    assert report.returncode == 0, report.stderr
    assert "pursuit_v5" in (tmp_path / "p" / "report" / "report.html").read_text()
    assert "no normalisation bounds" in report.stdout + report.stderr  # raw returns, and why
