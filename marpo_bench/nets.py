"""Network building blocks shared by every algorithm: MLPs with input LayerNorm and orthogonal init.

Defaults follow MAPPO's on-policy code: LayerNorm on the inputs ("feature normalisation"),
orthogonal weights (gain sqrt(2) on hidden layers, a configurable gain on the output layer:
0.01 for the actor, 1 for the critic), zero biases.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def orthogonal_init(layer: nn.Linear, gain: float) -> nn.Linear:
    """Orthogonal weights with ``gain`` and zero bias (MAPPO / CleanRL convention)."""
    nn.init.orthogonal_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)
    return layer


class MLP(nn.Module):
    """``in -> [LayerNorm] -> (Linear -> act -> LayerNorm?) x layers -> Linear(out)``."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 64,
        layers: int = 2,
        activation: str = "relu",
        input_norm: bool = True,
        out_gain: float = 1.0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        act = ACTIVATIONS[activation]
        gain = math.sqrt(2.0) if activation == "relu" else 5.0 / 3.0
        mods: list[nn.Module] = [nn.LayerNorm(in_dim)] if input_norm else []
        width = in_dim
        for _ in range(layers):
            mods += [orthogonal_init(nn.Linear(width, hidden), gain), act(), nn.LayerNorm(hidden)]
            width = hidden
        mods.append(orthogonal_init(nn.Linear(width, out_dim), out_gain))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to the last dimension of ``x``."""
        return self.net(x)


def masked_logits(logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Set unavailable actions' logits to a large negative number (finite: no NaN in softmax)."""
    return logits.masked_fill(~avail, -1e10)


def gumbel_max_sample(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Sample from ``Categorical(logits=logits)`` by Gumbel-max (much cheaper than
    ``torch.distributions.Categorical`` on large batches; docs/algorithms.md (pitfalls))."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device)
    u = u.clamp_(min=1e-20, max=1.0 - 1e-7)
    return torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)


class RecurrentNet(nn.Module):
    """MAPPO's recurrent actor and critic (on-policy ``R_Actor`` / ``R_Critic``): ``MLP base -> GRU
    cell -> LayerNorm -> linear head`` (head gain 0.01 for an actor's logits, 1 for a critic's value).

    ``step`` advances one time step for acting; ``unroll`` replays a sequence from a given hidden
    state, zeroing the hidden state where a new episode starts (``resets``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64, layers: int = 1,
                 activation: str = "relu", input_norm: bool = True, out_gain: float = 0.01) -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        gain = math.sqrt(2.0) if activation == "relu" else 5.0 / 3.0
        mods: list[nn.Module] = [nn.LayerNorm(in_dim)] if input_norm else []
        width = in_dim
        for _ in range(max(layers, 1)):
            mods += [orthogonal_init(nn.Linear(width, hidden), gain), act(), nn.LayerNorm(hidden)]
            width = hidden
        self.base = nn.Sequential(*mods)
        self.gru = nn.GRUCell(hidden, hidden)
        for name, p in self.gru.named_parameters():
            (nn.init.orthogonal_ if "weight" in name else nn.init.zeros_)(p)
        self.norm = nn.LayerNorm(hidden)
        self.head = orthogonal_init(nn.Linear(hidden, out_dim), out_gain)
        self.hidden_size = hidden

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: x [..., in], h [..., H] -> (output [..., out], new h)."""
        shape = x.shape[:-1]
        h_new = self.gru(self.base(x).reshape(-1, self.hidden_size), h.reshape(-1, self.hidden_size))
        return self.head(self.norm(h_new)).reshape(*shape, -1), h_new.reshape(*shape, self.hidden_size)

    def unroll(self, x: torch.Tensor, h0: torch.Tensor, resets: torch.Tensor) -> torch.Tensor:
        """x [L, *B, in], h0 [*B, H], resets [L, *B] bool (True: zero h before step j, j >= 1) ->
        outputs [L, *B, out]."""
        L, batch = x.shape[0], x.shape[1:-1]
        feats = self.base(x.reshape(L, -1, x.shape[-1]))
        resets = resets.reshape(L, -1)
        h, outs = h0.reshape(-1, self.hidden_size), []
        # unbind, not feats[j]: indexing's backward writes each step's gradient into its own zeroed
        # copy of the whole [L, M, H] tensor (L full-size fills and adds per backward); unbind's
        # stacks them once. Same values, bit for bit.
        for j, f in enumerate(feats.unbind(0)):
            if j > 0:
                h = h * (~resets[j]).unsqueeze(-1).to(h.dtype)
            h = self.gru(f, h)
            outs.append(h)
        out = self.head(self.norm(torch.stack(outs)))
        return out.reshape(L, *batch, out.shape[-1])


class PerAgent(nn.Module):
    """One network per agent (on-policy's ``--share_policy`` off): agent i's inputs ``x[..., i, :]``
    go through ``nets[i]``; the agent axis is the one before the features. Offers what the wrapped
    networks offer (``forward``; ``step`` / ``unroll`` for recurrent ones) with the same shapes as a
    shared network applied to all agents."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(x[..., i, :]) for i, net in enumerate(self.nets)], dim=-2)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., N, in], h [..., N, H] -> (outputs [..., N, out], new h [..., N, H])."""
        outs = [net.step(x[..., i, :], h[..., i, :]) for i, net in enumerate(self.nets)]
        return torch.stack([o for o, _ in outs], dim=-2), torch.stack([hn for _, hn in outs], dim=-2)

    def unroll(self, x: torch.Tensor, h0: torch.Tensor, resets: torch.Tensor) -> torch.Tensor:
        """x [L, *B, N, in], h0 [*B, N, H], resets [L, *B, N] -> outputs [L, *B, N, out]."""
        return torch.stack([net.unroll(x[..., i, :], h0[..., i, :], resets[..., i])
                            for i, net in enumerate(self.nets)], dim=-2)
