"""Study bookkeeping: the grid a ``run`` command plans, ``<study>/plan.json``, the study's status
and which of its runs another process trains now.

``plan.json`` records every run any ``run`` command of the study planned (the union), before any
starts, so ``status`` can list runs not started yet; each command is appended to its history.
Whether a run is being trained is asked of its writer lock (``store.writer_active``), never of a pid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from marpo_bench import provenance, registry, store
from marpo_bench.config import (
    RUN_SETTINGS,
    ConfigError,
    RunSpec,
    budget_for,
    one_line,
    parse_budgets,
    parse_set_options,
    run_config,
)
from marpo_bench.envs import check_backend, parse_env

PLAN_JSON = "plan.json"


def plan_grid(algos: str, envs: str, seeds: int, steps: str, sets: list[str], device: str) -> list[RunSpec]:
    """Validate every argument and build the grid of RunSpecs (ConfigError/ValueError on bad input)."""
    from marpo_bench.algos import get_algorithm
    from marpo_bench.recipes import build_config, resolve_device

    algo_names = [a.strip() for a in algos.split(",") if a.strip()]
    if not algo_names:
        raise ConfigError(f"no algorithm given; valid: {', '.join(registry.algorithm_names())}")
    for a in algo_names:
        registry.algorithm_entry(a)  # ValueError naming the valid ones
    env_pairs = [parse_env(e.strip(), trust_imports=True) for e in envs.split(",") if e.strip()]
    if not env_pairs:
        from marpo_bench.presets import DEFAULT_ENVS  # the default study's

        raise ConfigError(f"no env given; e.g. --envs {DEFAULT_ENVS} (see `marpo-bench list envs`)")
    for fam in dict.fromkeys(f for f, _ in env_pairs):
        check_backend(fam)  # a missing backend (e.g. StarCraft II) stops the grid before any run starts
    if seeds <= 0:
        raise ConfigError(f"--seeds must be a positive number of seeds, got {seeds}")
    budgets = parse_budgets(steps)
    unused = set(budgets) - {""} - {f for f, _ in env_pairs} - {f"{f}:{t}" for f, t in env_pairs}
    if unused:
        raise ConfigError(f"--steps names {', '.join(sorted(unused))}, which is not in --envs")
    pairs = parse_set_options(sets)
    resolve_device(device)
    specs = [RunSpec(a, fam, task, seed, budget_for(budgets, fam, task), pairs, device)
             for a in algo_names for fam, task in env_pairs for seed in range(seeds)]
    # Build every config once now, so a bad --set fails before any run starts.
    unscoped = {k for k, _ in pairs if "." not in k}
    known: set[str] = set(RUN_SETTINGS)
    run_config(pairs)  # bad run settings fail here too
    for a in algo_names:
        known |= set(get_algorithm(a).Config.__dataclass_fields__)
    for k in sorted(unscoped - known):
        raise ConfigError(f"unknown setting {k!r} for {', '.join(algo_names)}; "
                          f"valid: {', '.join(sorted(known))}")
    for s in {(s.algo, s.env): s for s in specs}.values():
        build_config(s)
    return specs


def _plan_entry(spec: RunSpec) -> dict[str, Any]:
    return {"run_id": spec.run_id, "algo": spec.algo, "env": spec.env, "task": spec.task, "seed": spec.seed,
            "budget": spec.steps, "overrides": [list(p) for p in spec.overrides], "device": spec.device}


def read_plan(study_path: Path) -> dict[str, Any]:
    """``<study>/plan.json`` (``{"runs": []}`` when absent); StoreError when unreadable."""
    path = Path(study_path) / PLAN_JSON
    if not path.is_file():
        return {"runs": []}
    try:
        plan = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise store.StoreError(f"plan file {path} is unreadable ({one_line(exc)}); delete it, "
                               f"the next `marpo-bench run` writes it again") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("runs"), list):
        raise store.StoreError(f"plan file {path} is not a marpo-bench plan; delete it")
    return plan


def write_plan(results: Path, study: str, specs: list[RunSpec], command: dict[str, Any]) -> Path:
    """Record the grid in ``<results>/<study>/plan.json`` (atomically) before any run starts, so
    ``status`` can list runs not started yet. Runs planned by earlier commands are kept (the plan
    is the union); ``command`` (preset, executor, ...) is appended to the plan's history."""
    path = Path(results) / study / PLAN_JSON
    plan = read_plan(path.parent)
    runs = {r["run_id"]: r for r in plan["runs"] if isinstance(r, dict) and "run_id" in r}
    for spec in specs:
        runs[spec.run_id] = _plan_entry(spec)
    now = provenance.now()
    history = [h for h in plan.get("history", []) if isinstance(h, dict)]
    history.append({"time": now, "runs": len(specs), **command})
    store.atomic_write_json(path, {"schema_version": store.SCHEMA_VERSION, "study": study, "updated": now,
                                   "runs": list(runs.values()), "history": history[-50:]})
    return path


STATUS_ORDER = ("running", "interrupted", "failed", "pending", "complete", "unreadable")


def study_status(study_path: Path) -> list[dict[str, Any]]:
    """One row per run of the study, planned or stored: run_id, algo, env, task, seed, status
    (complete / interrupted / failed / running / pending / unreadable), env_steps, budget,
    attempt, message. A ``running`` run whose process is gone (killed) shows as ``interrupted``."""
    study_path = Path(study_path)
    if not study_path.is_dir():
        raise store.StoreError(f"study directory {study_path} does not exist; check the path or run the study")
    runs = study_path / "runs"
    if runs.exists() and not runs.is_dir():
        raise store.StoreError(f"{runs} is a file, not the study's runs directory; is {study_path} a study?")
    rows: dict[str, dict[str, Any]] = {}
    for entry in read_plan(study_path)["runs"]:
        if isinstance(entry, dict) and "run_id" in entry:
            rows[entry["run_id"]] = {**{k: entry.get(k) for k in ("run_id", "algo", "env", "task", "seed", "budget")},
                                     "status": "pending", "env_steps": 0, "attempt": None, "message": ""}
    for path in sorted(runs.iterdir()) if runs.is_dir() else []:
        if not path.is_dir() or path.name.startswith(".") or not (path / store.RUN_JSON).exists():
            continue
        try:
            rec = store.read_run_json(path)
        except store.StoreError as exc:
            rows[path.name] = {**rows.get(path.name, {"run_id": path.name}), "status": "unreadable",
                               "message": str(exc)}
            continue
        status, message = rec["status"], rec.get("message") or ""
        if status == "running" and not store.writer_active(path):  # its writer lock died with its process
            pid = (rec.get("writer") or {}).get("pid", "?")
            status, message = "interrupted", f"process {pid} is gone (killed?); re-run to resume"
        rows[path.name] = {**{k: rec.get(k) for k in ("run_id", "algo", "env", "task", "seed", "budget")},
                           "status": status, "env_steps": rec.get("env_steps", 0), "attempt": rec.get("attempt"),
                           "message": message}
    if not rows:
        raise store.StoreError(f"study directory {study_path} has no plan and no runs; run the study first")
    return sorted(rows.values(), key=lambda r: (STATUS_ORDER.index(r["status"]), r["run_id"]))


def busy_runs(results: Path, study: str, specs: list[RunSpec]) -> list[tuple[str, int]]:
    """Runs of ``specs`` that another live process is training (it holds the run's writer lock):
    (run_id, its pid as recorded in run.json)."""
    out = []
    for spec in specs:
        path = store.run_dir(results, study, spec.run_id)
        if store.writer_active(path):
            rec = store.read_run_json(path) if store.run_status(path) is not None else {}
            out.append((spec.run_id, (rec.get("writer") or {}).get("pid", "?")))
    return out
