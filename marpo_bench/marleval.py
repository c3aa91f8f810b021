"""marl-eval's JSON, out and in: pool this suite's runs with BenchMARL's, Mava's or JaxMARL's.

marl-eval (instadeepai/marl-eval, README "Data Structure for Raw Experiment data") reads one JSON
file shaped ``environment -> task -> algorithm -> run -> step_i -> {step_count, metric: [values]}``,
each run ending with ``absolute_metrics -> {metric: [values]}``. Its quirks (PITFALLS.md): every
(algorithm, task) of an environment needs the same runs and evaluation steps, every metric value
is a list, algorithm names may not contain commas, and it normalises each task by min-max over
the file's own contents (this suite's report normalises with documented bounds unless
``report --normalise minmax`` asks for marl-eval's way).

Export (``marpo-bench export STUDY --format marl-eval --out FILE.json``): every complete run, its
evaluation points as ``step_i`` (``step_count`` = env steps, ``elapsed_time`` = wall seconds,
``return`` and for win-rate families ``win_rate``). The store keeps each evaluation's mean, not
its per-episode returns, so each list holds one value: the mean over that evaluation's episodes
(marl-eval accepts one-element lists). ``absolute_metrics`` is the final evaluation's mean, not
marl-eval's 10x re-evaluation of the best policy (``marpo-bench eval RUN --episodes N`` gives that
figure for a run). What marl-eval would refuse (unequal runs or steps) is said, not hidden.

Import (``marpo-bench import FILE.json --study NAME``): every run becomes an ordinary complete run
of the study, marked ``imported`` in its run.json with its provenance (file name and SHA-256,
environment, task, algorithm and run keys, date). The whole file is checked before anything is
written: a malformed or foreign file changes nothing. Imported returns keep their own scale
(``reward_scale: "imported"`` unless ``--reward-scale`` says which it is), so the report never
normalises or pools them with this suite's runs on another scale. A run's ``absolute_metrics`` are
kept in its run.json, and the report scores the run by them, as marl-eval does. Each run also
keeps its task's return range over the file as marl-eval computes it (``imported.return_minmax``,
:func:`task_minmax`), the bounds of ``report --normalise minmax``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marpo_bench import provenance, registry, store

RETURN_METRICS = ("return", "episode_return", "mean_episode_return", "episode_returns")
"""Names marl-eval producers use for the episode return (BenchMARL and marl-eval's own examples:
``return``; Mava: ``episode_return``); the first present is read unless ``--return-metric`` says."""
WIN_METRICS = ("win_rate",)
IMPORTED_SCALE = "imported"


class MarlEvalError(ValueError):
    """A one-line problem with a marl-eval file or an import (nothing was written)."""


# --------------------------------------------------------------------------------------------
# export


@dataclass
class Export:
    data: dict[str, Any]
    runs: int
    warnings: list[str] = field(default_factory=list)


def export_study(study_path: Path) -> Export:
    """marl-eval's JSON of every complete run of a study (StoreError when it cannot be read)."""
    records, metrics = store.study_frame(store.read_study(study_path))
    by_run = {rid: df.sort_values("env_steps") for rid, df in metrics.groupby("run_id", sort=False)}
    data: dict[str, Any] = {}
    warnings: list[str] = []
    n = 0
    skipped = [r["run_id"] for r in records if r["status"] != "complete"]
    if skipped:
        warnings.append(f"{len(skipped)} run(s) not complete, left out: {', '.join(skipped[:3])}"
                        + (" ..." if len(skipped) > 3 else ""))
    for r in records:
        if r["status"] != "complete" or r["run_id"] not in by_run:
            continue
        fam = registry.env_families().get(r["env"])
        win = fam is not None and fam.score == "win_rate"
        runs = data.setdefault(r["env"], {}).setdefault(r["task"], {}).setdefault(r["algo"], {})
        key = f"seed_{r['seed']}"
        if key in runs:
            warnings.append(f"{r['algo']} on {r['env']}:{r['task']} has two runs of seed {r['seed']} (other "
                            f"settings): {r['run_id']} left out")
            continue
        runs[key] = _run_entry(by_run[r["run_id"]], win)
        n += 1
    warnings += _marl_eval_shape_problems(data)
    return Export(data, n, warnings)


def _run_entry(df: Any, win: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        step = {"step_count": int(row.env_steps), "elapsed_time": float(row.wall_seconds),
                "return": [float(row.eval_return_mean)]}
        if win:
            step["win_rate"] = [float(row.eval_win_rate)]
        entry[f"step_{i}"] = step
    last = entry[f"step_{len(entry) - 1}"]
    entry["absolute_metrics"] = {k: list(v) for k, v in last.items() if k in ("return", "win_rate")}
    return entry


def _marl_eval_shape_problems(data: dict[str, Any]) -> list[str]:
    """What marl-eval's own checks would refuse: per environment, the same runs and evaluation
    steps for every (task, algorithm); commas in algorithm names."""
    out = []
    for env, tasks in data.items():
        shapes = {(t, a): (len(runs), tuple(len(r) for r in runs.values()))
                  for t, algos in tasks.items() for a, runs in algos.items()}
        if len(set(shapes.values())) > 1:
            out.append(f"{env}: the (task, algorithm) pairs differ in runs or evaluation steps; marl-eval needs "
                       f"them equal (its DiagnoseData says which)")
        out += [f"{env}: algorithm name {a!r} contains a comma (marl-eval's probability of improvement "
                f"splits on commas)" for t, algos in tasks.items() for a in algos if "," in a]
    return out


def write_export(study_path: Path, out: Path) -> Export:
    """Export a study to ``out`` (atomic; refuses to overwrite an existing file)."""
    out = Path(out)
    if out.exists():
        raise MarlEvalError(f"{store.show_path(out)} exists; give a new --out file")
    if out.suffix.lower() != ".json":
        raise MarlEvalError(f"--out must be a .json file, got {out.name!r}")
    res = export_study(study_path)
    if not res.runs:
        raise MarlEvalError(f"study {store.show_path(Path(study_path))} has no complete run to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    store.atomic_write_bytes(out, json.dumps(res.data, indent=1).encode("utf-8"))
    return res


# --------------------------------------------------------------------------------------------
# import


@dataclass
class ImportedRun:
    record: dict[str, Any]
    rows: list[dict[str, Any]]


def _fail(where: str, what: str) -> MarlEvalError:
    return MarlEvalError(f"not a marl-eval file: {where}: {what}")


def _seed(run_key: str, index: int) -> int:
    """A run's seed from its key (``seed_3``, ``3``, ``run_3``: 3); its position when there is none."""
    m = re.fullmatch(r"(?:seed|run)?[_-]?(\d+)", run_key.strip(), flags=re.IGNORECASE)
    return int(m.group(1)) if m else index


MAX_STEP_COUNT = 2**53  # the largest step count a float (JSON's number) holds exactly


def _number_list(value: Any, where: str) -> list[float]:
    vals = value if isinstance(value, list) else [value]
    if not vals or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        raise _fail(where, "a metric must be a non-empty list of numbers")
    try:
        out = [float(v) for v in vals]
    except OverflowError:  # an integer beyond float's range
        raise _fail(where, "a metric value is beyond a float's range") from None
    if not all(math.isfinite(v) for v in out):
        raise _fail(where, "a metric value is not finite (NaN or beyond a float's range)")
    return out


def parse(data: Any, name: str, sha256: str, *, return_metric: str | None = None,
          env_map: dict[str, str] | None = None, reward_scale: str | None = None) -> list[ImportedRun]:
    """Every run of a parsed marl-eval file as a run record and metrics rows (MarlEvalError on
    anything that is not marl-eval's structure; nothing is written here)."""
    env_map = env_map or {}
    if not isinstance(data, dict) or not data:
        raise _fail(name, "the top level must be an object of environments")
    out: list[ImportedRun] = []
    now = provenance.now()
    for env, tasks in data.items():
        if not isinstance(tasks, dict) or not tasks:
            raise _fail(env, "an environment must be an object of tasks")
        family = env_map.get(env, env)
        fam = registry.env_families().get(family)
        for task, algos in tasks.items():
            if not isinstance(algos, dict) or not algos:
                raise _fail(f"{env}/{task}", "a task must be an object of algorithms")
            first = len(out)
            for algo, runs in algos.items():
                where = f"{env}/{task}/{algo}"
                if not isinstance(runs, dict) or not runs:
                    raise _fail(where, "an algorithm must be an object of runs")
                if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", algo):
                    raise MarlEvalError(f"{where}: algorithm name {algo!r} cannot name a run here (use letters, "
                                        f"digits, _ . + -)")
                seeds: set[int] = set()
                for i, (run_key, steps) in enumerate(runs.items()):
                    seed = _seed(str(run_key), i)
                    if seed in seeds:
                        raise MarlEvalError(f"{where}: two runs read as seed {seed} ({run_key!r})")
                    seeds.add(seed)
                    win_family = fam is not None and fam.score == "win_rate"
                    rows = _rows(steps, f"{where}/{run_key}", return_metric, win_family)
                    absolute = _absolute(steps, f"{where}/{run_key}", return_metric)
                    out.append(_imported(env, family, task, algo, str(run_key), seed, rows, name, sha256, now,
                                         reward_scale, absolute))
            minmax = task_minmax(algos, return_metric)
            for run in out[first:]:  # every run of the task: its file's task range, marl-eval's bounds
                run.record["imported"]["return_minmax"] = minmax
    return out


def minmax_scan(value_lists: Iterable[list[float]]) -> tuple[float, float] | None:
    """marl-eval 0.0.4's min and max of one metric over value lists read in file order
    (``data_process_pipeline``'s ``_compare_values``, marl_eval/utils/data_processing_utils.py): the
    first list sets both; each later list lowers the min, *or else* raises the max (``if ... elif``),
    so a list holding a new minimum and a new maximum at once leaves the max short of the data's.
    Replayed as written, so that scores equal marl-eval's; None for no lists."""
    low = high = None
    for values in value_lists:
        lo, hi = min(values), max(values)
        if low is None or high is None:
            low, high = lo, hi
        elif low > lo:
            low = lo
        elif high < hi:
            high = hi
    return None if low is None or high is None else (low, high)


def task_minmax(algos: dict[str, Any], return_metric: str | None) -> list[float] | None:
    """A task's return bounds as marl-eval normalises it: :func:`minmax_scan` over every algorithm,
    run and logging step of the task, ``absolute_metrics`` included, in file order, each list of
    per-episode values whole (marl-eval resets the scan per task and keeps one per metric). Called
    on a task that :func:`parse` has checked."""
    lists = []
    for runs in algos.values():
        for steps in runs.values():
            for key, step in steps.items():
                metric = return_metric or next((m for m in RETURN_METRICS if m in step), None)
                if metric in step:
                    lists.append(_number_list(step[metric], key))
    found = minmax_scan(lists)
    return None if found is None else list(found)


def _absolute(steps: dict, where: str, return_metric: str | None) -> dict[str, float] | None:
    """A run's ``absolute_metrics`` (marl-eval: the final policy re-evaluated, typically on 10x a
    logging step's episodes, and what marl-eval scores a run by) as the store's evaluation columns;
    None when the run has none or they hold no return."""
    am = steps.get("absolute_metrics")
    if am is None:
        return None
    if not isinstance(am, dict):
        raise _fail(f"{where}/absolute_metrics", "absolute_metrics must be an object of metrics")
    metric = return_metric or next((m for m in RETURN_METRICS if m in am), None)
    if metric is None or metric not in am:
        return None
    ret = _number_list(am[metric], f"{where}/absolute_metrics/{metric}")
    out = {"eval_return_mean": float(np.mean(ret)), "eval_episodes": len(ret)}
    wins = next((m for m in WIN_METRICS if m in am), None)
    if wins:
        out["eval_win_rate"] = float(np.mean(_number_list(am[wins], f"{where}/absolute_metrics/{wins}")))
    return out


def _rows(steps: Any, where: str, return_metric: str | None, win_family: bool) -> list[dict[str, Any]]:
    if not isinstance(steps, dict):
        raise _fail(where, "a run must be an object of logging steps")
    rows = []
    for key, step in steps.items():
        if key == "absolute_metrics":
            continue
        if not isinstance(step, dict) or "step_count" not in step:
            raise _fail(f"{where}/{key}", "a logging step must be an object with a step_count")
        count = step["step_count"]
        if (not isinstance(count, (int, float)) or isinstance(count, bool) or not math.isfinite(count)
                or not 0 <= count <= MAX_STEP_COUNT or count != int(count)):
            raise _fail(f"{where}/{key}", f"step_count must be a whole number from 0 to 2^53, got {count!r}")
        metric = return_metric or next((m for m in RETURN_METRICS if m in step), None)
        if metric is None or metric not in step:
            have = ", ".join(k for k in step if k not in ("step_count", "elapsed_time")) or "none"
            raise MarlEvalError(f"{where}/{key}: no return metric ({return_metric or ' / '.join(RETURN_METRICS)}); "
                                f"it has {have}: pass --return-metric NAME")
        ret = _number_list(step[metric], f"{where}/{key}/{metric}")
        row: dict[str, Any] = {"env_steps": int(count), "eval_return_mean": float(np.mean(ret)),
                               "eval_return_std": float(np.std(ret)), "eval_episodes": len(ret)}
        wins = next((m for m in WIN_METRICS if m in step), None)
        row["eval_win_rate"] = float(np.mean(_number_list(step[wins], f"{where}/{key}/{wins}"))) if wins else math.nan
        if win_family and wins is None:
            raise MarlEvalError(f"{where}/{key}: a win-rate family's run needs win_rate at every step")
        elapsed = step.get("elapsed_time")
        row["wall_seconds"] = float(elapsed) if isinstance(elapsed, (int, float)) else math.nan
        rows.append(row)
    if not rows:
        raise _fail(where, "a run needs at least one logging step")
    rows.sort(key=lambda r: r["env_steps"])
    if len({r["env_steps"] for r in rows}) != len(rows):
        raise _fail(where, "two logging steps have the same step_count")
    return rows


def _imported(env: str, family: str, task: str, algo: str, run_key: str, seed: int, rows: list[dict], name: str,
              sha256: str, now: str, reward_scale: str | None, absolute: dict[str, float] | None = None
              ) -> ImportedRun:
    ident = hashlib.sha256(f"{sha256}/{env}/{task}/{algo}/{run_key}".encode()).hexdigest()[:8]
    safe_task = re.sub(r"[^A-Za-z0-9_.+=-]", "_", task)
    run_id = f"{algo}__{family}-{safe_task}__s{seed}__i{ident}"
    last = rows[-1]["env_steps"]
    record = {
        "run_id": run_id, "algo": algo, "env": family, "task": task, "seed": seed, "status": "complete",
        "message": "", "budget": last, "env_steps": last, "overrides": [], "config": {},
        "reward_scale": reward_scale or IMPORTED_SCALE, "episode_limit": None, "eval_mode": None,
        "started": None, "finished": None,
        "wall_seconds": rows[-1]["wall_seconds"] if rows and math.isfinite(rows[-1]["wall_seconds"]) else None,
        "imported": {"format": "marl-eval", "file": name, "sha256": sha256, "environment": env, "task": task,
                     "algorithm": algo, "run": run_key, "date": now},
    }
    if absolute is not None:
        record["absolute_metrics"] = absolute
    return ImportedRun(record, rows)


@dataclass
class ImportResult:
    """What an import wrote (``runs``) and how many of the file's runs were there already."""

    runs: list[ImportedRun]
    already: int


def import_file(path: Path, results: Path, study: str, *, return_metric: str | None = None,
                env_map: dict[str, str] | None = None, reward_scale: str | None = None) -> ImportResult:
    """Import a marl-eval file into ``results/study``: every run checked first, then written; runs
    of this file already imported are left as they are; any other clash changes nothing."""
    path = Path(path)
    if not path.is_file():
        raise MarlEvalError(f"{store.show_path(path)} is not a file")
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MarlEvalError(f"{store.show_path(path)} is not JSON ({type(exc).__name__}: {exc})") from None
    except RecursionError:
        raise MarlEvalError(f"{store.show_path(path)} nests deeper than Python's JSON reader allows; marl-eval "
                            "files are 6 levels deep") from None
    runs = parse(data, path.name, hashlib.sha256(raw).hexdigest(), return_metric=return_metric, env_map=env_map,
                 reward_scale=reward_scale)
    store.check_results_dir(results)
    todo = []
    for run in runs:
        run_path = store.run_dir(results, study, run.record["run_id"])
        if store.run_status(run_path) is not None:
            have = store.read_run_json(run_path).get("imported") or {}
            if have.get("sha256") == run.record["imported"]["sha256"]:
                continue  # the same file imported before
            raise MarlEvalError(f"study {study} already has run {run.record['run_id']}; import into another --study")
        todo.append((run_path, run))
    for run_path, run in todo:
        run_path.mkdir(parents=True, exist_ok=True)
        store.write_metrics(run_path, run.rows)
        store.write_run_json(run_path, run.record)  # last: the commit marker of a complete run
    return ImportResult([run for _, run in todo], len(runs) - len(todo))
