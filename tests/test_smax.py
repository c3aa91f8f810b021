"""SMAX (JaxMARL) and SMACv2 wrappers: the env contract, the ``won`` rule, the SMACv2 process pool
(on a scripted stand-in with smacv2's API), the missing-SMACv2 error path and a tiny training run.

SMAX compiles once per (task, num_envs, agent_id, max_steps) per process (``smax._compiled``): the
tests share E = 8 on ``3m`` with the end-to-end run's training env to keep the file fast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from marpo_bench.envs import smacv2 as smacv2_mod
from marpo_bench.envs.smax import NOOP_ACTION, derive_won


def won_from_reward(terminal_reward: np.ndarray, bonus: float = 1.0) -> np.ndarray:
    """JaxMARL's baselines' rule (``SMAXLogWrapper``): won iff the last step's team reward >= the
    won-battle bonus (SMAX's default 1.0); the wrapper uses ``derive_won`` instead."""
    return terminal_reward >= bonus

E = 8


def random_actions(ts, g: torch.Generator) -> torch.Tensor:
    """A uniformly random available action per agent, in torch."""
    scores = torch.rand(ts.avail_actions.shape, generator=g).masked_fill(~ts.avail_actions, -1.0)
    return scores.argmax(-1)


def check_timestep(ts, info, E: int) -> None:
    """Shapes, dtypes and per-step invariants every TimeStep must satisfy."""
    N, D, S, A = info.num_agents, info.obs_dim, info.state_dim, info.num_actions
    expect = {
        "obs": ((E, N, D), torch.float32), "state": ((E, S), torch.float32),
        "avail_actions": ((E, N, A), torch.bool), "alive": ((E, N), torch.bool),
        "reward": ((E,), torch.float32), "terminated": ((E,), torch.bool), "truncated": ((E,), torch.bool),
        "final_obs": ((E, N, D), torch.float32), "final_state": ((E, S), torch.float32),
        "episode_return": ((E,), torch.float32), "episode_length": ((E,), torch.int64),
        "won": ((E,), torch.float32),
    }
    for name, (shape, dtype) in expect.items():
        t = getattr(ts, name)
        assert tuple(t.shape) == shape and t.dtype == dtype, (name, tuple(t.shape), t.dtype)
    assert not (ts.terminated & ts.truncated).any()
    done = ts.done
    assert torch.isnan(ts.won[~done]).all() and torch.isnan(ts.episode_return[~done]).all()
    assert (ts.episode_length[~done] == 0).all()
    assert set(ts.won[done].tolist()) <= {0.0, 1.0}
    assert (ts.episode_length[done] >= 1).all() and torch.isfinite(ts.episode_return[done]).all()
    assert ts.avail_actions.any(-1).all()  # every agent can always act
    assert torch.isfinite(ts.obs).all() and torch.isfinite(ts.state).all()
    # agent ids (MAPPO convention): the last N features are the one-hot id
    assert torch.equal(ts.obs[..., -N:], torch.eye(N).expand(E, N, N))
    assert torch.equal(ts.final_obs[~done], ts.obs[~done]) and torch.equal(ts.final_state[~done], ts.state[~done])


# ------------------------------------------------------------------------------------------------
# SMAX


@pytest.mark.parametrize("task,n,n_enemies", [("3m", 3, 3), ("smacv2_5_units", 5, 5)])
def test_smax_contract_masks_auto_reset_won_and_determinism(task, n, n_enemies):
    from marpo_bench.envs import make_env

    env = make_env("smax", task, E)
    info = env.info
    assert (info.family, info.task, info.num_agents, info.num_actions) == ("smax", task, n, 5 + n_enemies)
    assert info.state_dim == 12 * (n + n_enemies) and info.episode_limit == 100
    assert info.reward_scale == "team_shared" and info.has_won

    def rollout(seed: int, steps: int) -> tuple[list, dict]:
        g = torch.Generator().manual_seed(seed)
        ts = env.reset(seed)
        check_timestep(ts, info, E)
        assert ts.alive.all() and not ts.done.any()
        trace, stats = [ts.obs.clone()], {"episodes": 0, "dead": 0}
        ep_ret = torch.zeros(E)
        ep_len = torch.zeros(E, dtype=torch.int64)
        for _ in range(steps):
            prev = ts
            ts = env.step(random_actions(ts, g))
            check_timestep(ts, info, E)
            ep_ret += ts.reward
            ep_len += 1
            dead = ~ts.alive
            stats["dead"] += int(dead.sum())
            # death masking: a dead agent can only take the no-op (SMAX's stop, action 4)
            only_noop = torch.zeros(info.num_actions, dtype=torch.bool)
            only_noop[NOOP_ACTION] = True
            assert (ts.avail_actions[dead] == only_noop).all()
            # the same agent stays dead within an episode
            assert not (~prev.alive & ts.alive & ~ts.done.unsqueeze(-1)).any()
            # rewards: team-shared damage fraction + win bonus, never negative
            assert (ts.reward >= 0).all() and (ts.reward <= 2.0 + 1e-5).all()
            d = ts.done
            if d.any():
                stats["episodes"] += int(d.sum())
                # auto-reset: the new episode starts with everyone alive; stats match our own sums
                assert ts.alive[d].all()
                assert not torch.equal(ts.final_obs[d], ts.obs[d])
                assert torch.equal(ts.episode_length[d], ep_len[d])
                assert torch.allclose(ts.episode_return[d], ep_ret[d], atol=1e-5)
                # a battle end (terminated) means one team is wiped out; the final obs shows it
                ep_ret[d], ep_len[d] = 0.0, 0
            trace.append(torch.cat([ts.obs.flatten(), ts.reward, ts.won.nan_to_num(-1)]))
        return trace, stats

    a, stats = rollout(seed=3, steps=60)
    assert stats["episodes"] > 0 and stats["dead"] > 0  # random play loses units and ends episodes
    b, _ = rollout(seed=3, steps=60)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # deterministic under a seed
    c, _ = rollout(seed=4, steps=5)
    assert not all(torch.equal(x, y) for x, y in zip(a[:6], c, strict=True))
    assert env.compiled_step_count() == 1  # reset and step share one compiled function
    env.close()


def test_won_rule_on_hand_made_alive_states():
    # columns: [ally alive flags], [enemy alive flags] -> won
    ally = np.array([[True, False, False], [False, False, False], [False, False, False], [True, True, True]])
    enemy = np.array([[False, False, False], [True, False, False], [False, False, False], [False, True, False]])
    # win (one ally left, every enemy dead), loss, draw (both teams wiped out in one step), ongoing
    assert derive_won(ally, enemy).tolist() == [True, False, False, False]
    # the baselines' reward rule agrees on a win (bonus 1.0) but calls a draw with reward 1.0 a win
    assert won_from_reward(np.array([1.2, 0.3, 1.0])).tolist() == [True, False, True]


def test_won_rule_in_the_env_win_loss_draw_and_time_limit():
    """Edit the jitted carry (SMAX's state) by hand and take one step."""
    from marpo_bench.envs.smax import SMAXVecEnv

    env = SMAXVecEnv("3m", E)
    env.reset(0)
    c = env._carry
    s = c.states.state
    h, pos, step = s.unit_health, s.unit_positions, s.step
    h = h.at[0, 3:].set(0.0)  # env 0: every enemy already dead -> won
    h = h.at[1, :3].set(0.0)  # env 1: every ally already dead -> lost
    # env 2: allies on the left wall, enemies in the top-right corner: everybody dies in this step
    # (walls_cause_death); the enemies lose all their health, so the team reward is exactly 1.0
    pos = pos.at[2, :3].set(np.array([[0.0, 2.0], [0.0, 6.0], [0.0, 10.0]])).at[2, 3:].set(32.0)
    step = step.at[3].set(99)  # env 3: the 100th step: time limit
    h = h.at[4, 0].set(0.0)  # env 4: ally 0 dead -> masked, episode goes on
    env._carry = c._replace(states=c.states.replace(state=s.replace(unit_health=h, unit_positions=pos, step=step)))
    ts = env.step(torch.full((E, 3), NOOP_ACTION))
    assert ts.terminated[:3].tolist() == [True, True, True] and not ts.truncated[:3].any()
    assert ts.won[:3].tolist() == [1.0, 0.0, 0.0]
    assert ts.reward[0] >= 1.0 and ts.reward[1] < 1.0
    assert math.isclose(float(ts.reward[2]), 1.0, abs_tol=1e-6)  # the draw the reward rule calls a win
    assert bool(won_from_reward(ts.reward[2].numpy())) and ts.won[2] == 0.0
    assert ts.truncated[3] and not ts.terminated[3] and ts.won[3] == 0.0 and ts.episode_length[3] == 1
    assert not ts.done[4] and math.isnan(float(ts.won[4]))
    assert ts.alive[4].tolist() == [False, True, True]
    assert ts.avail_actions[4, 0].nonzero().flatten().tolist() == [NOOP_ACTION]
    assert env.compiled_step_count() == 1


def test_smax_rejects_unknown_tasks_and_bad_actions():
    from marpo_bench.envs import make_env
    from marpo_bench.envs.smax import SMAXVecEnv

    with pytest.raises(ValueError, match="unknown task '99m_vs_1z'"):
        make_env("smax", "99m_vs_1z", 2)
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        SMAXVecEnv("3m", 0)
    env = SMAXVecEnv("3m", E)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(E, 3, dtype=torch.int64))
    env.reset(0)
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.zeros(E, 2, dtype=torch.int64))


# ------------------------------------------------------------------------------------------------
# SMACv2: the dependency check and the CLI path


@pytest.fixture
def smacv2_missing(monkeypatch):
    """Pretend the smacv2 package is absent (whatever this machine has)."""
    monkeypatch.setattr(smacv2_mod, "_installed", lambda pkg: False)


def test_cli_run_on_smacv2_without_it_exits_2_with_one_line_before_any_run(tmp_path, smacv2_missing):
    from typer.testing import CliRunner

    from marpo_bench.cli import app

    # a wide terminal so rich does not wrap the one-line message
    res = CliRunner(env={"COLUMNS": "500"}).invoke(
        app, ["run", "--envs", "smacv2:protoss_5_vs_5", "--results", str(tmp_path), "--seeds", "1"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output
    assert "pip install git+https://github.com/oxwhirl/smacv2" in lines[0]
    assert "smacv2 package is not installed" in lines[0]
    assert not any(tmp_path.iterdir())  # nothing written: the check runs before any run starts


def test_check_smacv2_names_what_is_missing(monkeypatch, tmp_path):
    from marpo_bench.registry import env_family

    assert env_family("smacv2").check is smacv2_mod.check_smacv2

    def message() -> str:
        with pytest.raises(ValueError) as exc:
            smacv2_mod.check_smacv2()
        text = str(exc.value)
        assert "\n" not in text
        return text

    monkeypatch.setattr(smacv2_mod, "_installed", lambda pkg: False)
    assert "smacv2 package is not installed" in message()
    monkeypatch.setattr(smacv2_mod, "_installed", lambda pkg: True)
    monkeypatch.delenv("SC2PATH", raising=False)
    monkeypatch.setattr(smacv2_mod, "_default_sc2_dir", lambda: str(tmp_path / "nowhere"))
    assert "SC2PATH is not set" in message()
    monkeypatch.setenv("SC2PATH", str(tmp_path / "missing"))
    assert f"SC2PATH={tmp_path / 'missing'} does not exist" in message()
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    assert "copy smacv2's SMAC_Maps" in message() and "32x32_flat.SC2Map is missing" in message()
    (tmp_path / "Maps" / "SMAC_Maps").mkdir(parents=True)
    (tmp_path / "Maps" / "SMAC_Maps" / "32x32_flat.SC2Map").write_bytes(b"")
    smacv2_mod.check_smacv2()  # everything in place: no error


def test_smacv2_configs_follow_the_paper():
    args = smacv2_mod.env_args("terran_10_vs_10")
    cap = args["capability_config"]
    assert args["map_name"] == "10gen_terran" and cap["n_units"] == cap["n_enemies"] == 10
    assert cap["team_gen"] == {"dist_type": "weighted_teams", "unit_types": ["marine", "marauder", "medivac"],
                               "weights": [0.45, 0.45, 0.1], "observe": True, "exception_unit_types": ["medivac"]}
    assert cap["start_positions"] == {"dist_type": "surrounded_and_reflect", "p": 0.5, "map_x": 32, "map_y": 32}
    assert smacv2_mod.env_args("zerg_5_vs_5")["capability_config"]["team_gen"]["weights"] == [0.45, 0.1, 0.45]
    assert args["continuing_episode"] is True  # so that a time-out reports info["episode_limit"]
    assert args is not smacv2_mod.env_args("terran_10_vs_10")


# ------------------------------------------------------------------------------------------------
# SMACv2: the process pool, on a scripted stand-in with smacv2's API and SMAC's conventions


class FakeSMACv2:
    """``StarCraftCapabilityEnvWrapper``'s API: episodes cycle win (3 steps), loss (4 steps, one ally
    dies per step), time-out (the 5-step limit, ``info["episode_limit"]`` as with
    ``continuing_episode=True``). Reward 1 per step, +10 on a win."""

    LIMIT = 5

    def __init__(self, kwargs, seed):
        assert kwargs["continuing_episode"] and kwargs["map_name"].startswith("10gen_")
        self.n = kwargs["capability_config"]["n_units"]
        self.n_actions = 6 + kwargs["capability_config"]["n_enemies"]
        self.episode = -1
        self.t = 0

    def get_env_info(self):
        return {"state_shape": 7, "obs_shape": 4, "cap_shape": 3, "n_actions": self.n_actions,
                "n_agents": self.n, "episode_limit": self.LIMIT}

    def reset(self):
        self.episode += 1
        self.t = 0

    def _dead(self):
        return min(self.t, self.n) if self.episode % 3 == 1 else 0

    def step(self, actions):
        assert len(actions) == self.n
        self.t += 1
        kind = self.episode % 3
        if kind == 0 and self.t == 3:
            return 11.0, True, {"battle_won": True, "dead_allies": 0, "dead_enemies": self.n}
        if kind == 1 and self.t == 4:
            return 1.0, True, {"battle_won": False, "dead_allies": self.n, "dead_enemies": 0}
        if self.t >= self.LIMIT:
            return 1.0, True, {"battle_won": False, "episode_limit": True}
        return 1.0, False, {"battle_won": False}

    def get_obs(self):
        return [np.full(4, 10 * self.episode + self.t, dtype=np.float32) for _ in range(self.n)]

    def get_state(self):
        return np.full(7, self.t, dtype=np.float32)

    def get_avail_actions(self):
        dead = self._dead()
        return [[1] + [0] * (self.n_actions - 1) if i < dead else [0] + [1] * (self.n_actions - 1)
                for i in range(self.n)]

    def close(self):
        pass


def fake_smacv2(kwargs, seed):
    return FakeSMACv2(kwargs, seed)


def test_smacv2_pool_auto_reset_terminated_truncated_won_and_alive():
    env = smacv2_mod.SMACv2VecEnv("protoss_5_vs_5", 2, _env_factory=fake_smacv2)
    try:
        info = env.info
        assert (info.family, info.num_agents, info.obs_dim, info.state_dim, info.num_actions) == (
            "smacv2", 5, 4 + 5, 7, 11)
        assert info.episode_limit == 5 and info.reward_scale == "team_shared" and info.has_won
        ts = env.reset(0)
        check_timestep(ts, info, 2)
        ends = []
        for _ in range(3 + 4 + 5):  # one win, one loss, one time-out in each env
            ts = env.step(torch.ones(2, 5, dtype=torch.int64))
            check_timestep(ts, info, 2)
            assert torch.equal(ts.alive, ~ts.avail_actions[..., 0])
            if ts.done[0]:
                ends.append((bool(ts.terminated[0]), bool(ts.truncated[0]), float(ts.won[0]),
                             float(ts.episode_return[0]), int(ts.episode_length[0]),
                             float(ts.final_obs[0, 0, 0]), float(ts.obs[0, 0, 0])))
        # (terminated, truncated, won, return, length, last obs of the episode, first obs of the next)
        assert ends == [(True, False, 1.0, 13.0, 3, 3.0, 10.0), (True, False, 0.0, 4.0, 4, 14.0, 20.0),
                        (False, True, 0.0, 5.0, 5, 25.0, 30.0)]
    finally:
        env.close()
    assert all(not p.is_alive() for p in env._procs)


def test_real_smacv2_env():
    try:
        smacv2_mod.check_smacv2()
    except ValueError as exc:
        pytest.skip(str(exc))
    env = smacv2_mod.SMACv2VecEnv("protoss_5_vs_5", 2)
    try:
        assert env.info.num_agents == 5 and env.info.episode_limit == 200
        ts = env.reset(0)
        check_timestep(ts, env.info, 2)
        g = torch.Generator().manual_seed(0)
        for _ in range(30):
            ts = env.step(random_actions(ts, g))
            check_timestep(ts, env.info, 2)
            assert torch.equal(ts.alive, ~ts.avail_actions[..., 0])
    finally:
        env.close()


# ------------------------------------------------------------------------------------------------
# End to end


def test_tiny_mappo_run_on_smax_3m_records_a_win_rate(tmp_path):
    from typer.testing import CliRunner

    from marpo_bench import store
    from marpo_bench.cli import app

    res = CliRunner().invoke(app, ["run", "--algos", "mappo", "--envs", "smax:3m", "--seeds", "1", "--steps", "400",
                                   "--set", f"num_envs={E}", "--set", "epochs=1", "--set", "eval_episodes=4",
                                   "--results", str(tmp_path), "--study", "s"])
    assert res.exit_code == 0, res.output
    records, metrics = store.load_study(tmp_path / "s")
    assert [r["status"] for r in records] == ["complete"], records
    assert records[0]["reward_scale"] == "team_shared" and records[0]["episode_limit"] == 100
    assert metrics["env_steps"].iloc[-1] >= 400
    win = metrics["eval_win_rate"]
    assert win.notna().all() and ((win >= 0) & (win <= 1)).all()
    assert (metrics["eval_episodes"] == 4).all()


def test_smax_global_state_is_normalised_like_smac():
    # Positions (0..32), cooldowns and unit-type ids are scaled to O(1): QMix's hypernetworks take
    # the state without a LayerNorm, and raw map units made its initial TD errors explode.
    import torch

    from marpo_bench.envs import make_env

    env = make_env("smax", "2s3z", 16)
    ts = env.reset(0)
    biggest = ts.state.abs().max()
    for _ in range(60):
        u = torch.rand(ts.avail_actions.shape).masked_fill(~ts.avail_actions, -1.0)
        ts = env.step(u.argmax(-1))
        biggest = torch.maximum(biggest, ts.state.abs().max())
    assert float(biggest) <= 3.0
