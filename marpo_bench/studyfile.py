"""Study files: a study's grid as one versioned TOML file (``marpo-bench run --study-file FILE``).

A study is one or more cells, each a product grid (:class:`Cell`; the presets are such files), with settings
and sweeps. Top-level keys give every cell's defaults; a cell's own keys replace them (``set`` and
``sweep`` tables are merged, the cell's entries winning)::

    description = "MARPO against MAPPO on MPE reference, with a tuning sweep for both"
    seeds = 5
    steps = "3M"                       # or per env: "1M,smax=500k,smax:5m_vs_6m=300k"

    [set]                              # settings, as --set: key = value, algo.key = value
    eval_episodes = 32

    [[cell]]
    algos = ["mappo", "marpo"]
    envs = ["jax_mpe:simple_reference"]

    [cell.sweep]                       # every combination is a config of its own (its own run ids)
    lr = [3e-4, 7e-4]
    "mappo.epochs" = [10, 15]

Documentation fields, shown by ``marpo-bench list presets`` and kept with the file (never part of a
run's id): ``budget_note`` (why these budgets, what they cost), a cell's ``note`` and ``cpu_hours``
(measured: budget x runs / the training speed ``marpo-bench bench`` gives, at the top of a file
without ``[[cell]]`` tables; a swept cell's hours are shared among its configs by their runs). The
presets are such files, shipped in ``marpo_bench/studies/`` (``marpo-bench preset show NAME``).

A sweep's values expand to one grid per combination: each combination's settings join the cell's
``set`` (so they are part of every run's id, and the report labels the variants
``algo[lr=0.0003,...]``). :func:`trials` says how many configs each algorithm gets, so an equal
tuning budget is checkable. Command-line flags replace a field in every cell, as for presets.

Read with the standard library's ``tomllib``; every error is a one-line ``ConfigError`` naming the
key and the valid choices (algorithms, tasks and settings are then checked as ``--set`` is, by
``plan.plan_grid``).
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marpo_bench.config import ConfigError

STUDY_COPY = "study.toml"
"""The copy of the study file a study directory keeps (``run --study-file`` writes it)."""

TOP_KEYS = ("description", "algos", "envs", "seeds", "steps", "set", "sweep", "cell", "budget_note", "cpu_hours")
CELL_KEYS = ("algos", "envs", "seeds", "steps", "set", "sweep", "note", "cpu_hours")


@dataclass(frozen=True)
class Cell:
    """One product grid of a study: algorithms x envs x seeds at one budget (per env allowed,
    as ``--steps``), with settings and, where measured, its cost."""

    algos: str
    envs: str
    seeds: int
    steps: str
    sets: tuple[str, ...] = ()
    cpu_hours: float | None = None  # measured: budget x runs / bench's training speed, + evaluation
    note: str = ""  # why this cell, this budget


@dataclass(frozen=True)
class Grid:
    """A resolved grid: a cell's fields with the explicit flags applied."""

    algos: str
    envs: str
    seeds: int
    steps: str
    sets: tuple[str, ...]


def with_flags(cells: tuple[Cell, ...], *, algos: str | None, envs: str | None, seeds: int | None,
               steps: str | None, sets: list[str] | tuple[str, ...]) -> tuple[Grid, ...]:
    """The cells (of a preset or a study file) as grids, each explicit flag replacing that field in
    every cell and ``sets`` appended to each cell's settings (so the user's win)."""
    return tuple(Grid(algos if algos is not None else c.algos, envs if envs is not None else c.envs,
                      seeds if seeds is not None else c.seeds, steps if steps is not None else c.steps,
                      (*c.sets, *sets))
                 for c in cells)


@dataclass(frozen=True)
class StudyFile:
    """A parsed study file: its description and its cells, sweeps expanded."""

    description: str
    cells: tuple[Cell, ...]
    text: str  # the file as read (what the study directory keeps)
    budget_note: str = ""  # why these budgets, what they cost


def _names(value: Any, key: str, where: str) -> str:
    """``["a", "b"]`` or ``"a,b"`` -> ``"a,b"`` (the command line's form)."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return ",".join(value)
    raise ConfigError(f"{where}: {key} must be a list of names (or one comma-separated string), got {value!r}")


def _steps(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise ConfigError(f"{where}: steps must be a budget such as \"2M\" or 2000000 (or per env: "
                          f"\"1M,smax=500k\"), got {value!r}")
    return str(value)


def _fit_steps(steps: str, envs: str) -> str:
    """The file-wide per-env budgets (``1M,smax=500k``) that apply to a cell's envs: the default and
    the entries naming one of its families or tasks (a cell on MPE alone drops ``smax=...``)."""
    mine = {e.strip() for e in envs.split(",")} | {e.strip().partition(":")[0] for e in envs.split(",")}
    parts = [p.strip() for p in steps.split(",") if p.strip()]
    return ",".join(p for p in parts if "=" not in p or p.rpartition("=")[0].strip() in mine)


def _seeds(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}: seeds must be a positive whole number, got {value!r}")
    return value


def _hours(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"{where}: cpu_hours must be a number of CPU-hours (>= 0), got {value!r}")
    return float(value)


def _text(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _literal(value: Any) -> str:
    """A TOML value as ``--set`` text (booleans as true/false, as the command line writes them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise TypeError(type(value).__name__)


def _settings(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: set must be a table of key = value (algo.key = value to scope one algorithm)")
    out = {}
    for k, v in value.items():
        try:
            out[str(k)] = _literal(v)
        except TypeError:
            raise ConfigError(f"{where}: set.{k} must be a number, a string or true/false, got {v!r}") from None
    return out


def _sweep(value: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: sweep must be a table of key = [values]")
    out = {}
    for k, vs in value.items():
        if not isinstance(vs, list) or not vs:
            raise ConfigError(f"{where}: sweep.{k} must be a non-empty list of values, got {vs!r}")
        try:
            out[str(k)] = [_literal(v) for v in vs]
        except TypeError:
            raise ConfigError(f"{where}: sweep.{k} values must be numbers, strings or true/false") from None
        if len(set(out[str(k)])) != len(vs):
            raise ConfigError(f"{where}: sweep.{k} lists a value twice")
    return out


def _unknown(table: Mapping, valid: tuple[str, ...], where: str) -> None:
    for k in table:
        if k not in valid:
            raise ConfigError(f"{where}: unknown key {k!r}; valid keys: {', '.join(valid)}")


def expand(algos: str, envs: str, seeds: int, steps: str, sets: Mapping[str, str],
           sweep: Mapping[str, list[str]], note: str = "", cpu_hours: float | None = None) -> list[Cell]:
    """One cell per combination of the sweep's values (one cell without a sweep); the sweep's
    settings follow the cell's own (they win). A sweep key scoped to one algorithm (``mappo.lr``)
    sweeps that algorithm only: the others keep one config (and so their run ids). ``cpu_hours``
    (the written cell's) is shared among the expanded cells by their number of runs."""
    names = algos.split(",")

    def swept(a: str) -> tuple[str, ...]:
        return tuple(k for k in sweep if "." not in k or k.split(".", 1)[0] == a)

    groups: dict[tuple[str, ...], list[str]] = {}
    for a in names:
        groups.setdefault(swept(a), []).append(a)
    out = []
    for keys, members in groups.items():
        base = {k: v for k, v in sets.items() if k not in keys}
        for combo in itertools.product(*(sweep[k] for k in keys)):
            settings = {**base, **dict(zip(keys, combo, strict=True))}
            out.append(Cell(",".join(members), envs, seeds, steps, tuple(f"{k}={v}" for k, v in settings.items()),
                            note=note))
    if cpu_hours is not None:
        total = sum(len(c.algos.split(",")) for c in out)
        out = [dataclasses.replace(c, cpu_hours=cpu_hours * len(c.algos.split(",")) / total) for c in out]
    return out


def parse(text: str, name: str) -> StudyFile:
    """The study in ``text`` (TOML), its cells expanded; ConfigError (one line) on anything else."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name} is not a TOML study file: {exc}") from None
    _unknown(data, TOP_KEYS, name)
    description = _text(data.get("description", ""), "description", name)
    budget_note = _text(data.get("budget_note", ""), "budget_note", name)
    if "cpu_hours" in data and "cell" in data:
        raise ConfigError(f"{name}: cpu_hours at the top is a file's one grid's; with [[cell]] tables give it "
                          "in each cell")
    top_sets = _settings(data.get("set", {}), name)
    top_sweep = _sweep(data.get("sweep", {}), name)
    raw_cells = data.get("cell", [{}] if "algos" in data or "envs" in data else [])
    if not isinstance(raw_cells, list) or not raw_cells:
        raise ConfigError(f"{name}: no cell: give algos and envs at the top, or one [[cell]] table per grid")
    cells: list[Cell] = []
    for i, cell in enumerate(raw_cells, start=1):
        where = f"{name}: cell {i}" if "cell" in data else name
        if not isinstance(cell, Mapping):
            raise ConfigError(f"{where} must be a table")
        _unknown(cell, CELL_KEYS, where)
        merged = {**{k: v for k, v in data.items() if k in ("algos", "envs", "seeds", "steps")}, **cell}
        for key in ("algos", "envs", "seeds", "steps"):
            if key not in merged:
                raise ConfigError(f"{where}: no {key}: give it in the cell or at the top of the file")
        steps = _steps(merged["steps"], where)
        if "steps" not in cell:  # the file's budgets: only those of this cell's envs
            steps = _fit_steps(steps, _names(merged["envs"], "envs", where))
        sets = {**top_sets, **_settings(cell.get("set", {}), where)}
        sweep = {**top_sweep, **_sweep(cell.get("sweep", {}), where)}
        cells += expand(_names(merged["algos"], "algos", where), _names(merged["envs"], "envs", where),
                        _seeds(merged["seeds"], where), steps, sets, sweep,
                        _text(cell.get("note", ""), "note", where),
                        _hours(cell.get("cpu_hours", data.get("cpu_hours")), where))
    return StudyFile(description, tuple(cells), text, budget_note)


def read(path: Path) -> StudyFile:
    """The study file at ``path`` (ConfigError naming it when it cannot be read)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read study file {path}: {exc.__class__.__name__}: {exc}") from None
    return parse(text, path.name)


def trials(cells: tuple[Cell, ...]) -> dict[str, int]:
    """Configs per algorithm over the cells' sweeps (per task the same): "mappo: 4 configs"."""
    out: dict[str, set[tuple[str, ...]]] = {}
    for c in cells:
        for a in c.algos.split(","):
            mine = tuple(s for s in c.sets if "." not in s.split("=", 1)[0] or s.startswith(f"{a}."))
            out.setdefault(a, set()).add(mine)
    return {a: len(v) for a, v in out.items()}


def keep_copy(study_dir: Path, study: StudyFile, extend: bool) -> None:
    """Write the study file into the study directory (``study.toml``), once: re-running the study
    with another file is a one-line ConfigError naming what differs, unless ``extend`` (then the
    new file is kept beside the old, which stays)."""
    from marpo_bench import store

    copy = Path(study_dir) / STUDY_COPY
    if copy.is_file():
        old = _body(copy.read_text(encoding="utf-8"))
        if old == study.text:
            return
        before, after = tomllib.loads(old), tomllib.loads(study.text)
        fields = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if not extend:
            raise ConfigError(f"study {Path(study_dir).name} was run with another study file (it differs in "
                              f"{', '.join(fields) or 'comments'}); use another --study, or --extend to add this "
                              "file's runs to it")
        n = len(list(Path(study_dir).glob("study-*.toml"))) + 2
        copy = Path(study_dir) / f"study-{n}.toml"
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    store.atomic_write_bytes(copy, (_header() + study.text).encode("utf-8"))


HEADER = "# marpo-bench: "


def _header() -> str:
    """The copy's first line: the version and commit of the code that ran it."""
    from marpo_bench import provenance

    commit, dirty = provenance.code_provenance()
    return (f"{HEADER}kept by marpo-bench {provenance.package_version('marpo-bench') or 'unknown'} at commit "
            f"{commit or 'unknown'}{' (uncommitted changes)' if dirty else ''}\n")


def _body(text: str) -> str:
    """A kept copy without its header line: the study file as given."""
    return "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith(HEADER))


def describe(study_dir: Path) -> str | None:
    """One line on the study files a study directory keeps (for ``status`` and ``report``), or None."""
    kept = sorted(Path(study_dir).glob("study*.toml"))
    if not kept:
        return None
    try:
        first = parse(_body(kept[0].read_text(encoding="utf-8")), kept[0].name)
    except (ConfigError, OSError, UnicodeDecodeError):
        return f"study file: {', '.join(p.name for p in kept)} (unreadable)"
    what = f": {first.description}" if first.description else ""
    return f"study file: {', '.join(p.name for p in kept)}{what} ({len(first.cells)} grid(s))"
