"""Test-only: the scripted MPE oracle and the measurement behind the MPE families' stored bounds
(``envs/mpe.py`` MPE_MEASUREMENT); test_analysis re-measures the stored rows with it."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from marpo_bench.envs.mpe import ORACLE_STRATEGIES
from marpo_bench.normalisation import UniformRandomPolicy

# MPE's discrete moves: 0 no-op, 1 -x, 2 +x, 3 -y, 4 +y (PettingZoo's and JaxMARL's encoding).
_MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.float64)


def _steer(vel: np.ndarray, rel: np.ndarray, coast: float = 0.15) -> np.ndarray:
    """The move whose predicted stopping point is nearest the target (``rel`` = target - position).

    MPE dynamics: ``v' = 0.75 v + 0.5 u`` (damping 0.25, accel 5, dt 0.1); the stopping point is
    approximated by ``0.1 v + coast * v'``; ``coast = 0.15`` was the best of {0, 0.05, ..., 0.6}.
    """
    v1 = vel[..., None, :] * 0.75 + 0.5 * _MOVES
    stop = vel[..., None, :] * 0.1 + coast * v1
    return np.linalg.norm(stop - rel[..., None, :], axis=-1).argmin(-1)


class MPEOracle:
    """A scripted MPE policy that reads everything it needs from the agents' observations (layouts
    of mpe2 / JaxMARL, identical here): the table's reference score. Centralised: it sees all
    agents' observations at once, so the spread assignment is the same for every agent."""

    def __init__(self, task: str) -> None:
        if task not in ORACLE_STRATEGIES:
            raise ValueError(f"no oracle for MPE task {task!r}; valid: {', '.join(ORACLE_STRATEGIES)}")
        self.task = task

    def initial_act_state(self, num_envs: int) -> None:
        return None

    def act(self, ts: Any, act_state: Any, deterministic: bool) -> tuple[Any, Any]:
        import torch

        o = ts.obs.cpu().numpy().astype(np.float64)
        E, N = o.shape[:2]
        rows = np.arange(E)
        if self.task == "simple_spread":  # [vel 2, pos 2, landmarks rel 3x2, others rel 2x2, comm]
            vel, pos = o[:, :, 0:2], o[:, :, 2:4]
            landmarks = o[:, 0, 4:10].reshape(E, 3, 2) + pos[:, 0:1]
            dist = np.linalg.norm(pos[:, :, None] - landmarks[:, None], axis=-1)  # [E, agent, landmark]
            perms = np.array(list(itertools.permutations(range(3))))
            best = perms[dist[:, np.arange(3)[None], perms].sum(-1).argmin(-1)]  # [E, agent] -> landmark
            target = np.take_along_axis(landmarks, best[..., None], 1)
            actions = _steer(vel, target - pos)
        elif self.task == "simple_speaker_listener":  # speaker [goal colour 3]; listener [vel, lm 3x2, comm 3]
            actions = np.zeros((E, N), dtype=np.int64)
            actions[:, 0] = o[:, 0, 0:3].argmax(-1)
            vel, landmarks, comm = o[:, 1, 0:2], o[:, 1, 2:8].reshape(E, 3, 2), o[:, 1, 8:11]
            heard = comm.max(-1) > 0.5
            target = np.where(heard[:, None], landmarks[rows, comm.argmax(-1)], landmarks.mean(1))
            actions[:, 1] = _steer(vel, target)
        else:  # simple_reference: [vel 2, landmarks rel 3x2, other's goal colour 3, other's comm 10]
            vel, landmarks = o[:, :, 0:2], o[:, :, 2:8].reshape(E, N, 3, 2)
            say, comm = o[:, :, 8:11].argmax(-1), o[:, :, 11:21]
            heard = comm.max(-1) > 0.5
            goal = comm.argmax(-1).clip(0, 2)
            target = np.where(heard[..., None], landmarks[rows[:, None], np.arange(N)[None], goal],
                              landmarks.mean(2))
            actions = 5 * say + _steer(vel, target)
        return torch.as_tensor(actions, dtype=torch.long), act_state


def measure_bounds(env: str, task: str, episodes: int = 512, seed: int = 123) -> dict[str, float]:
    """Re-measure a row of the MPE families' bounds with the suite's own evaluation: the uniform-random
    policy (sampled) and the scripted oracle (deterministic), one episode per parallel env.
    Returns mean and standard error of both. Needs the env backend (slow: seconds per task)."""
    from marpo_bench.envs import make_env
    from marpo_bench.evaluation import evaluate

    vec = make_env(env, task, episodes)
    out: dict[str, float] = {}
    for name, policy, det in (("random", UniformRandomPolicy(0), False), ("reference", MPEOracle(task), True)):
        res = evaluate(policy, vec, seed=seed, deterministic=det)
        out[name] = res["eval_return_mean"]
        out[f"{name}_sem"] = res["eval_return_std"] / math.sqrt(res["eval_episodes"])
    return out
