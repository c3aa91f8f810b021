"""MPE through JaxMARL: the same three tasks as ``mpe.py``, vmapped over E envs and jitted.

One jitted call per ``step`` advances all E envs, auto-resets finished ones, tracks episode
return/length in the carry and returns stacked, padded arrays, which torch takes via DLPack
(zero-copy on CPU); actions go in as a small NumPy array. Spaces, action encoding, observation
layout and the team reward (``team_sum``) are identical to the mpe2 backend (checked step by
step in ``tests/test_envs.py``).

Differences from calling JaxMARL directly, on purpose:
- JaxMARL's own ``done`` fires when the *pre-step* counter reaches ``max_steps``, i.e. after
  ``max_steps + 1`` steps (26 for 25). This wrapper truncates after exactly ``max_cycles`` steps,
  like PettingZoo, and ignores JaxMARL's ``done``.
- Random streams differ from mpe2 (JAX PRNG vs numpy), so the two backends agree in
  distribution, not sample by sample. ``reset(seed)`` derives everything from
  ``jax.random.PRNGKey(seed)``; the key lives in the jitted carry and is split every step.
- Unavailable actions are not checked here (that would cost a device sync per step); passing
  one is undefined behaviour, as the env contract says.

JAX is imported when an env is first built (through ``_jax.py``, which sets JAX's CPU defaults),
so the registry reads this family's declaration without loading JAX.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from marpo_bench.envs.base import EnvFamily, EnvInfo, Scene, TaskParam, TimeStep
from marpo_bench.envs.jax_stack import CarryEnv, CompiledSteps
from marpo_bench.envs.mpe import (
    DEFAULT_MAX_CYCLES,
    MPE_MEASUREMENT,
    MPE_TASKS,
    SPREAD_PARAMS,
    check_task,
    mpe_bounds,
)

if TYPE_CHECKING:
    import jax

LANDMARK_RANGE = TaskParam(
    "landmark_range", float, 1.0, "landmarks drawn in landmark_range x U(-1, 1)^2 (JaxMARL and mpe2: 1; "
    "on-policy's spread: 0.8)", low=0.1, high=1.0)
"""simple_spread's landmark range (this family only): on-policy's scenario draws landmarks closer to the
centre than JaxMARL's; ``jax_mpe:simple_spread?landmark_range=0.8`` is that variant (calibration)."""

# task -> (jaxmarl env id, kwargs); local_ratio matches mpe2's defaults used in mpe.py.
_JAXMARL_TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "simple_spread": (
        "MPE_simple_spread_v3",
        {"num_agents": 3, "num_landmarks": 3, "local_ratio": 0.5},
    ),
    "simple_reference": ("MPE_simple_reference_v3", {"local_ratio": 0.5}),
    "simple_speaker_listener": ("MPE_simple_speaker_listener_v4", {}),
}


class _Compiled(CompiledSteps):
    """The jitted reset/step of one configuration (task, E, agent_id, horizon) and its static
    facts. Shared by every ``JaxMPEVecEnv`` of that configuration in the process (``_compiled``
    caches it), so train and eval envs, and successive runs in one worker, compile once."""

    def __init__(self, task: str, num_envs: int, agent_id: bool, max_cycles: int, num_agents: int | None,
                 landmark_range: float = 1.0) -> None:
        from marpo_bench.envs._jax import import_jaxmarl, jax, jnp

        env_id, kwargs = _JAXMARL_TASKS[task]
        if num_agents is not None:  # simple_spread only (SPREAD_PARAMS): N agents and N landmarks
            kwargs = {**kwargs, "num_agents": num_agents, "num_landmarks": num_agents}
        env = import_jaxmarl().make(env_id, max_steps=max_cycles, **kwargs)
        self.env = env  # its entities' sizes and colours draw a scene
        agents: list[str] = list(env.agents)
        obs_sizes = [int(env.observation_space(a).shape[0]) for a in agents]
        self.num_actions = [int(env.action_space(a).n) for a in agents]
        E, N, D, A = num_envs, len(agents), max(obs_sizes), max(self.num_actions)
        self.E, self.N, self.D, self.A = E, N, D, A
        self.warm = False

        onehot = jnp.broadcast_to(jnp.eye(N, dtype=jnp.float32), (E, N, N))

        def stack(obs: dict[str, jax.Array]) -> jax.Array:
            """Per-agent obs dict ([E, d_i] each) -> zero-padded [E, N, D] float32."""
            return jnp.stack(
                [jnp.pad(obs[a].astype(jnp.float32), ((0, 0), (0, D - obs[a].shape[-1]))) for a in agents],
                axis=1,
            )

        def with_id(obs: jax.Array) -> jax.Array:
            return jnp.concatenate([obs, onehot], axis=-1) if agent_id else obs

        def reset_all(key: jax.Array) -> tuple[jax.Array, Any]:
            obs, states = jax.vmap(env.reset)(jax.random.split(key, E))
            if landmark_range != 1.0:  # landmarks drawn in landmark_range x U(-1, 1)^2 (spread only)
                states = states.replace(p_pos=states.p_pos.at[:, env.num_agents:].multiply(landmark_range))
                obs = jax.vmap(env.get_obs)(states)
            return stack(obs), states

        def reset_fn(seed_key: jax.Array) -> tuple[tuple[Any, ...], tuple[jax.Array, ...]]:
            key, k_reset = jax.random.split(seed_key)
            obs, states = reset_all(k_reset)
            carry = (key, states, jnp.zeros(E, jnp.float32), jnp.zeros(E, jnp.int32))
            return carry, (with_id(obs), obs.reshape(E, N * D))

        def step_fn(carry: tuple[Any, ...], actions: jax.Array) -> tuple[tuple[Any, ...], tuple[jax.Array, ...]]:
            key, states, ep_ret, ep_len = carry
            key, k_step, k_reset = jax.random.split(key, 3)
            act = {a: actions[:, i] for i, a in enumerate(agents)}
            obs_d, next_states, rew_d, _, _ = jax.vmap(env.step_env)(jax.random.split(k_step, E), states, act)
            final_obs = stack(obs_d)
            reward = sum(rew_d[a].astype(jnp.float32) for a in agents)
            ep_ret = ep_ret + reward
            ep_len = ep_len + 1
            done = next_states.step >= max_cycles  # truncation only: MPE has no terminal states
            # MPE envs run in lockstep (fixed horizon), so a reset is needed on 1 step in 25:
            # compute it only then (a real branch outside the vmap), then select per env.
            obs_re, states_re = jax.lax.cond(jnp.any(done), reset_all, lambda _: (final_obs, next_states), k_reset)

            def select(new: jax.Array, old: jax.Array) -> jax.Array:
                return jnp.where(done.reshape((E,) + (1,) * (old.ndim - 1)), new, old)

            states = jax.tree.map(select, states_re, next_states)
            obs = select(obs_re, final_obs)
            out = (
                with_id(obs),
                obs.reshape(E, N * D),
                reward,
                done,
                with_id(final_obs),
                final_obs.reshape(E, N * D),
                jnp.where(done, ep_ret, jnp.nan),
                jnp.where(done, ep_len, 0),
            )
            carry = (key, states, jnp.where(done, 0.0, ep_ret), jnp.where(done, 0, ep_len))
            return carry, out

        self.reset: Callable[..., Any] = jax.jit(reset_fn)
        self.step: Callable[..., Any] = jax.jit(step_fn)


def _task_label(task: str, num_agents: int | None, landmark_range: float) -> str:
    """The canonical task name (``envs.parse_env``'s: parameters sorted, defaults dropped)."""
    given = (("landmark_range", landmark_range, 1.0), ("num_agents", num_agents, 3))
    query = "&".join(f"{k}={v:g}" for k, v, default in given if v is not None and v != default)
    return f"{task}?{query}" if query else task


@functools.lru_cache(maxsize=16)
def _compiled(task: str, num_envs: int, agent_id: bool, max_cycles: int, num_agents: int | None,
              landmark_range: float = 1.0) -> _Compiled:
    return _Compiled(task, num_envs, agent_id, max_cycles, num_agents, landmark_range)


class JaxMPEVecEnv(CarryEnv):
    """E JaxMARL MPE envs advanced by one jitted, vmapped call per step, behind ``MultiAgentVecEnv``."""

    def __init__(
        self,
        task: str,
        num_envs: int,
        device: torch.device | str = "cpu",
        agent_id: bool = True,
        max_cycles: int = DEFAULT_MAX_CYCLES,
        num_agents: int | None = None,
        landmark_range: float = 1.0,
    ) -> None:
        check_task(task)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        fn = _compiled(task, num_envs, bool(agent_id), max_cycles, num_agents, float(landmark_range))
        self._fn = fn
        E, N, D, A = fn.E, fn.N, fn.D, fn.A
        self.device = torch.device(device)
        self._E, self._N = E, N
        self.info = EnvInfo(
            family="jax_mpe",
            task=_task_label(task, num_agents, landmark_range),
            num_envs=E,
            num_agents=N,
            obs_dim=D + (N if agent_id else 0),
            state_dim=N * D,
            num_actions=A,
            episode_limit=max_cycles,
            reward_scale="team_sum",
            has_won=False,
        )
        avail = torch.zeros(N, A, dtype=torch.bool)
        for i, n in enumerate(fn.num_actions):
            avail[i, :n] = True
        self._avail = avail.to(self.device)
        self._reset_jit = fn.reset
        self.compiled_step = fn.step
        self._carry: tuple[Any, ...] | None = None

    def _actions_to_jax(self, actions: torch.Tensor) -> np.ndarray:
        """[E, N] torch ints -> the int32 array the jitted step takes (the same kind on every call)."""
        from marpo_bench.envs._jax import actions_for_jit

        return actions_for_jit(actions, self._E, self._N)

    def reset(self, seed: int) -> TimeStep:
        """Reset all E envs from ``jax.random.PRNGKey(seed)``; compiles ``step`` on first use."""
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        from marpo_bench.envs._jax import jax, to_torch

        # Commit the key to the device: jit outputs are then committed too, exactly like the
        # outputs of step() (whose carry is committed); otherwise the first step after reset and
        # later steps would compile separate versions.
        key = jax.device_put(jax.random.PRNGKey(seed), jax.devices("cpu")[0])
        carry, (obs, state) = self._reset_jit(key)
        if not self._fn.warm:
            # Compile step with the kind of action array step() passes (``actions_for_jit``), so
            # the timed / real calls hit the cache (another kind would compile a second version).
            zeros = torch.zeros(self._E, self._N, dtype=torch.int64)
            jax.block_until_ready(self.compiled_step(carry, self._actions_to_jax(zeros)))
            self._fn.warm = True
        self._carry = carry
        dev, E = self.device, self._E
        o = to_torch(obs, dev)
        s = to_torch(state, dev)
        alive = torch.ones(E, self._N, dtype=torch.bool, device=dev)
        return TimeStep.first(o, s, self._avail.expand(E, -1, -1).clone(), alive)

    def step(self, actions: torch.Tensor) -> TimeStep:
        """Step all E envs with ``actions`` [E, N] in one jitted call; auto-reset finished envs."""
        from marpo_bench.envs._jax import to_torch

        if self._carry is None:
            raise RuntimeError("call reset(seed) before step()")
        self._carry, out = self.compiled_step(self._carry, *self.jit_args(actions))
        return self.timestep(tuple(to_torch(x, self.device) for x in out))

    # -- the pieces of ``step``, shared with ``jax_stack.JaxEnvStack`` (S seeds' envs in one call) --

    def jit_args(self, actions: torch.Tensor) -> tuple[Any, ...]:
        """The compiled step's arguments after the carry."""
        return (self._actions_to_jax(actions),)

    def timestep(self, out: tuple[torch.Tensor, ...]) -> TimeStep:
        """The compiled step's outputs (as torch tensors) as a TimeStep."""
        dev, E = self.device, self._E
        obs, state, reward, truncated, final_obs, final_state, ep_ret, ep_len = out
        return TimeStep(
            obs=obs,
            state=state,
            avail_actions=self._avail.expand(E, -1, -1).clone(),
            alive=torch.ones(E, self._N, dtype=torch.bool, device=dev),
            reward=reward,
            terminated=torch.zeros(E, dtype=torch.bool, device=dev),
            truncated=truncated,
            final_obs=final_obs,
            final_state=final_state,
            episode_return=ep_ret,
            episode_length=ep_len.to(torch.int64),
            won=torch.full((E,), float("nan"), device=dev),
        )

    def snapshot(self) -> dict[str, Any] | None:
        """The jitted carry (PRNG key, env states, episode statistics): exact at any step."""
        from marpo_bench.envs._jax import carry_snapshot

        return None if self._carry is None else carry_snapshot(self._carry)

    def restore(self, snap: dict[str, Any], seed: int) -> None:
        """Rebuild the carry of ``snap`` on this env (reset first: it compiles the step)."""
        from marpo_bench.envs._jax import carry_restore

        self.reset(seed)
        self._carry = carry_restore(self._carry, snap)

    def compiled_step_count(self) -> int:
        """How many versions of the jitted step exist (1 after warm-up: no recompilation)."""
        return int(self.compiled_step._cache_size())  # type: ignore[attr-defined]

    def scene(self, index: int) -> Scene:
        """Env ``index`` now: agents and landmarks with JaxMARL's sizes and colours."""
        if self._carry is None:
            raise RuntimeError("call reset(seed) before scene()")
        env = self._fn.env
        pos = np.asarray(self._carry[1].p_pos[index], dtype=np.float64)
        k = pos.shape[0]
        return Scene(positions=pos, radii=np.asarray(env.rad, dtype=np.float64),
                     colours=tuple(tuple(c / 255.0 for c in rgb) for rgb in env.colour),
                     visible=np.ones(k, dtype=bool), extent=(-1.5, 1.5, -1.5, 1.5))

    def close(self) -> None:
        """Drop the device state (JAX frees the buffers once unreferenced)."""
        self._carry = None


# Measured with measure_bounds() (tests/mpe_oracle.py; see mpe.MPE_MEASUREMENT); random, sem, reference, sem.
_MEASURED = {
    "simple_spread": (-80.54, 1.03, -22.24, 0.40),
    "simple_reference": (-57.85, 0.81, -15.56, 0.32),
    "simple_speaker_listener": (-81.51, 2.70, -15.35, 0.68),
}


def _make(task: str, num_envs: int, device: torch.device | str, agent_id: bool, **params: Any) -> JaxMPEVecEnv:
    return JaxMPEVecEnv(task, num_envs, device=device, agent_id=agent_id, **params)


FAMILY = EnvFamily(
    name="jax_mpe",
    description="JaxMARL MPE, same tasks and spaces as mpe, vmapped and jitted (fast path)",
    tasks=MPE_TASKS,
    factory=_make,
    score="return",
    bounds=mpe_bounds(_MEASURED),
    measurement=MPE_MEASUREMENT,
    # Relative cost per env step with default configs, measured on 2 cores (one thread per run):
    # orders a worker pool's queue, longest first.
    cost={"qmix": 7.5},
    params={"simple_spread": (*SPREAD_PARAMS, LANDMARK_RANGE)},
    packages=("jax", "jaxmarl"),
)
