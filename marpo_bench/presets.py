"""Named study grids for ``marpo-bench run --preset NAME``, with their budgets and why.

A preset is one or more cells, each a product grid (algorithms x envs x seeds, the env-step budget
per run and a few settings); an explicit ``--algos/--envs/--seeds/--steps`` flag replaces that
field in every cell, and ``--set`` options are applied after each cell's settings (so they win).
The settings are part of every run's id, so a preset run and a hand-written command with the
same grid and settings share runs.

Budgets are chosen so each preset finishes on the hardware named in its note. Training speed,
measured with ``marpo-bench bench --threads 1`` on one core of these 2-core machines while other
work was running (so idle speeds are higher), in env steps per second of training with default
configs: MAPPO/MARPO on jax_mpe (128 envs, 10 epochs) 11,000-13,000 on simple_spread and
simple_reference, 18,000 on simple_speaker_listener; on SMAX (recurrent, 64 envs x 50 steps, 5
epochs) 6,200-6,800 on 3m, 3,900 on 2s3z, 3,100 on 5m_vs_6m; QMix (8 envs, 32-episode batches, one
update per 2 episodes) 1,500-1,760 on the MPE tasks, 1,100 on 3m, 800-840 on 2s3z and 5m_vs_6m.
CPU-hours below are budget x runs / speed; evaluation and JIT compilation add about 25%.
These speeds are the first round's recipes (MLP on MPE, 5 epochs on SMAX); the published recipes
(README "Baselines") are slower: MAPPO on jax_mpe:simple_spread 2,600-2,800 env steps/s (GRU actor
and critic), and SMAX at 15 epochs instead of 5. The presets' CPU-hours are to be re-measured with
them.
"""

from __future__ import annotations

from dataclasses import dataclass

from marpo_bench.config import ConfigError

# The embedded default study (`marpo-bench run` without grid flags): small enough to finish in a few
# minutes on 2 CPU cores.
DEFAULT_ALGOS = "mappo,marpo"
DEFAULT_ENVS = "jax_mpe:simple_spread"
DEFAULT_SEEDS = 2
DEFAULT_STEPS = "300k"
# `marpo-bench bench`'s default rows: both MPE backends, the suite's fast path and its reference.
BENCH_ALGOS = "mappo,marpo"
BENCH_ENVS = "jax_mpe:simple_spread,mpe:simple_spread"

ALL_ALGOS = "mappo,marpo,qmix"
MPE_ENVS = "jax_mpe:simple_spread,jax_mpe:simple_reference,jax_mpe:simple_speaker_listener"
SMAX_PAPER_ENVS = "smax:3m,smax:2s3z,smax:5m_vs_6m"
PAPER_STEPS = "300k"
SMAX_ALL_ENVS = "smax:3m,smax:2s3z,smax:3s5z,smax:5m_vs_6m,smax:8m,smax:3s_vs_5z,smax:10m_vs_11m," \
                "smax:smacv2_5_units,smax:smacv2_10_units"


@dataclass(frozen=True)
class Cell:
    """One product grid of a preset: algorithms x envs x seeds at one budget (per env allowed,
    as ``--steps``), with settings and, where measured, its cost."""

    algos: str
    envs: str
    seeds: int
    steps: str
    sets: tuple[str, ...] = ()
    cpu_hours: float | None = None  # measured: budget x runs / bench's training speed, + evaluation
    note: str = ""  # why this cell, this budget


@dataclass(frozen=True)
class Preset:
    """One named study: the cells ``run --preset`` trains (one product grid, or several where the
    study is not a product, e.g. ablations on some tasks only), and a note on budget and cost."""

    name: str
    description: str
    cells: tuple[Cell, ...]
    budget: str = ""  # why these budgets, and what they cost

    @classmethod
    def grid(cls, name: str, description: str, algos: str, envs: str, seeds: int, steps: str,
             sets: tuple[str, ...] = (), budget: str = "") -> Preset:
        """A preset of one cell."""
        return cls(name, description, (Cell(algos, envs, seeds, steps, sets),), budget)

    @property
    def cpu_hours(self) -> float | None:
        """The cells' measured CPU-hours summed (None when any cell is unmeasured)."""
        hours = [c.cpu_hours for c in self.cells]
        return None if any(h is None for h in hours) else sum(hours)


ABLATIONS = "mappo,marpo,marpo_noreflect,marpo_symclip,marpo_ppoclip"
PAPER_CELLS = (
    Cell(ABLATIONS, "jax_mpe:simple_reference", 5, "3M",
         note="on-policy's train_mpe_reference.sh budget; MARPO's three ablations beside MAPPO and MARPO"),
    Cell(ABLATIONS, "jax_mpe:simple_speaker_listener", 5, "2M",
         note="on-policy's train_mpe_comm.sh budget; the ablations as on reference"),
    Cell("mappo,marpo", "jax_mpe:simple_spread", 5, "10M",
         note="half of train_mpe_spread.sh's 20M, for cost: spread is the study's largest MPE cell"),
    Cell("qmix", MPE_ENVS, 5, "2M",
         note="EPyMARL's MPE budget (its paper trains MPE for about 2M): the calibrated QMix recipe's source, "
              "not the MARPO scripts (which have no QMix)"),
    Cell("mappo,marpo", "smax:5m_vs_6m", 3, "10M",
         note="the hard map at the SMAC scripts' 10M (its recipe: 10 epochs, clip 0.05); 3 seeds for cost"),
    Cell("mappo,marpo,qmix", "smax:3s5z,smax:smacv2_5_units", 5, "2M",
         note="a fifth of the SMAC/SMACv2 scripts' 10M/20M: what the machine affords beside the rest"),
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset.grid(
            name="smoke",
            description="Does everything run? Every algorithm on one MPE and one SMAX task, tiny budget.",
            algos=ALL_ALGOS, envs="jax_mpe:simple_spread,smax:3m", seeds=1, steps="4k",
            sets=("num_envs=8", "eval_episodes=4", "mappo.epochs=1", "marpo.epochs=1", "qmix.batch_size=8"),
            budget="4k env steps per run, 8 envs, 1 epoch, QMix batches of 8 episodes: 6 runs in about "
                   "2 minutes on 2 cores (mostly JAX compilation). Checks plumbing, not learning.",
        ),
        Preset.grid(
            name="paper-mpe",
            description="The MPE comparison: MAPPO, MARPO, QMix on the three JaxMARL MPE tasks, 5 seeds.",
            algos=ALL_ALGOS, envs=MPE_ENVS, seeds=5, steps="2M",
            budget="2M env steps per run (MAPPO's MPE curves are mostly flat after 2M on Spread at 128 envs; "
                   "the MARPO paper trains longer, so this compares sample efficiency up to 2M). "
                   "45 runs: about 6 CPU-hours (QMix: 4.4 of them), an evening on 2 cores with --workers 2.",
        ),
        Preset.grid(
            name="paper-smax",
            description="The SMAX comparison: MAPPO, MARPO, QMix on SMAX 3m, 2s3z and 5m_vs_6m, 5 seeds.",
            algos=ALL_ALGOS, envs=SMAX_PAPER_ENVS, seeds=5, steps="2M",
            budget="2M env steps per run (SMAC papers use 10M on hard maps; 3m and 2s3z are solved well "
                   "before 2M by MAPPO, 5m_vs_6m is not: its numbers are early-training numbers). "
                   "45 runs: about 16 CPU-hours: a Ray cluster (--executor ray) or a weekend on 2 cores.",
        ),
        Preset.grid(
            name="paper-300k",
            description="The first round's paper study (results/paper-300k/, superseded recipes): MAPPO, MARPO, "
                        "QMix on 3 MPE and 3 SMAX tasks, 5 seeds, 300k.",
            algos=ALL_ALGOS, envs=f"{MPE_ENVS},{SMAX_PAPER_ENVS}", seeds=5, steps=PAPER_STEPS,
            budget="300k env steps per run on every task, the same for every algorithm: what lets these 90 runs "
                   "and paper-300k-ablation's 45 finish within one working session on 2 cores with --workers 2. "
                   "QMix is most of the cost (5-8x MAPPO's time per env step: one 32-episode update per 2 "
                   "episodes). Training time from `marpo-bench bench --threads 1` (one run each, 2026-12): "
                   "MPE 1.0 CPU-h, SMAX 2.0 CPU-h; with evaluation and JIT about 3.7 CPU-h (about 1.9 h "
                   "wall on 2 cores). An early-training (sample-efficiency) comparison: MAPPO's MPE curves "
                   "and SMAX 5m_vs_6m are far from converged at 300k.",
        ),
        Preset.grid(
            name="paper-300k-ablation",
            description="The first round's ablations (results/paper-300k/): MARPO's components on MPE, 300k.",
            algos="marpo_noreflect,marpo_symclip,marpo_ppoclip", envs=MPE_ENVS, seeds=5, steps=PAPER_STEPS,
            budget="The paper-300k preset's MPE budget, so the ablations sit beside MARPO and MAPPO's runs of that "
                   "study: 45 runs, about 0.3 CPU-h of training (0.4 with evaluation).",
        ),
        Preset(
            name="paper",
            description="The paper's claim at the MARPO release's budgets (results/paper/): MARPO, its ablations, "
                        "MAPPO and QMix on MPE and SMAX, today's recipes.",
            cells=PAPER_CELLS,
            budget="The budgets of the MARPO release's scripts (on-policy's: MPE reference 3M, speaker-listener "
                   "2M, spread 20M; SMAC 10M per map; SMACv2 20M), except where a cell's note says otherwise "
                   "and why. Cells in priority order; CPU-hours measured with `marpo-bench bench` at each "
                   "recipe (results/paper/README.md has the plan).",
        ),
        Preset.grid(
            name="full",
            description="Everything: all algorithms on all MPE and SMAX tasks, 10 seeds, SMAC-scale budget.",
            algos=ALL_ALGOS, envs=f"{MPE_ENVS},{SMAX_ALL_ENVS}", seeds=10, steps="10M",
            budget="10M env steps per run (the SMAC/SMACv2 convention), 10 seeds (rliable's advice for "
                   "stable interval estimates). 360 runs: roughly 600 CPU-hours: a Ray cluster only.",
        ),
    )
}


@dataclass(frozen=True)
class Grid:
    """A resolved grid: preset fields with the explicit flags applied."""

    algos: str
    envs: str
    seeds: int
    steps: str
    sets: tuple[str, ...]


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (ConfigError naming the valid ones otherwise)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve(preset: str | None, *, algos: str | None, envs: str | None, seeds: int | None, steps: str | None,
            sets: list[str] | tuple[str, ...], defaults: tuple[str, str, int, str]) -> tuple[Grid, ...]:
    """The grids to run: without a preset one grid of the explicit flags, else ``defaults``
    (algos, envs, seeds, steps); with one, each of its cells with the explicit flags replacing that
    field. ``sets`` are appended to each cell's settings, so the user's win."""
    d_algos, d_envs, d_seeds, d_steps = defaults
    if preset is None:
        return (Grid(algos if algos is not None else d_algos, envs if envs is not None else d_envs,
                     seeds if seeds is not None else d_seeds, steps if steps is not None else d_steps, tuple(sets)),)
    return with_flags(get_preset(preset).cells, algos=algos, envs=envs, seeds=seeds, steps=steps, sets=sets)


def with_flags(cells: tuple[Cell, ...], *, algos: str | None, envs: str | None, seeds: int | None,
               steps: str | None, sets: list[str] | tuple[str, ...]) -> tuple[Grid, ...]:
    """The cells (of a preset or a study file) as grids, each explicit flag replacing that field in
    every cell and ``sets`` appended to each cell's settings (so the user's win)."""
    return tuple(Grid(algos if algos is not None else c.algos, envs if envs is not None else c.envs,
                      seeds if seeds is not None else c.seeds, steps if steps is not None else c.steps,
                      (*c.sets, *sets))
                 for c in cells)
