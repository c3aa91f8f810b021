"""SMAX through JaxMARL: SMAC- and SMACv2-style StarCraft micromanagement without StarCraft II.

E ``HeuristicEnemySMAX`` envs advance in one jitted, vmapped call per ``step`` (structure shared
with ``jax_mpe.py``: the PRNG key and episode statistics live in the jitted carry, auto-reset
happens inside the jitted function, outputs reach torch via DLPack, actions go in as NumPy).

Settings (the same as JaxMARL's MAPPO/IPPO SMAX baselines, ``ENV_KWARGS`` of
``baselines/MAPPO/config/mappo_homogenous_rnn_smax.yaml`` and ``ippo_rnn_smax.yaml``):
``jaxmarl.make("HeuristicEnemySMAX", scenario=map_name_to_scenario(task), see_enemy_actions=True,
walls_cause_death=True, attack_mode="closest")``; everything else is SMAX's default: 32x32 map,
8 world ticks of 1/16 s per agent step, ``won_battle_bonus=1.0``, ``max_steps=100``, unit-list
observations, discrete actions, the scripted heuristic enemy shooting at the closest ally.

What the wrapper returns (see ``base.py`` for the contract):

- ``obs``: SMAX's per-ally unit-list observation (float32), plus a one-hot agent id when asked.
  Dead agents observe zeros (SMAX zeroes them), the id is still appended.
- ``state``: SMAX's world state (``obs["world_state"]``, ``SMAX.get_world_state``): per unit
  (allies then enemies) health fraction, raw x/y position on the 32x32 map, weapon cooldown,
  unit-type one-hot (zeros for dead units), then every unit's team and type id; size
  ``env.state_size`` = 12 x (allies + enemies). JaxMARL's MAPPO critic uses exactly this (its
  ``SMAXWorldStateWrapper`` only repeats it per agent and appends an agent id); one copy per env
  suffices here because the team reward, and so the value, is shared. It is not normalised
  (positions up to 32, type ids up to 5), like JaxMARL's.
- ``avail_actions``: SMAX's masks: 0-3 move, 4 stop, 5.. attack enemy j in range. A dead agent
  can only ``stop`` (action 4, SMAX's no-op; SMAC's no-op is action 0), so a policy can always act.
- ``alive``: ``unit_alive`` of the allies in the state the agents act in.
- ``reward``: SMAX's team reward: enemy health lost this step / number of enemies (health as a
  fraction of each unit's maximum) + ``won_battle_bonus`` (1.0) on a win. Every ally receives the
  same value, so the wrapper takes ally 0's, not the sum: ``reward_scale="team_shared"``.
  An episode's return lies in [0, 2]. This is not SMAC's scale (20 for a full win).
- Episode end: ``terminated`` when a team is wiped out (SMAX's ``is_terminal`` without the time
  limit); ``truncated`` after exactly ``max_steps`` (100) steps with both teams alive, never
  both. JaxMARL's own ``done`` compares the pre-step counter, so on its own it ends a time-limited
  episode after 101 steps; the wrapper ignores that ``done`` and counts itself (as ``jax_mpe.py``).
- ``won``: see ``derive_won``; 1/0 where the episode ended, NaN elsewhere.

Differences from SMAC/SMACv2 (docs/algorithms.md, pitfalls): SMAX units, stats, map and enemy AI are its own; the
``smacv2_*`` maps draw the allies' unit types uniformly from all six SMAX types (the enemy team
mirrors them) and start positions from a surround/reflect mix. Never put SMAX and SMACv2 numbers
in one table without saying so.

Unavailable actions are not checked (a device sync per step); passing one is undefined behaviour.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from marpo_bench.envs.base import EnvFamily, EnvInfo, Scene, TimeStep
from marpo_bench.envs.jax_stack import CarryEnv, CompiledSteps

if TYPE_CHECKING:
    import jax

# JAX is imported on first construction, through ``_jax`` (which sets JAX's CPU defaults first),
# so the registry can import this module's task list without loading JAX.



@functools.cache
def smax_maps() -> tuple[str, ...]:
    """Every map the installed jaxmarl's SMAX knows: the keys of its ``MAP_NAME_TO_SCENARIO``,
    read from jaxmarl's source without importing it (listing the tasks must not load JAX); the
    import itself where the source cannot be read. A one-line ``ValueError`` without jaxmarl."""
    spec = importlib.util.find_spec("jaxmarl")
    if spec is None:
        raise ValueError("SMAX needs the jaxmarl package: pip install jaxmarl (`make install` installs it)")
    for root in spec.submodule_search_locations or ():
        path = Path(root) / "environments" / "smax" / "smax_env.py"
        try:
            tree = ast.parse(path.read_text())
        except (OSError, SyntaxError):
            continue
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                    and any(isinstance(t, ast.Name) and t.id == "MAP_NAME_TO_SCENARIO" for t in node.targets)):
                names = tuple(k.value for k in node.value.keys if isinstance(k, ast.Constant))
                if names:
                    return names
    from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO  # pragma: no cover (fallback)

    return tuple(MAP_NAME_TO_SCENARIO)


# JaxMARL's SMAX baselines' ENV_KWARGS (MAPPO and IPPO configs), passed to HeuristicEnemySMAX.
SMAX_ENV_KWARGS: dict[str, Any] = {"see_enemy_actions": True, "walls_cause_death": True, "attack_mode": "closest"}
DEFAULT_MAX_STEPS = 100  # SMAX's default ``max_steps``
NOOP_ACTION = 4  # SMAX's "stop": the only action a dead agent has


def check_task(task: str) -> None:
    """Raise a one-line ``ValueError`` for an unknown SMAX map."""
    if task not in smax_maps():
        raise ValueError(f"unknown SMAX task {task!r}; valid tasks: {', '.join(smax_maps())}")


def battle_over(ally_alive: jax.Array, enemy_alive: jax.Array) -> jax.Array:
    """[...] bool: a team is wiped out (SMAX's terminal condition without the time limit)."""
    return ~ally_alive.any(axis=-1) | ~enemy_alive.any(axis=-1)


def derive_won(ally_alive: jax.Array, enemy_alive: jax.Array) -> jax.Array:
    """[...] bool: the allies won, from unit-alive flags ``[..., n_allies]``/``[..., n_enemies]``
    after the episode's last step: every enemy dead and at least one ally alive.

    A draw (both teams dead in the same step, possible in SMAX because all units act at once)
    and a time-out are losses. This is exactly the condition under which SMAX pays
    ``won_battle_bonus`` (``SMAX.compute_reward``: ``won_battle & ~lost_battle``). JaxMARL's
    baselines instead test the terminal reward, ``reward >= 1.0`` (tests/test_smax.py compares the two), which
    depends on the bonus staying 1.0 and also fires on a draw in which the enemy team loses all of
    its remaining health in the last step (its health-loss term alone is then 1.0: e.g. every
    unit killed by touching a wall, ``walls_cause_death=True``); the alive rule has neither problem.
    """
    return ally_alive.any(axis=-1) & ~enemy_alive.any(axis=-1)


def _jaxmarl() -> Any:
    """Import jaxmarl (and JAX) through ``_jax``: JAX's CPU defaults and import silencing."""
    from marpo_bench.envs._jax import import_jaxmarl

    return import_jaxmarl()


class _Carry(NamedTuple):
    key: jax.Array
    states: Any  # batched HeuristicEnemySMAX State
    ep_ret: jax.Array  # [E] float32
    ep_len: jax.Array  # [E] int32


class _Compiled(CompiledSteps):
    """The jitted step of one (task, E, agent_id, max_steps) configuration and its static facts.

    Shared by every ``SMAXVecEnv`` with that configuration in the process (``_compiled`` caches
    it), so the training and evaluation envs of successive runs compile it once. ``reset`` is the
    same compiled function called with ``force_reset=True`` on a placeholder carry: one compile
    per configuration instead of two.
    """

    def __init__(self, task: str, num_envs: int, agent_id: bool, max_steps: int) -> None:
        jaxmarl = _jaxmarl()  # first: _jax sets JAX's defaults before JAX loads
        from jaxmarl.environments.smax import map_name_to_scenario

        from marpo_bench.envs._jax import jax, jnp

        env = jaxmarl.make(
            "HeuristicEnemySMAX", scenario=map_name_to_scenario(task), max_steps=max_steps, **SMAX_ENV_KWARGS
        )
        self.env = env  # its unit sizes, health and map size draw a scene
        agents: list[str] = list(env.agents)  # the allies: ally_0 .. ally_{N-1}
        E, N = num_envs, int(env.num_allies)
        self.num_agents = N
        self.obs_dim = int(env.observation_space(agents[0]).shape[0]) + (N if agent_id else 0)
        self.state_dim = int(env.state_size)
        self.state_dim_raw = self.state_dim
        self.num_actions = int(env.action_space(agents[0]).n)
        onehot = jnp.broadcast_to(jnp.eye(N, dtype=jnp.float32), (E, N, N))

        def with_id(obs: jax.Array) -> jax.Array:
            return jnp.concatenate([obs, onehot], axis=-1) if agent_id else obs

        # SMAX's world state is [U units x (health, x, y, cooldown, type one-hot), teams, types].
        # Positions are in map units (0..32), cooldowns reach ~20 and unit types are raw integers;
        # scale them to O(1), as SMAC's own state is normalised, so that inputs without a
        # LayerNorm (QMix's hypernetworks) are not dominated by them.
        n_units = int(env.num_allies + env.num_enemies)
        feat = (self.state_dim_raw - 2 * n_units) // n_units
        scale = jnp.ones((n_units, feat), jnp.float32).at[:, 1].set(1.0 / env.map_width)
        scale = scale.at[:, 2].set(1.0 / env.map_height)
        scale = scale.at[:, 3].set(1.0 / 10.0)  # weapon cooldowns: up to ~20 seen under random play
        n_types = max(feat - 4, 1)
        tail = jnp.concatenate([jnp.ones(n_units, jnp.float32), jnp.full(n_units, 1.0 / n_types, jnp.float32)])
        state_scale = jnp.concatenate([scale.reshape(-1), tail])

        def stack(obs: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
            """Per-agent obs dict -> ([E, N, D] float32 obs, [E, S] float32 normalised world state)."""
            o = jnp.stack([obs[a] for a in agents], axis=1).astype(jnp.float32)
            return o, obs["world_state"].astype(jnp.float32) * state_scale

        def observe(states: Any) -> tuple[jax.Array, jax.Array]:
            """Avail masks [E, N, A] bool and ally alive flags [E, N] of the states agents act in."""
            av = jax.vmap(env.get_avail_actions)(states)
            return jnp.stack([av[a] for a in agents], axis=1).astype(jnp.bool_), states.state.unit_alive[:, :N]

        def reset_all(key: jax.Array) -> tuple[jax.Array, jax.Array, Any]:
            obs, states = jax.vmap(env.reset)(jax.random.split(key, E))
            # The heuristic enemy's initial state holds weakly typed ints; step returns strong ones.
            # Make them strong so the carry has one type and step compiles once.
            states = jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), states)
            return (*stack(obs), states)

        def step_fn(
            carry: _Carry, actions: jax.Array, force_reset: jax.Array
        ) -> tuple[_Carry, tuple[jax.Array, ...]]:
            key, k_step, k_reset = jax.random.split(carry.key, 3)
            act = {a: actions[:, i] for i, a in enumerate(agents)}
            obs_d, next_states, rew_d, _, _ = jax.vmap(env.step_env)(jax.random.split(k_step, E), carry.states, act)
            final_obs, final_ws = stack(obs_d)
            unit_alive = next_states.state.unit_alive
            ally_alive, enemy_alive = unit_alive[:, :N], unit_alive[:, N:]
            terminated = battle_over(ally_alive, enemy_alive)
            truncated = ~terminated & (next_states.state.step >= max_steps)
            done = terminated | truncated
            won = derive_won(ally_alive, enemy_alive)
            reward = rew_d[agents[0]].astype(jnp.float32)  # shared by every ally: take one
            ep_ret = carry.ep_ret + reward
            ep_len = carry.ep_len + 1
            restart = done | force_reset
            # Episodes end at different times; with many envs some env ends on most steps. The
            # reset is a real branch (outside the vmap): skipped when no env ended.
            obs_re, ws_re, states_re = jax.lax.cond(
                jnp.any(restart), reset_all, lambda _: (final_obs, final_ws, next_states), k_reset
            )

            def select(new: jax.Array, old: jax.Array) -> jax.Array:
                return jnp.where(restart.reshape((E,) + (1,) * (old.ndim - 1)), new, old)

            states = jax.tree.map(select, states_re, next_states)
            obs, ws = select(obs_re, final_obs), select(ws_re, final_ws)
            avail, alive = observe(states)
            # Packed into 6 arrays (each DLPack export costs ~15 us; torch takes views of them).
            out = (
                jnp.stack([with_id(obs), with_id(final_obs)]),  # [2, E, N, D]
                jnp.stack([ws, final_ws]),  # [2, E, S]
                avail,  # [E, N, A]
                alive,  # [E, N]
                jnp.stack([  # [4, E] float32
                    reward,
                    jnp.where(done, ep_ret, jnp.nan),
                    jnp.where(done, won.astype(jnp.float32), jnp.nan),
                    jnp.where(done, ep_len, 0).astype(jnp.float32),
                ]),
                jnp.stack([terminated, truncated]),  # [2, E]
            )
            new_carry = _Carry(key, states, jnp.where(restart, 0.0, ep_ret), jnp.where(restart, 0, ep_len))
            return new_carry, out

        cpu = jax.devices("cpu")[0]
        # Placeholder states for reset (shapes only; stepping them is harmless and discarded).
        shapes = jax.eval_shape(lambda k: reset_all(k)[2], jax.random.PRNGKey(0))
        self.placeholder_states = jax.device_put(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes), cpu)
        self.zero_ret = jax.device_put(jnp.zeros(E, jnp.float32), cpu)
        self.zero_len = jax.device_put(jnp.zeros(E, jnp.int32), cpu)
        # Committed flags (reset and step pass the same kind), so every call hits one compiled version.
        self.false, self.true = jax.device_put(jnp.array(False), cpu), jax.device_put(jnp.array(True), cpu)
        self.step: Callable[..., Any] = jax.jit(step_fn)


@functools.lru_cache(maxsize=16)
def _compiled(task: str, num_envs: int, agent_id: bool, max_steps: int) -> _Compiled:
    return _Compiled(task, num_envs, agent_id, max_steps)


class SMAXVecEnv(CarryEnv):
    """E JaxMARL SMAX envs (heuristic enemy) advanced by one jitted, vmapped call per step."""

    def __init__(
        self,
        task: str,
        num_envs: int,
        device: torch.device | str = "cpu",
        agent_id: bool = True,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> None:
        check_task(task)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self._fn = _compiled(task, num_envs, bool(agent_id), max_steps)
        self.device = torch.device(device)
        self._E, self._N = num_envs, self._fn.num_agents
        self.info = EnvInfo(
            family="smax",
            task=task,
            num_envs=num_envs,
            num_agents=self._fn.num_agents,
            obs_dim=self._fn.obs_dim,
            state_dim=self._fn.state_dim,
            num_actions=self._fn.num_actions,
            episode_limit=max_steps,
            reward_scale="team_shared",
            has_won=True,
        )
        self._noop = torch.full((num_envs, self._N), NOOP_ACTION, dtype=torch.int64)
        self.compiled_step = self._fn.step  # per instance, as in jax_mpe (the bench times it here)
        self._carry: _Carry | None = None

    def _actions_to_jax(self, actions: torch.Tensor) -> np.ndarray:
        """[E, N] torch ints -> the int32 array the jitted step takes (the same kind on every call)."""
        from marpo_bench.envs._jax import actions_for_jit

        return actions_for_jit(actions, self._E, self._N)

    def reset(self, seed: int) -> TimeStep:
        """Reset all E envs from ``jax.random.PRNGKey(seed)`` (compiles ``step`` on first use)."""
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        from marpo_bench.envs._jax import jax, to_torch

        fn = self._fn
        key = jax.device_put(jax.random.PRNGKey(seed), jax.devices("cpu")[0])
        carry = _Carry(key, fn.placeholder_states, fn.zero_ret, fn.zero_len)
        carry, out = fn.step(carry, self._actions_to_jax(self._noop), fn.true)
        self._carry = carry
        dev = self.device
        obs2, state2, avail, alive = (to_torch(x, dev) for x in out[:4])
        o, s = obs2[0], state2[0]
        return TimeStep.first(o, s, avail, alive)

    def step(self, actions: torch.Tensor) -> TimeStep:
        """Step all E envs with ``actions`` [E, N] in one jitted call; auto-reset finished envs."""
        from marpo_bench.envs._jax import to_torch

        if self._carry is None:
            raise RuntimeError("call reset(seed) before step()")
        self._carry, out = self.compiled_step(self._carry, *self.jit_args(actions))
        return self.timestep(tuple(to_torch(x, self.device) for x in out))

    # -- the pieces of ``step``, shared with ``jax_stack.JaxEnvStack`` (S seeds' envs in one call) --

    def jit_args(self, actions: torch.Tensor) -> tuple[Any, ...]:
        """The compiled step's arguments after the carry (no forced reset)."""
        return (self._actions_to_jax(actions), self._fn.false)

    def timestep(self, out: tuple[torch.Tensor, ...]) -> TimeStep:
        """The compiled step's outputs (as torch tensors) as a TimeStep."""
        obs2, state2, avail, alive, scalars, flags = out
        return TimeStep(
            obs=obs2[0],
            state=state2[0],
            avail_actions=avail,
            alive=alive,
            reward=scalars[0],
            terminated=flags[0],
            truncated=flags[1],
            final_obs=obs2[1],
            final_state=state2[1],
            episode_return=scalars[1],
            episode_length=scalars[3].to(torch.int64),
            won=scalars[2],
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
        return int(self._fn.step._cache_size())  # type: ignore[attr-defined]

    def scene(self, index: int) -> Scene:
        """Env ``index`` now: allies (blue) and enemies (red), sized by unit type, shaded by health,
        dead units hidden."""
        if self._carry is None:
            raise RuntimeError("call reset(seed) before scene()")
        env, st = self._fn.env, self._carry.states.state
        types = np.asarray(st.unit_types[index], dtype=np.int64)
        health = np.asarray(st.unit_health[index], dtype=np.float64) / np.asarray(env.unit_type_health)[types]
        teams = np.asarray(st.unit_teams[index], dtype=np.int64)
        return Scene(positions=np.asarray(st.unit_positions[index], dtype=np.float64),
                     radii=np.asarray(env.unit_type_radiuses, dtype=np.float64)[types],
                     colours=tuple((0.2, 0.4, 0.9) if t == 0 else (0.85, 0.2, 0.2) for t in teams),
                     visible=np.asarray(st.unit_alive[index], dtype=bool),
                     extent=(0.0, float(env.map_width), 0.0, float(env.map_height)),
                     shade=np.clip(0.25 + 0.75 * health, 0.0, 1.0))

    def close(self) -> None:
        """Drop the device state (JAX frees the buffers once unreferenced)."""
        self._carry = None


def _make(task: str, num_envs: int, device: torch.device | str, agent_id: bool, **params: Any) -> SMAXVecEnv:
    return SMAXVecEnv(task, num_envs, device=device, agent_id=agent_id, **params)


FAMILY = EnvFamily(
    name="smax",
    description="JaxMARL SMAX vs its heuristic enemy: SMAC-like StarCraft micro without SC2 (not SMAC numbers)",
    tasks=smax_maps,
    factory=_make,
    score="win_rate",
    packages=("jax", "jaxmarl"),
    # Relative cost per env step with default configs, measured on 2 cores (one thread per run):
    # orders a worker pool's queue, longest first.
    cost={"qmix": 10.0, "mappo": 1.5, "marpo": 1.5},
    not_comparable_with={"smacv2": "SMAX (JaxMARL) and SMACv2 (StarCraft II) tasks are different games; their "
                                   "win rates are not comparable across families"},
)
