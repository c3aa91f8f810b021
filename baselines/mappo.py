"""MAPPO (Yu et al., "The Surprising Effectiveness of PPO in Cooperative Multi-Agent Games",
NeurIPS 2022 Datasets & Benchmarks), on the shared PPO core.

Everything but the policy objective (rollouts, GAE, ValueNorm, clipped Huber value loss,
epochs x minibatches, masking, init) lives in ``marpo_bench/algos/ppo_core.py``. MAPPO's objective
is PPO's clipped surrogate per agent, averaged over alive agents (``docs/algorithms.md`` §0):

    L_clip = E[ min( r_t A_t , clip(r_t, 1 - eps, 1 + eps) A_t ) ],   eps = 0.2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from marpo_bench.algos.ppo_core import OnPolicyAlgorithm, PPOConfig, ppo_clip_surrogate
from marpo_bench.algos.rollout import Rollout, masked_mean
from marpo_bench.config import Recipe

# ----------------------------------------------------------------------------------------------
# The published recipes (marlbenchmark/on-policy, the code the MAPPO and MARPO authors ran), keyed
# by env family and by ``family:task``; the task's entry is applied over the family's. Flags follow
# on-policy's argparse (onpolicy/config.py): ``--use_ReLU`` and ``--share_policy`` are store_false,
# so passing them gives Tanh and separate policies; ``use_proper_time_limits`` defaults to False,
# so a time limit ends the return (no bootstrap). ``algorithm_name rmappo`` makes the train scripts
# set ``use_recurrent_policy``: a GRU actor (R_Actor) *and* critic (R_Critic).
#
# Departures that stay (each one ``--set`` away from the published value; README "Baselines"):
# - chunk_len 25 on MPE: on-policy's data_chunk_length 10 does not divide the 25-step rollout (its
#   generator cuts the flattened env x agent x time sequence into 10-step pieces that straddle
#   episode ends); one chunk per episode is the nearest our chunker allows.
# - SMAX/SMACv2: 64 envs x 50 steps where on-policy runs 8 x 400 (the same 3,200 transitions per
#   update), so the vectorised SMAX backend is used: --set num_envs=8 --set rollout_len=400.
# - smax:3s_vs_5z: on-policy's script runs the MLP mappo with 4 stacked frames; this suite has no
#   frame stacking, so the GRU gives the memory (its epochs and clip are the script's).
# - One centralised critic per env on the global state (on-policy: a copy per agent of the same
#   centralised value; with separate policies one critic per agent, all on the same state and team
#   reward).
# - Separate policies (speaker-listener) share one loss, a mean over agents, and one gradient-norm
#   clip; on-policy's separated runner trains each agent's policy as its own PPO problem (its own
#   loss mean, clip, critic and ValueNorm). With Adam the loss's scale barely matters.
# ----------------------------------------------------------------------------------------------

_ONPOLICY = "marlbenchmark/on-policy onpolicy/config.py defaults"

_MPE = Recipe(
    source=("on-policy onpolicy/scripts/train/train_mpe.py with algorithm_name rmappo (recurrent actor and "
            "critic, data_chunk_length 10: see chunk_len above) and the MPE scripts' --n_rollout_threads 128 "
            "--episode_length 25 --num_mini_batch 1 --lr 7e-4 --critic_lr 7e-4; use_proper_time_limits False "
            "(config.py); on-policy's MPE observations carry no agent id"),
    values={"recurrent": True, "recurrent_critic": True, "chunk_len": 25, "num_envs": 128, "rollout_len": 25,
            "minibatches": 1, "lr": 7e-4, "critic_lr": 7e-4, "agent_id": False, "bootstrap_truncation": False},
)
_MPE_TASKS = {
    "simple_spread": Recipe(
        source="on-policy onpolicy/scripts/train_mpe_scripts/train_mpe_spread.sh: --ppo_epoch 10 --use_ReLU (Tanh)",
        values={"epochs": 10, "activation": "tanh"}),
    "simple_reference": Recipe(
        source="on-policy onpolicy/scripts/train_mpe_scripts/train_mpe_reference.sh: --ppo_epoch 15 (ReLU)",
        values={"epochs": 15, "activation": "relu"}),
    "simple_speaker_listener": Recipe(
        source=("on-policy onpolicy/scripts/train_mpe_scripts/train_mpe_comm.sh: --ppo_epoch 15 (ReLU) "
                "--share_policy (separate policies)"),
        values={"epochs": 15, "activation": "relu", "share_policy": False}),
}
_SMAC = Recipe(
    source=("on-policy onpolicy/scripts/train/train_smac.py with algorithm_name rmappo (recurrent actor and "
            "critic, data_chunk_length 10) and the SMAC scripts' --n_rollout_threads 8 --episode_length 400 "
            "(here 64 x 50) --num_mini_batch 1; config.py: lr 5e-4, critic_lr 5e-4, ppo_epoch 15, clip_param "
            "0.2, use_proper_time_limits False"),
    values={"recurrent": True, "recurrent_critic": True, "chunk_len": 10, "num_envs": 64, "rollout_len": 50,
            "minibatches": 1, "lr": 5e-4, "critic_lr": 5e-4, "epochs": 15, "clip_eps": 0.2,
            "bootstrap_truncation": False},
)


def _smac_script(task: str, flags: str, values: dict[str, object]) -> Recipe:
    return Recipe(source=f"on-policy onpolicy/scripts/train_smac_scripts/train_smac_{task}.sh: {flags}", values=values)


_SMAX_TASKS = {
    "3m": _smac_script("3m", "--ppo_epoch 15", {"epochs": 15}),
    "8m": _smac_script("8m", "--ppo_epoch 15", {"epochs": 15}),
    "3s5z": _smac_script("3s5z", "--ppo_epoch 5", {"epochs": 5}),
    "5m_vs_6m": _smac_script("5m_vs_6m", "--ppo_epoch 10 --clip_param 0.05", {"epochs": 10, "clip_eps": 0.05}),
    "10m_vs_11m": _smac_script("10m_vs_11m", "--ppo_epoch 10", {"epochs": 10}),
    "3s_vs_5z": _smac_script("3s_vs_5z", "--ppo_epoch 15 --clip_param 0.05 (mappo with 4 stacked frames: kept "
                             "recurrent, see above)", {"epochs": 15, "clip_eps": 0.05}),
}

_SMACV2 = Recipe(
    source=("on-policy has no SMACv2 scripts: onpolicy/scripts/train/train_smac.py (rmappo) with config.py's "
            "defaults (ppo_epoch 15, clip_param 0.2, lr 5e-4) and the SMAC scripts' 1 minibatch and 3,200 "
            "transitions per update (here 64 x 50; SMACv2 runs one StarCraft II process per env: "
            "--set num_envs=8 --set rollout_len=400)"),
    values=dict(_SMAC.values),
)

MAPPO_RECIPES: dict[str, Recipe] = {
    "jax_mpe": _MPE, "mpe": _MPE,
    **{f"{fam}:{task}": r for fam in ("jax_mpe", "mpe") for task, r in _MPE_TASKS.items()},
    "smax": _SMAC, "smacv2": _SMACV2,
    **{f"smax:{task}": r for task, r in _SMAX_TASKS.items()},
}
"""MAPPO's defaults per env family and task, with their sources (MARPO uses the same table)."""


@dataclass
class MAPPOConfig(PPOConfig):
    """MAPPO's base settings are the shared PPO core's; its per-task recipes are ``MAPPO_RECIPES``."""


class MAPPO(OnPolicyAlgorithm):
    """Multi-agent PPO with a centralised critic (CTDE)."""

    name = "mappo"
    Config = MAPPOConfig
    DEFAULTS_BY_FAMILY = MAPPO_RECIPES

    def policy_objective(self, mb: Rollout, logp_all: torch.Tensor, logp_next: torch.Tensor,
                         adv: torch.Tensor, env_steps: int) -> tuple[torch.Tensor, dict[str, float]]:
        """PPO's clipped surrogate, averaged over alive agents."""
        logp = logp_all.gather(-1, mb.actions.unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logp - mb.logp_old)
        lo, hi = 1.0 - self.cfg.clip_eps, 1.0 + self.cfg.clip_eps
        surrogate = masked_mean(ppo_clip_surrogate(ratio, adv, lo, hi), mb.alive)
        with torch.no_grad():
            logs = {
                "approx_kl": float(masked_mean((ratio - 1) - torch.log(ratio), mb.alive)),
                "clip_fraction": float(masked_mean(((ratio < lo) | (ratio > hi)).float(), mb.alive)),
            }
        return surrogate, logs
