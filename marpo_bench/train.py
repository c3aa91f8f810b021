"""One training run, end to end: RunSpec -> env + algorithm -> periodic evaluation -> checkpoints -> store.

The runner owns evaluation, checkpoints and storage so every algorithm is evaluated, logged and
resumed the same way (docs/algorithms.md, pitfalls: one evaluation mode per run, recorded; env steps counted over
every parallel env; no silent NaN).

Where results go: a ``store.RunSink``. ``store.StoreSink`` writes the run directory directly (local
executor); under Ray a worker's sink forwards the same calls to the driver, which alone writes the
store (``executors/ray.py``). The sink also hands over what an earlier attempt left: its status and
its checkpoint.

Checkpoints and resume
----------------------
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

Fault injection for tests (hidden): ``MARPO_BENCH_FAULT=kind@step[:run_id_part],...`` with kind
``nan`` (that iteration's loss becomes NaN), ``raise`` (RuntimeError) or ``exit`` (the process
dies, as in a crash), at the first iteration with env steps >= step of the runs whose id contains
``run_id_part`` (every run when omitted).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marpo_bench import provenance, registry, store
from marpo_bench.algos import get_algorithm
from marpo_bench.config import (
    ConfigError,
    Recipe,
    RunSpec,
    apply_overrides,
    one_line,
    overrides_for,
    run_config,
    to_dict,
)
from marpo_bench.envs import make_env
from marpo_bench.envs.base import MultiAgentVecEnv, SnapshotEnv, TimeStep

ProgressFn = Callable[[int, int], None]  # (env_steps_done, total)

CHECKPOINT_FORMAT = 1
"""Layout of the resume state inside ``checkpoint.pt`` (the store versions the file itself)."""

FAULT_ENV = "MARPO_BENCH_FAULT"
FAULT_KINDS = ("nan", "raise", "exit")


def recipe_entries(algo_cls: Any, family: str, task: str) -> list[tuple[str, Any]]:
    """The entries of an algorithm's recipe table (``DEFAULTS_BY_FAMILY``) that apply to
    ``family:task``, least specific first: the family's, then the task's (key ``family:task``).
    An entry is a :class:`~marpo_bench.config.Recipe` (values and their source) or a plain dict.
    A task with parameters takes its base task's entry (``simple_spread?num_agents=5``:
    ``simple_spread``'s)."""
    table = getattr(algo_cls, "DEFAULTS_BY_FAMILY", {})
    base = task.partition("?")[0]
    return [(key, table[key]) for key in (family, f"{family}:{base}") if key in table]


def build_config(spec: RunSpec) -> Any:
    """The algorithm's config for this run: class defaults, then the env family's defaults for
    this algorithm (``EnvFamily.algo_defaults``, for families the algorithm's own table does not
    know), then its recipe for the env family and for the task (``recipe_entries``), then the
    user's ``--set`` overrides, then the config's own ``resolved()`` where it has one (every
    setting left to the algorithm filled in)."""
    algo_cls = get_algorithm(spec.algo)
    cfg = algo_cls.Config()
    family_defaults = registry.env_family(spec.env).algo_defaults.get(spec.algo, {})
    if family_defaults:
        cfg = apply_overrides(cfg, {k: str(v) for k, v in family_defaults.items()}, spec.algo)
    for _, entry in recipe_entries(algo_cls, spec.env, spec.task):
        values = entry.values if isinstance(entry, Recipe) else entry
        cfg = apply_overrides(cfg, {k: str(v) for k, v in values.items()}, spec.algo)
    scoped = overrides_for(spec.algo, spec.overrides, set(registry.algorithm_names()))
    known = set(cfg.__dataclass_fields__)
    # Unscoped keys apply to every algorithm that has the setting; the CLI checks each is known
    # to at least one algorithm of the grid. Scoped keys (``algo.key``) must exist.
    scoped_keys = {k.split(".", 1)[1] for k, _ in spec.overrides if k.startswith(spec.algo + ".")}
    mine = {k: v for k, v in scoped.items() if k in known or k in scoped_keys}
    cfg = apply_overrides(cfg, mine, spec.algo)
    # Settings an algorithm fills itself (QMix's lineage defaults) are spelled out, so that run.json
    # stores the values the run used, not nulls.
    resolved = getattr(cfg, "resolved", None)
    return resolved() if callable(resolved) else cfg


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; a clear error when CUDA is asked for but absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but this machine has no CUDA device; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"bad --device {device!r}: use cpu, cuda, cuda:N or auto") from None


@torch.no_grad()
def evaluate(algo: Any, env: MultiAgentVecEnv, seed: int, deterministic: bool) -> dict[str, float]:
    """Run one episode in each of the eval env's E envs (the first episode of each, so short
    episodes are not over-counted) and return mean/std return, win rate and episode count."""
    E = env.info.num_envs
    ts = env.reset(seed)
    returns = torch.full((E,), math.nan)
    wins = torch.full((E,), math.nan)
    have = torch.zeros(E, dtype=torch.bool)
    act_state = algo.initial_act_state(E)
    for _ in range(env.info.episode_limit + 1):
        actions, act_state = algo.act(ts, act_state, deterministic=deterministic)
        ts = env.step(actions)
        new = ts.done.cpu() & ~have
        returns[new] = ts.episode_return.cpu()[new].float()
        wins[new] = ts.won.cpu()[new].float()
        have |= new
        if bool(have.all()):
            break
    if not bool(have.any()):
        raise RuntimeError(f"evaluation ended no episode within {env.info.episode_limit + 1} steps")
    r = returns[have].numpy()
    w = wins[have].numpy()
    return {
        "eval_return_mean": float(r.mean()),
        "eval_return_std": float(r.std()),
        "eval_win_rate": float(np.mean(w)) if env.info.has_won else math.nan,
        "eval_episodes": int(have.sum()),
    }


# ----------------------------------------------------------------------------------------------
# fault injection (tests) and results


@dataclass(frozen=True)
class Fault:
    """A fault injected at the first iteration with ``env_steps >= step`` of the runs whose id
    contains ``match``: ``nan`` (a NaN loss), ``raise`` (RuntimeError) or ``exit`` (a crash)."""

    kind: str
    step: int
    match: str = ""

    def applies(self, run_id: str) -> bool:
        return self.match in run_id


def parse_faults(text: str) -> tuple[Fault, ...]:
    """Parse ``kind@step[:run_id_part]`` items separated by commas (ConfigError when malformed)."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        head, _, match = item.partition(":")
        kind, sep, step = head.strip().partition("@")
        if kind not in FAULT_KINDS or not sep or not step.strip().isdigit():
            raise ConfigError(f"bad {FAULT_ENV} item {item!r}: use kind@step[:run_id_part], "
                              f"kind one of {', '.join(FAULT_KINDS)}")
        out.append(Fault(kind, int(step), match.strip()))
    return tuple(out)


def faults_from_env() -> tuple[Fault, ...]:
    """The faults requested through ``MARPO_BENCH_FAULT`` (none when unset)."""
    return parse_faults(os.environ.get(FAULT_ENV, ""))


@dataclass
class RunResult:
    run_id: str
    status: str  # complete | skipped | failed | interrupted
    message: str = ""
    retryable: bool = False  # a failure that another attempt may not repeat (not NaN, not bad config)
    seconds: float = 0.0  # wall time of the attempt, as the executor measured it


# Failures that another attempt from the same checkpoint would repeat: not retried.
_PERMANENT = (FloatingPointError, ConfigError, store.StoreError)


# ----------------------------------------------------------------------------------------------
# env state at iteration boundaries


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


# ----------------------------------------------------------------------------------------------
# one run


def eval_seed_of(seed: int, index: int) -> int:
    """The env seed of a run's ``index``-th evaluation (0 at env step 0): never a training seed."""
    return 10_000_019 * (seed + 1) + index


POLICY_FORMAT = 1


def saved_policy(algo: Any, spec: RunSpec, config: dict, final_eval: dict) -> dict:
    """A complete run's final policy as stored in ``policy.pt``: what ``act`` needs (the algorithm's
    ``policy_state_dict``, else its whole ``state_dict``), what rebuilds it (algorithm, env, task,
    seed, resolved config) and how its final evaluation ran (eval seed, episodes, mode), so
    ``marpo-bench eval`` can repeat that evaluation anywhere."""
    own = getattr(algo, "policy_state_dict", None)
    return {"format": POLICY_FORMAT, "run_id": spec.run_id, "algo": spec.algo, "env": spec.env, "task": spec.task,
            "seed": spec.seed, "config": config, "kind": "policy" if callable(own) else "state",
            "state": own() if callable(own) else algo.state_dict(), "final_eval": final_eval}


def _usable_checkpoint(ckpt: dict | None, spec: RunSpec, config: dict) -> dict | None:
    """The checkpoint when it can continue this run (same run, format and resolved config)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        return None
    if ckpt.get("run_id") != spec.run_id or ckpt.get("config") != config:
        return None
    return ckpt


def train_run(spec: RunSpec, results: Path | None = None, study: str = "default",
              progress: ProgressFn | None = None, *, sink: store.RunSink | None = None,
              checkpoint_every: int | None = None, faults: tuple[Fault, ...] | None = None,
              attempt: int = 1, loggers: tuple[str, ...] = ()) -> RunResult:
    """Train one run and store it (under ``results/study/runs/<run_id>``, or through ``sink``).

    A complete run is skipped; an incomplete one continues from its checkpoint. Checkpoints are
    taken every ``checkpoint_every`` env steps at iteration boundaries (None: at every evaluation
    point; 0: only at the end). An exception marks the run ``failed`` with a one-line message
    (``retryable`` unless it is a NaN, a bad config or a store problem), Ctrl-C marks it
    ``interrupted`` and is re-raised. ``faults``: injected faults (default: ``MARPO_BENCH_FAULT``).
    ``loggers``: also send the metrics rows to these (``loggers.LOGGERS``; with ``results``)."""
    if sink is None:
        if results is None:
            raise ValueError("train_run needs a results directory or a sink")
        run_path = store.run_dir(results, study, spec.run_id)
        sink = store.StoreSink(run_path)
        if loggers:
            from marpo_bench.loggers import LoggedSink, RunLog

            sink = LoggedSink(sink, RunLog(loggers, run_path))
    if not sink.acquire():  # another live process trains this run now: leave it alone
        return RunResult(spec.run_id, "skipped", "being trained by another process")
    try:
        return _train_run(spec, sink, progress, checkpoint_every, faults, attempt)
    finally:
        sink.close()


def _train_run(spec: RunSpec, sink: store.RunSink, progress: ProgressFn | None, checkpoint_every: int | None,
               faults: tuple[Fault, ...] | None, attempt: int) -> RunResult:
    """:func:`train_run`'s body, run while holding the run's writer lock."""
    problem = ""
    try:
        status, ckpt = sink.previous()
    except store.StoreError as exc:  # e.g. a damaged checkpoint: say so rather than start over
        status, ckpt, problem = "failed", None, str(exc)
    if status == "complete":
        return RunResult(spec.run_id, "skipped")
    mine = [f for f in (faults_from_env() if faults is None else faults) if f.applies(spec.run_id)]
    cfg = build_config(spec)
    rc = run_config(spec.overrides)
    # What run.json and checkpoints store as the run's config: the algorithm's settings and the run's
    config = {**to_dict(cfg), **to_dict(rc)}
    device = resolve_device(spec.device)
    algo_cls = get_algorithm(spec.algo)
    resume = _usable_checkpoint(ckpt, spec, config)
    interval = rc.eval_interval or max(spec.steps // 20, 1)
    every = interval if checkpoint_every is None else checkpoint_every
    commit, dirty = provenance.code_provenance()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    record: dict[str, Any] = {
        "run_id": spec.run_id, "algo": spec.algo, "env": spec.env, "task": spec.task, "seed": spec.seed,
        "budget": spec.steps, "overrides": [list(p) for p in spec.overrides], "config": config,
        "recipe": {key: entry.source for key, entry in recipe_entries(algo_cls, spec.env, spec.task)
                   if isinstance(entry, Recipe)},
        "status": "running", "message": "", "started": resume["started"] if resume else provenance.now(),
        "finished": None, "wall_seconds": resume["wall_seconds"] if resume else 0.0,
        "env_steps": resume["env_steps"] if resume else 0, "versions": provenance.versions(),
        "git_commit": commit, "uncommitted_changes": dirty,
        "host": provenance.host(gpu), "torch_threads": torch.get_num_threads(), "device": str(device),
        "eval_mode": rc.eval_mode, "eval_episodes": rc.eval_episodes, "checkpoint_every": every,
        "attempt": attempt, "resumed_from": resume["env_steps"] if resume else None, "resume_exact": None,
    }
    if ckpt is not None and resume is None:
        record["resume_note"] = "the checkpoint is from another config or format: restarted from scratch"
    if problem:
        record.update(status="failed", message=problem, finished=provenance.now())
        with contextlib.suppress(store.StoreError):  # a damaged run.json is left for the user to see
            sink.write_record(record)
        return RunResult(spec.run_id, "failed", problem)
    sink.write_record(record)
    t0 = time.perf_counter() - record["wall_seconds"]
    env: CheckpointableEnv | None = None
    eval_env = None
    try:
        env = CheckpointableEnv(make_env(spec.env, spec.task, cfg.num_envs, device="cpu", agent_id=cfg.agent_id))
        eval_env = make_env(spec.env, spec.task, rc.eval_episodes, device="cpu", agent_id=cfg.agent_id)
        record.update(reward_scale=env.info.reward_scale, episode_limit=env.info.episode_limit)
        algo = algo_cls(cfg, env.info, device, spec.seed)
        # Whether the algorithm's state_dict holds all in-flight episode state (e.g. the GRU state
        # carried across rollouts); if not, mid-episode envs restart on resume.
        mid_episode_ok = bool(algo_cls.resumes_mid_episode)
        declared = {"train_return_mean", *algo_cls.metrics}
        extra_columns = tuple(m for m in algo_cls.metrics if m not in store.METRIC_COLUMNS)
        deterministic = rc.eval_mode == "greedy"
        rows: list[dict[str, Any]] = []
        pending: list[dict[str, float]] = []
        next_eval, next_ckpt = interval, every or 0
        last_steps = 0

        def log_eval(steps: int) -> None:
            row: dict[str, Any] = {"env_steps": steps, "wall_seconds": time.perf_counter() - t0}
            row.update(evaluate(algo, eval_env, eval_seed_of(spec.seed, len(rows)), deterministic))
            if pending:  # training metrics: mean over the updates since the last evaluation
                for key in pending[0]:
                    vals = [p[key] for p in pending if key in p and not math.isnan(p[key])]
                    row[key] = float(np.mean(vals)) if vals else math.nan
                pending.clear()
            rows.append(row)
            sink.write_metrics(rows, extra_columns)
            record.update(env_steps=steps, wall_seconds=row["wall_seconds"])
            sink.write_record(record)

        def checkpoint(steps: int, complete: bool) -> None:
            sink.write_checkpoint({
                "format": CHECKPOINT_FORMAT, "run_id": spec.run_id, "config": config, "env_steps": steps,
                "complete": complete, "algo": algo.state_dict(), "env": env.snapshot(mid_episode_ok),
                "rows": [dict(r) for r in rows], "pending": [dict(p) for p in pending], "next_eval": next_eval,
                "next_checkpoint": next_ckpt, "wall_seconds": time.perf_counter() - t0,
                "started": record["started"], "torch_threads": torch.get_num_threads(),
            })

        def on_iteration(steps: int, metrics: dict[str, float]) -> None:
            nonlocal next_eval, next_ckpt, last_steps
            last_steps = steps
            for fault in mine:
                if steps >= fault.step:
                    if fault.kind == "exit":
                        os._exit(17)
                    if fault.kind == "raise":
                        raise RuntimeError(f"injected fault at env step {steps} ({FAULT_ENV})")
                    loss = next((k for k in metrics if k.endswith("loss")), "loss")
                    metrics[loss] = math.nan
            undeclared = sorted(set(metrics) - declared)
            if undeclared:
                raise ConfigError(f"{spec.algo} reports metric(s) {', '.join(undeclared)} that its class does not "
                                  "declare in `metrics` (see marpo_bench.algos.Algorithm)")
            bad = [k for k, v in metrics.items() if k != "train_return_mean" and not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"non-finite {bad[0]} at env step {steps}")
            pending.append(metrics)
            if progress is not None:
                progress(min(steps, spec.steps), spec.steps)
            if steps >= next_eval or steps >= spec.steps:
                log_eval(steps)
                next_eval = (steps // interval + 1) * interval
            if every and steps >= next_ckpt and steps < spec.steps:
                next_ckpt = (steps // every + 1) * every
                checkpoint(steps, complete=False)

        start = 0
        if resume is None:
            log_eval(0)
        else:
            start = last_steps = int(resume["env_steps"])
            fallback_seed = (spec.seed * 1_000_003 + start) % (2**31 - 1)
            exact = env.restore(resume["env"], spec.seed, fallback_seed)
            algo.load_state_dict(resume["algo"])
            if not exact:
                algo.forget_episodes()  # the episodes restart: so does any state carried across them
            rows[:] = resume["rows"]
            pending[:] = resume["pending"]
            next_eval, next_ckpt = int(resume["next_eval"]), int(resume["next_checkpoint"])
            # ``resumes_exactly`` False: the algorithm does not save all it learns from (QMix's
            # replay buffer). CPU reductions split by thread count, so another count (e.g. another
            # --threads) gives other bits (checkpoints without the count predate it: their runs
            # used one count throughout).
            same_threads = resume.get("torch_threads", torch.get_num_threads()) == torch.get_num_threads()
            record["resume_exact"] = exact and bool(algo_cls.resumes_exactly) and same_threads
            if not same_threads:
                record["resume_note"] = (f"resumed with {torch.get_num_threads()} torch threads, checkpointed with "
                                         f"{resume['torch_threads']}: the same math, not the same bits")
            sink.write_metrics(rows, extra_columns)  # drop rows evaluated after the checkpoint: they are recomputed
            sink.write_record(record)
            if progress is not None:
                progress(min(start, spec.steps), spec.steps)
        # ``start_steps`` only when resuming: learners and test doubles keep the 4-argument call.
        algo.learn(env, spec.steps, spec.seed, on_iteration, **({"start_steps": start} if start else {}))
        if rows[-1]["env_steps"] < last_steps and pending:
            log_eval(last_steps)
        checkpoint(last_steps, complete=True)
        sink.write_policy(saved_policy(algo, spec, config, {"seed": eval_seed_of(spec.seed, len(rows) - 1),
                                                           "episodes": rc.eval_episodes, "mode": rc.eval_mode,
                                                           "env_steps": rows[-1]["env_steps"]}))
        record.update(status="complete", finished=provenance.now(), wall_seconds=time.perf_counter() - t0)
        sink.write_record(record)
        return RunResult(spec.run_id, "complete")
    except KeyboardInterrupt:
        record.update(status="interrupted", message="interrupted by the user", finished=provenance.now(),
                      wall_seconds=time.perf_counter() - t0)
        sink.write_record(record)
        raise
    except Exception as exc:  # the grid goes on; the run records why it failed
        msg = one_line(exc)
        record.update(status="failed", message=msg, finished=provenance.now(), wall_seconds=time.perf_counter() - t0)
        sink.write_record(record)
        return RunResult(spec.run_id, "failed", msg, retryable=not isinstance(exc, _PERMANENT))
    finally:
        for e in (env, eval_env):
            if e is not None:
                e.close()
