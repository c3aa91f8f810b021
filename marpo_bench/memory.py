"""Memory known before it is allocated: every run's learner says how many bytes its buffers take
on a task (from the task's shapes, ``EnvInfo``, and its config) before anything is built, and
``run`` refuses a grid whose runs cannot fit the machine, with one line naming the setting to
lower, before any run starts or anything is written.

Estimates come from the algorithm: its optional classmethod ``memory_estimate(cfg, info, seeds=1)
-> int`` (QMix: its replay of whole episodes, exact, plus one update's working set; MAPPO/MARPO:
their rollout and update), and its optional ``memory_setting = (setting, description)``: the config
setting its memory grows with, named in the refusal (e.g. QMix's ``buffer_size``). An algorithm
without them gets :func:`default_estimate`, a floor (what any learner holds: one episode of every
env's transitions, twice), which refuses only what cannot fit whatever the algorithm keeps.

What a run may use: ``--max-memory`` (e.g. ``8G``), else the memory the machine has now
(``MemAvailable`` of ``/proc/meminfo``, else its total RAM; a CUDA device's free memory for runs on
it), shared by the runs that train at once (``--workers``); a run in a process of its own (a pool
worker, a Ray task) also needs ``RUN_OVERHEAD_BYTES`` for torch, JAX and its envs (a run in this
process ``IN_PROCESS_OVERHEAD_BYTES``: the libraries are loaded by then).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from marpo_bench.config import ConfigError, RunSpec
from marpo_bench.envs.base import EnvInfo

# A run process before its learner allocates: torch, JAX, the compiled training env and the
# evaluation env. Measured 0.93 to 1.13 GB of RSS on jax_mpe:simple_spread and smax:3m / 8m (2
# cores, one torch thread), and some 30 MB more at the first update (autograd, kernels).
RUN_OVERHEAD_BYTES = 1_200_000_000
# The same for a run trained in this process, after ``check_grid`` probed its envs (torch, JAX and
# the backends already loaded, 0.75 GB measured): its compiled training env and evaluation env.
IN_PROCESS_OVERHEAD_BYTES = 400_000_000

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT][iI]?)?[bB]?\s*$")


def parse_memory(text: str) -> int:
    """``8G``, ``8GB``, ``512M``, ``1.5T`` (powers of 1000) or ``8GiB`` (of 1024) -> bytes (> 0);
    a one-line ``ConfigError`` otherwise."""
    m = _MEMORY_RE.match(text)
    value = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()] if m else 0.0
    if not m or value < 1:
        raise ConfigError(f"bad --max-memory {text!r}: use a size such as 8G, 512M or 16GiB")
    return int(value)


def format_bytes(n: float) -> str:
    """``41.7 GB`` / ``850.0 MB`` (powers of 1000, as ``parse_memory`` reads ``G`` and ``M``)."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def meminfo_available(text: str) -> int | None:
    """``MemAvailable`` (else ``MemTotal``) in bytes from the text of ``/proc/meminfo``."""
    fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, flags=re.MULTILINE))
    kb = fields.get("MemAvailable", fields.get("MemTotal"))
    return int(kb) * 1024 if kb is not None else None


@dataclass(frozen=True)
class Budget:
    """The bytes the grid's runs may use together and where the number comes from."""

    bytes: int
    where: str  # "available", "free on cuda:0", "the machine's RAM", "allowed by --max-memory"
    given: bool = False  # from --max-memory


def available_memory(device: torch.device) -> Budget | None:
    """What learners on ``device`` can allocate now: a CUDA device's free memory, else the
    machine's available RAM (``/proc/meminfo``'s MemAvailable: free memory plus what the kernel can
    reclaim), else its total RAM; None where none can be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return Budget(int(free), f"free on {device}")
    try:
        found = meminfo_available(Path("/proc/meminfo").read_text())
    except OSError:
        found = None
    if found is not None:
        return Budget(found, "available")
    try:
        return Budget(int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "the machine's RAM")
    except (ValueError, OSError, AttributeError):
        return None


@functools.cache
def _probed_info(family: str, task: str, agent_id: bool) -> EnvInfo | None:
    from marpo_bench.envs import make_env

    try:  # a task typed by the user (``plan_grid`` parsed it): it may import what it names
        env = make_env(family, task, 1, device="cpu", agent_id=agent_id, trust_imports=True)
    except Exception:  # the run itself will fail and say why; nothing to estimate here
        return None
    try:
        return env.info
    finally:
        env.close()


def task_info(family: str, task: str, num_envs: int, agent_id: bool) -> EnvInfo | None:
    """The task's shapes for ``num_envs`` envs, from one env built and closed at once (cached per
    process): a JAX env is traced, not stepped or compiled, a SMACv2 env answers without starting
    StarCraft II. None when the env cannot be built here (the run reports that itself)."""
    info = _probed_info(family, task, bool(agent_id))
    return None if info is None else dataclasses.replace(info, num_envs=num_envs)


def default_estimate(cfg: Any, info: EnvInfo, seeds: int = 1) -> int:
    """Bytes any learner holds at least, for an algorithm without ``memory_estimate``: one episode
    (``episode_limit`` steps) of every env's transitions (obs, state, avail, alive, int64 action,
    reward, flags), twice (collected, and a copy for the update), per seed. A floor, not a bound:
    it refuses only what cannot fit whatever the algorithm keeps."""
    N, D, S, A = info.num_agents, info.obs_dim, info.state_dim, info.num_actions
    per_step = N * (4 * D + A + 1 + 8) + 4 * S + 4 + 2
    return seeds * 2 * getattr(cfg, "num_envs", info.num_envs) * info.episode_limit * per_step


def learner_bytes(algo_cls: Any, cfg: Any, info: EnvInfo, seeds: int = 1) -> int:
    """The generic entry point: the algorithm's ``memory_estimate`` where it has one, else
    :func:`default_estimate` (``seeds`` > 1: its batched learner of that many seeds)."""
    own = getattr(algo_cls, "memory_estimate", None)
    return int(own(cfg, info, seeds) if callable(own) else default_estimate(cfg, info, seeds))


def memory_setting(algo_cls: Any) -> tuple[str, str]:
    """(the setting an algorithm's memory grows with, what it holds as a template of the config's
    fields); the default's for an algorithm that does not say."""
    return getattr(algo_cls, "memory_setting", ("num_envs", "one episode of each of its {num_envs} envs (num_envs)"))


def largest_fitting(algo_cls: Any, cfg: Any, info: EnvInfo, seeds: int, setting: str, limit: int) -> int | None:
    """The largest value of ``setting`` below its value in ``cfg`` whose estimate fits in ``limit``
    bytes and whose config is valid (its ``validate``), rounded down to two significant digits;
    None when none fits. Assumes the estimate grows with the setting (bisection)."""

    def fits(v: int) -> bool:
        c = dataclasses.replace(cfg, **{setting: v})
        try:
            if callable(getattr(c, "validate", None)):
                c.validate()
        except ConfigError:
            return False
        return learner_bytes(algo_cls, c, info, seeds) <= limit

    lo, hi = 0, int(getattr(cfg, setting)) - 1  # lo fits (or is 0: nothing known to fit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if learner_bytes(algo_cls, dataclasses.replace(cfg, **{setting: mid}), info, seeds) <= limit:
            lo = mid
        else:
            hi = mid - 1
    if lo <= 0:
        return None
    step = 10 ** max(int(math.log10(lo)) - 1, 0)
    rounded = lo // step * step
    for v in (rounded, lo):  # the rounded value may be invalid (e.g. below a batch size) where lo is not
        if fits(v):
            return v
    return None


@dataclass(frozen=True)
class Need:
    """What one unit of work (a run, or a seed group trained as one batched learner) needs."""

    spec: RunSpec  # its first run
    seeds: int  # seeds in its learner
    cfg: Any  # the algorithm's config (as ``recipes.build_config`` builds it)
    info: EnvInfo
    bytes: int  # the learner's estimate


def grid_needs(units: Sequence[Sequence[RunSpec]]) -> list[Need]:
    """The learner's estimate of each unit (runs trained by one learner: one run, or the seeds of
    a group under ``--vectorize-seeds``); units whose env cannot be built here are left out."""
    from marpo_bench.algos import get_algorithm
    from marpo_bench.recipes import build_config

    out = []
    for specs in units:
        spec = specs[0]
        cfg = build_config(spec)
        info = task_info(spec.env, spec.task, cfg.num_envs, cfg.agent_id)
        if info is not None:
            need = learner_bytes(get_algorithm(spec.algo), cfg, info, len(specs))
            out.append(Need(spec, len(specs), cfg, info, need))
    return out


def check_fits(needs: Sequence[Need], budget: Budget, concurrent: int, overhead: int) -> None:
    """Raise a one-line ``ConfigError`` for the largest need that does not fit: each of
    ``concurrent`` runs trained at once gets an equal share of ``budget``, less ``overhead`` for
    its process (``RUN_OVERHEAD_BYTES``, or ``IN_PROCESS_OVERHEAD_BYTES``)."""
    from marpo_bench.algos import get_algorithm

    share = budget.bytes // max(concurrent, 1) - overhead
    too_big = [n for n in needs if n.bytes > share]
    if not too_big:
        return
    n = max(too_big, key=lambda x: x.bytes)
    algo_cls = get_algorithm(n.spec.algo)
    setting, what = memory_setting(algo_cls)
    holds = what.format(**{f.name: getattr(n.cfg, f.name) for f in dataclasses.fields(n.cfg)})
    seeds = f", {n.seeds} seeds in one learner (--vectorize-seeds)," if n.seeds > 1 else ""
    each = f", {format_bytes(budget.bytes // concurrent)} to each of {concurrent} runs at once" * (concurrent > 1)
    process = f", less {format_bytes(overhead)} for its process" if overhead else ""
    value = largest_fitting(algo_cls, n.cfg, n.info, n.seeds, setting, share)
    lower = (f"lower it, e.g. --set {n.spec.algo}.{setting}={value}" if value is not None
             else f"lower {n.spec.algo}.{setting} or the sizes it multiplies")
    has = f"{format_bytes(budget.bytes)} is {budget.where}{each}{process}"
    needs = f"needs about {format_bytes(n.bytes)} for {holds}{seeds}"
    raise ConfigError(f"{n.spec.algo} on {n.spec.env}:{n.spec.task} {needs} but {has}: {lower}, "
                      f"or {'raise' if budget.given else 'pass'} --max-memory")


def runs_at_once(executor: str, workers: int, ray_address: str | None, cpus_per_run: float) -> int:
    """How many runs (units) train at once: the local pool's workers; a local Ray instance's CPUs
    over each run's reservation; 1 on a Ray cluster (``--max-memory`` is then each run's)."""
    if executor != "ray":
        return workers
    if ray_address is not None:
        return 1
    return max(int((os.cpu_count() or 1) // cpus_per_run), 1)


def check_grid(specs: Sequence[RunSpec], device: str, max_memory: str | None, *, executor: str = "local",
               workers: int = 1, ray_address: str | None = None, cpus_per_run: float = 1.0,
               vectorize_seeds: bool = False) -> None:
    """Refuse (one-line ``ConfigError``) a grid with a run whose learner cannot fit, before
    anything is started or written. ``specs``: the runs to train (complete ones left out); the
    executor's arguments as ``run`` takes them. The budget is ``max_memory`` (e.g. ``8G``) or what
    ``device`` has available now, read after the envs were probed (their libraries loaded), shared
    by the runs that train at once (:func:`runs_at_once`); each run also needs RAM for its process
    (``RUN_OVERHEAD_BYTES`` in a pool worker or Ray task, ``IN_PROCESS_OVERHEAD_BYTES`` here). On a
    Ray cluster without ``max_memory`` nothing is checked (its nodes' memory is not known here)."""
    from marpo_bench.executors.pool import seed_units
    from marpo_bench.recipes import resolve_device

    budget = Budget(parse_memory(max_memory), "allowed by --max-memory", given=True) if max_memory else None
    if not specs or (executor == "ray" and ray_address is not None and budget is None):
        return
    units = [unit for unit, _ in seed_units([(s, "") for s in specs], vectorize_seeds)]
    needs = grid_needs(units)
    dev = resolve_device(device)
    budget = budget or available_memory(dev)
    if budget is None:
        return
    own_processes = executor == "ray" or workers > 1
    overhead = 0 if dev.type != "cpu" else RUN_OVERHEAD_BYTES if own_processes else IN_PROCESS_OVERHEAD_BYTES
    check_fits(needs, budget, min(runs_at_once(executor, workers, ray_address, cpus_per_run), len(units)), overhead)
