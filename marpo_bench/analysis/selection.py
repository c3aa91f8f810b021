"""Choosing each algorithm's best config of a sweep, on seeds the comparison does not use
(``marpo-bench report STUDY --select best``).

A sweep (a study file's ``[cell.sweep]``) gives an algorithm several configs: runs of one algorithm
that differ in their settings (their ``overrides``, which the report labels ``algo[k=v,...]``).
The rule, stated on the report's first page:

1. The study's seeds are split in two: the selection seeds (``--select-seeds``, or by default the
   lower half: the first ``n // 2`` of its ``n`` seeds) and the evaluation seeds (the rest). Both
   must be non-empty.
2. Per algorithm, each config is scored on the selection seeds only: the mean over the
   algorithm's tasks of the mean normalised final score (unclipped) of its runs on that task (the
   raw final return or win rate where the algorithm ran a single task without normalisation
   bounds). Only configs that ran every one of the algorithm's tasks are ranked; the highest score
   wins (ties: the first config by its settings' text).
3. The comparison uses the chosen config of each algorithm on the evaluation seeds only, so
   selection and evaluation never share a seed. An algorithm with one config is compared the same
   way, on the same seeds.

The number of configs each algorithm had (its trials) is stated beside the picks, so an unequal
tuning budget is visible.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marpo_bench import store
from marpo_bench.analysis.load import load_scores
from marpo_bench.analysis.scores import AnalysisError, StudyScores
from marpo_bench.normalisation import Normalisation

SELECTS = ("best",)
"""The values of ``report --select``."""


@dataclass(frozen=True)
class SelectRule:
    """How configs are chosen: on these seeds (None: the lower half of the study's seeds)."""

    seeds: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Candidate:
    """One config of an algorithm, scored on the selection seeds."""

    config: str  # its settings, "k=v,..." in the runs' order ("" = no --set)
    score: float  # mean over the tasks of the mean final score of its runs on the selection seeds
    runs: int  # its runs the score is over


@dataclass(frozen=True)
class Pick:
    """The config chosen for one algorithm, with every config it was chosen from."""

    algo: str
    ranked: tuple[Candidate, ...]  # best first
    tasks: tuple[str, ...]  # the tasks it was ranked on
    measure: str  # "normalised final score", or the raw final score's name
    unranked: tuple[str, ...] = ()  # configs left out: they did not run every one of the tasks

    @property
    def best(self) -> Candidate:
        return self.ranked[0]

    @property
    def trials(self) -> int:
        """The configs the algorithm had (ranked or not): its tuning budget."""
        return len(self.ranked) + len(self.unranked)


def show_config(config: str) -> str:
    return config or "its defaults (no --set)"


@dataclass(frozen=True)
class Selection:
    """What ``--select best`` did: the seeds' split and each algorithm's pick."""

    select_seeds: tuple[int, ...]
    eval_seeds: tuple[int, ...]
    by_default: bool  # the split is the default rule's (not --select-seeds)
    picks: tuple[Pick, ...]
    left_out: int  # runs of the study not in the comparison (selection seeds, configs not chosen)

    def rule(self) -> str:
        """How the split was made, in words."""
        how = "the lower half of the study's seeds" if self.by_default else "given by --select-seeds"
        return f"chosen on seeds {_seeds(self.select_seeds)} ({how}), compared on seeds {_seeds(self.eval_seeds)} only"

    def statement(self) -> str:
        """Page 1's line: which config each algorithm got, by what rule, from how many."""
        picks = "; ".join(f"{p.algo}: {show_config(p.best.config)} (best of {p.trials} config"
                          f"{'s' if p.trials != 1 else ''})" if p.trials > 1 else
                          f"{p.algo}: {show_config(p.best.config)} (its only config)" for p in self.picks)
        counts = sorted({p.trials for p in self.picks})
        budget = (f"equal tuning budget: {counts[0]} config{'s' if counts[0] != 1 else ''} per algorithm"
                  if len(counts) == 1 else
                  "UNEQUAL tuning budgets (" + ", ".join(f"{p.algo} {p.trials}" for p in self.picks)
                  + " configs): the comparison favours the more tuned")
        return (f"Configs selected (--select best): each algorithm's config with the highest mean final score, "
                f"{self.rule()}, so selection and evaluation never share a seed. {picks}. {budget}.")

    def notes(self) -> list[str]:
        """The statement, then every algorithm's ranking (for the notes)."""
        out = [self.statement()]
        for p in self.picks:
            ranking = ", ".join(f"{show_config(c.config)} {c.score:.3f} ({c.runs} runs)" for c in p.ranked)
            extra = (f"; not ranked (did not run every task): {', '.join(map(show_config, p.unranked))}"
                     if p.unranked else "")
            out.append(f"config selection, {p.algo}: {p.measure} on seeds {_seeds(self.select_seeds)} over "
                       f"{', '.join(p.tasks)}: {ranking}{extra}")
        if self.left_out:
            out.append(f"{self.left_out} run(s) of the study are not in this report's comparison (the selection "
                       f"seeds' runs, and the configs not chosen)")
        return out


def _seeds(seeds: Sequence[int]) -> str:
    return ", ".join(map(str, seeds))


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    """``--select-seeds 0,1`` -> (0, 1); None stays None; AnalysisError on anything else."""
    if text is None:
        return None
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise AnalysisError(f"--select-seeds must be seed numbers, e.g. 0,1, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise AnalysisError(f"--select-seeds must list distinct seeds, e.g. 0,1, got {text!r}")
    return tuple(sorted(seeds))


def split_seeds(seeds: Sequence[int], chosen: Sequence[int] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(selection seeds, evaluation seeds) of the study's ``seeds``: ``chosen``, or the first half
    (``n // 2``) by default; AnalysisError when either side would be empty."""
    have = sorted(set(seeds))
    if chosen is None:
        if len(have) < 2:
            raise AnalysisError(f"--select best needs at least 2 seeds (some to choose on, others to compare on); "
                                f"the study has {len(have)}: {_seeds(have)}")
        half = len(have) // 2
        return tuple(have[:half]), tuple(have[half:])
    missing = [s for s in chosen if s not in have]
    if missing:
        raise AnalysisError(f"--select-seeds {_seeds(missing)}: not a seed of the study; its seeds: {_seeds(have)}")
    rest = tuple(s for s in have if s not in chosen)
    if not rest:
        raise AnalysisError(f"--select-seeds {_seeds(chosen)} leaves no seed to compare on; the study's seeds: "
                            f"{_seeds(have)}")
    return tuple(sorted(chosen)), rest


def config_of(record: Mapping) -> str:
    """A run's config within its algorithm: its settings as the report's labels write them."""
    return ",".join(f"{k}={v}" for k, v in (record.get("overrides") or []))


def rank(data: StudyScores, configs: Mapping[str, str]) -> tuple[Pick, ...]:
    """Each algorithm's configs ranked on ``data`` (the selection seeds' scores); ``configs`` maps
    run id -> config. AnalysisError when an algorithm has nothing to rank on."""
    algo_of = {r["run_id"]: r["algo"] for r in data.records}
    values: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    tasks_of: dict[str, set[str]] = defaultdict(set)
    for t in data.tasks:
        for rs in t.runs.values():
            for r in rs:
                a = algo_of[r.run_id]
                tasks_of[a].add(t.key)
                values[a][configs[r.run_id]][t.key].append(r.final_score if t.normalisable else r.final_raw)
    picks = []
    for a in sorted(values, key=lambda a: data.algos.index(a) if a in data.algos else len(data.algos)):
        tasks = sorted(tasks_of[a])
        normalised = [k for k in tasks if data.task(k).normalisable]
        if normalised:
            use, measure = normalised, "mean normalised final score"
        elif len(tasks) == 1:
            kind = data.task(tasks[0]).kind
            use, measure = tasks, "mean final win rate" if kind == "win_rate" else "mean final return"
        else:
            raise AnalysisError(f"--select best: {a}'s tasks ({', '.join(tasks)}) have no normalised score to average "
                                "over; measure bounds (`marpo-bench bounds`) or use --normalise minmax")
        ranked, unranked = [], []
        for cfg, by_task in values[a].items():
            if not all(k in by_task for k in use):
                unranked.append(cfg)
                continue
            score = float(np.mean([np.mean(by_task[k]) for k in use]))
            ranked.append(Candidate(cfg, score, sum(len(by_task[k]) for k in use)))
        if not ranked:
            raise AnalysisError(f"--select best: no config of {a} ran every one of its tasks ({', '.join(use)}) on the "
                                "selection seeds: nothing to rank")
        ranked.sort(key=lambda c: (-c.score, c.config))
        picks.append(Pick(a, tuple(ranked), tuple(use), measure, tuple(sorted(unranked))))
    return tuple(picks)


def choose(study_path: Path, rule: SelectRule, *, last_k: int, algos: Sequence[str] | None = None,
           envs: Sequence[str] | None = None, normalisation: Normalisation = "bounds",
           study_runs: store.StudyRuns | None = None) -> tuple[store.StudyRuns, Selection]:
    """Apply the rule to a study: (the runs to compare: each algorithm's chosen config on the
    evaluation seeds, the selection made). ``algos``/``envs`` restrict the study as the report does."""
    runs = study_runs if study_runs is not None else store.read_study(Path(study_path))

    def in_scope(rec: Mapping) -> bool:
        return ((algos is None or rec["algo"] in algos)
                and (envs is None or rec["env"] in envs or f"{rec['env']}:{rec['task']}" in envs))

    seeds = [int(rec["seed"]) for rec, _ in runs if in_scope(rec) and isinstance(rec.get("seed"), int)]
    select_seeds, eval_seeds = split_seeds(seeds, rule.seeds)
    configs = {rec["run_id"]: config_of(rec) for rec, _ in runs}
    try:
        data = load_scores(Path(study_path), last_k, algos=algos, envs=envs, normalisation=normalisation,
                           study_runs=[(rec, m) for rec, m in runs if rec.get("seed") in select_seeds])
    except AnalysisError as exc:
        raise AnalysisError(f"--select best, on the selection seeds {_seeds(select_seeds)}: {exc}") from None
    picks = rank(data, configs)
    best = {p.algo: p.best.config for p in picks}
    unpicked = sorted({rec["algo"] for rec, _ in runs if in_scope(rec)} - set(best))
    if unpicked:
        raise AnalysisError(f"--select best: {', '.join(unpicked)} has no usable complete run on the selection seeds "
                            f"{_seeds(select_seeds)}: nothing to choose its config by (--select-seeds, or --algos "
                            "without it)")
    kept = [(rec, m) for rec, m in runs
            if rec.get("seed") in eval_seeds and best.get(rec["algo"]) == configs[rec["run_id"]]]
    left_out = sum(in_scope(rec) for rec, _ in runs) - sum(in_scope(rec) for rec, _ in kept)
    return kept, Selection(select_seeds, eval_seeds, rule.seeds is None, picks, left_out)
