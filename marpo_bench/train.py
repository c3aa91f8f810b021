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

Seed groups (``run --vectorize-seeds``)
-------------------------------------
``train_seed_group`` trains the seeds of one (algorithm, task, config, budget) as one batched
learner (the algorithm's optional ``batched``, e.g. ``baselines.qmix.QMixSeeds``). Each seed keeps
its own ``_Run``: record, envs, evaluation, checkpoints, ``policy.pt``, the same run id and files
as an unbatched run, through the batched learner's member for that seed (an ordinary learner
whose networks the batched one writes back before every iteration's callbacks). So a group
resumes from its runs' checkpoints, and a run started batched can finish unbatched and back.
One seed's failure stops the group's shared computation: that run records its reason, the others
"stopped with its batch" (retryable).

Fault injection for tests (hidden): ``MARPO_BENCH_FAULT=kind@step[:run_id_part],...`` with kind
``nan`` (that iteration's loss becomes NaN), ``raise`` (RuntimeError), ``exit`` (the process
dies, as in a crash) or ``sigkill`` (the process SIGKILLs itself, as the kernel's OOM killer does),
at the first iteration with env steps >= step of the runs whose id contains
``run_id_part`` (every run when omitted).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
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

ProgressFn = Callable[..., None]  # (env_steps_done, total[, last eval return])

CHECKPOINT_FORMAT = 1
"""Layout of the resume state inside ``checkpoint.pt`` (the store versions the file itself)."""

FAULT_ENV = "MARPO_BENCH_FAULT"
FAULT_KINDS = ("nan", "raise", "exit", "sigkill")


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
    contains ``match``: ``nan`` (a NaN loss), ``raise`` (RuntimeError), ``exit`` (a crash) or
    ``sigkill`` (the process is killed by SIGKILL, as by the OOM killer)."""

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


def _open_sink(spec: RunSpec, results: Path | None, study: str, loggers: tuple[str, ...]) -> store.RunSink:
    if results is None:
        raise ValueError("train_run needs a results directory or a sink")
    run_path = store.run_dir(results, study, spec.run_id)
    sink: store.RunSink = store.StoreSink(run_path)
    if loggers:
        from marpo_bench.loggers import LoggedSink, RunLog

        sink = LoggedSink(sink, RunLog(loggers, run_path))
    return sink


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
        sink = _open_sink(spec, results, study, loggers)
    if not sink.acquire():  # another live process trains this run now: leave it alone
        return RunResult(spec.run_id, "skipped", "being trained by another process")
    try:
        run = _Run(spec, sink, progress, checkpoint_every, faults, attempt)
        return _train_opened(run) if run.open() else run.result
    finally:
        sink.close()


def _train_opened(run: _Run) -> RunResult:
    """Train an opened run with its own learner."""
    with run.guard():
        run.build_envs()
        algo = run.algo_cls(run.cfg, run.env.info, run.device, run.spec.seed)
        start = run.attach(algo)
        # ``start_steps`` only when resuming: learners and test doubles keep the 4-argument call.
        algo.learn(run.env, run.spec.steps, run.spec.seed, run.on_iteration,
                   **({"start_steps": start} if start else {}))
        run.complete()
    return run.result


class _GroupFailure(Exception):
    """Raised out of a batched learner when one seed's iteration failed: names the run."""

    def __init__(self, run_id: str, exc: Exception) -> None:
        super().__init__(one_line(exc))
        self.run_id, self.exc = run_id, exc


def train_seed_group(specs: list[RunSpec], results: Path | None, study: str = "default",
                     progress: Callable[[str], ProgressFn] | None = None, *,
                     sinks: Sequence[store.RunSink] | None = None,
                     checkpoint_every: int | None = None, faults: tuple[Fault, ...] | None = None,
                     attempt: int = 1, loggers: tuple[str, ...] = ()) -> list[RunResult]:
    """Train the seeds of one (algorithm, task, config, budget) as one batched learner (the
    algorithm's ``batched``), each stored as its own ordinary run: same run ids and files as
    :func:`train_run`, each evaluated, checkpointed and saved through its own member learner, so a
    run started batched resumes unbatched and back. Complete runs are skipped; the others resume
    in batches of those whose checkpoints are at the same env step (one alone trains unbatched).
    ``progress(run_id)`` gives each run's progress callback; ``sinks`` (one per spec, e.g. a Ray
    worker's) replace the runs' directories under ``results``.

    One seed's failure stops the batch (the seeds share one computation): that run is marked
    failed with its reason (retryable as in :func:`train_run`), the others failed with
    "stopped with its batch", retryable, so a retry resumes them from their checkpoints."""
    specs = list(specs)
    keys = {(s.algo, s.env, s.task, s.steps, s.overrides, s.device) for s in specs}
    if len(keys) != 1 or len({s.seed for s in specs}) != len(specs):
        raise ValueError("a seed group holds distinct seeds of one algorithm, task, config and budget")
    out: dict[str, RunResult] = {}
    opened: list[store.RunSink] = []
    runs: list[_Run] = []
    try:
        if sinks is not None and len(sinks) != len(specs):
            raise ValueError("train_seed_group needs one sink per spec")
        for i, spec in enumerate(specs):
            sink = sinks[i] if sinks is not None else _open_sink(spec, results, study, loggers)
            if not sink.acquire():
                out[spec.run_id] = RunResult(spec.run_id, "skipped", "being trained by another process")
                continue
            opened.append(sink)
            run = _Run(spec, sink, progress(spec.run_id) if progress else None, checkpoint_every, faults, attempt)
            if run.open():
                runs.append(run)
            else:
                out[spec.run_id] = run.result
        by_start: dict[int, list[_Run]] = {}
        for run in runs:
            by_start.setdefault(int(run.resume["env_steps"]) if run.resume else 0, []).append(run)
        for group in by_start.values():
            if len(group) == 1:
                out[group[0].spec.run_id] = _train_opened(group[0])
            else:
                for run, res in zip(group, _train_batched(group), strict=True):
                    out[run.spec.run_id] = res
    finally:
        for sink in opened:
            sink.close()
    return [out[s.run_id] for s in specs]


def _train_batched(runs: list[_Run]) -> list[RunResult]:
    """Train opened runs (same config, same start) as one batched learner."""

    def tagged(run: _Run) -> Callable[[int, dict[str, float]], None]:
        def on_iteration(steps: int, metrics: dict[str, float]) -> None:
            try:
                run.on_iteration(steps, metrics)
            except Exception as exc:
                raise _GroupFailure(run.spec.run_id, exc) from exc
        return on_iteration

    first = runs[0]
    try:
        for run in runs:
            run.build_envs()
        seeds = [r.spec.seed for r in runs]
        batched = first.algo_cls.batched(first.cfg, first.env.info, first.device, seeds)
        for run in runs:
            run.seed_batch = len(runs)
        starts = [run.attach(member) for run, member in zip(runs, batched.members, strict=True)]
        batched.learn([r.env for r in runs], first.spec.steps, seeds, [tagged(r) for r in runs],
                      start_steps=starts[0])
        for run in runs:
            run.complete()
    except KeyboardInterrupt:
        for run in runs:
            run.mark_interrupted()
        raise
    except Exception as exc:
        culprit, cause = (exc.run_id, exc.exc) if isinstance(exc, _GroupFailure) else (None, exc)
        for run in runs:
            if run.result is not None:
                continue
            if culprit in (None, run.spec.run_id):
                run.mark_failed(cause)
            else:
                run.mark_failed(RuntimeError(f"stopped with its batch: run {culprit} failed: {one_line(cause)}"))
    finally:
        for run in runs:
            run.close_envs()
    return [run.result for run in runs]


class _Run:
    """One run's life around its learner: the record, the envs, evaluation, checkpoints, the saved
    policy and the result. :func:`train_run` drives one learner through it; a seed group drives
    each member of a batched learner through its own."""

    def __init__(self, spec: RunSpec, sink: store.RunSink, progress: ProgressFn | None,
                 checkpoint_every: int | None, faults: tuple[Fault, ...] | None, attempt: int) -> None:
        self.spec, self.sink, self.progress = spec, sink, progress
        self.checkpoint_every, self.faults, self.attempt = checkpoint_every, faults, attempt
        self.seed_batch = 1  # how many seeds its learner trains at once (``run --vectorize-seeds``)
        self.result: RunResult | None = None
        self.env: CheckpointableEnv | None = None
        self.eval_env: Any = None
        self.algo: Any = None
        self.resume: dict | None = None

    def open(self) -> bool:
        """Read what an earlier attempt left and write the run's record. False when there is
        nothing to train (``result`` says why: complete, or a damaged checkpoint)."""
        spec, sink = self.spec, self.sink
        problem = ""
        try:
            status, ckpt = sink.previous()
        except store.StoreError as exc:  # e.g. a damaged checkpoint: say so rather than start over
            status, ckpt, problem = "failed", None, str(exc)
        if status == "complete":
            self.result = RunResult(spec.run_id, "skipped")
            return False
        self.mine = [f for f in (faults_from_env() if self.faults is None else self.faults) if f.applies(spec.run_id)]
        self.cfg = cfg = build_config(spec)
        self.rc = rc = run_config(spec.overrides)
        # What run.json and checkpoints store as the run's config: the algorithm's settings and the run's
        self.config = config = {**to_dict(cfg), **to_dict(rc)}
        self.device = device = resolve_device(spec.device)
        self.algo_cls = algo_cls = get_algorithm(spec.algo)
        self.resume = resume = _usable_checkpoint(ckpt, spec, config)
        self.interval = rc.eval_interval or max(spec.steps // 20, 1)
        self.every = self.interval if self.checkpoint_every is None else self.checkpoint_every
        commit, dirty = provenance.code_provenance()
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        self.record = record = {
            "run_id": spec.run_id, "algo": spec.algo, "env": spec.env, "task": spec.task, "seed": spec.seed,
            "budget": spec.steps, "overrides": [list(p) for p in spec.overrides], "config": config,
            "recipe": {key: entry.source for key, entry in recipe_entries(algo_cls, spec.env, spec.task)
                       if isinstance(entry, Recipe)},
            "status": "running", "message": "", "started": resume["started"] if resume else provenance.now(),
            "finished": None, "wall_seconds": resume["wall_seconds"] if resume else 0.0,
            "env_steps": resume["env_steps"] if resume else 0, "versions": provenance.versions(),
            "git_commit": commit, "uncommitted_changes": dirty,
            "host": provenance.host(gpu), "torch_threads": torch.get_num_threads(), "device": str(device),
            "eval_mode": rc.eval_mode, "eval_episodes": rc.eval_episodes, "checkpoint_every": self.every,
            "attempt": self.attempt, "resumed_from": resume["env_steps"] if resume else None, "resume_exact": None,
        }
        if ckpt is not None and resume is None:
            record["resume_note"] = "the checkpoint is from another config or format: restarted from scratch"
        if problem:
            record.update(status="failed", message=problem, finished=provenance.now())
            with contextlib.suppress(store.StoreError):  # a damaged run.json is left for the user to see
                sink.write_record(record)
            self.result = RunResult(spec.run_id, "failed", problem)
            return False
        sink.write_record(record)
        self.t0 = time.perf_counter() - record["wall_seconds"]
        return True

    def build_envs(self) -> None:
        spec, cfg, rc = self.spec, self.cfg, self.rc
        # A spec comes from the command line, a preset or code (plan, regress suites), never from a
        # stored run.json: its task may import what it names.
        self.env = CheckpointableEnv(make_env(spec.env, spec.task, cfg.num_envs, device="cpu", agent_id=cfg.agent_id,
                                              trust_imports=True))
        self.eval_env = make_env(spec.env, spec.task, rc.eval_episodes, device="cpu", agent_id=cfg.agent_id,
                                 trust_imports=True)
        self.record.update(reward_scale=self.env.info.reward_scale, episode_limit=self.env.info.episode_limit)

    def attach(self, algo: Any) -> int:
        """Take ``algo`` as the run's learner: evaluate it at env step 0, or put the checkpoint
        back into it and the env. Returns the env step training starts from."""
        self.algo = algo
        # Whether the algorithm's state_dict holds all in-flight episode state (e.g. the GRU state
        # carried across rollouts); if not, mid-episode envs restart on resume.
        self.mid_episode_ok = bool(self.algo_cls.resumes_mid_episode)
        self.declared = {"train_return_mean", *self.algo_cls.metrics}
        self.extra_columns = tuple(m for m in self.algo_cls.metrics if m not in store.METRIC_COLUMNS)
        self.deterministic = self.rc.eval_mode == "greedy"
        self.rows: list[dict[str, Any]] = []
        self.pending: list[dict[str, float]] = []
        self.next_eval, self.next_ckpt = self.interval, self.every or 0
        self.last_steps = 0
        resume, spec, record = self.resume, self.spec, self.record
        record["seed_batch"] = self.seed_batch
        if resume is None:
            self.log_eval(0)
            return 0
        start = self.last_steps = int(resume["env_steps"])
        fallback_seed = (spec.seed * 1_000_003 + start) % (2**31 - 1)
        exact = self.env.restore(resume["env"], spec.seed, fallback_seed)
        algo.load_state_dict(resume["algo"])
        if not exact:
            algo.forget_episodes()  # the episodes restart: so does any state carried across them
        self.rows[:] = resume["rows"]
        self.pending[:] = resume["pending"]
        self.next_eval, self.next_ckpt = int(resume["next_eval"]), int(resume["next_checkpoint"])
        # ``resumes_exactly`` False: the algorithm does not save all it learns from (QMix's
        # replay buffer). CPU reductions split by thread count, so another count (e.g. another
        # --threads) gives other bits (checkpoints without the count predate it: their runs
        # used one count throughout).
        same_threads = resume.get("torch_threads", torch.get_num_threads()) == torch.get_num_threads()
        # A batched learner adds up its matmuls in another order than an unbatched one: a run
        # resumed in the other mode (or in a batch of another size) follows the same math, not
        # the same bits.
        saved_batch = int(resume.get("seed_batch", 1))
        same_batch = saved_batch == self.seed_batch
        record["resume_exact"] = exact and bool(self.algo_cls.resumes_exactly) and same_threads and same_batch
        if not same_threads:
            record["resume_note"] = (f"resumed with {torch.get_num_threads()} torch threads, checkpointed with "
                                     f"{resume['torch_threads']}: the same math, not the same bits")
        elif not same_batch:
            record["resume_note"] = (f"resumed in a batch of {self.seed_batch} seed(s), checkpointed in a batch of "
                                     f"{saved_batch} (run --vectorize-seeds): the same math, not the same bits")
        self.sink.write_metrics(self.rows, self.extra_columns)  # drop rows evaluated after the checkpoint
        self.sink.write_record(record)
        if self.progress is not None:
            self.progress(min(start, spec.steps), spec.steps)
        return start

    def log_eval(self, steps: int) -> None:
        row: dict[str, Any] = {"env_steps": steps, "wall_seconds": time.perf_counter() - self.t0}
        row.update(evaluate(self.algo, self.eval_env, eval_seed_of(self.spec.seed, len(self.rows)),
                            self.deterministic))
        pending = self.pending
        if pending:  # training metrics: mean over the updates since the last evaluation
            for key in pending[0]:
                vals = [p[key] for p in pending if key in p and not math.isnan(p[key])]
                row[key] = float(np.mean(vals)) if vals else math.nan
            pending.clear()
        self.rows.append(row)
        if self.progress is not None:  # the run's bar shows this evaluation's return
            self.progress(min(steps, self.spec.steps), self.spec.steps, row["eval_return_mean"])
        self.sink.write_metrics(self.rows, self.extra_columns)
        self.record.update(env_steps=steps, wall_seconds=row["wall_seconds"])
        self.sink.write_record(self.record)

    def checkpoint(self, steps: int, complete: bool) -> None:
        self.sink.write_checkpoint({
            "format": CHECKPOINT_FORMAT, "run_id": self.spec.run_id, "config": self.config, "env_steps": steps,
            "complete": complete, "algo": self.algo.state_dict(), "env": self.env.snapshot(self.mid_episode_ok),
            "rows": [dict(r) for r in self.rows], "pending": [dict(p) for p in self.pending],
            "next_eval": self.next_eval, "next_checkpoint": self.next_ckpt,
            "wall_seconds": time.perf_counter() - self.t0, "started": self.record["started"],
            "torch_threads": torch.get_num_threads(), "seed_batch": self.seed_batch,
        })

    def on_iteration(self, steps: int, metrics: dict[str, float]) -> None:
        spec = self.spec
        self.last_steps = steps
        for fault in self.mine:
            if steps >= fault.step:
                if fault.kind == "exit":
                    os._exit(17)
                if fault.kind == "sigkill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if fault.kind == "raise":
                    raise RuntimeError(f"injected fault at env step {steps} ({FAULT_ENV})")
                loss = next((k for k in metrics if k.endswith("loss")), "loss")
                metrics[loss] = math.nan
        undeclared = sorted(set(metrics) - self.declared)
        if undeclared:
            raise ConfigError(f"{spec.algo} reports metric(s) {', '.join(undeclared)} that its class does not "
                              "declare in `metrics` (see marpo_bench.algos.Algorithm)")
        bad = [k for k, v in metrics.items() if k != "train_return_mean" and not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"non-finite {bad[0]} at env step {steps}")
        self.pending.append(metrics)
        if self.progress is not None:
            self.progress(min(steps, spec.steps), spec.steps)
        if steps >= self.next_eval or steps >= spec.steps:
            self.log_eval(steps)
            self.next_eval = (steps // self.interval + 1) * self.interval
        if self.every and steps >= self.next_ckpt and steps < spec.steps:
            self.next_ckpt = (steps // self.every + 1) * self.every
            self.checkpoint(steps, complete=False)

    def complete(self) -> None:
        """The final evaluation (if the last iterations were not evaluated), checkpoint, policy and record."""
        rows, spec, rc = self.rows, self.spec, self.rc
        if rows[-1]["env_steps"] < self.last_steps and self.pending:
            self.log_eval(self.last_steps)
        self.checkpoint(self.last_steps, complete=True)
        self.sink.write_policy(saved_policy(self.algo, spec, self.config, {
            "seed": eval_seed_of(spec.seed, len(rows) - 1), "episodes": rc.eval_episodes, "mode": rc.eval_mode,
            "env_steps": rows[-1]["env_steps"]}))
        self.record.update(status="complete", finished=provenance.now(), wall_seconds=time.perf_counter() - self.t0)
        self.sink.write_record(self.record)
        self.result = RunResult(spec.run_id, "complete")

    def mark_interrupted(self) -> None:
        self.record.update(status="interrupted", message="interrupted by the user", finished=provenance.now(),
                           wall_seconds=time.perf_counter() - self.t0)
        self.sink.write_record(self.record)

    def mark_failed(self, exc: Exception) -> None:
        """Record the failure (the grid goes on) and set the result."""
        msg = one_line(exc)
        self.record.update(status="failed", message=msg, finished=provenance.now(),
                           wall_seconds=time.perf_counter() - self.t0)
        self.sink.write_record(self.record)
        self.result = RunResult(self.spec.run_id, "failed", msg, retryable=not isinstance(exc, _PERMANENT))

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Ctrl-C marks the run interrupted (and goes on up); any other exception marks it failed."""
        try:
            yield
        except KeyboardInterrupt:
            self.mark_interrupted()
            raise
        except Exception as exc:
            self.mark_failed(exc)
        finally:
            self.close_envs()

    def close_envs(self) -> None:
        for e in (self.env, self.eval_env):
            if e is not None:
                e.close()
        self.env = self.eval_env = None
