"""The algorithm contract, and the built-in algorithms by name.

An algorithm is one class in one file that satisfies :class:`Algorithm`; the runner
(``train.py``) calls only what the protocol names and never tests an algorithm's type or reads its
state. The built-ins are listed in ``marpo_bench/registry.py`` (module path, class name,
description) and imported lazily, so ``marpo-bench list`` and argument validation stay fast; a plugin
registers more through the ``marpo_bench.algorithms`` entry-point group (``docs/extending.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

from marpo_bench.envs.base import EnvInfo, MultiAgentVecEnv, TimeStep

OnIteration = Callable[[int, dict[str, float]], None]
"""``on_iteration(env_steps, metrics)``: called by ``learn`` after every update."""


@runtime_checkable
class Algorithm(Protocol):
    """What the runner may call on an algorithm.

    Class attributes:

    - ``Config``: its config dataclass (every field settable with ``--set key=value``; an optional
      ``validate()`` raises ``ConfigError``, an optional ``resolved()`` fills settings left to the
      algorithm). It carries the two settings the runner builds the training env with, ``num_envs``
      and ``agent_id`` (they belong to an algorithm's recipe); evaluation settings are the run's
      (:class:`~marpo_bench.config.RunConfig`), the same for every algorithm.
    - ``on_policy``: learns from the rollouts of its current policy (PPO family) or from a replay
      buffer (QMix); informational (``marpo-bench list``).
    - ``resumes_mid_episode``: its ``state_dict`` holds all in-flight episode state (e.g. the GRU
      state carried across rollouts), so a checkpoint taken mid-episode resumes exactly; False
      makes the runner restart mid-episode envs on resume.
    - ``resumes_exactly``: its ``state_dict`` holds everything ``learn`` depends on, so a resumed
      run equals an uninterrupted one (False, e.g. a replay buffer not saved: ``run.json`` records
      ``resume_exact: false``).
    - ``metrics``: the training metric columns ``learn`` reports through ``on_iteration`` (besides
      ``train_return_mean``); each is stored as a float column of ``metrics.parquet``. Reporting
      an undeclared metric fails the run with a one-line error.
    - ``DEFAULTS_BY_FAMILY`` (optional): its recipe table, ``family`` or ``family:task`` ->
      :class:`~marpo_bench.config.Recipe`.
    - ``memory_estimate(cfg, info, seeds=1) -> int`` (optional classmethod): the bytes ``learn``
      allocates for ``cfg`` on a task of ``info``'s shapes (``seeds`` > 1: its batched learner),
      known before anything is built; ``memory_setting`` (optional): ``(setting, description)``,
      the setting it grows with, named when ``run`` refuses a grid that would not fit
      (``marpo_bench.memory``, which has the default for algorithms without them).
    """

    Config: ClassVar[type]
    on_policy: ClassVar[bool]
    resumes_mid_episode: ClassVar[bool]
    resumes_exactly: ClassVar[bool]
    metrics: ClassVar[tuple[str, ...]]

    def __init__(self, cfg: Any, env_info: EnvInfo, device: Any, seed: int) -> None: ...

    def initial_act_state(self, num_envs: int) -> Any:
        """Per-env acting state at episode start (e.g. a GRU state), or None."""
        ...

    def act(self, ts: TimeStep, act_state: Any, deterministic: bool) -> tuple[Any, Any]:
        """Actions [E, N] for a TimeStep (greedy when ``deterministic``) and the next acting state."""
        ...

    def learn(self, env: MultiAgentVecEnv, total_steps: int, seed: int, on_iteration: OnIteration,
              start_steps: int = 0) -> None:
        """Train until ``total_steps`` env steps (a stopping rule: nothing else may depend on it),
        calling ``on_iteration`` after every update; ``start_steps`` > 0 continues a resumed run."""
        ...

    def state_dict(self) -> dict:
        """Everything needed to resume (loads with ``torch.load(weights_only=True)``)."""
        ...

    def load_state_dict(self, sd: dict) -> None: ...

    def forget_episodes(self) -> None:
        """The env's in-flight episodes were dropped (an inexact resume): drop any state carried
        across them, such as a recurrent state carried from one rollout to the next."""
        ...

    # Optional: ``policy_state_dict()`` -> what ``act`` needs and nothing else (the actor, not the
    # critic or the optimisers), and ``load_policy_state_dict(sd)``. A complete run keeps it as its
    # saved policy (``policy.pt``, small; ``marpo-bench eval``); without them the whole
    # ``state_dict`` is kept.


def get_algorithm(name: str) -> Any:
    """The algorithm class registered as ``name``, built-in or plugin (ValueError naming the valid ones)."""
    from marpo_bench.registry import algorithm_class

    return algorithm_class(name)
