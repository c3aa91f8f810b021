"""Stepping the S envs of a batched learner's seeds in one compiled call (the JAX families).

``run --vectorize-seeds`` trains S seeds of one task at once; each seed keeps its own env, whose
state is one pytree (the carry) advanced by one jitted function. Stepping S such envs one after
another pays JAX's dispatch and the DLPack exchange S times per step; ``JaxEnvStack`` vmaps the
same compiled step over a leading seed axis and pays them once (jax_mpe spread, 8 seeds x 8 envs:
0.9 ms per step against 5.3 ms one by one).

``CompiledSteps`` (for a family's cache of compiled functions) and ``CarryEnv`` (for its env
class) give a JAX family what ``envs.base.SeedEnvs`` needs. This module does not import JAX
until a stack steps, so the registry can read the families without loading it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch


class CompiledSteps:
    """Mixin for a family's compiled functions: ``self.step`` (carry, *args) -> (carry, outputs),
    jitted; ``stacked_step`` is it vmapped over a leading seed axis and jitted, built once."""

    step: Callable[..., Any]
    _stacked: Callable[..., Any] | None = None

    def stacked_step(self) -> Callable[..., Any]:
        from marpo_bench.envs._jax import jax

        if self._stacked is None:
            self._stacked = jax.jit(jax.vmap(self.step))
        return self._stacked


class CarryEnv:
    """Mixin for a JAX env class whose state is ``self._carry`` and whose compiled functions are
    ``self._fn`` (a ``CompiledSteps``). The class supplies ``jit_args(actions)`` (the compiled
    step's arguments after the carry) and ``timestep(outputs)`` (its outputs, as torch tensors, as
    a TimeStep), so that ``step`` and ``JaxEnvStack`` share them."""

    _carry: Any
    _fn: CompiledSteps

    @property
    def carry(self) -> Any:
        """The jitted state (PRNG key, env states, episode statistics)."""
        return self._carry

    @carry.setter
    def carry(self, value: Any) -> None:
        self._carry = value

    def stack(self, envs: list[Any]) -> JaxEnvStack | None:
        """A ``JaxEnvStack`` of ``envs`` (this env among them) when all are this configuration."""
        if any(type(e) is not type(self) or e._fn is not self._fn for e in envs):
            return None
        return JaxEnvStack(envs, self._fn.stacked_step())


class JaxEnvStack:
    """S JAX envs of one configuration (one per seed of a batched learner) advanced by one jitted
    call: the envs' own compiled step, vmapped over a leading seed axis of their carries and
    arguments. Seed k's env follows the same stream as when it steps alone (same key splits, same
    resets); XLA may vectorise the arithmetic differently for S x E envs, so floats agree to
    about 1e-7, not always bit for bit (tests/test_seed_batch.py).

    Each env supplies ``carry`` (its jitted state, read and written), ``jit_args(actions)`` (the
    compiled step's arguments after the carry) and ``timestep(outputs)`` (its step's outputs, as
    torch tensors, as a TimeStep). The stack holds the stacked carry while it steps;
    ``store`` writes each env's slice back (before anything reads an env's own state: a
    checkpoint's snapshot); ``invalidate`` drops it (after the envs were reset or restored)."""

    def __init__(self, envs: list[Any], stacked_step: Any) -> None:
        self.envs = list(envs)
        self._step = stacked_step
        self._carry: Any = None

    def step(self, actions: list[torch.Tensor]) -> list[Any]:
        """Step every env with its actions (``actions[k]`` [E, N]): seed k's TimeStep at ``[k]``."""
        from marpo_bench.envs._jax import jax, jnp, to_torch

        if self._carry is None:
            self._carry = jax.tree.map(lambda *xs: jnp.stack(xs), *[e.carry for e in self.envs])
        args = [e.jit_args(a) for e, a in zip(self.envs, actions, strict=True)]
        stacked = tuple(np.stack([np.asarray(x) for x in xs]) for xs in zip(*args, strict=True))
        self._carry, out = self._step(self._carry, *stacked)
        dev = self.envs[0].device
        outs = [to_torch(x, dev) for x in out]
        return [e.timestep(tuple(o[k] for o in outs)) for k, e in enumerate(self.envs)]

    def store(self) -> None:
        """Write each env's slice of the stacked carry back into the env."""
        from marpo_bench.envs._jax import jax

        if self._carry is None:
            return
        for k, e in enumerate(self.envs):
            e.carry = jax.tree.map(lambda x, k=k: x[k], self._carry)

    def invalidate(self) -> None:
        """Forget the stacked carry: the next step stacks the envs' own carries again."""
        self._carry = None
