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
    ``torch.distributions.Categorical`` on large batches; PITFALLS.md)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device)
    u = u.clamp_(min=1e-20, max=1.0 - 1e-7)
    return torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)
