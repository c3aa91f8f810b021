"""Seed stacks: S independent copies of one network trained as one batched computation.

A study trains S seeds of the same (algorithm, task, config). Each seed's networks are small, so
one seed leaves a core mostly idle and pays the per-op overhead of eager torch on every call; S
seeds stacked along a leading dimension pay it once (JaxMARL's baselines vectorise whole training
runs for the same reason). Nothing is shared between seeds but the computation: every seed keeps
its own parameters, optimiser state, gradient clipping and step count, so seed k of a stack
follows the same math as an unbatched run of seed k (equal within float tolerance: the batched
matmuls add up in another order).

This module holds the algorithm-independent pieces:

- ``Stack``: the stacked parameters ``{name: [S, ...]}`` of a list of ``nn.Module``s with one
  structure, built from them (so seed k starts from exactly the unbatched initialisation) and
  written back into them (so a seed's checkpoint, evaluation and saved policy are an ordinary
  run's).
- ``linear`` and ``gru``: ``nn.Linear`` and a one-layer ``nn.GRU`` on stacked parameters (batched
  matmuls; ``torch.func.vmap`` has no batching rule for ``aten::gru``).
- ``clip_grad_norm``: ``nn.utils.clip_grad_norm_`` per seed.
- ``StackedOptimizer``: torch's Adam and RMSprop update rules, elementwise on the stacked tensors,
  with a step count per seed and a mask of the seeds that step (on SMAX seeds finish episodes at
  different times, so one seed may owe an update another does not). Its state converts to and
  from each seed's ``torch.optim`` state, so checkpoints are interchangeable with unbatched runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.adam import adam
from torch.optim.rmsprop import rmsprop


class Stack:
    """The parameters of S modules of one structure, stacked: ``params[name]`` is ``[S, *shape]``."""

    def __init__(self, modules: Sequence[nn.Module], requires_grad: bool = True) -> None:
        if not modules:
            raise ValueError("a stack needs at least one module")
        names = [n for n, _ in modules[0].named_parameters()]
        for m in modules[1:]:
            if [n for n, _ in m.named_parameters()] != names:
                raise ValueError("the modules of a stack must have the same structure")
        self.names = names
        with torch.no_grad():
            self.params: dict[str, torch.Tensor] = {
                n: torch.stack([dict(m.named_parameters())[n].detach() for m in modules]).clone()
                for n in names
            }
        for p in self.params.values():
            p.requires_grad_(requires_grad)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.params[name]

    def __len__(self) -> int:
        """S, the number of seeds."""
        return self.params[self.names[0]].shape[0]

    def tensors(self) -> list[torch.Tensor]:
        return [self.params[n] for n in self.names]

    @torch.no_grad()
    def copy_from(self, other: Stack, mask: torch.Tensor | None = None) -> None:
        """Copy ``other``'s values (a hard target update), for the seeds in ``mask`` (all if None)."""
        for n in self.names:
            if mask is None:
                self.params[n].copy_(other.params[n])
            else:
                m = mask.view(-1, *([1] * (self.params[n].dim() - 1)))
                self.params[n].copy_(torch.where(m, other.params[n], self.params[n]))

    @torch.no_grad()
    def lerp_from(self, other: Stack, tau: float, mask: torch.Tensor) -> None:
        """Soft target update ``p <- p + tau (other - p)`` of the seeds in ``mask``."""
        for n in self.names:
            p = self.params[n]
            m = mask.view(-1, *([1] * (p.dim() - 1)))
            p.copy_(torch.where(m, p.lerp(other.params[n], tau), p))

    @torch.no_grad()
    def write_to(self, k: int, module: nn.Module) -> None:
        """Seed k's values into ``module`` (same structure)."""
        for n, p in module.named_parameters():
            p.copy_(self.params[n][k])

    @torch.no_grad()
    def read_from(self, k: int, module: nn.Module) -> None:
        """``module``'s values into seed k (e.g. after an unbatched checkpoint was loaded)."""
        for n, p in module.named_parameters():
            self.params[n][k].copy_(p)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``nn.Linear`` per seed: ``x`` [S, ..., in], ``weight`` [S, out, in], ``bias`` [S, out] -> [S, ..., out].
    One seed goes through ``F.linear`` itself (the seed axis as views): the same kernel, so the
    same bits, as the seed's ``nn.Linear`` (a batched matmul may sum in another order)."""
    if x.shape[0] == 1:
        return F.linear(x.squeeze(0), weight.squeeze(0), bias.squeeze(0)).unsqueeze(0)
    S, lead = x.shape[0], x.shape[1:-1]
    flat = x.reshape(S, -1, x.shape[-1])
    out = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2))
    return out.reshape(S, *lead, weight.shape[1])


def gru_cell(x: torch.Tensor, h: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
             b_hh: torch.Tensor) -> torch.Tensor:
    """``nn.GRUCell`` per seed (PyTorch's gate order r, z, n and equations): ``x`` [S, M, in],
    ``h`` [S, M, H] -> the next h.

        r = sigma(W_ir x + b_ir + W_hr h + b_hr),  z = sigma(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r (W_hn h + b_hn)),  h' = (1 - z) n + z h

    The ops of ATen's CPU ``gru_cell`` in its order, in place on the gate projections (fresh
    tensors that no backward reads; ``unsafe_chunk`` allows the in-place ops): at S = 1 the same
    bits as ``nn.GRUCell``, forward and backward, and as fast (out of place: 0.84x)."""
    i_r, i_z, i_n = linear(x, w_ih, b_ih).unsafe_chunk(3, dim=-1)
    h_r, h_z, h_n = linear(h, w_hh, b_hh).unsafe_chunk(3, dim=-1)
    r = h_r.add_(i_r).sigmoid_()
    z = h_z.add_(i_z).sigmoid_()
    n = i_n.add(h_n.mul_(r)).tanh_()
    return (h - n).mul_(z).add_(n)


def gru(x: torch.Tensor, h: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
        b_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-layer ``nn.GRU`` per seed: ``x`` [S, L, M, in] (time-major within a seed), ``h``
    [S, M, H] -> outputs [S, L, M, H] and the last h (``gru_cell`` step by step)."""
    outs = []
    # The input projection step by step, as nn.GRUCell does: projecting all L steps at once and
    # unbinding was slower (on [8, 26, 384, 64], forward and backward: 265 ms against 218 ms; the
    # backward of the unbind and of each step's gate chunks copy the whole [S, L, M, 3H] again).
    # unbind rather than indexing: an index's backward allocates a zero tensor of the whole input
    # per step, quadratic in L here (measured: 70% of a 26-step update's time).
    for xt in x.unbind(1):
        h = gru_cell(xt, h, w_ih, w_hh, b_ih, b_hh)
        outs.append(h)
    return torch.stack(outs, dim=1), h


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``nn.LayerNorm`` over the last dimension per seed: ``x`` [S, ..., H], ``weight``/``bias`` [S, H].
    Seed by seed through torch's fused kernel (affine included): on [8, 9984, 64], forward and
    backward, 20 ms against 39 ms for one normalisation of the stack then a broadcast affine (one
    ``F.layer_norm`` of all 8 x 9984 rows with one seed's affine, the bound: 15 ms). Writing each
    seed's result into its slice (``aten.native_layer_norm.out``) saves no copy: it copies too.
    One seed: its normalisation with the seed axis as a view (no stack)."""
    if x.shape[0] == 1:
        return F.layer_norm(x.squeeze(0), x.shape[-1:], weight.squeeze(0), bias.squeeze(0), eps).unsqueeze(0)
    return torch.stack([F.layer_norm(xk, x.shape[-1:], wk, bk, eps)
                        for xk, wk, bk in zip(x.unbind(0), weight.unbind(0), bias.unbind(0), strict=True)])


def sequential(x: torch.Tensor, stack: Stack, prefix: str, seq: nn.Sequential) -> torch.Tensor:
    """A stacked ``nn.Sequential`` of Linear, LayerNorm and parameter-free layers (ReLU, Tanh),
    read from ``seq`` (one seed's module, for its structure) with parameters ``prefix<i>.*``."""
    for i, mod in enumerate(seq):
        name = f"{prefix}{i}"
        if isinstance(mod, nn.Linear):
            x = linear(x, stack[f"{name}.weight"], stack[f"{name}.bias"])
        elif isinstance(mod, nn.LayerNorm):
            x = layer_norm(x, stack[f"{name}.weight"], stack[f"{name}.bias"], mod.eps)
        elif not any(True for _ in mod.parameters()):
            x = mod(x)
        else:
            raise TypeError(f"no stacked version of {type(mod).__name__}")
    return x


def relu_mlp(x: torch.Tensor, stack: Stack, prefix: str, layers: int) -> torch.Tensor:
    """A stacked ``nn.Sequential(Linear, ReLU, Linear, ...)`` (``layers`` Linear layers at the
    Sequential indices 0, 2, 4, ...), or a bare ``nn.Linear`` named ``prefix`` when ``layers`` is 1
    and the stack holds ``prefix.weight``."""
    if f"{prefix}.weight" in stack.params:
        return linear(x, stack[f"{prefix}.weight"], stack[f"{prefix}.bias"])
    for i in range(layers):
        x = linear(x, stack[f"{prefix}.{2 * i}.weight"], stack[f"{prefix}.{2 * i}.bias"])
        if i < layers - 1:
            x = F.relu(x)
    return x


@torch.no_grad()
def clip_grad_norm(tensors: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``nn.utils.clip_grad_norm_`` for each seed: the L2 norm over all of seed k's gradients,
    ``grad[k] *= min(1, max_norm / (norm_k + 1e-6))``. Returns the norms [S] before clipping."""
    grads = [t.grad for t in tensors if t.grad is not None]
    S = grads[0].shape[0]
    # torch's order: each tensor's norm, then the norm of those norms (the same bits at S = 1)
    per_tensor = torch.stack([torch.linalg.vector_norm(g.reshape(S, -1), dim=1) for g in grads], dim=1)
    norms = torch.linalg.vector_norm(per_tensor, dim=1)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
    return norms


class StackedOptimizer:
    """Adam or RMSprop on stacked tensors with a step count per seed, through torch's own update
    rules (``torch.optim.adam.adam`` / ``torch.optim.rmsprop.rmsprop``, the functions behind
    ``torch.optim.Adam`` / ``RMSprop`` with the settings used here: no weight decay, no momentum,
    not centred, not amsgrad). Their arithmetic is element-wise with scalars that depend only on
    the step count, so seed k's slice gets exactly the bits a per-seed torch optimiser gives it.
    ``step(active)`` updates only the seeds in ``active``: all at once when they share a step
    count, else seed by seed on their slices; the others keep parameters and state."""

    def __init__(self, tensors: Sequence[torch.Tensor], kind: str, lr: float, *, alpha: float = 0.99,
                 eps: float = 1e-8, betas: tuple[float, float] = (0.9, 0.999)) -> None:
        if kind not in ("adam", "rmsprop"):
            raise ValueError(f"optimizer must be adam or rmsprop, got {kind!r}")
        self.tensors, self.kind, self.lr = list(tensors), kind, lr
        self.alpha, self.eps, self.betas = alpha, eps, betas
        S = self.tensors[0].shape[0]
        self.steps = torch.zeros(S, dtype=torch.float64)
        self.state: list[dict[str, torch.Tensor]] = [
            {"exp_avg": torch.zeros_like(t), "exp_avg_sq": torch.zeros_like(t)} if kind == "adam"
            else {"square_avg": torch.zeros_like(t)}
            for t in self.tensors
        ]

    def zero_grad(self) -> None:
        for t in self.tensors:
            t.grad = None

    def _apply(self, sl: slice | int, step: float) -> None:
        """torch's update of the seeds ``sl`` (all at one step count ``step`` before this step)."""
        items = [(t, st) for t, st in zip(self.tensors, self.state, strict=True) if t.grad is not None]
        params = [t[sl] for t, _ in items]
        grads = [t.grad[sl] for t, _ in items]
        steps = [torch.tensor(step, dtype=torch.float32) for _ in items]
        if self.kind == "adam":
            adam(params, grads, [st["exp_avg"][sl] for _, st in items],
                                  [st["exp_avg_sq"][sl] for _, st in items], [], steps, foreach=False,
                                  amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=self.lr,
                                  weight_decay=0.0, eps=self.eps, maximize=False)
        else:
            rmsprop(params, grads, [st["square_avg"][sl] for _, st in items], [], [], steps,
                                        foreach=False, lr=self.lr, alpha=self.alpha, eps=self.eps,
                                        weight_decay=0.0, momentum=0.0, centered=False)

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """One update of the seeds where ``active`` [S] bool is True."""
        on = active.cpu().tolist()
        counts = {float(self.steps[k]) for k, a in enumerate(on) if a}
        if all(on) and len(counts) == 1:
            self._apply(slice(None), counts.pop())
        else:
            for k, a in enumerate(on):
                if a:
                    self._apply(k, float(self.steps[k]))
        self.steps += torch.tensor(on, dtype=self.steps.dtype)

    # -- conversion to and from each seed's torch.optim state ---------------------------------

    def _keys(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq") if self.kind == "adam" else ("square_avg",)

    @torch.no_grad()
    def write_to(self, k: int, opt: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> None:
        """Seed k's state into ``opt``, whose ``params`` correspond one to one with the stack's."""
        for p, st in zip(params, self.state, strict=True):
            if self.steps[k] == 0:
                opt.state.pop(p, None)
                continue
            s = opt.state[p]
            s["step"] = torch.tensor(float(self.steps[k]))
            for key in self._keys():
                s[key] = st[key][k].clone()

    @torch.no_grad()
    def read_from(self, k: int, opt: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> None:
        """Seed k's state from ``opt`` (a fresh optimiser, or one loaded from a checkpoint)."""
        steps = 0.0
        for p, st in zip(params, self.state, strict=True):
            s = opt.state.get(p, {})
            for key in self._keys():
                st[key][k].copy_(s[key]) if key in s else st[key][k].zero_()
            if "step" in s:
                steps = float(s["step"])
        self.steps[k] = steps

