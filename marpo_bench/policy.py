"""Saved policies: evaluate a complete run's final policy anywhere, or watch one episode of it.

A complete run keeps ``policy.pt`` (``store.save_policy``, written by the runner): what the
algorithm's ``act`` needs (its ``policy_state_dict``, e.g. MAPPO's actor or QMix's agent network,
a few hundred kB at most), what rebuilds it (algorithm, env family, task, seed, resolved config)
and how its final evaluation ran (eval seed, episodes, mode). Runs that predate ``policy.pt`` but
kept their final checkpoint (``checkpoint.pt`` with ``complete: true``) are read from that.

``marpo-bench eval RUN_DIR`` rebuilds the env and the algorithm from the stored config (not from
today's defaults), loads the policy and evaluates it as the runner does (``evaluation.evaluate``: one
episode in each of N parallel envs). With the run's own eval seed, episodes and mode (the
defaults) it repeats the run's final evaluation: the same numbers on the same machine kind.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from marpo_bench import store
from marpo_bench.config import ConfigError, field_types, with_new_settings
from marpo_bench.evaluation import eval_seed_of

EVAL_MODES = ("greedy", "sample")


class PolicyError(ValueError):
    """A one-line reason why a run's policy cannot be loaded or evaluated."""


@dataclass
class SavedPolicy:
    """A run's final policy as stored, and where it came from."""

    run_dir: Path
    algo: str
    env: str
    task: str
    seed: int
    config: dict[str, Any]
    kind: str  # "policy" (policy_state_dict) | "state" (the whole state_dict)
    state: dict
    final_eval: dict[str, Any]
    source: str  # "policy.pt" | "checkpoint.pt"


def load(run_dir: Path) -> SavedPolicy:
    """The saved policy of the run in ``run_dir`` (PolicyError / StoreError with one line)."""
    run_dir = Path(run_dir)
    if not (run_dir / store.RUN_JSON).is_file():
        raise PolicyError(f"{store.show_path(run_dir)} is not a run directory (no {store.RUN_JSON}); give "
                          f"RESULTS/STUDY/runs/RUN_ID")
    record = store.read_run_json(run_dir)
    if record["status"] != "complete":
        raise PolicyError(f"run {record['run_id']} is {record['status']}, not complete: it has no final policy; "
                          f"re-run its study to finish it")
    saved = store.load_policy(run_dir)
    if saved is not None:
        return SavedPolicy(run_dir, saved["algo"], saved["env"], saved["task"], int(saved["seed"]), saved["config"],
                           saved["kind"], saved["state"], dict(saved["final_eval"]), store.POLICY_PT)
    ckpt = store.load_checkpoint(run_dir)
    if ckpt is None or not ckpt.get("complete"):
        raise PolicyError(f"run {record['run_id']} has no saved policy ({store.POLICY_PT}) and no final checkpoint: "
                          f"it was stored without them (e.g. an imported run, or a study committed without "
                          f"checkpoints); re-run it to get one")
    rows = ckpt.get("rows") or []
    final_eval = {"seed": eval_seed_of(int(record["seed"]), max(len(rows) - 1, 0)),
                  "episodes": int(ckpt["config"].get("eval_episodes", 32)),
                  "mode": ckpt["config"].get("eval_mode", "greedy"),
                  "env_steps": int(rows[-1]["env_steps"]) if rows else int(record.get("env_steps") or 0)}
    return SavedPolicy(run_dir, record["algo"], record["env"], record["task"], int(record["seed"]), ckpt["config"],
                       "state", ckpt["algo"], final_eval, store.CHECKPOINT_PT)


def config_from(cls: type, stored: dict[str, Any]) -> Any:
    """The algorithm's config with the stored (resolved) values; settings this version of the
    algorithm does not have are ignored, new ones take the value the config class says runs
    stored before them ran with (``LEGACY_VALUES``, where it has one), else their defaults."""
    cfg = cls()
    types_ = field_types(cls)
    stored = with_new_settings(cls, stored)
    values = {k: tuple(v) if isinstance(v, list) and isinstance(getattr(cfg, k), tuple) else v
              for k, v in stored.items() if k in types_}
    return dataclasses.replace(cfg, **values)


def build(saved: SavedPolicy, num_envs: int, seed: int, device: str = "cpu", task: str | None = None, *,
          trust_imports: bool = False) -> tuple[Any, Any]:
    """(algorithm with the saved policy loaded, an env of ``num_envs`` parallel envs) on the run's
    task, or on ``task`` (another task of the same family with the same spaces, e.g. other task
    parameters: how the policy transfers). The task was read from the run's files: a task naming
    a module to import is refused unless ``trust_imports`` (the user's ``--trust-imports``)."""
    from marpo_bench.algos import get_algorithm
    from marpo_bench.envs import UntrustedTaskError, make_env, parse_env

    try:
        algo_cls = get_algorithm(saved.algo)
    except (KeyError, ValueError) as exc:
        raise PolicyError(f"the run's algorithm {saved.algo!r} is not installed here ({exc}); install its "
                          f"plugin") from None
    try:
        cfg = config_from(algo_cls.Config, saved.config)
        _, task = parse_env(f"{saved.env}:{task or saved.task}", trust_imports=trust_imports)
        env = make_env(saved.env, task, num_envs, device="cpu", agent_id=cfg.agent_id, trust_imports=trust_imports)
    except UntrustedTaskError as exc:
        raise PolicyError(str(exc)) from None
    except (ConfigError, ValueError, TypeError) as exc:
        raise PolicyError(f"cannot rebuild the run's env or config: {exc}") from None
    if task != saved.task:
        ref = make_env(saved.env, saved.task, 1, device="cpu", agent_id=cfg.agent_id, trust_imports=trust_imports)
        trained = ref.info
        ref.close()
        if (trained.obs_dim, trained.num_agents, trained.num_actions) != (
                env.info.obs_dim, env.info.num_agents, env.info.num_actions):
            env.close()
            raise PolicyError(f"the policy was trained on {saved.env}:{saved.task}; {saved.env}:{task} has other "
                              f"observation or action spaces")
    algo = algo_cls(cfg, env.info, device, seed)
    if saved.kind == "policy":
        algo.load_policy_state_dict(saved.state)
    else:
        algo.load_state_dict(saved.state)
    return algo, env


@dataclass
class EvalResult:
    """A saved policy's evaluation: mean return (and win rate) with 95% CIs over its episodes."""

    episodes: int
    mode: str
    seed: int
    return_mean: float
    return_lo: float
    return_hi: float
    win_rate: float = math.nan
    win_lo: float = math.nan
    win_hi: float = math.nan


def _t_interval(mean: float, std: float, n: int) -> tuple[float, float]:
    from scipy import stats

    if n < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.975, n - 1)) * std * math.sqrt(n / (n - 1)) / math.sqrt(n)  # std is the population one
    return mean - half, mean + half


def _wilson(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (well-behaved at 0 and 1, unlike mean +- z se)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(saved: SavedPolicy, episodes: int | None = None, mode: str | None = None, seed: int | None = None,
             device: str = "cpu", task: str | None = None, *, trust_imports: bool = False) -> EvalResult:
    """Evaluate the saved policy: one episode in each of ``episodes`` parallel envs from eval seed
    ``seed``, acting greedily or by sampling (defaults: the run's final evaluation's), on the
    run's task or on ``task`` (see :func:`build`, also for ``trust_imports``)."""
    from marpo_bench.evaluation import evaluate as run_evaluation

    episodes = int(saved.final_eval["episodes"]) if episodes is None else episodes
    mode = str(saved.final_eval["mode"]) if mode is None else mode
    seed = int(saved.final_eval["seed"]) if seed is None else seed
    if episodes < 1:
        raise PolicyError(f"--episodes must be positive, got {episodes}")
    if mode not in EVAL_MODES:
        raise PolicyError(f"unknown --mode {mode!r}; valid: {', '.join(EVAL_MODES)}")
    algo, env = build(saved, episodes, saved.seed, device, task, trust_imports=trust_imports)
    try:
        res = run_evaluation(algo, env, seed, deterministic=mode == "greedy")
    finally:
        env.close()
    n = int(res["eval_episodes"])
    lo, hi = _t_interval(res["eval_return_mean"], res["eval_return_std"], n)
    out = EvalResult(n, mode, seed, res["eval_return_mean"], lo, hi)
    if np.isfinite(res["eval_win_rate"]):
        out.win_rate = res["eval_win_rate"]
        out.win_lo, out.win_hi = _wilson(out.win_rate, n)
    return out


def render(saved: SavedPolicy, path: Path, seed: int | None = None, mode: str = "greedy", fps: int = 8,
           size: int = 360, *, trust_imports: bool = False) -> int:
    """Play one episode of the saved policy and write it as an animated GIF (one frame per step:
    the scene each action is taken in). Returns the number of frames. Envs without a
    ``scene`` (``envs.base.RenderableEnv``) get a one-line PolicyError."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle
    from PIL import Image

    from marpo_bench.envs.base import RenderableEnv

    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise PolicyError(f"--render writes an animated GIF: give a path ending in .gif, not {path.name!r}")
    if mode not in EVAL_MODES:
        raise PolicyError(f"unknown --mode {mode!r}; valid: {', '.join(EVAL_MODES)}")
    seed = int(saved.final_eval["seed"]) if seed is None else seed
    algo, env = build(saved, 1, saved.seed, trust_imports=trust_imports)
    if not isinstance(env, RenderableEnv):
        env.close()
        raise PolicyError(f"env family {saved.env!r} cannot draw its scenes (no scene(); see envs/base.py "
                          f"RenderableEnv): rendering works for jax_mpe and smax")
    frames: list[Image.Image] = []
    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100)
    try:
        ts = env.reset(seed)
        act_state = algo.initial_act_state(1)
        for t in range(env.info.episode_limit + 1):
            frames.append(_draw(fig, env.scene(0), f"{saved.env}:{saved.task}  step {t}", Circle, Image))
            actions, act_state = algo.act(ts, act_state, deterministic=mode == "greedy")
            ts = env.step(actions)
            if bool(ts.done[0]):
                break
    finally:
        plt.close(fig)
        env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    tmp.replace(path)
    return len(frames)


def _draw(fig: Any, scene: Any, title: str, circle: Any, image: Any) -> Any:
    """One frame of a scene as a paletted PIL image."""
    fig.clf()
    ax = fig.add_axes((0, 0, 1, 0.92))
    x0, x1, y0, y1 = scene.extent
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for k in range(len(scene.positions)):
        if scene.visible[k]:
            alpha = 1.0 if scene.shade is None else float(scene.shade[k])
            ax.add_patch(circle(tuple(scene.positions[k]), float(scene.radii[k]), color=scene.colours[k], alpha=alpha))
    fig.suptitle(title, fontsize=9)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return image.fromarray(rgba[..., :3].copy()).convert("P", palette=image.Palette.ADAPTIVE, colors=64)
