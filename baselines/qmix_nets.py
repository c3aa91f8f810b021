"""QMix's networks (pymarl's ``RNNAgent`` and ``QMixer``), written once for a stack of S seeds.

A network's computation is a function of its parameters given by name, each with a leading seed
axis ``[S, *shape]``: ``agent_q`` and ``mix`` below. The batched learner (``baselines.qmix``)
passes its seed stacks (``marpo_bench.seedstack.Stack``); an ``nn.Module`` passes its own
parameters viewed as a stack of one (``seed_view``), so ``RNNAgent.forward`` and
``QMixer.forward`` are the same code at S = 1. The modules hold the parameters (their names and
PyTorch's default initialisation are pymarl's, and are what checkpoints store).

At S = 1 the stacked layers run the kernels the ``nn`` modules run, on seed 0's slices:
``F.linear`` (``seedstack.linear``'s one-seed case) and ``torch.gru`` (the function behind
``nn.GRU``: on the CPU it projects the inputs of all steps at once, then runs each step's gates in
place; ``seedstack.gru`` follows ``nn.GRUCell``, which projects step by step). So one seed computes
bit for bit what ``nn.Linear`` / ``nn.GRU`` compute, at their speed; S > 1 seeds use
``marpo_bench.seedstack``'s batched matmuls and step-by-step GRU (equal within float tolerance).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from marpo_bench import seedstack
from marpo_bench.seedstack import linear

Params = Mapping[str, torch.Tensor]  # parameter name -> [S, *shape] (a Stack, or seed_view's dict)


def seed_view(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s parameters as a stack of one seed (views: gradients reach the module)."""
    return {n: p.unsqueeze(0) for n, p in module.named_parameters()}


# ----------------------------------------------------------------------------------------------
# Layers on stacked parameters
# ----------------------------------------------------------------------------------------------


def gru(x: torch.Tensor, h: torch.Tensor, p: Params, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A one-layer ``nn.GRU`` per seed with parameters ``<prefix>.weight_ih_l0`` etc.: ``x``
    [S, L, M, in] (time-major within a seed), ``h`` [S, M, H] -> outputs [S, L, M, H], last h [S, M, H]."""
    w = [p[f"{prefix}.{n}_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    if x.shape[0] == 1:  # h [1, M, H] is also nn.GRU's h_0 of its one layer
        out, hn = torch.gru(x[0], h, [t[0] for t in w], True, 1, 0.0, True, False, False)
        return out.unsqueeze(0), hn
    return seedstack.gru(x, h, *w)


def mlp(x: torch.Tensor, p: Params, prefix: str, layers: int) -> torch.Tensor:
    """A stacked ``nn.Sequential(Linear, ReLU, Linear, ...)`` (``layers`` Linear layers at the
    Sequential indices 0, 2, 4, ...), or a bare ``nn.Linear`` named ``prefix`` when ``p`` holds
    ``prefix.weight``."""
    if f"{prefix}.weight" in p:
        return linear(x, p[f"{prefix}.weight"], p[f"{prefix}.bias"])
    for i in range(layers):
        x = linear(x, p[f"{prefix}.{2 * i}.weight"], p[f"{prefix}.{2 * i}.bias"])
        if i < layers - 1:
            x = F.relu(x)
    return x


# ----------------------------------------------------------------------------------------------
# The networks as functions of their stacked parameters
# ----------------------------------------------------------------------------------------------


def agent_q(p: Params, x: torch.Tensor, h: torch.Tensor, recurrent: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``RNNAgent`` per seed: ``x`` [S, L, M, in] (time-major), ``h`` [S, M, H] -> Q [S, L, M, A]
    and the last hidden state [S, M, H] (feed-forward: the last step's hidden layer)."""
    y = F.relu(linear(x, p["fc1.weight"], p["fc1.bias"]))
    if not recurrent:
        out = F.relu(linear(y, p["rnn.weight"], p["rnn.bias"]))
        return linear(out, p["fc2.weight"], p["fc2.bias"]), out[:, -1]
    out, hn = gru(y, h, p, "rnn")
    return linear(out, p["fc2.weight"], p["fc2.bias"]), hn


def mix(p: Params, agent_qs: torch.Tensor, states: torch.Tensor, embed_dim: int, hypernet_layers: int) -> torch.Tensor:
    """``QMixer`` per seed: ``agent_qs`` [S, ..., N], ``states`` [S, ..., state] -> Q_tot [S, ...].

    Q_tot = w_f(s)^T ELU(W_1(s)^T q + b_1(s)) + V(s): W_1 and w_f are the absolute values of
    hypernetwork outputs, so dQ_tot/dq_i >= 0 (the monotonicity QMix's argmax decomposition needs);
    b_1 is linear in s and V(s) a small ReLU MLP (the state-dependent bias)."""
    S, lead, N = agent_qs.shape[0], agent_qs.shape[1:-1], agent_qs.shape[-1]
    s = states.reshape(S, -1, states.shape[-1])
    R = s.shape[1]
    q = agent_qs.reshape(S * R, 1, N)
    w1 = torch.abs(mlp(s, p, "hyper_w_1", hypernet_layers)).reshape(S * R, N, embed_dim)
    b1 = linear(s, p["hyper_b_1.weight"], p["hyper_b_1.bias"]).reshape(S * R, 1, embed_dim)
    hidden = F.elu(torch.bmm(q, w1) + b1)
    w_final = torch.abs(mlp(s, p, "hyper_w_final", hypernet_layers)).reshape(S * R, embed_dim, 1)
    v = mlp(s, p, "V", 2).reshape(S * R, 1, 1)
    return (torch.bmm(hidden, w_final) + v).reshape(S, *lead)


# ----------------------------------------------------------------------------------------------
# The modules: parameters, initialisation and checkpoint names
# ----------------------------------------------------------------------------------------------


class RNNAgent(nn.Module):
    """pymarl's RNNAgent: ``fc1 -> ReLU -> GRU -> fc2`` (PyTorch default init, as in pymarl), one
    network shared by all agents. Its input is ``[obs (with the agent-id one-hot the env appends
    when agent_id=True), last action one-hot]``; the id is not added a second time here.

    ``recurrent=False`` is EPyMARL's feed-forward variant of the same class (``use_rnn: False``):
    the GRU becomes ``Linear -> ReLU`` and the hidden state is not carried between steps."""

    def __init__(self, in_dim: int, hidden: int, num_actions: int, recurrent: bool = True) -> None:
        super().__init__()
        self.recurrent = recurrent
        self.fc1 = nn.Linear(in_dim, hidden)
        self.rnn: nn.Module = nn.GRU(hidden, hidden) if recurrent else nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, num_actions)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [L, M, in] (time-major), ``h`` [M, H] -> Q [L, M, A] and the last hidden [M, H]."""
        q, hn = agent_q(seed_view(self), x.unsqueeze(0), h.unsqueeze(0), self.recurrent)
        return q[0], hn[0]


class QMixer(nn.Module):
    """pymarl's QMixer: monotonic mixing with hypernetwork weights on the global state (``mix``)."""

    def __init__(self, num_agents: int, state_dim: int, embed_dim: int = 32, hypernet_layers: int = 2,
                 hypernet_embed: int = 64) -> None:
        super().__init__()
        self.n, self.embed, self.layers = num_agents, embed_dim, hypernet_layers

        def hyper(out: int) -> nn.Module:
            if hypernet_layers == 1:
                return nn.Linear(state_dim, out)
            return nn.Sequential(nn.Linear(state_dim, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, out))

        self.hyper_w_1 = hyper(embed_dim * num_agents)
        self.hyper_w_final = hyper(embed_dim)
        self.hyper_b_1 = nn.Linear(state_dim, embed_dim)
        self.V = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """``agent_qs`` [..., N], ``states`` [..., S] -> Q_tot [...]."""
        return mix(seed_view(self), agent_qs.unsqueeze(0), states.unsqueeze(0), self.embed, self.layers)[0]
