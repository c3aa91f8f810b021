"""The ``marpo-bench`` command line. Thin: parse, validate (one-line errors, exit code 2), call the
modules that do the work."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from marpo_bench import registry, store
from marpo_bench.config import (
    DEFAULT_THREADS,
    ConfigError,
    RunSpec,
    parse_set_options,
    parse_steps,
)
from marpo_bench.envs import UntrustedTaskError, parse_env
from marpo_bench.presets import (  # bench's rows; the default study's fields, read from its file
    BENCH_ALGOS,
    BENCH_ENVS,
    DEFAULT_ALGOS,
    DEFAULT_ENVS,
    DEFAULT_SEEDS,
    DEFAULT_STEPS,
)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train and compare cooperative MARL algorithms (MARPO, MAPPO, QMix).")
console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from marpo_bench import provenance

        console.print(f"marpo-bench {provenance.package_version('marpo-bench') or 'unknown'}", highlight=False)
        raise typer.Exit()


@app.callback()
def _startup(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")) -> None:
    """Say once, one line each, which plugins were left out and why (the rest works as usual)."""
    for problem in registry.problems():
        err_console.print(f"[yellow]warning:[/yellow] {problem}", highlight=False, soft_wrap=True)


def fail(message: str) -> None:
    """Print a one-line error and exit with code 2 (bad input)."""
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _csv(text: str | None) -> list[str] | None:
    """``a, b,c`` -> ["a", "b", "c"]; None stays None (the option was not given)."""
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


@app.command()
def run(
    algos: str | None = typer.Option(None, help=f"Comma-separated algorithms (see `list algos`) "
                                                f"(default: {DEFAULT_ALGOS}, or the preset's)."),
    envs: str | None = typer.Option(None, help=f"Comma-separated family:task (see `list envs`) "
                                               f"(default: {DEFAULT_ENVS}, or the preset's)."),
    seeds: int | None = typer.Option(None, help=f"Number of seeds per (algo, env): seeds 0..N-1 "
                                                f"(default: {DEFAULT_SEEDS}, or the preset's)."),
    steps: str | None = typer.Option(None, help=f"Env-step budget per run, e.g. 200k or 1.5M, or per env: "
                                                f"1M,smax=500k,smax:5m_vs_6m=300k "
                                                f"(default: {DEFAULT_STEPS}, or the preset's)."),
    preset: str | None = typer.Option(None, help="A study file shipped with the package (`marpo-bench list "
                                                  "presets`, `marpo-bench preset show NAME`); explicit flags "
                                                  "override its fields, --set adds to its settings."),
    study_file: Path | None = typer.Option(None, help="A study file (TOML: cells of algorithms, envs, seeds, "
                                                      "steps, settings and sweeps; marpo_bench/studyfile.py); "
                                                      "flags override its fields as a preset's. Kept in the "
                                                      "study directory as study.toml."),
    extend: bool = typer.Option(False, "--extend", help="Add a study file's runs to a study run with another "
                                                        "study file (kept beside it)."),
    workers: int = typer.Option(1, help="Runs trained in parallel (local process pool); on CPU, up to one "
                                        "per core (2 on a 2-core machine) is fastest."),
    threads: int = typer.Option(DEFAULT_THREADS, help="Torch threads per run (local executor). 1 is fastest for the "
                                        "suite's small networks; use --workers for the other cores."),
    executor: str = typer.Option("local", help="local (this machine) or ray (a Ray cluster; one task per run)."),
    ray_address: str | None = typer.Option(None, help="Ray cluster address (host:port or auto); "
                                                      "default: start a local Ray instance."),
    cpus_per_run: float = typer.Option(1.0, help="CPUs each Ray task reserves (--executor ray)."),
    gpus_per_run: float = typer.Option(0.0, help="GPUs each Ray task reserves (--executor ray; fractions share a "
                                                 "GPU between runs, e.g. 0.25 with --device cuda)."),
    vectorize_seeds: bool = typer.Option(False, help="Train the seeds of each (algorithm, task, config) as one "
                                                     "batched learner where the algorithm has one (MAPPO, MARPO, "
                                                     "QMix); each seed is still its own run (with --executor "
                                                     "ray: one task per group)."),
    retries: int = typer.Option(1, help="Retries of a failed run (from its last checkpoint) before it is "
                                        "recorded failed; NaN losses and bad configs are not retried."),
    checkpoint_every: str | None = typer.Option(None, help="Checkpoint every N env steps, e.g. 50k "
                                                           "(default: at every evaluation point; 0: only at the end)."),
    results: Path = typer.Option(Path("results"), help="Results directory."),
    study: str = typer.Option("default", help="Study name: runs go to RESULTS/STUDY/runs/."),
    set_: list[str] = typer.Option([], "--set", help="Config override key=value or algo.key=value."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or auto."),
    log: str | None = typer.Option(None, help="Also log each run's metrics to tensorboard (event files in the run "
                                              "directory) and/or wandb (offline unless WANDB_MODE is set), "
                                              "e.g. --log tensorboard."),
    max_memory: str | None = typer.Option(None, help="Memory the runs trained at once may use together, e.g. 8G "
                                                     "(default: what the machine has available now; with "
                                                     "--ray-address: each run's, unchecked when not given). A "
                                                     "grid with a run that would not fit is refused before any "
                                                     "starts."),
) -> None:
    """Train a grid of algorithms x envs x seeds. Re-running the same command skips complete runs and
    continues interrupted or failed ones from their last checkpoint."""
    from marpo_bench import executors, plan, presets, studyfile
    from marpo_bench.faults import faults_from_env
    from marpo_bench.loggers import parse_loggers

    try:
        sfile = None
        if study_file is not None:  # a study file, or a preset (the package's study files): one loader
            if preset is not None:
                raise ConfigError("give --preset or --study-file, not both")
            sfile = studyfile.read(study_file)
            grids = studyfile.with_flags(sfile.cells, algos=algos, envs=envs, seeds=seeds, steps=steps, sets=set_)
        else:
            grids = presets.resolve(preset, algos=algos, envs=envs, seeds=seeds, steps=steps, sets=set_)
        store.check_results_dir(results)
        specs = list({s.run_id: s for g in grids
                      for s in plan.plan_grid(g.algos, g.envs, g.seeds, g.steps, list(g.sets), device)}.values())
        if workers <= 0:
            raise ConfigError(f"--workers must be positive, got {workers}")
        if threads <= 0:
            raise ConfigError(f"--threads must be positive, got {threads}")
        if executor not in executors.EXECUTORS:
            raise ConfigError(f"unknown --executor {executor!r}; valid: {', '.join(executors.EXECUTORS)}")
        if ray_address is not None and executor != "ray":
            raise ConfigError("--ray-address needs --executor ray")
        if not cpus_per_run > 0:
            raise ConfigError(f"--cpus-per-run must be positive, got {cpus_per_run}")
        if not gpus_per_run >= 0:
            raise ConfigError(f"--gpus-per-run must be >= 0, got {gpus_per_run}")
        if gpus_per_run > 0 and executor != "ray":
            raise ConfigError("--gpus-per-run reserves GPUs for Ray tasks: it needs --executor ray")
        if retries < 0:
            raise ConfigError(f"--retries must be >= 0, got {retries}")
        every = None
        if checkpoint_every is not None:
            every = 0 if checkpoint_every.strip() == "0" else parse_steps(checkpoint_every)
        if not study or "/" in study or study.startswith("."):
            raise ConfigError(f"bad --study {study!r}: use a plain directory name")
        faults = faults_from_env()
        loggers = parse_loggers(log)
        statuses = {s.run_id: store.run_status(store.run_dir(results, study, s.run_id)) for s in specs}
        busy = plan.busy_runs(results, study, specs)
        if busy:
            raise ConfigError(f"{len(busy)} run(s) of this study are being trained by another process "
                              f"(pid {busy[0][1]}); wait for it or stop it, then re-run")
        from marpo_bench.memory import check_grid  # a run that cannot fit is refused before anything is written

        check_grid([s for s in specs if statuses[s.run_id] != "complete"], device, max_memory, executor=executor,
                   workers=workers, ray_address=ray_address, cpus_per_run=cpus_per_run,
                   vectorize_seeds=vectorize_seeds)
        if sfile is not None:
            studyfile.keep_copy(results / study, sfile, extend)
    except (ConfigError, ValueError, store.StoreError) as exc:
        fail(str(exc))
    if sfile is not None:
        configs = ", ".join(f"{a} {n} config{'s' if n != 1 else ''}" for a, n in studyfile.trials(sfile.cells).items())
        console.print(f"study file {study_file.name}: {len(sfile.cells)} grid(s); per algorithm and task: {configs}",
                      highlight=False)
    plan.write_plan(results, study, specs, {"preset": preset, "executor": executor,
                                            "study_file": study_file.name if study_file else None})
    done = sum(v == "complete" for v in statuses.values())
    redo = sum(v not in (None, "complete") for v in statuses.values())
    console.print(f"study [bold]{results / study}[/bold]: {len(specs)} runs "
                  f"({done} complete, skipped; {redo} incomplete, resumed from their last checkpoint)",
                  highlight=False)
    try:
        res = executors.run_grid(specs, results, study, console, executor=executor, workers=workers,
                                 ray_address=ray_address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                                 retries=retries,
                                 checkpoint_every=every, faults=faults, threads=threads, loggers=loggers,
                                 vectorize_seeds=vectorize_seeds)
    except executors.RayUnavailable as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        err_console.print("interrupted: finished runs are stored; re-run the same command to continue")
        raise typer.Exit(code=130) from None
    failed = [r for r in res if r.status == "failed"]
    console.print(f"finished: {sum(r.status == 'complete' for r in res)} trained, "
                  f"{sum(r.status == 'skipped' for r in res)} skipped, {len(failed)} failed "
                  f"-> {results / study}", highlight=False)
    console.print(f"the report (statistics, verdict, curves): marpo-bench report {results / study}", highlight=False)
    if failed:
        raise typer.Exit(code=1)


@app.command("list")
def list_(what: str = typer.Argument(..., help="algos | envs | presets")) -> None:
    """List the registered algorithms, envs or presets with one-line descriptions."""
    table = Table(show_header=True, header_style="bold")
    reg = registry.registry()
    if what == "algos":
        for col in ("algo", "description", "from"):
            table.add_column(col)
        for name in registry.algorithm_names():
            entry = reg.algorithms[name]
            table.add_row(name, entry.description, entry.origin)
    elif what == "envs":
        for col in ("env", "description", "from"):
            table.add_column(col)
        for fam_name, fam in reg.families.items():
            try:
                tasks = fam.task_names()
            except Exception as exc:  # a plugin's task list that cannot be read: say so, list the rest
                err_console.print(f"[yellow]warning:[/yellow] env family {fam_name!r}: its tasks could not be "
                                  f"read ({type(exc).__name__}: {exc})", highlight=False, soft_wrap=True)
                continue
            for task in tasks:
                table.add_row(f"{fam_name}:{task}", fam.description, reg.family_origin[fam_name])
    elif what == "presets":
        from marpo_bench.presets import PRESETS

        for col in ("preset", "grid (one row per cell)", "CPU-h", "description"):
            table.add_column(col)
        for p in PRESETS.values():  # one row per cell (its hours beside it however the grid wraps)
            for i, c in enumerate(p.cells):
                table.add_row(p.name if i == 0 else "", f"{c.algos} | {c.envs} | {c.seeds} seeds | {c.steps}",
                              "-" if c.cpu_hours is None else f"{c.cpu_hours:.1f}", p.description if i == 0 else "",
                              end_section=i == len(p.cells) - 1)
        table.caption = ("CPU-h: measured, per cell (- where not yet); `marpo-bench preset show NAME` prints a "
                         "preset's file, with why its budgets")
    else:
        fail(f"unknown list {what!r}; valid: algos, envs, presets")
    console.print(table)


preset_app = typer.Typer(help="The presets: study files shipped with the package (`marpo-bench list presets`).",
                         no_args_is_help=True)
app.add_typer(preset_app, name="preset")


@preset_app.command("show")
def preset_show(name: str = typer.Argument(..., help="A preset's name (`marpo-bench list presets`).")) -> None:
    """Print a preset's study file: `marpo-bench preset show paper > mine.toml` is a starting point for
    `marpo-bench run --study-file mine.toml` (the same runs until you edit it)."""
    from marpo_bench import presets

    try:
        text = presets.text(name)
    except ConfigError as exc:
        fail(str(exc))
    sys.stdout.write(text)


@app.command()
def bench(
    algos: str = typer.Option(BENCH_ALGOS, help="Algorithms to time in training ('' for none)."),
    envs: str = typer.Option(BENCH_ENVS, help="Comma-separated family:task."),
    num_envs: str = typer.Option("", help="Comma-separated E for env-only rows (default per family); "
                                        "training uses the algorithm's default E unless --train-num-envs."),
    train_num_envs: int = typer.Option(0, help="Override E for training rows (0 = algorithm default)."),
    seconds: float = typer.Option(5.0, help="Timed seconds per measurement (after warm-up)."),
    threads: int = typer.Option(DEFAULT_THREADS, help="Torch threads per measurement (as `run` trains; "
                                                      "0 = all cores)."),
    parallel: int = typer.Option(1, help="Identical measurements run at once, one process each, as "
                                         "`run --workers N` trains: env steps/s is their sum."),
    out: Path | None = typer.Option(None, help="Also write the table as Parquet."),
    seed_stacks: str = typer.Option("", help="Comma-separated S, e.g. 1,4,8: for each algorithm with a batched "
                                             "learner: S seeds as one batched learner, as S single-seed "
                                             "learners one after another, and the arithmetic bound (one "
                                             "learner doing S seeds' work) (rows `seeds`)."),
    set_: list[str] = typer.Option([], "--set", help="Config override for the training rows, key=value or "
                                                     "algo.key=value (as `run --set`), e.g. to time another recipe."),
    device: str = typer.Option("cpu", help="Where the learners train: cpu, cuda, cuda:N or auto (as `run`)."),
) -> None:
    """Env steps/s (random actions) and training steps/s per algorithm, with peak memory; training
    rows split each iteration (ms) into env compute, torch<->env transfer, policy/bookkeeping and
    update."""
    import os

    from marpo_bench.algos import get_algorithm
    from marpo_bench.bench import SEED_MODES, run_isolated
    from marpo_bench.recipes import build_config, resolve_device

    try:
        algo_names = [a for a in algos.split(",") if a]
        for a in algo_names:
            registry.algorithm_entry(a)  # ValueError naming the valid ones
        env_pairs = [parse_env(e.strip(), trust_imports=True) for e in envs.split(",") if e.strip()]
        sizes = [int(x) for x in num_envs.split(",") if x.strip()]
        stacks = [int(x) if x.strip().isdigit() else 0 for x in seed_stacks.split(",") if x.strip()]
        if any(x <= 0 for x in stacks):
            raise ConfigError(f"--seed-stacks must list positive seed counts, got {seed_stacks!r}")
        if any(x <= 0 for x in sizes) or seconds <= 0 or parallel <= 0 or threads < 0 or train_num_envs < 0:
            raise ConfigError("--num-envs, --seconds, --parallel must be positive and --threads, "
                              "--train-num-envs >= 0")
        pairs = parse_set_options(set_)
        dev = str(resolve_device(device))  # no CUDA here: a one-line error, before any process starts
        for a in algo_names:  # bad keys or values fail here, before any process starts
            for fam, task in env_pairs:
                build_config(RunSpec(a, fam, task, 0, 10**9, pairs))
    except ValueError as exc:
        fail(str(exc))
    nthreads = threads or os.cpu_count() or 1
    jobs: list[tuple[str, tuple]] = []
    for fam, task in env_pairs:
        for e in sizes or registry.env_family(fam).bench_sizes:
            jobs.append(("env", (fam, task, e, seconds)))
        for a in algo_names:
            jobs.append(("train", (a, fam, task, train_num_envs or None, seconds, pairs, dev)))
            if stacks and getattr(get_algorithm(a), "batched", None) is not None:
                for S in stacks:
                    for mode in SEED_MODES:
                        jobs.append(("seeds", (a, fam, task, S, mode, seconds, pairs, dev)))
    rows = []
    from rich.progress import track

    for kind, args in track(jobs, description="benchmarking", console=console):
        try:
            rows.append(run_isolated(kind, args, nthreads, parallel))
        except RuntimeError as exc:
            err_console.print(f"[red]{kind} {args}: {exc}[/red]")
    title = f"marpo-bench bench ({nthreads} torch threads, learners on {dev}" + (
        f", {parallel} at once: summed env steps/s)" if parallel > 1 else ")")
    table = Table(title=title, header_style="bold")
    cols = ("kind", "algo", "env", "E", "env steps/s", "env ms", "transfer ms", "policy ms", "update ms",
            "peak RSS MB")
    for col in cols:
        table.add_column(col, justify="right" if col not in ("kind", "algo", "env") else "left")
    for r in rows:
        fmt = (lambda v: "-" if v != v else f"{v:,.1f}")  # noqa: E731  (NaN -> "-")
        table.add_row(r["kind"], r["algo"], r["env"], str(r["num_envs"]), f"{r['env_steps_per_s']:,.0f}",
                      *(fmt(r[k]) for k in ("env_ms", "transfer_ms", "policy_ms", "update_ms")),
                      f"{r['peak_rss_mb']:,.0f}")
    console.print(table)
    if out is not None:
        import io

        import pandas as pd

        buf = io.BytesIO()
        pd.DataFrame(rows).to_parquet(buf, index=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        store.atomic_write_bytes(out, buf.getvalue())
        console.print(f"wrote {out}")


@app.command()
def report(
    study: Path = typer.Argument(..., help="The study directory, RESULTS_DIR/STUDY."),
    format_: str = typer.Option("html,pdf", "--format", help="Comma-separated: html, pdf, md (a Markdown "
                                                           "summary for a README or a pull request)."),
    out: Path | None = typer.Option(None, help="Output directory (default: STUDY/report)."),
    reps: int = typer.Option(50_000, help="Bootstrap resamples for every confidence interval."),
    baseline: str | None = typer.Option(None, help="Algorithm the others are compared against first "
                                                   "(default: mappo when the study has it)."),
    primary: str | None = typer.Option(None, help="Algorithm of page 1's headline, compared with the baseline "
                                                  "(default: the first in the report's order, marpo when the "
                                                  "study has it); the other comparisons follow in a table."),
    last_k: int = typer.Option(3, help="Final score = mean of the last K evaluation points."),
    seed: int = typer.Option(0, help="Seed of the bootstrap (the same seed gives the same CIs)."),
    seed_traces: bool = typer.Option(False, "--seed-traces", help="Draw every seed's learning curve."),
    algos: str | None = typer.Option(None, help="Only these algorithms, comma-separated (default: all)."),
    envs: str | None = typer.Option(None, help="Only these env families or family:task pairs, comma-separated "
                                               "(default: all), e.g. jax_mpe for an ablation on MPE."),
    normalise: str = typer.Option("bounds", help="How return tasks are normalised: bounds (each task's stored "
                                                 "bounds) or minmax (min-max over each task's own values, as "
                                                 "marl-eval does; imported tasks then enter the aggregates)."),
    select: str | None = typer.Option(None, help="best: for a sweep, each algorithm's config with the highest mean "
                                                 "final score on the selection seeds, compared on the other seeds "
                                                 "only (page 1 says which, and how many configs each had)."),
    select_seeds: str | None = typer.Option(None, help="The seeds --select best chooses on, e.g. 0,1 (default: the "
                                                       "lower half of the study's seeds)."),
) -> None:
    """rliable statistics, learning curves and provenance of a study as HTML and PDF."""
    import time

    from marpo_bench.analysis.scores import AnalysisError
    from marpo_bench.analysis.selection import SELECTS, SelectRule, parse_seeds
    from marpo_bench.analysis.study import analyse
    from marpo_bench.report import FORMATS, ReportError, write_report

    formats = tuple(dict.fromkeys(f.strip().lower() for f in format_.split(",") if f.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        fail(f"unknown format {', '.join(bad) or '(none)'}; valid: {', '.join(FORMATS)}")
    if select is not None and select not in SELECTS:
        fail(f"unknown --select {select!r}; valid: {', '.join(SELECTS)}")
    if select_seeds is not None and select is None:
        fail("--select-seeds needs --select best")
    target = out if out is not None else study / "report"
    if target.exists() and not target.is_dir():
        fail(f"--out {target} is a file, not a directory: give a directory for the report's files")
    t0 = time.perf_counter()
    try:
        rule = SelectRule(parse_seeds(select_seeds)) if select is not None else None
        res = analyse(study, reps=reps, seed=seed, baseline=baseline, primary=primary, last_k=last_k, select=rule,
                      algos=_csv(algos), envs=_csv(envs), normalisation=normalise)
        t1 = time.perf_counter()
        for note in res.notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True, markup=False)
        paths = write_report(res, target, formats, seed_traces)
        print_verdict(res)
    except (store.StoreError, AnalysisError, ReportError) as exc:
        fail(str(exc))
    t2 = time.perf_counter()
    for kind, path in paths.items():
        console.print(f"wrote {kind}: {path}", highlight=False, soft_wrap=True)
    console.print(f"{len(res.data.algos)} algorithms x {len(res.data.tasks)} tasks, "
                  f"{len(res.data.excluded)} runs not used; statistics {t1 - t0:.1f} s, "
                  f"rendering {t2 - t1:.1f} s", highlight=False)


@app.command()
def bounds(
    study: Path = typer.Argument(..., help="The study directory, RESULTS_DIR/STUDY."),
    reference: list[str] = typer.Option([], "--reference", help="A task's reference score, family:task=SCORE "
                                                               "(repeatable), e.g. rendezvous:meet=0.9."),
    source: str = typer.Option("given by the user", help="Where the reference scores come from (stored with them)."),
    episodes: int = typer.Option(512, help="Episodes of the random policy's measurement (once per task)."),
    trust_imports: bool = typer.Option(False, "--trust-imports", help="Let a task read from the run's files "
                                                                      "import the module it names (pettingzoo:); "
                                                                      "only for results from a source you trust."),
) -> None:
    """Normalisation bounds for the study's return-scored tasks that have none stored: measures the
    uniform-random policy's score once per task and records the reference scores you give, in
    STUDY/bounds.json; `report` then normalises those tasks with them."""
    from marpo_bench import normalisation as nb
    from marpo_bench.normalisation import score_kind, task_bounds

    try:
        if not study.is_dir() or not (study / "runs").is_dir():
            raise nb.BoundsError(f"{study} is not a study directory (no runs/ in it); give RESULTS_DIR/STUDY")
        if episodes <= 0:
            raise nb.BoundsError(f"--episodes must be positive, got {episodes}")
        records, _ = store.load_study(study)
        tasks = sorted({(r["env"], r["task"]) for r in records
                        if score_kind(r["env"]) == "return" and task_bounds(r["env"], r["task"]) is None})
        refs = {}
        for key, score in nb.parse_references(reference).items():
            env, task = parse_env(key, trust_imports=True)
            if (env, task) not in tasks:
                valid = ", ".join(f"{e}:{t}" for e, t in tasks) or "none"
                raise nb.BoundsError(f"--reference names {key}, which is not a task of this study without stored "
                                     f"bounds; valid: {valid}")
            refs[(env, task)] = score
        table = nb.read(study)
    except (ValueError, store.StoreError) as exc:
        fail(str(exc))
    from rich.progress import track

    todo = [(e, t) for e, t in tasks if "random" not in table.get(f"{e}:{t}", {})]
    for env, task in track(todo, description="measuring the random policy", console=err_console,
                           disable=not todo):
        try:
            table.setdefault(f"{env}:{task}", {}).update(nb.measure_random(env, task, episodes,
                                                                           trust_imports=trust_imports))
        except UntrustedTaskError as exc:
            err_console.print(f"[yellow]warning:[/yellow] not measured: {exc}", highlight=False, soft_wrap=True)
        except Exception as exc:  # the env cannot be built here: say which and why, keep the rest
            err_console.print(f"[yellow]warning:[/yellow] {env}:{task}: the random policy could not be measured "
                              f"({type(exc).__name__}: {exc})", highlight=False, soft_wrap=True)
    if todo:
        nb.write(study, table)  # measured once: kept whatever happens next
    for (env, task), score in refs.items():
        entry = table.get(f"{env}:{task}", {})
        if "random" in entry and score <= entry["random"]:
            fail(f"the reference for {env}:{task} ({score:g}) must be above its random score ({entry['random']:.3g})")
        entry.update(reference=score, reference_source=source)
        table[f"{env}:{task}"] = entry
    nb.write(study, table)
    out = Table(title=f"normalisation bounds of {study.name} (stored in {nb.BOUNDS_JSON})", header_style="bold")
    for col in ("task", "random", "reference", "reference source"):
        out.add_column(col)
    for env, task in tasks:
        entry = table.get(f"{env}:{task}", {})
        rnd = f"{entry['random']:.3f} ± {entry['random_sem']:.3f}" if "random" in entry else "-"
        ref = f"{entry['reference']:g}" if entry.get("reference") is not None else "- (raw returns in the report)"
        out.add_row(f"{env}:{task}", rnd, ref, entry.get("reference_source", ""))
    console.print(out)


def print_verdict(res: object) -> None:
    """Page 1's verdict (the headline sentence, the other comparisons' table, what they rest on) and
    the per-task table in the terminal (``report`` and ``make demo`` end with it). Algorithm labels
    are text, never markup: a variant's ``[k=v]`` is printed as it is."""
    from rich.text import Text

    from marpo_bench.report.render import fmt
    from marpo_bench.report.verdict import headline, notes, table

    console.print("[bold]verdict[/bold]")
    console.print(Text(headline(res)), soft_wrap=True)
    # the other comparisons: one line each (a table of 7 columns wraps every cell at 80 columns)
    for r in table(res):
        console.print(Text(f"  {r.comparison} on {r.tasks} ({r.budget}): P {r.poi}, IQM {r.iqm}, {r.verdict}; "
                           f"env steps to the baseline's final IQM: {r.efficiency}"), soft_wrap=True)
    for line in notes(res):
        console.print(Text(f"  {line}"), soft_wrap=True)
    per_task = Table(title="per task: final evaluation score (mean over seeds, CI) and normalised score",
                     header_style="bold")
    for col in ("task", "algo", "final", "score", "seeds"):
        per_task.add_column(col, justify="right" if col in ("score", "seeds") else "left")
    for s in res.summary:
        flag = " (not learned)" if s.task in res.data.unlearned else ""
        per_task.add_row(Text(s.task + flag), Text(s.algo), str(s.mean), fmt(s.score), str(len(s.seeds)))
    console.print(per_task)


def _short(steps: int) -> str:
    """Env steps in a few characters: 950, 12k, 1.5M."""
    if steps >= 1_000_000:
        return f"{steps / 1e6:.3g}M"
    return f"{steps / 1e3:.3g}k" if steps >= 1_000 else str(steps)


@app.command()
def status(
    study: Path = typer.Argument(..., help="The study directory, RESULTS_DIR/STUDY."),
) -> None:
    """Runs of a study by status: complete / interrupted / failed / running / pending (planned by
    `run` but not started)."""
    from marpo_bench.plan import study_status

    try:
        rows = study_status(study)
    except store.StoreError as exc:
        fail(str(exc))
    colours = {"complete": "green", "interrupted": "yellow", "failed": "red", "running": "cyan",
               "pending": "dim", "unreadable": "red"}
    # One line per run at any width (80 columns included): long cells end in an ellipsis, never
    # wrap; the messages of runs that have one follow the table in full, one per line.
    table = Table(title=f"study {study}", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for col, width in (("algo", (4, 16)), ("task", (8, 28)), ("seed", (4, 4)), ("status", (11, 11)),
                       ("env steps", (9, 11))):
        table.add_column(col, justify="right" if col in ("seed", "env steps") else "left",
                         no_wrap=True, overflow="ellipsis", min_width=width[0], max_width=width[1])
    messages = []
    for r in rows:
        steps = f"{_short(r.get('env_steps') or 0)}/{_short(r['budget'])}" if isinstance(r.get("budget"), int) else "-"
        env = f"{r.get('env')}:{r.get('task')}" if r.get("env") else "-"
        c = colours.get(r["status"], "white")
        table.add_row(str(r.get("algo") or "-"), env, str(r.get("seed", "-")), f"[{c}]{r['status']}[/{c}]", steps)
        attempt = f" (attempt {r['attempt']})" if (r.get("attempt") or 1) > 1 else ""
        if r.get("message") or attempt:
            messages.append(f"{r['status']} {r['run_id']}{attempt}: {r.get('message') or ''}")
    console.print(table)
    for m in messages:
        console.print(m, highlight=False, soft_wrap=True)
    from marpo_bench.studyfile import describe

    kept = describe(study)
    if kept:
        console.print(kept, highlight=False, soft_wrap=True)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("complete", "interrupted", "failed", "running",
                                                                "pending", "unreadable")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n or s != "unreadable")
                  + f" ({len(rows)} runs)", highlight=False)


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="A complete run's directory, RESULTS/STUDY/runs/RUN_ID."),
    episodes: int | None = typer.Option(None, help="Evaluation episodes (default: the run's own, e.g. 32)."),
    mode: str | None = typer.Option(None, help="greedy or sample (default: the run's eval mode)."),
    seed: int | None = typer.Option(None, help="Eval seed (default: the seed of the run's final evaluation)."),
    render: Path | None = typer.Option(None, help="Also play one episode and write it as an animated GIF."),
    task: str | None = typer.Option(None, help="Evaluate on another task of the run's family with the same "
                                               "spaces, e.g. 'simple_spread?landmark_range=0.8'."),
    trust_imports: bool = typer.Option(False, "--trust-imports", help="Let a task read from the run's files "
                                                                      "import the module it names (pettingzoo:); "
                                                                      "only for results from a source you trust."),
) -> None:
    """Evaluate a complete run's saved final policy (policy.pt), also one trained on another
    machine; with the defaults this repeats the run's final evaluation."""
    from marpo_bench import policy

    try:
        saved = policy.load(run_dir)
        rows = store.read_metrics(run_dir)  # read first: a damaged file stops here, before any work
        res = policy.evaluate(saved, episodes, mode, seed, task=task, trust_imports=trust_imports)
        frames = policy.render(saved, render, seed, res.mode, trust_imports=trust_imports) if render is not None else 0
    except (policy.PolicyError, store.StoreError) as exc:
        fail(str(exc))
    last = rows.iloc[-1] if len(rows) else None
    line = (f"{saved.algo} on {saved.env}:{task or saved.task}, seed {saved.seed}: return {res.return_mean:.3f} "
            f"[{res.return_lo:.3f}, {res.return_hi:.3f}] (95% CI) over {res.episodes} {res.mode} episodes, "
            f"eval seed {res.seed}")
    if res.win_rate == res.win_rate:
        line += f"; win rate {res.win_rate:.3f} [{res.win_lo:.3f}, {res.win_hi:.3f}]"
    console.print(line, highlight=False, soft_wrap=True)
    if last is not None:
        console.print(f"the run's final evaluation at {int(last['env_steps']):,} env steps: return "
                      f"{float(last['eval_return_mean']):.3f} over {int(last['eval_episodes'])} episodes "
                      f"(policy from {saved.source})", highlight=False, soft_wrap=True)
    if render is not None:
        console.print(f"wrote {render} ({frames} frames)", highlight=False)


@app.command()
def export(
    study: Path = typer.Argument(..., help="The study directory, RESULTS/STUDY."),
    format_: str = typer.Option("marl-eval", "--format", help="marl-eval (its JSON: environment -> task -> "
                                                             "algorithm -> run -> step)."),
    out: Path = typer.Option(..., help="The JSON file to write (must not exist)."),
) -> None:
    """Export a study's complete runs in marl-eval's JSON (for BenchMARL / Mava / marl-eval tools)."""
    from marpo_bench import marleval

    try:
        if format_ != "marl-eval":
            raise marleval.MarlEvalError(f"unknown --format {format_!r}; valid: marl-eval")
        res = marleval.write_export(study, out)
    except (marleval.MarlEvalError, store.StoreError) as exc:
        fail(str(exc))
    for w in res.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
    console.print(f"wrote {out}: {res.runs} runs in marl-eval's format", highlight=False)


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="A marl-eval JSON file (e.g. written by BenchMARL, Mava or `export`)."),
    study: str = typer.Option(..., help="Study to import into: RESULTS/STUDY/runs/."),
    results: Path = typer.Option(Path("results"), help="Results directory."),
    env_map: list[str] = typer.Option([], "--env-map", help="NAME=FAMILY: store the file's environment NAME "
                                                              "as this suite's env family FAMILY."),
    return_metric: str | None = typer.Option(None, help="The file's return metric (default: the first of "
                                                         "return, episode_return, mean_episode_return)."),
    reward_scale: str | None = typer.Option(None, help="The scale the file's returns are on, when it is this "
                                                        "suite's (e.g. team_sum); default: kept apart as "
                                                        "'imported'."),
) -> None:
    """Import the runs of a marl-eval JSON file as complete runs of a study, marked as imported."""
    from marpo_bench import marleval

    try:
        if not study or "/" in study or study.startswith("."):
            raise marleval.MarlEvalError(f"bad --study {study!r}: use a plain directory name")
        mapping = {}
        for item in env_map:
            name, eq, fam = item.partition("=")
            if not eq or not name or not fam:
                raise marleval.MarlEvalError(f"bad --env-map {item!r}: use NAME=FAMILY, e.g. MPE=jax_mpe")
            mapping[name] = fam
        done = marleval.import_file(file, results, study, return_metric=return_metric, env_map=mapping,
                                    reward_scale=reward_scale)
    except (marleval.MarlEvalError, store.StoreError, ValueError) as exc:
        fail(str(exc))
    already = f" ({done.already} of the file's runs were there already: left as they are)" if done.already else ""
    console.print(f"imported {len(done.runs)} runs into {results / study}{already}; the report: marpo-bench report "
                  f"{results / study}", highlight=False)


@app.command()
def regress(
    reference: Path = typer.Option(Path("results/reference"), help="The stored reference directory."),
    suite: str = typer.Option("smoke", help="Suite the reference holds (marpo_bench/regress/suites.py: smoke, tiny)."),
    mode: str = typer.Option("both", help="exact (bit-for-bit re-run of a short slice: did behaviour change?), "
                                          "stat (re-run the suite and judge: did it get worse?) or both."),
    candidate: Path | None = typer.Option(None, help="Stat mode: compare this study instead of re-training "
                                                     "the suite."),
    tolerance: float = typer.Option(0.10, help="Stat mode: IQM drop (normalised score) beyond which an "
                                               "algorithm whose P(candidate > reference) CI lies below 1/2 "
                                               "is worse."),
    workers: int = typer.Option(1, help="Runs re-trained in parallel (spawned processes, one torch thread each)."),
    out: Path | None = typer.Option(None, help="Keep the re-runs in this new directory (default: a temporary "
                                               "directory, removed afterwards)."),
    update: bool = typer.Option(False, "--update", help="Re-train the suite and replace the reference "
                                                        "(needs --reason)."),
    reason: str | None = typer.Option(None, help="Why the reference is replaced (--update; recorded in its "
                                                 "README)."),
) -> None:
    """Regression check against a stored reference: exit 0 pass, 1 worse, 2 bad input, 3 behaviour
    changed (exact mode) but nothing worse."""
    from marpo_bench import regress as rg

    # CI logs are not terminals (80 columns by default): give the verdict table room.
    out_console = console if console.is_terminal else Console(width=max(console.width, 160))
    try:
        rg.check_update_args(update, reason, candidate, out)
        if update:
            rg.write_reference(reference, suite, reason or "", workers=workers, console=out_console)
            return
        request = rg.validate_request(reference, suite, mode, candidate, tolerance, workers, out)
    except (rg.RegressError, store.StoreError) as exc:
        fail(str(exc))
    try:
        res = rg.check(request, out_console)
    except (rg.RegressError, store.StoreError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(code=130) from None
    if res.exit_code:
        raise typer.Exit(code=res.exit_code)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="marpo-bench")


if __name__ == "__main__":
    sys.exit(main())
