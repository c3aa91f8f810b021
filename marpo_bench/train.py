"""One training run, end to end: RunSpec -> env + algorithm -> periodic evaluation -> checkpoints -> store.

The runner owns evaluation, checkpoints and storage so every algorithm is evaluated, logged and
resumed the same way (docs/algorithms.md, pitfalls: one evaluation mode per run, recorded; env steps counted over
every parallel env; no silent NaN).

Where results go: a ``store.RunSink``. ``store.StoreSink`` writes the run directory directly (local
executor); under Ray a worker's sink forwards the same calls to the driver, which alone writes the
store (``executors/ray.py``). The sink also hands over what an earlier attempt left: its status and
its checkpoint.

Checkpoints and resume: what a checkpoint holds and what is exact on resume is ``marpo_bench.resume``.

Seed groups (``run --vectorize-seeds``)
-------------------------------------
``train_seed_group`` trains the seeds of one (algorithm, task, config, budget) as one batched
learner (the algorithm's optional ``batched``: ``algos.ppo_learner.OnPolicyLearner``,
``baselines.qmix_learner.QMixSeeds``). Each seed keeps
its own ``_Run``: record, envs, evaluation, checkpoints, ``policy.pt``, the same run id and files
as an unbatched run, through the batched learner's member for that seed (an ordinary learner
whose networks the batched one writes back before every iteration's callbacks). So a group
resumes from its runs' checkpoints, and a run started batched can finish unbatched and back.
One seed's failure stops the group's shared computation: that run records its reason, the others
"stopped with its batch" (retryable).

Fault injection for tests: ``marpo_bench.faults``. A run's config and device: ``marpo_bench.recipes``;
its evaluation: ``marpo_bench.evaluation``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marpo_bench import provenance, store
from marpo_bench.algos import get_algorithm
from marpo_bench.config import ConfigError, Recipe, RunSpec, one_line, run_config, to_dict
from marpo_bench.envs import make_env
from marpo_bench.evaluation import eval_seed_of, evaluate
from marpo_bench.faults import FAULT_ENV, Fault, faults_from_env
from marpo_bench.recipes import build_config, recipe_entries, resolve_device
from marpo_bench.resume import CheckpointableEnv

ProgressFn = Callable[..., None]  # (env_steps_done, total[, last eval return])

CHECKPOINT_FORMAT = 1
"""Layout of the resume state inside ``checkpoint.pt`` (the store versions the file itself)."""



# ----------------------------------------------------------------------------------------------
# results


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
# one run


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
