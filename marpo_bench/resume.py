"""Checkpoints and resume: the env's side (``CheckpointableEnv``) and what a resume reproduces.

A checkpoint is taken only at an iteration boundary (at the end of ``on_iteration``, after that
iteration's evaluation) every ``checkpoint_every`` env steps (default: at every evaluation point),
and once more at the end. It holds the algorithm's ``state_dict`` (networks, optimisers,
normalisers, torch and numpy RNG states, MARPO's delta, the GRU state carried across rollouts,
QMix's schedule position), the env's state and the TimeStep the next iteration starts from, the
metrics rows so far and the runner's own counters. Re-running a run that is not complete
continues from its checkpoint; the rows written after the checkpoint are recomputed.

What is exact on resume (CPU, same torch thread count, else ``resume_exact: false``; ``wall_seconds`` aside):

- MAPPO/MARPO on ``jax_mpe`` and ``smax``: everything. The JAX env's carry (PRNG key, env states,
  episode statistics) is saved leaf by leaf as tensors and put back into a freshly built env, so
  a resumed run's metrics equal an uninterrupted run's bit for bit.
- ``mpe`` (mpe2, Python envs whose state cannot be read generically): exact when every env is at
  an episode start at the checkpoint, which the default ``rollout_len`` (25 = the horizon) makes
  true at every boundary; each env is re-reset from its generator's state before that reset.
- QMix: networks, targets, optimiser, reward standardiser, RNG states, t_env/episodes/update credit
  are exact, but ``QMix.learn`` keeps its replay buffer local, so a resumed QMix run starts with an
  empty buffer: it makes at most ``(batch_size - 1) / episodes_per_update`` fewer gradient updates
  while the buffer refills (60 with the defaults on MPE: 128-episode batches, 8 lockstep envs, 2
  episodes per update; none when ``batch_size <= num_envs``), and its batches hold only episodes
  collected after the resume until older ones would have been sampled anyway. Env steps,
  evaluation points, epsilon and target-update schedules are unchanged; ``run.json`` records
  ``resume_exact: false``.
- Fallback (``smacv2``, ``mpe`` mid-episode, QMix mid-episode): the env restarts every episode from
  a seed derived from (seed, env steps). At most ``num_envs`` in-flight episodes are dropped (never
  counted in ``train_return_mean``) and the GRU state restarts at zero; the run's env-step budget
  and evaluation schedule are unchanged. ``run.json`` records ``resume_exact: false``.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from marpo_bench import store
from marpo_bench.envs.base import MultiAgentVecEnv, SnapshotEnv, TimeStep


class CheckpointableEnv:
    """A MultiAgentVecEnv whose state can be saved at an iteration boundary and restored.

    After :meth:`restore`, the next ``reset(seed)`` returns the saved TimeStep instead of
    resetting, so an algorithm's ``learn`` continues where the checkpoint was taken without
    knowing about checkpoints. The env's own state comes from the env (``SnapshotEnv``: JAX envs
    save their carry, mpe2 envs their generators' states before the last reset); an env without
    it, or one that cannot capture its state now, restarts its episodes on resume.
    """

    def __init__(self, env: MultiAgentVecEnv) -> None:
        self.env = env
        self.info = env.info
        self.device = env.device
        self.last: TimeStep | None = None
        self._pending: TimeStep | None = None

    def reset(self, seed: int) -> TimeStep:
        ts, self._pending = self._pending, None
        if ts is None:
            ts = self.env.reset(seed)
        self.last = ts
        return ts

    def step(self, actions: torch.Tensor) -> TimeStep:
        self.last = self.env.step(actions)
        return self.last

    def stepped(self, ts: TimeStep) -> None:
        """The env was stepped around this wrapper (``envs.base.SeedEnvs``): ``ts`` is its TimeStep."""
        self.last = ts

    def close(self) -> None:
        self.env.close()

    def snapshot(self, mid_episode_ok: bool) -> dict:
        """The env state now (a checkpoint-safe dict of tensors and plain values). ``kind`` is
        ``none`` when it cannot be captured exactly (then a resume restarts the episodes): the env
        cannot snapshot, or cannot now, or the episodes are mid-way and the algorithm cannot resume
        them (``mid_episode_ok`` False)."""
        ts = self.last
        if ts is None:
            raise RuntimeError("snapshot() before reset()")
        state = None
        if isinstance(self.env, SnapshotEnv) and (mid_episode_ok or bool(ts.done.all())):
            state = self.env.snapshot()
        if state is None:
            return {"kind": "none"}
        out = {"kind": "env", **state}
        out["timestep"] = {f.name: getattr(ts, f.name).detach().cpu().clone() for f in fields(ts)}
        return out

    def restore(self, snap: dict, seed: int, fallback_seed: int) -> bool:
        """Put the env in the state of ``snap``; the next ``reset`` returns its TimeStep. Returns
        False when the snapshot holds no env state: the env then restarts from ``fallback_seed``."""
        if snap.get("kind", "none") == "none" or not isinstance(self.env, SnapshotEnv):
            self._pending = self.env.reset(fallback_seed)
            return False
        try:
            self.env.restore({k: v for k, v in snap.items() if k != "timestep"}, seed)
        except ValueError as exc:
            raise store.StoreError(f"checkpoint env state: {exc}; delete checkpoint.pt to restart the run "
                                   "from scratch") from None
        self._pending = TimeStep(**{k: v.to(self.device) for k, v in snap["timestep"].items()})
        return True
