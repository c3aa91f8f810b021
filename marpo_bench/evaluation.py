"""Evaluation of a policy: one episode in each of an eval env's parallel envs, and the eval seed of
each evaluation point (never a training seed). The trainer evaluates every run this way, and
``marpo-bench eval`` repeats a saved policy's final evaluation with the same functions
(docs/algorithms.md, pitfalls: one evaluation mode per run, recorded)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from marpo_bench.envs.base import MultiAgentVecEnv


def eval_seed_of(seed: int, index: int) -> int:
    """The env seed of a run's ``index``-th evaluation (0 at env step 0): never a training seed."""
    return 10_000_019 * (seed + 1) + index


@torch.no_grad()
def evaluate(algo: Any, env: MultiAgentVecEnv, seed: int, deterministic: bool) -> dict[str, float]:
    """Run one episode in each of the eval env's E envs (the first episode of each, so short
    episodes are not over-counted) and return mean/std return, win rate and episode count."""
    E = env.info.num_envs
    ts = env.reset(seed)
    returns = torch.full((E,), math.nan)
    wins = torch.full((E,), math.nan)
    have = torch.zeros(E, dtype=torch.bool)
    act_state = algo.initial_act_state(E)
    for _ in range(env.info.episode_limit + 1):
        actions, act_state = algo.act(ts, act_state, deterministic=deterministic)
        ts = env.step(actions)
        new = ts.done.cpu() & ~have
        returns[new] = ts.episode_return.cpu()[new].float()
        wins[new] = ts.won.cpu()[new].float()
        have |= new
        if bool(have.all()):
            break
    if not bool(have.any()):
        raise RuntimeError(f"evaluation ended no episode within {env.info.episode_limit + 1} steps")
    r = returns[have].numpy()
    w = wins[have].numpy()
    return {
        "eval_return_mean": float(r.mean()),
        "eval_return_std": float(r.std()),
        "eval_win_rate": float(np.mean(w)) if env.info.has_won else math.nan,
        "eval_episodes": int(have.sum()),
    }
