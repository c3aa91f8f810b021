"""Score normalisation: each task's bounds, how they were measured, and bounds measured per study.

A return-scored task is normalised as (return - random) / (reference - random); a win-rate task
is already in [0, 1]. Built-in tasks carry measured bounds in their family's declaration
(``EnvFamily.bounds``, with the text saying how they were measured; the scripted MPE oracle
behind the reference scores lives with the tests that re-measure them). For any other task (a
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
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from marpo_bench import provenance, registry, store
from marpo_bench.envs.base import TaskBounds

BOUNDS_JSON = "bounds.json"
MEASURE_EPISODES = 512
MEASURE_SEED = 123  # the eval seed of the built-in MPE bounds' measurement


# --------------------------------------------------------------------------------------------
# the registered tables


def _family(env: str) -> Any:
    """The registered env family ``env`` (None for a family not installed here, e.g. a plugin's
    runs read on another machine: scored as raw returns)."""
    return registry.env_families().get(env)


def score_kind(env: str) -> str:
    """How a family's runs are scored: ``"win_rate"`` or ``"return"`` (its ``EnvFamily.score``)."""
    fam = _family(env)
    return fam.score if fam is not None else "return"


def task_bounds(env: str, task: str) -> TaskBounds | None:
    """The normalisation bounds of a return-scored task, from its family's declaration (or None)."""
    fam = _family(env)
    return fam.bounds.get(task) if fam is not None and fam.score == "return" else None


def normalisation_table() -> dict[tuple[str, str], TaskBounds]:
    """Every registered task's bounds, keyed by ``(env family, task)``. A task is identified by its
    family too: two implementations of one game (mpe and jax_mpe) are measured separately."""
    return {(name, task): b for name, fam in registry.env_families().items() if fam.score == "return"
            for task, b in fam.bounds.items()}


def bounds_measurements() -> dict[str, str]:
    """How each family's bounds were obtained (``EnvFamily.measurement``), one text per distinct text."""
    out: dict[str, str] = {}
    for name, fam in registry.env_families().items():
        if fam.bounds and fam.measurement:
            out.setdefault(fam.measurement, name)
    return {text: name for text, name in out.items()}


def win_rate_families() -> tuple[str, ...]:
    """The registered families scored by evaluation win rate (already in [0, 1])."""
    return tuple(name for name, fam in registry.env_families().items() if fam.score == "win_rate")


def normalise(values: np.ndarray | float, env: str, task: str, bounds: TaskBounds | None = None) -> np.ndarray:
    """Raw final values -> normalised scores (unclipped). Win rates pass through; a return task is
    normalised with ``bounds`` (default: its family's, :func:`task_bounds`) and gives NaN without
    any (the task is then left out of aggregates)."""
    v = np.asarray(values, dtype=np.float64)
    if score_kind(env) == "win_rate":
        return v.copy()
    b = bounds or task_bounds(env, task)
    if b is None:
        return np.full_like(v, np.nan)
    return (v - b.random) / (b.reference - b.random)


Normalisation = Literal["bounds", "minmax"]
"""How ``report`` normalises return tasks: ``bounds``, each task's stored bounds (the default);
``minmax``, min-max over each task's own values, as marl-eval does (:func:`minmax_bounds`)."""
NORMALISATIONS: tuple[str, ...] = ("bounds", "minmax")
MINMAX_EPS = 1e-6
"""marl-eval's ``(x - min) / (max - min + 1e-6)``: the 1e-6 (data_process_pipeline) is kept so
that scores equal marl-eval's to float precision."""
MINMAX_SOURCE = "min-max over the task's own values (as marl-eval normalises: --normalise minmax)"


def run_minmax(record: dict[str, Any], returns: np.ndarray) -> tuple[float, float, bool]:
    """One run's contribution to its task's min-max bounds: ``(low, high, exact)``.

    An imported run carries its file's task range as marl-eval computes it over every episode's
    value (``imported.return_minmax``, :func:`marpo_bench.marleval.task_minmax`): exact. Any
    other run gives the range of its evaluation means and its absolute metric, which is what
    marl-eval computes on this suite's export (one value per evaluation), so also exact; an
    imported run from before ``return_minmax`` was stored gives that too, but its file held each
    episode's value: not exact (the report says so).
    """
    imported = record.get("imported") or {}
    stored = imported.get("return_minmax")
    if stored is not None:
        return float(stored[0]), float(stored[1]), True
    vals = np.asarray(returns, dtype=np.float64)
    absolute = (record.get("absolute_metrics") or {}).get("eval_return_mean")
    if absolute is not None:
        vals = np.append(vals, float(absolute))
    vals = vals[np.isfinite(vals)]
    return float(vals.min()), float(vals.max()), not imported


def minmax_bounds(ranges: Sequence[tuple[float, float]], scale: str, episode_limit: int | None) -> TaskBounds:
    """A task's bounds under marl-eval's min-max normalisation: the lowest and highest value of its
    runs' ranges (:func:`run_minmax`), as ``random = min`` and ``reference = max + 1e-6``, so that
    :func:`normalise` computes marl-eval's ``(x - min) / (max - min + 1e-6)``. The scale and
    horizon are the runs' (returns on two scales are never mixed before this; an imported run's
    horizon may be unknown: None)."""
    low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    return TaskBounds(random=low, reference=high + MINMAX_EPS, scale=scale, episode_limit=episode_limit,
                      random_source=f"{MINMAX_SOURCE}: the lowest, {low:g}",
                      reference_source=f"the highest, {high:g} (+ {MINMAX_EPS:g})")


class UniformRandomPolicy:
    """Uniform over each agent's available actions: the table's random-policy score."""

    def __init__(self, seed: int) -> None:
        import torch

        self.gen = torch.Generator().manual_seed(seed)

    def initial_act_state(self, num_envs: int) -> None:
        return None

    def act(self, ts: Any, act_state: Any, deterministic: bool) -> tuple[Any, Any]:
        import torch

        u = torch.rand(ts.avail_actions.shape, generator=self.gen).masked_fill(~ts.avail_actions, -1.0)
        return u.argmax(-1), act_state


# --------------------------------------------------------------------------------------------
# bounds measured for a study


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


def measure_random(env: str, task: str, episodes: int = MEASURE_EPISODES, seed: int = MEASURE_SEED, *,
                   trust_imports: bool = False) -> dict[str, Any]:
    """The uniform-random policy's return on ``env:task``: one episode in each of ``episodes``
    parallel envs, evaluated as every run is (``evaluation.evaluate``), with how it was measured. The
    task was read from a study's runs: it imports nothing unless ``trust_imports``."""
    from marpo_bench.envs import make_env
    from marpo_bench.evaluation import evaluate

    vec = make_env(env, task, episodes, trust_imports=trust_imports)
    try:
        res = evaluate(UniformRandomPolicy(0), vec, seed=seed, deterministic=False)
    finally:
        vec.close()
    version = provenance.package_version("marpo-bench") or "unknown"
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
