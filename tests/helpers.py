"""Small synthetic inputs shared by the algorithm tests."""

from __future__ import annotations

import torch

from marpo_bench.algos.rollout import Rollout
from marpo_bench.envs.base import EnvInfo, TimeStep


def fake_info(N: int = 3, obs_dim: int = 6, S: int = 10, A: int = 5) -> EnvInfo:
    return EnvInfo(family="test", task="t", num_envs=4, num_agents=N, obs_dim=obs_dim, state_dim=S,
                   num_actions=A, episode_limit=25, reward_scale="team_sum", has_won=False)


def random_rollout(T: int = 6, E: int = 4, N: int = 3, obs_dim: int = 6, S: int = 10, A: int = 5,
                   seed: int = 0, policy=None, perturb: float = 0.3) -> Rollout:
    """A rollout whose old log-probs come from ``policy`` (an algorithm) perturbed, or random."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(T, E, N, obs_dim, generator=g)
    avail = torch.rand(T, E, N, A, generator=g) > 0.3
    avail[..., 0] = True
    if policy is not None:
        with torch.no_grad():
            logp_all = policy.log_probs(obs, avail)
            # an older policy: perturb the logits so ratios differ from 1
            logp_all = torch.log_softmax(logp_all + perturb * torch.randn(logp_all.shape, generator=g), -1)
            logp_all = logp_all.masked_fill(~avail, -1e10)
            logp_all = torch.log_softmax(logp_all, -1)
    else:
        logp_all = torch.log_softmax(torch.randn(T, E, N, A, generator=g).masked_fill(~avail, -1e10), -1)
    probs = logp_all.exp()
    actions = torch.multinomial(probs.reshape(-1, A), 1, generator=g).reshape(T, E, N)
    done = torch.rand(T, E, generator=g) < 0.2
    return Rollout(
        obs=obs, state=torch.randn(T, E, S, generator=g), avail=avail,
        alive=torch.ones(T, E, N, dtype=torch.bool), actions=actions,
        logp_old=logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1), logits_old=logp_all,
        values=torch.randn(T, E, generator=g), rewards=torch.randn(T, E, generator=g),
        terminated=torch.zeros(T, E, dtype=torch.bool), done=done,
        advantages=torch.randn(T, E, generator=g), returns=torch.randn(T, E, generator=g),
    )


# ----------------------------------------------------------------------------------------------
# Rollouts with dead agents and episode ends, known policies and critics, a scripted env
# ----------------------------------------------------------------------------------------------


def rollout_with(T: int = 4, E: int = 2, N: int = 2, A: int = 3, *, alive: torch.Tensor | None = None,
                 done: torch.Tensor | None = None, terminated: torch.Tensor | None = None,
                 advantages: torch.Tensor | None = None, returns: torch.Tensor | None = None,
                 values: torch.Tensor | None = None, state: torch.Tensor | None = None,
                 avail: torch.Tensor | None = None, obs_dim: int = 3, S: int = 2, seed: int = 0,
                 policy=None) -> Rollout:
    """``random_rollout`` with the fields that matter given by hand.

    ``alive`` [T, E, N] (default: everyone alive); a dead agent can only take action 0 (SMAX's
    death masking: its only available action, so its log-probabilities are 0 under any policy).
    ``done`` / ``terminated`` [T, E]; ``terminated`` defaults to ``done`` (battles that end), ``done``
    to no episode end. ``advantages`` / ``returns`` / ``values`` [T, E]; ``state`` [T, E, S];
    ``avail`` [T, E, N, A] for the alive agents (default: random, action 0 always available).
    The old log-probs are those of ``policy`` (an algorithm) when given: ratios are then exactly 1."""
    ro = random_rollout(T=T, E=E, N=N, obs_dim=obs_dim, S=S, A=A, seed=seed)
    alive = torch.ones(T, E, N, dtype=torch.bool) if alive is None else alive.clone()
    done = torch.zeros(T, E, dtype=torch.bool) if done is None else done.clone()
    ro.alive, ro.done = alive, done
    ro.terminated = done.clone() if terminated is None else terminated.clone()
    ro.avail = ro.avail.clone() if avail is None else avail.clone()
    ro.avail[~alive] = False
    ro.avail[..., 0] |= ~alive
    if policy is not None:
        with torch.no_grad():
            logp_all = policy.log_probs(ro.obs, ro.avail)
    else:
        logp_all = torch.log_softmax(ro.logits_old.masked_fill(~ro.avail, -1e10), -1)
    actions = torch.where(alive, ro.actions, torch.zeros_like(ro.actions))
    actions = torch.where(ro.avail.gather(-1, actions.unsqueeze(-1)).squeeze(-1), actions,
                          ro.avail.float().argmax(-1))  # an available action everywhere
    ro.actions, ro.logits_old = actions, logp_all
    ro.logp_old = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    for name, value in (("advantages", advantages), ("returns", returns), ("values", values), ("state", state)):
        if value is not None:
            setattr(ro, name, value.clone().float())
    return ro


def dead_agent_rollout(policy=None, seed: int = 0) -> Rollout:
    """T=4, E=3, N=2 with deaths and episode ends at known places:

    - env 0: agent 1 dies at t=1 (alive at t=0 only); the battle is lost at t=2 (terminated);
      t=3 opens a new episode with both alive.
    - env 1: the whole team is dead at t=2 (no value target there); terminated at t=2; t=3 new episode.
    - env 2: everyone alive; the episode is truncated (time limit) at t=1.
    Advantages A[t, e] = 1 + t + 4 e, returns R[t, e] = 10 (t + 1) + e, values 0."""
    T, E, N = 4, 3, 2
    alive = torch.ones(T, E, N, dtype=torch.bool)
    alive[1:3, 0, 1] = False
    alive[2, 1, :] = False
    done = torch.zeros(T, E, dtype=torch.bool)
    done[2, 0] = done[2, 1] = done[1, 2] = True
    terminated = done.clone()
    terminated[1, 2] = False
    t = torch.arange(T, dtype=torch.float32).view(T, 1)
    e = torch.arange(E, dtype=torch.float32).view(1, E)
    return rollout_with(T, E, N, A=3, alive=alive, done=done, terminated=terminated, advantages=1 + t + 4 * e,
                        returns=10 * (t + 1) + e, values=torch.zeros(T, E), seed=seed, policy=policy)


class TableActor(torch.nn.Module):
    """A policy that ignores the observation: logits = ``logits`` (a learnable [A] vector) for every
    agent, so pi, its entropy and their gradients are known in closed form."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*obs.shape[:-1], self.logits.numel())


class StateCritic(torch.nn.Module):
    """A critic that is a known function of the state: V(s) = s[0] (the first state feature)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))  # so optimisers and grad clipping have a parameter

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return state[..., :1] + 0.0 * self.unused


def install_known_nets(algo, actor_logits: list[float] | None = None, critic: bool = True) -> None:
    """Swap an on-policy algorithm's actor for a ``TableActor`` and/or its critic for a
    ``StateCritic`` (feed-forward configs only), with fresh optimisers over the new parameters."""
    cfg = algo.cfg
    if actor_logits is not None:
        algo.actor = TableActor(actor_logits)
        algo.actor_opt = torch.optim.Adam(algo.actor.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    if critic:
        algo.critic = StateCritic()
        algo.critic_opt = torch.optim.Adam(algo.critic.parameters(), lr=cfg.critic_lr, eps=cfg.adam_eps)


def make_config(cls, **fields):
    """``cls(**fields)`` keeping only the fields the dataclass has (settings that are being added,
    such as ``bootstrap_truncation``, are passed where they exist and are today's default otherwise)."""
    known = getattr(cls, "__dataclass_fields__", {})
    return cls(**{k: v for k, v in fields.items() if k in known})


class ScriptedEnv:
    """A vectorised env that replays a script: the state value each env shows at each step, and
    where episodes end.

    ``values`` [T+1, E]: s_t[0] of the state the agents act in at step t (after auto-reset: the
    first state of the next episode where step t-1 ended one). ``rewards`` [T, E].
    ``terminated`` / ``truncated`` [T, E]: how step t ends. ``final_values`` [T, E]: s[0] of the
    last state of an episode that ended at step t (read only there). ``won`` [T, E] optional.
    The state is [value, t]; ``episode_return`` is the sum of the episode's rewards. ``reset``
    starts the script again; stepping past its end is an error. Records every reset seed and the
    actions it was given."""

    def __init__(self, values, rewards, terminated, truncated, final_values, N: int = 2, A: int = 3,
                 obs_dim: int = 3, won=None, family: str = "test", has_won: bool = False,
                 episode_limit: int | None = None) -> None:
        self.values = torch.as_tensor(values, dtype=torch.float32)
        self.rewards = torch.as_tensor(rewards, dtype=torch.float32)
        self.term = torch.as_tensor(terminated, dtype=torch.bool)
        self.trunc = torch.as_tensor(truncated, dtype=torch.bool)
        self.final_values = torch.as_tensor(final_values, dtype=torch.float32)
        self.won = None if won is None else torch.as_tensor(won, dtype=torch.float32)
        T, E = self.rewards.shape
        self.T, self.E, self.N, self.A, self.O = T, E, N, A, obs_dim
        self.info = EnvInfo(family=family, task="scripted", num_envs=E, num_agents=N, obs_dim=obs_dim, state_dim=2,
                            num_actions=A, episode_limit=episode_limit or T, reward_scale="team_sum",
                            has_won=has_won)
        self.device = torch.device("cpu")
        self.reset_seeds: list[int] = []
        self.actions: list[torch.Tensor] = []

    def _state(self, value: torch.Tensor, t: int) -> torch.Tensor:
        return torch.stack([value, torch.full_like(value, float(t))], -1)

    def _obs(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        obs = torch.zeros(self.E, self.N, self.O)
        obs[..., 0] = self.values[t].view(-1, 1)
        obs[..., 1] = torch.arange(self.N, dtype=torch.float32)
        return obs, torch.ones(self.E, self.N, self.A, dtype=torch.bool), torch.ones(self.E, self.N, dtype=torch.bool)

    def reset(self, seed: int) -> TimeStep:
        self.reset_seeds.append(int(seed))
        self.t = 0
        self.ep_ret = torch.zeros(self.E)
        self.ep_len = torch.zeros(self.E, dtype=torch.int64)
        obs, avail, alive = self._obs(0)
        return TimeStep.first(obs, self._state(self.values[0], 0), avail, alive)

    def step(self, actions: torch.Tensor) -> TimeStep:
        self.actions.append(actions.clone())
        t = self.t
        if t >= self.T:
            raise IndexError(f"ScriptedEnv: the script has only {self.T} steps")
        term, trunc = self.term[t], self.trunc[t]
        done = term | trunc
        self.ep_ret += self.rewards[t]
        self.ep_len += 1
        ep_ret = torch.where(done, self.ep_ret, torch.nan)
        ep_len = torch.where(done, self.ep_len, 0)
        self.ep_ret = torch.where(done, 0.0, self.ep_ret)
        self.ep_len = torch.where(done, 0, self.ep_len)
        self.t = nxt = t + 1
        obs, avail, alive = self._obs(nxt)
        state = self._state(self.values[nxt], nxt)
        final_state = torch.where(done.view(-1, 1), self._state(self.final_values[t], t + 1), state)
        won = torch.full((self.E,), torch.nan) if self.won is None else torch.where(done, self.won[t], torch.nan)
        return TimeStep(obs=obs, state=state, avail_actions=avail, alive=alive, reward=self.rewards[t].clone(),
                        terminated=term.clone(), truncated=trunc.clone(), final_obs=obs.clone(),
                        final_state=final_state, episode_return=ep_ret,
                        episode_length=ep_len, won=won)

    def close(self) -> None:
        pass


def replay(algo, mb: Rollout):
    """``algo``'s one learner at S = 1 (``OnPolicyLearner``) replaying minibatch ``mb`` with its
    current networks: ``(learner, logp_all [T, B, N, A], logp_next [T-1, B, N, A], values [T, B])``.
    Gradients of these land on ``learner.actor.stack`` / ``learner.critic.stack`` (seed 0's slice):
    ``grads(learner.actor)``."""
    from marpo_bench.algos.rollout import ChunkedInputs

    learner = algo.learner()
    recurrent = algo.cfg.recurrent or algo.cfg.recurrent_critic
    x = learner.inputs([mb], [ChunkedInputs.from_rollout(mb, algo.cfg.chunk_len)] if recurrent else None)
    logp_all, logp_next = learner.log_probs([mb], x)
    return learner, logp_all[0], logp_next[0], learner.values([mb], x)[0]


def grads(net) -> list[torch.Tensor]:
    """Seed 0's gradients of a learner's stacked network, in its modules' parameter order."""
    return [t.grad[0].clone() if t.grad is not None else torch.zeros_like(t[0]) for t in net.stack.tensors()]
