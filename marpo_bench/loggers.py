"""Watching runs as they train: the same rows as ``metrics.parquet``, sent to TensorBoard or W&B.

``marpo-bench run ... --log tensorboard`` writes TensorBoard event files into each run's directory
(``<run_dir>/tensorboard/``; ``tensorboard --logdir RESULTS/STUDY/runs``; tags grouped as
``eval/``, ``train/``, ``marpo/``, ``time/``, the config as hparams); ``--log wandb`` logs each
run to Weights & Biases (its id and group name the study, so two studies never share a run),
offline unless ``WANDB_MODE`` says otherwise (``wandb sync`` uploads later; nothing needs the
network). Each evaluation row is logged once, at its env step, with every metric the store keeps
for it (NaNs left out). Both packages are optional: without them ``--log`` is a one-line error
before any run starts. The Parquet store stays the record; a logger is a view.
"""

from __future__ import annotations

import importlib.util
import math
import os
import socket
from pathlib import Path
from typing import Any

from marpo_bench.config import ConfigError

LOGGERS = {"tensorboard": ("tensorboardX", "tensorboardX==2.6.5"), "wandb": ("wandb", "wandb")}
TENSORBOARD_DIR = "tensorboard"
WANDB_PROJECT = "marpo-bench"


def parse_loggers(text: str | None) -> tuple[str, ...]:
    """``tensorboard,wandb`` -> the loggers, each checked to be installed (ConfigError otherwise)."""
    names = tuple(dict.fromkeys(x.strip() for x in (text or "").split(",") if x.strip()))
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"unknown --log {name!r}; valid: {', '.join(LOGGERS)}")
        module, pip = LOGGERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--log {name} needs the {module} package: pip install {pip}")
    return names


class RunLog:
    """The loggers of one run: each row is sent once (rows at or below the last logged env step,
    e.g. recomputed after a resume, are not sent again)."""

    def __init__(self, names: tuple[str, ...], run_path: Path) -> None:
        self.names, self.run_path = names, Path(run_path)
        self.record: dict[str, Any] = {}
        self.last = -1
        self._writers: list[Any] = []

    def write_record(self, record: dict) -> None:
        self.record = record

    def write(self, rows: list[dict]) -> None:
        new = [r for r in rows if int(r["env_steps"]) > self.last]
        if not new or not self.names:
            return
        if not self._writers:
            self._writers = [_open(name, self.run_path, self.record) for name in self.names]
        for row in new:
            scalars = {k: float(v) for k, v in row.items()
                       if k != "env_steps" and isinstance(v, (int, float)) and math.isfinite(v)}
            for w in self._writers:
                w.log(scalars, int(row["env_steps"]))
        self.last = int(new[-1]["env_steps"])

    def close(self) -> None:
        for w in self._writers:
            w.close()
        self._writers = []


MARPO_METRICS = ("kl_delta", "clip_low_p5", "clip_high_p95", "clip_fraction", "reflection_term")


def tag(metric: str) -> str:
    """The metric's TensorBoard tag, grouped as the report groups them: ``eval/…`` (evaluation),
    ``marpo/…`` (MARPO's diagnostics), ``time/…`` (wall-clock), ``train/…`` (the rest)."""
    if metric.startswith("eval_"):
        return f"eval/{metric[len('eval_'):]}"
    if metric in MARPO_METRICS:
        return f"marpo/{metric}"
    if metric == "wall_seconds":
        return "time/wall_seconds"
    return f"train/{metric}"


def hparams(record: dict) -> dict[str, Any]:
    """The run's resolved config and identity as TensorBoard hparams (scalars and text only)."""
    out: dict[str, Any] = {k: record.get(k) for k in ("algo", "env", "task", "seed")}
    for k, v in (record.get("config") or {}).items():
        out[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return {k: v for k, v in out.items() if v is not None}


def wandb_id(study: str, run_id: str) -> str:
    """A W&B run id unique across studies (two studies never share a run): the study and the run id
    in W&B's id alphabet; long ones keep a prefix and a hash of the whole."""
    import hashlib
    import re

    full = re.sub(r"[^A-Za-z0-9_-]", "-", f"{study}--{run_id}")
    return full if len(full) <= 64 else f"{full[:47]}-{hashlib.sha256(full.encode()).hexdigest()[:16]}"


def _open(name: str, run_path: Path, record: dict) -> Any:
    return _TensorBoard(run_path, record) if name == "tensorboard" else _Wandb(run_path, record)


class _TensorBoard:
    def __init__(self, run_path: Path, record: dict) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(Path(run_path) / TENSORBOARD_DIR))
        self.record, self.last = record, {}

    def log(self, scalars: dict[str, float], step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(tag(k), v, step)
        self.last.update({k: v for k, v in scalars.items() if k.startswith("eval_")})
        self.writer.flush()

    def close(self) -> None:
        if self.last:  # the config beside the final evaluation, in TensorBoard's HPARAMS tab
            self.writer.add_hparams(hparams(self.record), {f"hparam/{tag(k)}": v for k, v in self.last.items()},
                                    name="hparams")
        self.writer.close()
        # tensorboardX names event files ...tfevents.<time>.<host name>: keep host names out of results
        host = socket.gethostname()
        for f in Path(self.writer.logdir).rglob(f"events.out.tfevents.*.{host}*"):  # hparams/ too
            f.rename(f.with_name(f.name.replace(f".{host}", ".marpo-bench", 1)))


class _Wandb:
    def __init__(self, run_path: Path, record: dict) -> None:
        import wandb

        run_id = record.get("run_id") or Path(run_path).name
        study = Path(run_path).parent.parent.name  # RESULTS/STUDY/runs/RUN_ID
        self.run = wandb.init(project=WANDB_PROJECT, name=run_id, id=wandb_id(study, run_id), group=study,
                              resume="allow",
                              dir=str(run_path), mode=os.environ.get("WANDB_MODE", "offline"),
                              config={**(record.get("config") or {}), "algo": record.get("algo"),
                                      "env": record.get("env"), "task": record.get("task"), "seed": record.get("seed")},
                              reinit="create_new")

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class LoggedSink:
    """A ``store.RunSink`` that also sends each new metrics row to the run's loggers."""

    def __init__(self, sink: Any, log: RunLog) -> None:
        self.sink, self.log = sink, log

    def acquire(self) -> bool:
        return self.sink.acquire()

    def close(self) -> None:
        self.log.close()
        self.sink.close()

    def previous(self) -> tuple[str | None, dict | None]:
        return self.sink.previous()

    def write_record(self, record: dict) -> None:
        self.log.write_record(record)
        self.sink.write_record(record)

    def write_metrics(self, rows: list[dict], extra_columns: tuple[str, ...] = ()) -> None:
        self.sink.write_metrics(rows, extra_columns)
        self.log.write(rows)

    def write_checkpoint(self, state: dict) -> None:
        self.sink.write_checkpoint(state)

    def write_policy(self, policy: dict) -> None:
        self.sink.write_policy(policy)
