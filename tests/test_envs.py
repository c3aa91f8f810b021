"""Behaviour of the MPE env wrappers (mpe2 reference backend and JaxMARL fast path) and the registry."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from marpo_bench.envs import list_envs, make_env, parse_env
from marpo_bench.envs.base import PACK_ALIGN, MultiAgentVecEnv, TimeStep, move_packed, packed_offsets
from marpo_bench.envs.mpe import MPE_TASKS
from marpo_bench.registry import env_families

FAMILIES = ("mpe", "jax_mpe")
HORIZON = 25
# mpe2 steps one Python env per slot, so keep it small; JaxMARL gets many envs for the statistics.
NUM_ENVS = {"mpe": 4, "jax_mpe": 256}
ALL = [(f, t) for f in FAMILIES for t in MPE_TASKS]


@pytest.fixture(scope="module")
def envs() -> Iterator[dict[tuple[Any, ...], MultiAgentVecEnv]]:
    """Envs shared by the tests (JaxMARL compiles once per env); every test reset()s before use."""
    cache: dict[tuple[Any, ...], MultiAgentVecEnv] = {}
    yield cache
    for env in cache.values():
        env.close()


def get_env(
    cache: dict[tuple[Any, ...], MultiAgentVecEnv],
    family: str,
    task: str,
    num_envs: int | None = None,
    agent_id: bool = True,
) -> MultiAgentVecEnv:
    key = (family, task, num_envs or NUM_ENVS[family], agent_id)
    if key not in cache:
        cache[key] = make_env(family, task, key[2], agent_id=agent_id)
    return cache[key]


def random_actions(avail: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Uniform over each agent's available actions: [E, N] int64."""
    E, N, A = avail.shape
    return torch.multinomial(avail.reshape(E * N, A).float(), 1, generator=gen).reshape(E, N)


def real_obs_width(env: MultiAgentVecEnv) -> int:
    """Padded observation width without the agent id."""
    return env.info.state_dim // env.info.num_agents


# --------------------------------------------------------------------------- registry
def test_importing_the_registry_imports_no_backend() -> None:
    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys, marpo_bench.envs as e; e.list_envs(); e.parse_env('jax_mpe:simple_spread');"
        "bad = [m for m in ('jax', 'jaxmarl', 'mpe2', 'pettingzoo') if m in sys.modules];"
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env, timeout=120)


def test_parse_env_accepts_family_colon_task() -> None:
    assert parse_env("mpe:simple_spread") == ("mpe", "simple_spread")
    assert parse_env("jax_mpe:simple_speaker_listener") == ("jax_mpe", "simple_speaker_listener")


@pytest.mark.parametrize(
    ("name", "must_mention"),
    [
        ("smac:3m", ["mpe", "jax_mpe"]),
        ("mpe:simple_tag", list(MPE_TASKS)),
        ("simple_spread", ["mpe:simple_spread", "jax_mpe:simple_reference"]),
    ],
)
def test_parse_env_rejects_unknown_names_listing_valid_choices(name: str, must_mention: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        parse_env(name)
    msg = str(err.value)
    assert "\n" not in msg
    for choice in must_mention:
        assert choice in msg


def test_make_env_rejects_unknown_task_before_importing_a_backend() -> None:
    with pytest.raises(ValueError, match="valid tasks"):
        make_env("jax_mpe", "simple_tag", 2)


def test_list_envs_names_every_family_task_with_a_description() -> None:
    names = dict(list_envs())
    assert set(names) == {f"{n}:{t}" for n, f in env_families().items() for t in f.task_names()}
    assert {f"{f}:{t}" for f, t in ALL} <= set(names)
    assert all(isinstance(d, str) and d and "\n" not in d for d in names.values())


# --------------------------------------------------------------------------- contract
def check_timestep(ts: TimeStep, env: MultiAgentVecEnv) -> None:
    info = env.info
    E, N, A = info.num_envs, info.num_agents, info.num_actions
    expected = {
        "obs": ((E, N, info.obs_dim), torch.float32),
        "state": ((E, info.state_dim), torch.float32),
        "avail_actions": ((E, N, A), torch.bool),
        "alive": ((E, N), torch.bool),
        "reward": ((E,), torch.float32),
        "terminated": ((E,), torch.bool),
        "truncated": ((E,), torch.bool),
        "final_obs": ((E, N, info.obs_dim), torch.float32),
        "final_state": ((E, info.state_dim), torch.float32),
        "episode_return": ((E,), torch.float32),
        "episode_length": ((E,), torch.int64),
        "won": ((E,), torch.float32),
    }
    for name, (shape, dtype) in expected.items():
        t = getattr(ts, name)
        assert tuple(t.shape) == shape, name
        assert t.dtype == dtype, name
        assert t.device == env.device, name
    assert isinstance(env, MultiAgentVecEnv)
    assert ts.alive.all()
    assert ts.avail_actions.any(-1).all()
    assert not ts.terminated.any()  # MPE has no terminal states
    assert torch.isnan(ts.won).all()
    assert torch.isfinite(ts.obs).all() and torch.isfinite(ts.reward).all()
    D = real_obs_width(env)
    # global state = agents' padded observations (no agent ids), concatenated
    assert torch.equal(ts.state, ts.obs[..., :D].reshape(E, -1))
    assert torch.equal(ts.final_state, ts.final_obs[..., :D].reshape(E, -1))
    if info.obs_dim > D:
        eye = torch.eye(N).expand(E, N, N)
        assert torch.equal(ts.obs[..., D:], eye) and torch.equal(ts.final_obs[..., D:], eye)


@pytest.mark.parametrize(("family", "task"), ALL)
def test_timesteps_follow_the_contract(envs: dict, family: str, task: str) -> None:
    env = get_env(envs, family, task)
    info = env.info
    assert (info.family, info.task, info.num_envs) == (family, task, NUM_ENVS[family])
    assert info.episode_limit == HORIZON and info.reward_scale == "team_sum" and not info.has_won
    assert info.obs_dim == real_obs_width(env) + info.num_agents  # agent id appended
    assert info.state_dim == info.num_agents * real_obs_width(env)

    ts = env.reset(seed=3)
    check_timestep(ts, env)
    assert not ts.reward.any() and not ts.truncated.any()
    assert torch.isnan(ts.episode_return).all() and not ts.episode_length.any()
    assert torch.equal(ts.final_obs, ts.obs) and torch.equal(ts.final_state, ts.state)

    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        ts = env.step(random_actions(ts.avail_actions, gen))
        check_timestep(ts, env)
        assert not ts.truncated.any()
        assert torch.isnan(ts.episode_return).all() and not ts.episode_length.any()
        assert torch.equal(ts.final_obs, ts.obs)


@pytest.mark.parametrize("family", FAMILIES)
def test_agent_id_false_leaves_the_padded_observation(envs: dict, family: str) -> None:
    env = get_env(envs, family, "simple_speaker_listener", num_envs=2, agent_id=False)
    assert env.info.obs_dim == 11 and env.info.state_dim == 22
    ts = env.reset(seed=0)
    check_timestep(ts, env)
    ts = env.step(torch.zeros(2, 2, dtype=torch.int64))
    check_timestep(ts, env)


@pytest.mark.parametrize("family", FAMILIES)
def test_heterogeneous_agents_are_padded_and_masked(envs: dict, family: str) -> None:
    env = get_env(envs, family, "simple_speaker_listener")
    ts = env.reset(seed=1)
    E = env.info.num_envs
    # speaker: 3 say-actions, obs = goal colour (3); listener: 5 moves, obs 11
    assert env.info.num_actions == 5
    assert torch.equal(ts.avail_actions[:, 0], torch.tensor([True] * 3 + [False] * 2).expand(E, 5))
    assert ts.avail_actions[:, 1].all()
    assert not ts.obs[:, 0, 3:11].any()
    assert ts.obs[:, 0, :3].gt(0).all()

    env = get_env(envs, family, "simple_reference")
    ts = env.reset(seed=1)
    assert env.info.num_actions == 50 and ts.avail_actions.all()  # 5 moves x 10 words, a = 5 * say + move


# --------------------------------------------------------------------------- horizon
@pytest.mark.parametrize(("family", "task"), ALL)
def test_episodes_truncate_at_the_horizon_and_auto_reset(envs: dict, family: str, task: str) -> None:
    env = get_env(envs, family, task)
    ts = env.reset(seed=7)
    gen = torch.Generator().manual_seed(1)
    for _episode in range(2):
        rewards = []
        for t in range(1, HORIZON + 1):
            ts = env.step(random_actions(ts.avail_actions, gen))
            rewards.append(ts.reward.double())
            if t < HORIZON:
                assert not ts.done.any(), t
                assert torch.isnan(ts.episode_return).all() and not ts.episode_length.any()
        assert ts.truncated.all() and not ts.terminated.any()
        assert (ts.episode_length == HORIZON).all()
        assert torch.isfinite(ts.episode_return).all()
        torch.testing.assert_close(ts.episode_return.double(), torch.stack(rewards).sum(0), rtol=1e-5, atol=1e-4)
        assert torch.isnan(ts.won).all()
        # obs already belongs to the next episode; final_obs is the last obs of the finished one
        assert (ts.final_obs != ts.obs).any(-1).any(-1).all()
        assert not torch.equal(ts.final_state, ts.state)
        check_timestep(ts, env)


# --------------------------------------------------------------------------- determinism
def rollout(env: MultiAgentVecEnv, seed: int, steps: int) -> list[TimeStep]:
    gen = torch.Generator().manual_seed(123)
    out = [env.reset(seed=seed)]
    for _ in range(steps):
        out.append(env.step(random_actions(out[-1].avail_actions, gen)))
    return out


@pytest.mark.parametrize(("family", "task"), [(f, "simple_reference") for f in FAMILIES])
def test_same_seed_gives_identical_trajectories_across_auto_resets(envs: dict, family: str, task: str) -> None:
    env = get_env(envs, family, task)
    steps = 2 * HORIZON + 3  # crosses two auto-resets
    first, second = rollout(env, 11, steps), rollout(env, 11, steps)
    for a, b in zip(first, second, strict=True):
        for name in vars(a):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_different_seeds_and_envs_start_differently(envs: dict, family: str) -> None:
    env = get_env(envs, family, "simple_spread")
    a, b = env.reset(seed=0).obs, env.reset(seed=1).obs
    assert not torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # parallel envs are not copies of each other


def test_jax_step_compiles_once(envs: dict) -> None:
    env = get_env(envs, "jax_mpe", "simple_spread")
    rollout(env, 0, HORIZON + 2)
    rollout(env, 5, 2)
    assert env.compiled_step_count() == 1  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- backends agree
@pytest.mark.parametrize("task", MPE_TASKS)
def test_backends_expose_identical_spaces(envs: dict, task: str) -> None:
    ref, fast = get_env(envs, "mpe", task), get_env(envs, "jax_mpe", task)
    for field in ("num_agents", "obs_dim", "state_dim", "num_actions", "episode_limit", "reward_scale"):
        assert getattr(ref.info, field) == getattr(fast.info, field), field
    assert torch.equal(ref.reset(seed=0).avail_actions[0], fast.reset(seed=0).avail_actions[0])


def copy_jax_state_into_mpe2(fast: Any, ref: Any, task: str) -> None:
    """Put the JaxMARL initial states of envs 0..E_ref-1 into the mpe2 worlds (private attributes)."""
    state = fast._carry[1]
    p_pos = np.asarray(state.p_pos, dtype=np.float64)
    goal = None if state.goal is None else np.asarray(state.goal)
    for e, penv in enumerate(ref._envs):
        world = penv.unwrapped.world
        for i, entity in enumerate(world.agents + world.landmarks):
            entity.state.p_pos = p_pos[e, i].copy()
            entity.state.p_vel = np.zeros(2)
        for agent in world.agents:
            agent.state.c = np.zeros(world.dim_c)
        if task == "simple_reference":  # jax goal[j]: landmark agent j must reach; pz: agents[1-j].goal_b
            world.agents[0].goal_b = world.landmarks[int(goal[e, 1])]
            world.agents[1].goal_b = world.landmarks[int(goal[e, 0])]
        elif task == "simple_speaker_listener":
            world.agents[0].goal_b = world.landmarks[int(goal[e])]


@pytest.mark.parametrize("task", MPE_TASKS)
def test_backends_step_identically_from_the_same_state(envs: dict, task: str) -> None:
    """Same start state and actions -> same obs, team rewards and truncation for a whole episode.

    Checks observation layout, action encoding, reward mixing and physics together. Tolerance
    covers float32 (JAX) vs float64 (mpe2) arithmetic over 25 steps.
    """
    ref, fast = get_env(envs, "mpe", task), get_env(envs, "jax_mpe", task)
    E = ref.info.num_envs
    ts_r, ts_f = ref.reset(seed=0), fast.reset(seed=0)
    copy_jax_state_into_mpe2(fast, ref, task)
    gen = torch.Generator().manual_seed(2)
    for t in range(1, HORIZON + 1):
        act = random_actions(ts_f.avail_actions, gen)
        ts_r, ts_f = ref.step(act[:E]), fast.step(act)
        key = "obs" if t < HORIZON else "final_obs"
        torch.testing.assert_close(getattr(ts_f, key)[:E], getattr(ts_r, key), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ts_f.reward[:E], ts_r.reward, rtol=1e-4, atol=1e-4)
        assert torch.equal(ts_f.truncated[:E], ts_r.truncated)
    assert ts_r.truncated.all()
    torch.testing.assert_close(ts_f.episode_return[:E], ts_r.episode_return, rtol=1e-4, atol=1e-3)


def random_policy_returns(env: MultiAgentVecEnv, episodes: int, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    ts, out = env.reset(seed=seed), []
    while sum(len(r) for r in out) < episodes:
        ts = env.step(random_actions(ts.avail_actions, gen))
        if ts.done.any():
            out.append(ts.episode_return[ts.done].double().numpy())
    return np.concatenate(out)


@pytest.mark.parametrize("task", MPE_TASKS)
def test_backends_agree_on_random_policy_team_return(envs: dict, task: str) -> None:
    """Mean 25-step team return of the uniform random policy, mpe2 (200 episodes) vs JaxMARL (1,024).

    Pass if |difference| <= 4 standard errors of the difference + 1.0 (absolute slack; returns
    are about -55 to -80 with standard deviations of 18 to 70).
    """
    ref = random_policy_returns(get_env(envs, "mpe", task, num_envs=8), 200, seed=1)
    fast = random_policy_returns(get_env(envs, "jax_mpe", task), 1024, seed=1)
    assert len(ref) >= 200 and len(fast) >= 1024
    se = math.sqrt(ref.var(ddof=1) / len(ref) + fast.var(ddof=1) / len(fast))
    diff = abs(ref.mean() - fast.mean())
    assert diff <= 4 * se + 1.0, f"mpe {ref.mean():.2f} vs jax_mpe {fast.mean():.2f} (se {se:.2f})"


@pytest.mark.parametrize("family", FAMILIES)
def test_step_rejects_wrongly_shaped_actions(envs: dict, family: str) -> None:
    env = get_env(envs, family, "simple_spread")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.zeros(env.info.num_envs, 2, dtype=torch.int64))


def test_move_packed_round_trips_every_dtype_and_shape_in_one_buffer() -> None:
    # Mixed dtypes whose byte sizes are not multiples of each other, a non-contiguous view and a
    # scalar: each comes back equal, with its dtype and shape.
    tensors = [
        torch.randn(3, 2, 5),
        torch.tensor([True, False, True]),
        torch.arange(7, dtype=torch.int64),
        torch.ones(2, 3, dtype=torch.bool).expand(4, 2, 3),
        torch.tensor(2.5),
        torch.arange(5, dtype=torch.int32),
    ]
    moved = move_packed(tensors, "cpu")
    for a, b in zip(tensors, moved, strict=True):
        assert b.dtype == a.dtype and b.shape == a.shape
        assert torch.equal(a, b)
    # The results are views of one buffer: the copy happened once, not per tensor.
    bases = {t.untyped_storage().data_ptr() for t in moved}
    assert len(bases) == 1


def test_packed_offsets_align_every_field() -> None:
    offsets, total = packed_offsets([3, 8, 1, 16])
    assert offsets == [0, 8, 16, 24] and total == 40
    assert all(o % PACK_ALIGN == 0 for o in offsets)


def test_timestep_to_its_own_device_is_the_same_object(envs: dict) -> None:
    env = get_env(envs, "jax_mpe", "simple_spread")
    env.reset(0)
    ts = env.step(torch.zeros(env.info.num_envs, env.info.num_agents, dtype=torch.int64))
    assert ts.to("cpu") is ts  # no copy on the learner's own device (the CPU default)


def test_actions_for_jit_copies_so_a_reused_actions_tensor_cannot_change_a_pending_step() -> None:
    from marpo_bench.envs._jax import actions_for_jit

    for dtype in (torch.int64, torch.int32):  # int32 would otherwise be passed through as is
        actions = torch.tensor([[1, 2, 3], [4, 0, 1]], dtype=dtype)
        arr = actions_for_jit(actions, 2, 3)
        actions.fill_(0)
        assert arr.dtype == np.int32 and arr.tolist() == [[1, 2, 3], [4, 0, 1]]
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        actions_for_jit(torch.zeros(3, 2, dtype=torch.int64), 2, 3)
