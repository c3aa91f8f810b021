"""The env contract every algorithm sees: a cooperative, vectorised, auto-resetting multi-agent env.

All tensors are torch tensors on the env's ``device``. Shapes use E = parallel envs, N = agents,
A = discrete actions (padded to the largest action set across agents; unavailable ones masked).

Conventions (see ``docs/algorithms.md``, "Env conventions" and "Comparison pitfalls"):
- ``reward`` is the *team* reward of the transition; how it is formed from per-agent rewards is
  stated by ``EnvInfo.reward_scale``: ``"team_sum"`` (summed over agents, MAPPO's MPE
  convention) or ``"team_shared"`` (one shared team reward, e.g. SMAX). Never compare returns
  of different scales.
- ``terminated`` means a true terminal state (no bootstrapping); ``truncated`` means a time limit
  (bootstrap through it using ``final_state``/``final_obs``).
- Auto-reset happens inside ``step``: when env e finishes at this step, ``obs[e]``/``state[e]``/
  ``avail_actions[e]``/``alive[e]`` already belong to the first step of the next episode, while
  ``final_obs[e]``/``final_state[e]`` hold the last observation of the finished episode.
- ``episode_return``/``episode_length``/``won`` are meaningful only where ``done = terminated |
  truncated``; elsewhere they are NaN (return, won) or 0 (length). ``won`` is NaN for envs without a
  notion of winning (MPE).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

PACK_ALIGN = 8  # bytes: every packed field starts at a multiple of this (int64-safe views)


def packed_offsets(nbytes: Sequence[int]) -> tuple[list[int], int]:
    """Byte offsets of fields of the given sizes packed back to back in one buffer, each start
    aligned to ``PACK_ALIGN``; and the buffer's total size."""
    offsets, pos = [], 0
    for n in nbytes:
        offsets.append(pos)
        pos += -(-n // PACK_ALIGN) * PACK_ALIGN
    return offsets, pos


def move_packed(tensors: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """``tensors`` (any dtypes, one device) on ``device`` in *one* copy: their bytes are packed
    into a single buffer (``packed_offsets``), moved, and viewed back. Small per-step tensors cost
    a transfer latency each on a GPU; this pays it once per step batch."""
    flat = [t.detach().contiguous().view(-1).view(torch.uint8) for t in tensors]
    offsets, total = packed_offsets([f.numel() for f in flat])
    buf = torch.empty(total, dtype=torch.uint8, device=tensors[0].device)
    for o, f in zip(offsets, flat, strict=True):
        buf[o:o + f.numel()] = f
    buf = buf.to(device)
    return [buf[o:o + f.numel()].view(t.dtype).view(t.shape) for o, f, t in zip(offsets, flat, tensors, strict=True)]


@dataclass
class TimeStep:
    """One vectorised step (or reset) of E envs with N agents."""

    obs: torch.Tensor  # [E, N, obs_dim] float32 (agent id one-hot appended if requested)
    state: torch.Tensor  # [E, state_dim] float32, global state for centralised critics / mixers
    avail_actions: torch.Tensor  # [E, N, A] bool
    alive: torch.Tensor  # [E, N] bool, False for dead agents (death masking; all True on MPE)
    reward: torch.Tensor  # [E] float32 team reward of the transition (0 after reset)
    terminated: torch.Tensor  # [E] bool
    truncated: torch.Tensor  # [E] bool
    final_obs: torch.Tensor  # [E, N, obs_dim]: last obs of a finished episode, else == obs
    final_state: torch.Tensor  # [E, state_dim]: last state of a finished episode, else == state
    episode_return: torch.Tensor  # [E] float32, team return where done, NaN elsewhere
    episode_length: torch.Tensor  # [E] int64, length where done, 0 elsewhere
    won: torch.Tensor  # [E] float32, 1/0 where done on envs with winning, NaN elsewhere

    @classmethod
    def first(cls, obs: torch.Tensor, state: torch.Tensor, avail_actions: torch.Tensor,
              alive: torch.Tensor) -> TimeStep:
        """The TimeStep of a reset: no reward, nothing finished, final_* equal to the current."""
        E, dev = obs.shape[0], obs.device
        false = torch.zeros(E, dtype=torch.bool, device=dev)
        nan = torch.full((E,), float("nan"), device=dev)
        return cls(obs=obs, state=state, avail_actions=avail_actions, alive=alive,
                   reward=torch.zeros(E, device=dev), terminated=false, truncated=false.clone(),
                   final_obs=obs.clone(), final_state=state.clone(), episode_return=nan,
                   episode_length=torch.zeros(E, dtype=torch.int64, device=dev), won=nan.clone())

    @property
    def done(self) -> torch.Tensor:
        """[E] bool: the episode ended at this step (terminal or time limit)."""
        return self.terminated | self.truncated

    def to(self, device: torch.device | str) -> TimeStep:
        """This TimeStep on ``device``: itself when already there (all fields share one device,
        the env's), else every field moved in one packed host-device copy (``move_packed``)."""
        device = torch.device(device)
        if _same_device(self.obs.device, device):
            return self
        names = [f.name for f in fields(self)]
        moved = move_packed([getattr(self, n) for n in names], device)
        return TimeStep(**dict(zip(names, moved, strict=True)))


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Whether tensors on ``a`` are already on ``b`` (``cuda`` means the current CUDA device)."""
    if a.type != b.type:
        return False
    return b.index is None or a.index == b.index


@dataclass(frozen=True)
class EnvInfo:
    """Static facts about an env instance that algorithms and the store need."""

    family: str  # "mpe", "jax_mpe", "smax", ...
    task: str  # e.g. "simple_spread"
    num_envs: int
    num_agents: int
    obs_dim: int
    state_dim: int
    num_actions: int
    episode_limit: int  # time limit in agent steps (horizon)
    reward_scale: str  # "team_sum", "team_shared" or "agent_mean": how the team reward is formed
    has_won: bool  # whether ``won`` is meaningful


@runtime_checkable
class MultiAgentVecEnv(Protocol):
    """What every env wrapper provides. Algorithms see only this."""

    info: EnvInfo
    device: torch.device

    def reset(self, seed: int) -> TimeStep:
        """Reset all E envs deterministically from ``seed``."""
        ...

    def step(self, actions: torch.Tensor) -> TimeStep:
        """Apply ``actions`` ([E, N] int64, each available) and auto-reset finished envs."""
        ...

    def close(self) -> None:
        """Release resources (processes, device buffers)."""
        ...


@runtime_checkable
class SnapshotEnv(Protocol):
    """What an env adds to :class:`MultiAgentVecEnv` for an *exact* resume (optional).

    A checkpoint is taken at an iteration boundary; the runner keeps the TimeStep it continues
    from, the env keeps everything else (PRNG keys, simulator state, episode statistics). An env
    without these methods resumes inexactly: its episodes restart from a fresh seed and the run
    records ``resume_exact: false``.
    """

    def snapshot(self) -> dict[str, Any] | None:
        """The env's state now, as a dict of tensors and plain values (``torch.save``-able with
        ``weights_only=True``), or None when the current state cannot be captured exactly (e.g.
        mid-episode for envs that can only replay their resets)."""
        ...

    def restore(self, snap: dict[str, Any], seed: int) -> None:
        """Put the env into the state of ``snap`` (taken by an identically built env); ``seed`` is
        the run's env seed, for an env that must reset (build, compile) before it can take a state.
        A snapshot that does not fit this env raises ``ValueError`` naming what differs."""
        ...


@runtime_checkable
class CompiledStepEnv(Protocol):
    """An env whose ``step`` calls one compiled function (the JAX-backed families), exposed so the
    bench can time the env's compute apart from the torch <-> env exchange (optional).

    ``compiled_step`` is the function ``step`` calls on each call; a wrapper put in its place (same
    signature) is called instead. Python envs (mpe2, SMACv2) have none."""

    compiled_step: Any


@runtime_checkable
class StackableEnv(Protocol):
    """An env that can be stepped together with S - 1 identically built copies (one per seed of a
    batched learner) in one compiled call (the JAX families, ``envs.jax_stack``; optional)."""

    def stack(self, envs: list[Any]) -> Any:
        """An object with ``step(actions: list[Tensor]) -> list[TimeStep]``, ``store()`` and
        ``invalidate()`` (``jax_stack.JaxEnvStack``) for ``envs``, or None if they differ."""
        ...


@runtime_checkable
class EnvWrapper(Protocol):
    """A wrapper whose ``step`` is its env's plus bookkeeping (``resume.CheckpointableEnv``): when
    its env is stepped around it (``SeedEnvs``), ``stepped`` is told the TimeStep."""

    env: Any

    def stepped(self, ts: TimeStep) -> None:
        ...


class SeedEnvs:
    """The envs of a batched learner's S seeds (seed k's is ``envs[k]``), stepped together.

    Envs that stack (``StackableEnv``, all built alike) are advanced by one compiled call for all
    seeds; others one after another. Each seed's env follows its own stream either way. While a
    stack steps, the envs' own state is stale: ``sync`` writes it back (call it before anything
    reads an env's state, e.g. a checkpoint's snapshot)."""

    def __init__(self, envs: Sequence[Any]) -> None:
        self.envs = list(envs)
        raws = [e.env if isinstance(e, EnvWrapper) else e for e in self.envs]
        first = raws[0]
        self._stack = first.stack(raws) if len(raws) > 1 and isinstance(first, StackableEnv) else None

    @property
    def stacked(self) -> bool:
        """Whether the envs step in one call."""
        return self._stack is not None

    def reset(self, seeds: Sequence[int]) -> list[TimeStep]:
        tss = [e.reset(s) for e, s in zip(self.envs, seeds, strict=True)]
        if self._stack is not None:
            self._stack.invalidate()
        return tss

    def step(self, actions: Sequence[torch.Tensor]) -> list[TimeStep]:
        """Seed k's env stepped with ``actions[k]`` [E, N]; seed k's TimeStep at ``[k]``."""
        if self._stack is None:
            return [e.step(a) for e, a in zip(self.envs, actions, strict=True)]
        tss = self._stack.step(list(actions))
        for e, ts in zip(self.envs, tss, strict=True):
            if isinstance(e, EnvWrapper):
                e.stepped(ts)
        return tss

    def sync(self) -> None:
        """Write the stacked state back into each env (a no-op when they step one by one)."""
        if self._stack is not None:
            self._stack.store()


@dataclass(frozen=True)
class Scene:
    """What one env looks like now, for drawing a frame: K round entities on a 2-D field."""

    positions: np.ndarray  # [K, 2]
    radii: np.ndarray  # [K]
    colours: tuple[tuple[float, float, float], ...]  # K RGB triples in [0, 1]
    visible: np.ndarray  # [K] bool (dead units are hidden)
    extent: tuple[float, float, float, float]  # xmin, xmax, ymin, ymax
    shade: np.ndarray | None = None  # [K] in [0, 1]: drawn opacity (e.g. health), None = opaque


@runtime_checkable
class RenderableEnv(Protocol):
    """An env that can show one of its parallel envs (optional; ``marpo-bench eval --render``)."""

    def scene(self, index: int) -> Scene:
        """Env ``index`` now, as it will be acted on by the next ``step``."""
        ...


ScoreKind = Literal["return", "win_rate"]


@dataclass(frozen=True)
class TaskBounds:
    """Normalisation bounds of a return-scored task: score = (return - random) / (reference - random).

    ``scale`` and ``episode_limit`` are those of the numbers (``run.json`` fields ``reward_scale``
    and ``episode_limit``); runs on another scale are never normalised with them.
    """

    random: float
    reference: float
    scale: str
    episode_limit: int
    random_source: str
    reference_source: str


EnvFactory = Callable[..., MultiAgentVecEnv]
"""``factory(task, num_envs, device, agent_id, **task_params) -> MultiAgentVecEnv``."""


@dataclass(frozen=True)
class TaskParam:
    """A parameter a task takes (``family:task?name=value``): its type, default and meaning.
    ``low``/``high`` bound a numeric value (inclusive)."""

    name: str
    type: type  # int, float, bool or str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None

    def describe(self) -> str:
        rng = f", {self.low:g}..{self.high:g}" if self.low is not None and self.high is not None else ""
        return f"{self.name} ({self.type.__name__}{rng}, default {self.default}: {self.help})"


@dataclass(frozen=True)
class EnvFamily:
    """Everything the suite needs to know about one env family, declared in the family's own file
    and registered by name (built-in, or a plugin's ``marpo_bench.envs`` entry point).

    - ``tasks``: the valid task names, or a function returning them (read from the backend when
      first needed, e.g. every SMAX map the installed jaxmarl knows).
    - ``factory``: builds E parallel envs of a task (imports its backend lazily).
    - ``score``: how a run is scored: ``"return"`` (normalised with ``bounds`` where the task has
      them) or ``"win_rate"`` (already in [0, 1]).
    - ``bounds``: per-task :class:`TaskBounds`; a return task without them is reported raw.
    - ``measurement``: how ``bounds`` were obtained (printed in the report).
    - ``cost``: relative cost per env step by algorithm name (1.0 when absent), used only to order
      a worker pool's queue longest-first.
    - ``bench_sizes``: the E values ``marpo-bench bench`` times by default.
    - ``algo_defaults``: per-algorithm config values for this family (applied before the
      algorithm's own recipe table and the user's ``--set``), for families an algorithm's recipe
      table does not know.
    - ``params``: per task, the parameters it takes (:class:`TaskParam`); the factory receives the
      given ones as keyword arguments (``family:task?name=value&name=value``).
    - ``check_task``: for a family whose tasks are open-ended (e.g. an import path), validates a
      task name with a one-line ``ValueError``; ``tasks`` then lists examples only.
    - ``free_params``: for such a family, any ``name=value`` parameter is accepted, its value read
      by this function (e.g. as a Python literal) and passed to the factory.
    - ``packages``: the backend's distributions, whose versions every ``run.json`` records.
    - ``check``: raises a one-line ``ValueError`` when the backend is not usable here.
    - ``not_comparable_with``: a note printed when this family's scores sit beside another family's
      in one study (e.g. two implementations of one game), keyed by the other family's name.
    - ``imports_code``: the task names a module to import (e.g. ``pettingzoo:``). Such a task is
      built only when the caller trusts where the name came from (the command line), never when
      it was read from a file (``envs.make_env(..., trust_imports=...)``).
    """

    name: str
    description: str
    tasks: Sequence[str] | Callable[[], Sequence[str]]
    factory: EnvFactory
    score: ScoreKind = "return"
    bounds: Mapping[str, TaskBounds] = field(default_factory=dict)
    measurement: str = ""
    cost: Mapping[str, float] = field(default_factory=dict)
    bench_sizes: tuple[int, ...] = (64, 1024)
    algo_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    params: Mapping[str, tuple[TaskParam, ...]] = field(default_factory=dict)
    check_task: Callable[[str], None] | None = None
    free_params: Callable[[str], Any] | None = None
    packages: tuple[str, ...] = ()
    check: Callable[[], None] | None = None
    not_comparable_with: Mapping[str, str] = field(default_factory=dict)
    imports_code: bool = False

    def task_names(self) -> tuple[str, ...]:
        """The valid task names (calls ``tasks`` when it is a function)."""
        return tuple(self.tasks() if callable(self.tasks) else self.tasks)


def agent_id_onehot(num_envs: int, num_agents: int, device: torch.device | str) -> torch.Tensor:
    """[E, N, N] one-hot agent ids, appended to observations by wrappers (MAPPO convention)."""
    eye = torch.eye(num_agents, device=device)
    return eye.unsqueeze(0).expand(num_envs, num_agents, num_agents)
