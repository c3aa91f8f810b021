"""One training run, end to end: RunSpec -> env + algorithm -> periodic evaluation -> store.

The runner owns evaluation and storage so every algorithm is evaluated and logged the same way
(PITFALLS.md: one evaluation mode per run, recorded; env steps counted over every parallel env;
no silent NaN).
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marpo_bench import store
from marpo_bench.algos import ALGORITHMS, get_algorithm
from marpo_bench.config import ConfigError, RunSpec, apply_overrides, overrides_for, to_dict
from marpo_bench.envs import make_env
from marpo_bench.envs.base import MultiAgentVecEnv

ProgressFn = Callable[[int, int], None]  # (env_steps_done, total)


def build_config(spec: RunSpec) -> Any:
    """The algorithm's config for this run: class defaults, then the env family's defaults (if the
    algorithm defines ``DEFAULTS_BY_FAMILY``), then the user's ``--set`` overrides."""
    algo_cls = get_algorithm(spec.algo)
    cfg = algo_cls.Config()
    family_defaults = getattr(algo_cls, "DEFAULTS_BY_FAMILY", {}).get(spec.env, {})
    if family_defaults:
        cfg = apply_overrides(cfg, {k: str(v) for k, v in family_defaults.items()}, spec.algo)
    scoped = overrides_for(spec.algo, spec.overrides, set(ALGORITHMS))
    known = set(cfg.__dataclass_fields__)
    # Unscoped keys apply to every algorithm that has the setting; the CLI checks each is known
    # to at least one algorithm of the grid. Scoped keys (``algo.key``) must exist.
    scoped_keys = {k.split(".", 1)[1] for k, _ in spec.overrides if k.startswith(spec.algo + ".")}
    mine = {k: v for k, v in scoped.items() if k in known or k in scoped_keys}
    return apply_overrides(cfg, mine, spec.algo)


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


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("marpo-bench", "torch", "numpy", "pandas", "pyarrow", "jax", "jaxmarl", "mpe2", "pettingzoo"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _host(device: torch.device) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "gpu": gpu, "system": platform.system()}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class RunResult:
    run_id: str
    status: str  # complete | skipped | failed | interrupted
    message: str = ""


def train_run(spec: RunSpec, results: Path, study: str, progress: ProgressFn | None = None) -> RunResult:
    """Train one run and store it under ``results/study/runs/<run_id>``. A complete run is skipped;
    an exception marks the run ``failed`` (with the message), Ctrl-C marks it ``interrupted``."""
    run_path = store.run_dir(results, study, spec.run_id)
    if store.run_status(run_path) == "complete":
        return RunResult(spec.run_id, "skipped")
    run_path.mkdir(parents=True, exist_ok=True)
    cfg = build_config(spec)
    device = resolve_device(spec.device)
    algo_cls = get_algorithm(spec.algo)
    record: dict[str, Any] = {
        "run_id": spec.run_id, "algo": spec.algo, "env": spec.env, "task": spec.task, "seed": spec.seed,
        "budget": spec.steps, "overrides": [list(p) for p in spec.overrides], "config": to_dict(cfg),
        "status": "running", "message": "", "started": _now(), "finished": None, "wall_seconds": 0.0,
        "env_steps": 0, "versions": _versions(), "git_commit": _git_commit(), "host": _host(device),
        "torch_threads": torch.get_num_threads(), "device": str(device),
        "eval_mode": cfg.eval_mode, "eval_episodes": cfg.eval_episodes,
    }
    store.write_run_json(run_path, record)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    env = eval_env = None
    try:
        env = make_env(spec.env, spec.task, cfg.num_envs, device="cpu", agent_id=cfg.agent_id)
        eval_env = make_env(spec.env, spec.task, cfg.eval_episodes, device="cpu", agent_id=cfg.agent_id)
        record.update(reward_scale=env.info.reward_scale, episode_limit=env.info.episode_limit)
        algo = algo_cls(cfg, env.info, device, spec.seed)
        interval = cfg.eval_interval or max(spec.steps // 20, 1)
        deterministic = cfg.eval_mode == "greedy"
        eval_seed = 10_000_019 * (spec.seed + 1)  # eval episodes never share seeds with training
        pending: list[dict[str, float]] = []
        next_eval = interval

        def log_eval(steps: int) -> None:
            row: dict[str, Any] = {"env_steps": steps, "wall_seconds": time.perf_counter() - t0}
            row.update(evaluate(algo, eval_env, eval_seed + len(rows), deterministic))
            if pending:  # training metrics: mean over the updates since the last evaluation
                for key in pending[0]:
                    vals = [p[key] for p in pending if key in p and not math.isnan(p[key])]
                    row[key] = float(np.mean(vals)) if vals else math.nan
                pending.clear()
            rows.append(row)
            store.write_metrics(run_path, rows)
            record.update(env_steps=steps, wall_seconds=row["wall_seconds"])
            store.write_run_json(run_path, record)

        def on_iteration(steps: int, metrics: dict[str, float]) -> None:
            nonlocal next_eval
            bad = [k for k, v in metrics.items() if k != "train_return_mean" and not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"non-finite {bad[0]} at env step {steps}")
            pending.append(metrics)
            if progress is not None:
                progress(min(steps, spec.steps), spec.steps)
            if steps >= next_eval or steps >= spec.steps:
                log_eval(steps)
                next_eval = (steps // interval + 1) * interval

        log_eval(0)
        algo.learn(env, spec.steps, spec.seed, on_iteration)
        if rows[-1]["env_steps"] < spec.steps and pending:
            log_eval(record["env_steps"])
        store.save_checkpoint(run_path, {"algo": algo.state_dict(), "env_steps": record["env_steps"]})
        record.update(status="complete", finished=_now(), wall_seconds=time.perf_counter() - t0)
        store.write_run_json(run_path, record)
        return RunResult(spec.run_id, "complete")
    except KeyboardInterrupt:
        record.update(status="interrupted", message="interrupted by the user", finished=_now(),
                      wall_seconds=time.perf_counter() - t0)
        store.write_run_json(run_path, record)
        raise
    except Exception as exc:  # the grid goes on; the run records why it failed
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
        record.update(status="failed", message=msg, finished=_now(), wall_seconds=time.perf_counter() - t0)
        store.write_run_json(run_path, record)
        return RunResult(spec.run_id, "failed", msg)
    finally:
        for e in (env, eval_env):
            if e is not None:
                e.close()
