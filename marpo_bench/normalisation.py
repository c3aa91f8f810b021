"""Normalisation bounds for tasks that have none stored: measured once, kept with the study.

A return-scored task is normalised as (return - random) / (reference - random). Built-in tasks
carry measured bounds in their family's declaration (``EnvFamily.bounds``). For any other task (a
plugin's, a PettingZoo env, a task with parameters) ``marpo-bench bounds STUDY`` measures the
uniform-random policy's score with the suite's own evaluation and stores it in
``STUDY/bounds.json``, with the reference score the user gives and its source::

    marpo-bench bounds results/meet --reference 'rendezvous:meet=0.9' --source "a scripted policy, 512 episodes"

The random score is measured once per task (the file says how: episodes, eval seed, standard
error, date, marpo-bench version) and reused; a reference can be set or changed at any time.
Without a reference the report shows the task's raw returns and says why it is not in the
normalised aggregate.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from marpo_bench import store
from marpo_bench.envs.base import TaskBounds

BOUNDS_JSON = "bounds.json"
MEASURE_EPISODES = 512
MEASURE_SEED = 123  # the eval seed of the built-in MPE bounds' measurement


class BoundsError(ValueError):
    """A one-line problem with a study's bounds file or a requested reference."""


def _key(env: str, task: str) -> str:
    return f"{env}:{task}"


def read(study_path: Path) -> dict[str, dict[str, Any]]:
    """The study's bounds file: ``family:task`` -> its entry ({} when there is none)."""
    path = Path(study_path) / BOUNDS_JSON
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BoundsError(f"{path.name} in study {Path(study_path).name} is not valid JSON ({exc}); fix or delete it "
                          "and run `marpo-bench bounds` again") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise BoundsError(f"{path.name} in study {Path(study_path).name} has no 'tasks' table; delete it and run "
                          "`marpo-bench bounds` again")
    return data["tasks"]


def write(study_path: Path, tasks: dict[str, dict[str, Any]]) -> None:
    """Replace the study's bounds file atomically."""
    store.atomic_write_json(Path(study_path) / BOUNDS_JSON, {"format": 1, "tasks": tasks})


def study_bounds(study_path: Path) -> dict[tuple[str, str], TaskBounds]:
    """The study's tasks that have both a measured random score and a reference: their bounds."""
    out = {}
    for key, entry in read(study_path).items():
        if entry.get("reference") is None or entry.get("random") is None:
            continue
        env, _, task = key.partition(":")
        out[(env, task)] = TaskBounds(
            random=float(entry["random"]), reference=float(entry["reference"]), scale=entry["reward_scale"],
            episode_limit=int(entry["episode_limit"]),
            random_source=(f"uniform-random policy over available actions, {entry['episodes']} episodes, eval seed "
                           f"{entry['seed']} (± {entry['random_sem']:.2f}; measured {entry['measured']} by "
                           f"marpo-bench bounds)"),
            reference_source=entry.get("reference_source") or "given by the user",
        )
    return out


def measure_random(env: str, task: str, episodes: int = MEASURE_EPISODES, seed: int = MEASURE_SEED) -> dict[str, Any]:
    """The uniform-random policy's return on ``env:task``: one episode in each of ``episodes``
    parallel envs, evaluated as every run is (``train.evaluate``), with how it was measured."""
    from marpo_bench.analysis import UniformRandomPolicy
    from marpo_bench.envs import make_env
    from marpo_bench.train import evaluate

    vec = make_env(env, task, episodes)
    try:
        res = evaluate(UniformRandomPolicy(0), vec, seed=seed, deterministic=False)
    finally:
        vec.close()
    try:
        version = metadata.version("marpo-bench")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"random": res["eval_return_mean"], "random_sem": res["eval_return_std"] / math.sqrt(res["eval_episodes"]),
            "episodes": res["eval_episodes"], "seed": seed, "reward_scale": vec.info.reward_scale,
            "episode_limit": vec.info.episode_limit, "measured": datetime.now(UTC).strftime("%Y-%m-%d"),
            "marpo_bench": version}


def parse_references(items: list[str]) -> dict[str, float]:
    """``family:task=SCORE`` items (a task's own ``?``/``=`` kept: the score follows the last ``=``)."""
    out = {}
    for item in items:
        key, eq, value = item.rpartition("=")
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not eq or ":" not in key or not math.isfinite(score):
            raise BoundsError(f"bad --reference {item!r}: use family:task=SCORE, e.g. rendezvous:meet=0.9")
        out[key] = score
    return out
