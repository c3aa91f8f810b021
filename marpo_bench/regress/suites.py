"""The regression suites: what a reference stores and a check re-trains, and how it trains them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from marpo_bench.config import RunSpec
from marpo_bench.executors.pool import Job, run_jobs
from marpo_bench.train import RunResult

SUITE_STUDY = "suite"
EXACT_STUDY = "exact"


class RegressError(ValueError):
    """Bad input for the regression check: a one-line message (exit code 2)."""


@dataclass(frozen=True)
class Suite:
    """A fixed set of runs to regress against: algorithms x tasks (each with its own env-step
    budget) x seeds, plus a short *exact slice* re-trained for the bit-for-bit check."""

    name: str
    description: str
    algos: tuple[str, ...]
    tasks: tuple[tuple[str, int], ...]  # ("family:task", env-step budget)
    seeds: tuple[int, ...]
    overrides: tuple[tuple[str, str], ...] = ()  # ``--set`` pairs applied to every run
    exact_algos: tuple[str, ...] = ()
    exact_task: str = "jax_mpe:simple_spread"
    exact_seed: int = 0
    exact_steps: int = 4_000
    exact_overrides: tuple[tuple[str, str], ...] = ()

    def specs(self) -> list[RunSpec]:
        """Every run of the suite, in a stable order."""
        out = []
        for algo in self.algos:
            for env_task, steps in self.tasks:
                family, task = env_task.split(":", 1)
                out += [RunSpec(algo, family, task, seed, steps, self.overrides) for seed in self.seeds]
        return out

    def exact_specs(self) -> list[RunSpec]:
        """The exact slice: one seed per algorithm on one task, a short budget."""
        family, task = self.exact_task.split(":", 1)
        return [RunSpec(a, family, task, self.exact_seed, self.exact_steps, self.exact_overrides)
                for a in self.exact_algos or self.algos]

    def task_keys(self) -> list[str]:
        return [t for t, _ in self.tasks]

    def to_dict(self) -> dict[str, Any]:
        """JSON form of everything that determines the runs, as stored in the manifest and compared
        on every check (the description is prose: it may change without a new reference)."""
        d = dataclasses.asdict(self)
        d.pop("description")
        return json.loads(json.dumps(d))


SUITES: dict[str, Suite] = {
    "smoke": Suite(
        name="smoke",
        description="MARPO, MAPPO and QMix with their default configs on one MPE and one SMAX task, "
                    "3 seeds, short budgets (6-8 minutes with 2 workers on 2 cores)",
        algos=("marpo", "mappo", "qmix"),
        tasks=(("jax_mpe:simple_spread", 80_000), ("smax:3m", 48_000)),
        seeds=(0, 1, 2),
        exact_algos=("marpo", "mappo", "qmix"),
        exact_task="jax_mpe:simple_spread",
        exact_seed=0,
        exact_steps=6_400,
    ),
    "tiny": Suite(
        name="tiny",
        description="MAPPO and MARPO on simple_spread, 3 seeds x 12.8k env steps, small evaluations: "
                    "seconds; for the tests and quick local checks",
        algos=("marpo", "mappo"),
        tasks=(("jax_mpe:simple_spread", 12_800),),
        seeds=(0, 1, 2),
        overrides=(("eval_episodes", "16"),),
        exact_algos=("mappo",),
        exact_task="jax_mpe:simple_spread",
        exact_seed=0,
        exact_steps=6_400,
        exact_overrides=(("eval_episodes", "16"),),
    ),
}
"""Built-in suites. ``smoke`` is the one CI checks; changing its definition requires a new
reference (``--update``): a reference made for another definition is refused."""


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise RegressError(f"unknown suite {name!r}; valid: {', '.join(SUITES)}")
    return SUITES[name]


def train_jobs(jobs: Sequence[Job], results: Path, workers: int, console: Console | None = None) -> list[RunResult]:
    """Train every ``(spec, study)`` into ``results/study`` through the executors' pool under the
    deterministic settings (one torch thread, deterministic algorithms; no retries), the most
    expensive runs first (each process compiles the JAX envs once for all its runs)."""
    order = sorted(jobs, key=lambda j: (-_cost(j[0]), j[1], j[0].run_id))
    return run_jobs(order, results, workers, console or Console(quiet=True), retries=0, deterministic=True)


def _cost(spec: RunSpec) -> float:
    """Relative cost of a run (its family's ``cost`` hint per env step): orders the pool's queue,
    longest first."""
    from marpo_bench.registry import env_family

    return spec.steps * env_family(spec.env).cost.get(spec.algo, 1.0)
