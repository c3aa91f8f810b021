"""JAX plumbing shared by the JAX env families (``jax_mpe``, ``smax``): JAX's CPU defaults, a quiet
``import jaxmarl``, actions in and outputs out, and the jitted carry as a checkpoint-safe snapshot.

The family modules import this one lazily (when an env is built), so registering and listing the
families loads neither JAX nor jaxmarl. JAX defaults to the CPU platform and does not preallocate
memory unless the user's environment says otherwise.

A JAX env keeps its whole state (PRNG key, env states, episode statistics) in one pytree, the
carry. A snapshot saves it leaf by leaf as tensors, with each leaf's dtype and weak-type flag, so
that the restored carry has exactly the avals of the live one and hits the already compiled step.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402, F401  (re-exported for the family modules)
import numpy as np  # noqa: E402
import torch  # noqa: E402


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Silence stdout/stderr at the file-descriptor level and restore ``sys.stdout``/``stderr``.

    Needed for ``import jaxmarl``: it prints "Submoduled environments not found" and, importing
    its brax module, sets ``sys.stdout = sys.__stdout__``, which defeats a plain
    ``redirect_stdout`` and would silently undo any redirection the caller had installed.
    """
    saved = sys.stdout, sys.stderr
    streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    for s in streams:
        if s is not None:
            s.flush()
    try:
        kept = [os.dup(1), os.dup(2)]
    except OSError:  # no real fds (embedded interpreters): a Python-level redirect must do
        kept = []
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2) if kept else ():
            os.dup2(devnull, fd)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for s in (sys.__stdout__, sys.__stderr__):
            if s is not None:
                s.flush()
        for fd, k in zip((1, 2), kept, strict=False):  # kept is empty without real fds
            os.dup2(k, fd)
            os.close(k)
        os.close(devnull)
        sys.stdout, sys.stderr = saved


def import_jaxmarl() -> Any:
    """Import jaxmarl without its import-time notices and side effects on ``sys.stdout``."""
    with _silenced():
        import jaxmarl
    return jaxmarl


def actions_for_jit(actions: torch.Tensor, num_envs: int, num_agents: int) -> np.ndarray:
    """[E, N] torch ints -> a fresh int32 NumPy array for a jitted step (which copies it in).

    NumPy, not DLPack: ``jax.dlpack.from_dlpack`` costs about 60 us per call and the jitted call
    taking its result another ~100 us (measured, E = 8: 426 vs 266 us per jitted step); a copy, so
    a caller reusing its actions tensor cannot change what the async step reads."""
    if tuple(actions.shape) != (num_envs, num_agents):
        raise ValueError(f"actions must have shape {(num_envs, num_agents)}, got {tuple(actions.shape)}")
    return actions.detach().to("cpu", torch.int32, copy=True).numpy()


def to_torch(x: jax.Array, device: torch.device) -> torch.Tensor:
    """JAX array -> torch tensor via DLPack (zero-copy on CPU), then moved to ``device``."""
    t = torch.from_dlpack(x)
    return t if device.type == "cpu" else t.to(device)


def _leaf_to_tensor(leaf: Any) -> torch.Tensor:
    arr = np.asarray(leaf)
    if arr.dtype in (np.uint32, np.uint64):  # torch has no general unsigned support; int64 is lossless
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.array(arr, copy=True))


def _weak(x: Any) -> Any:
    """``x`` as a weakly typed JAX array, as some carry leaves are, so the restored carry hits the
    already compiled step; an extra compile (same results) if this JAX lacks the internal."""
    try:
        from jax._src.lax import lax as _lax

        return _lax._convert_element_type(x, x.dtype, weak_type=True)
    except (ImportError, AttributeError, TypeError):
        return x


def carry_snapshot(carry: Any) -> dict[str, Any]:
    """A jitted env's carry as a dict of tensors and plain values (``kind: "jax"``)."""
    leaves = jax.tree_util.tree_leaves(carry)
    return {"kind": "jax", "leaves": [_leaf_to_tensor(x) for x in leaves],
            "dtypes": [str(np.asarray(x).dtype) for x in leaves],
            "weak": [bool(getattr(x, "weak_type", False)) for x in leaves]}


def carry_restore(template: Any, snap: dict[str, Any]) -> Any:
    """The carry saved in ``snap``, rebuilt on the structure of ``template`` (a live carry of an
    identically built env). ``ValueError`` when the snapshot does not fit it."""
    if snap.get("kind") != "jax":
        raise ValueError(f"the snapshot is of kind {snap.get('kind')!r}, not a JAX env's carry")
    leaves_t, treedef = jax.tree_util.tree_flatten(template)
    saved = list(zip(snap["leaves"], snap["dtypes"], snap["weak"], strict=True))
    if len(saved) != len(leaves_t):
        raise ValueError("the saved env state does not match this env (leaf count)")
    cpu = jax.devices("cpu")[0]
    leaves = []
    for tmpl, (t, dtype, weak) in zip(leaves_t, saved, strict=True):
        arr = t.numpy().astype(dtype)
        if arr.shape != tuple(tmpl.shape) or arr.dtype != tmpl.dtype:
            raise ValueError("the saved env state does not match this env (shapes)")
        x = jax.device_put(arr, cpu)
        leaves.append(_weak(x) if weak else x)
    return jax.tree_util.tree_unflatten(treedef, leaves)
