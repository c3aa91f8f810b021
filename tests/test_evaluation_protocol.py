"""How a run is evaluated (README, docs/algorithms.md, "Comparison pitfalls"): ``train_run`` evaluates a stub algorithm
that records what it is asked, on scripted envs that record their seeds; ``evaluate`` keeps the
first episode of each env. Greedy actions when ``eval_mode`` is greedy, a fresh seed at every
evaluation point, never a training seed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from marpo_bench import recipes, store, train
from marpo_bench.config import RunSpec
from marpo_bench.evaluation import evaluate
from marpo_bench.train import train_run
from tests.helpers import ScriptedEnv


@dataclass
class StubConfig:
    num_envs: int = 2
    agent_id: bool = True


class StubAlgo:
    """Trains nothing: 100 env steps per iteration; records every ``act`` call's ``deterministic``."""

    Config = StubConfig
    on_policy = True
    resumes_mid_episode = True
    resumes_exactly = True
    metrics = ("policy_loss",)
    instances: list[StubAlgo] = []

    def __init__(self, cfg, env_info, device, seed) -> None:
        self.cfg, self.info, self.deterministic = cfg, env_info, []
        StubAlgo.instances.append(self)

    def initial_act_state(self, num_envs: int) -> None:
        return None

    def act(self, ts, act_state, deterministic):
        self.deterministic.append(deterministic)
        return torch.zeros(ts.obs.shape[:2], dtype=torch.int64), act_state

    def learn(self, env, total_steps, seed, on_iteration, start_steps: int = 0) -> None:
        env.reset(seed)
        steps = start_steps
        while steps < total_steps:
            steps += 100
            on_iteration(steps, {"policy_loss": 0.0})

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass

    def forget_episodes(self) -> None:
        pass


def _one_step_env(num_envs: int) -> ScriptedEnv:
    """Every env's episode ends after one step with return e + 1 (env e)."""
    E = num_envs
    return ScriptedEnv(torch.zeros(2, E), [[float(e + 1) for e in range(E)]], [[True] * E], [[False] * E],
                       torch.zeros(1, E))


@pytest.fixture
def stub_run(monkeypatch, tmp_path):
    """Run ``train_run`` on the stub; returns (run.json, metrics, training env, eval env, stub)."""
    envs: list[ScriptedEnv] = []

    def fake_make_env(family, task, num_envs, device="cpu", agent_id=True, trust_imports=False):
        envs.append(_one_step_env(num_envs))
        return envs[-1]

    monkeypatch.setattr(train, "make_env", fake_make_env)
    monkeypatch.setattr(train, "get_algorithm", lambda name: StubAlgo)
    monkeypatch.setattr(recipes, "get_algorithm", lambda name: StubAlgo)  # its config is resolved there
    StubAlgo.instances.clear()

    def run(seed: int = 3, overrides: tuple = ()):
        settings = (("eval_interval", "100"), ("eval_episodes", "3"), *overrides)  # the run settings
        spec = RunSpec("stub", "jax_mpe", "simple_spread", seed, 300, settings)
        result = train_run(spec, tmp_path, "s", faults=())
        assert result.status == "complete", result.message
        path = store.run_dir(tmp_path, "s", spec.run_id)
        training, evaluation = envs[-2:]
        return store.read_run_json(path), store.read_metrics(path), training, evaluation, StubAlgo.instances[-1]

    return run


def test_train_run_evaluates_greedily_on_a_fresh_non_training_seed_at_every_point(stub_run):
    record, metrics, training, evaluation, algo = stub_run(seed=3)
    assert training.info.num_envs == 2 and evaluation.info.num_envs == 3  # eval_episodes envs
    assert metrics["env_steps"].tolist() == [0, 100, 200, 300]  # eval_interval 100 over 300 steps
    assert training.reset_seeds == [3]  # the algorithm's training envs reset from the run's seed
    seeds = evaluation.reset_seeds
    assert len(seeds) == 4 and len(set(seeds)) == 4  # one reset per evaluation point, each a new seed
    # never a training seed: runs of a study reset their training envs from their seeds 0, 1, 2, ...
    assert not set(seeds) & set(range(1000))
    assert record["eval_mode"] == "greedy"
    assert algo.deterministic and all(d is True for d in algo.deterministic)
    # the first (one-step) episode of each of the 3 eval envs: returns 1, 2, 3
    assert metrics["eval_return_mean"].tolist() == [2.0] * 4
    assert metrics["eval_episodes"].tolist() == [3] * 4


def test_train_run_samples_actions_when_eval_mode_is_sample(stub_run):
    record, _, _, _, algo = stub_run(seed=0, overrides=(("eval_mode", "sample"),))
    assert record["eval_mode"] == "sample"
    assert algo.deterministic and all(d is False for d in algo.deterministic)


def test_evaluations_of_two_seeds_of_a_study_never_reuse_a_training_seed(stub_run):
    _, _, train0, eval0, _ = stub_run(seed=0)
    _, _, train1, eval1, _ = stub_run(seed=1)
    training = set(train0.reset_seeds) | set(train1.reset_seeds)
    assert training == {0, 1}
    assert not (set(eval0.reset_seeds) | set(eval1.reset_seeds)) & training


def test_evaluate_keeps_the_first_episode_of_each_env():
    # env 0: one-step episodes with returns 1 (won), 5, 9; env 1: one 3-step episode, return 0.5+0.5+1 = 2
    env = ScriptedEnv(torch.zeros(4, 2), [[1.0, 0.5], [5.0, 0.5], [9.0, 1.0]],
                      [[True, False], [True, False], [True, True]], torch.zeros(3, 2, dtype=torch.bool),
                      torch.zeros(3, 2), won=[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]], has_won=True)

    class Recorder(StubAlgo):
        def __init__(self) -> None:
            self.deterministic = []

    algo = Recorder()
    res = evaluate(algo, env, seed=7, deterministic=True)
    # returns [1, 2] (env 0's later episodes 5 and 9 are not counted): mean 1.5, std 0.5; wins [1, 0]
    assert res == {"eval_return_mean": 1.5, "eval_return_std": 0.5, "eval_win_rate": 0.5, "eval_episodes": 2}
    assert env.reset_seeds == [7] and algo.deterministic == [True, True, True]
