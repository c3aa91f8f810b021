"""Mutation check: do the tests catch the bugs that matter? (issue #24; not part of the default test run)

Each mutation is one realistic bug, a line a developer could plausibly get wrong, in the paths where a
comparison of algorithms goes wrong silently (data collection, dead agents, losses, evaluation,
statistics, env episode ends). For each, this script copies the repository (the working tree's tracked
and untracked-but-not-ignored files) into a temporary directory, plants the bug there, runs the
mutation's relevant test files (``-m "not slow"``) with the copy first on ``PYTHONPATH`` and prints
whether a test failed:

    caught           a test failed (or the mutant could not even be imported)
    NOT caught       every relevant test passed with the bug planted
    PATTERN MISSING  the snippet no longer occurs exactly once in the file: update the list

The working tree is never modified. Tests that already fail on the unmutated copy are deselected
(listed at the start), so a mutation counts as caught only through a test that passes without it.

    .venv/bin/python benchmarks/mutation_check.py                  # every mutation (~10-20 min on 2 cores)
    .venv/bin/python benchmarks/mutation_check.py --only M03,M08   # some of them
    .venv/bin/python benchmarks/mutation_check.py --list           # the list, with each mutation's tests
    .venv/bin/python benchmarks/mutation_check.py --tests-from-ref HEAD   # the test files of a commit

``--tests-from-ref REF`` replaces ``tests/`` in the copy by the commit's (the code stays the working
tree's): how the suite as it was would have fared; ``--tests-dir DIR`` takes ``tests/`` from a
directory instead (e.g. a commit's tests adapted to an argument renamed since). Test files a mutation
names that are not there are skipped. Exit status: 0, or 1 when some pattern is missing (so the list
stays honest as the code changes). To extend: add a ``Mutation`` to ``MUTATIONS`` (an exact snippet of
the current source, its replacement, the test files that should catch it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    description: str


# The focused, fast files first: the run stops at the first failure (-x).
PPO_TESTS = ("tests/test_collection.py", "tests/test_dead_agents.py", "tests/test_ppo_core.py")
MARPO_TESTS = ("tests/test_dead_agents.py", "tests/test_marpo_reflection.py", "tests/test_marpo.py")
UPDATE_TESTS = ("tests/test_dead_agents.py", "tests/test_ppo_core.py", "tests/test_marpo.py")
STATS_TESTS = ("tests/test_statistics_levels.py", "tests/test_analysis.py")
EVAL_TESTS = ("tests/test_evaluation_protocol.py",)
SMAX_TESTS = ("tests/test_smax_limits.py", "tests/test_smax.py")

PPO = "marpo_bench/algos/ppo_core.py"
LEARNER = "marpo_bench/algos/ppo_learner.py"
ROLLOUT = "marpo_bench/algos/rollout.py"  # GAE, the rollout, masked_mean
MARPO = "marpo_bench/algos/marpo.py"
MAPPO = "baselines/mappo.py"
QMIX = "baselines/qmix.py"
QMIX_LEARNER = "baselines/qmix_learner.py"
QMIX_NETS = "baselines/qmix_nets.py"
STATS = "marpo_bench/stats.py"
TRAIN = "marpo_bench/train.py"
EVALUATION = "marpo_bench/evaluation.py"
SMAX = "marpo_bench/envs/smax.py"
NETS = "marpo_bench/nets.py"

MUTATIONS: list[Mutation] = [
    # --- the 17 (+1) bugs of issue #24 -------------------------------------------------------------
    Mutation("M01", LEARNER, '                term = d["terminated"]\n', "                term = done_k\n", PPO_TESTS,
             "collect: truncation passed as termination (no bootstrap at a time limit)"),
    Mutation("M02", LEARNER, "                    nxt[truncated] = m.denorm(v_final_all[k][truncated])\n",
             "                    pass  # nxt[truncated] = m.denorm(v_final_all[k][truncated])\n", PPO_TESTS,
             "collect: no final_state bootstrap (truncated steps bootstrap from the reset state)"),
    Mutation("M03", LEARNER, "            live = adv[ro.alive]\n", "            live = adv.reshape(-1)\n", UPDATE_TESTS,
             "update: advantages normalised over dead agents too"),
    Mutation("M04", PPO, "        return masked_mean(err, env_alive)\n", "        return err.mean()\n", UPDATE_TESTS,
             "value loss not masked by alive (dead-team steps counted)"),
    Mutation("M05", LEARNER, "                        m.value_norm.update(mb.returns[mb.alive.any(-1)])\n",
             "                        m.value_norm.update(mb.returns)\n", UPDATE_TESTS,
             "ValueNorm updated with dead-team steps"),
    Mutation("M06", MARPO, "        surrogate = masked_mean(ppo_clip_surrogate(ratio, adv, lo0, hi0), mb.alive)\n",
             "        surrogate = ppo_clip_surrogate(ratio, adv, lo0, hi0).mean()\n", MARPO_TESTS,
             "MARPO: L0 averaged over dead agents"),
    Mutation("M07", MARPO, "    return not_end.unsqueeze(-1) & mb.alive[:-1] & mb.alive[1:]\n",
             "    return not_end.unsqueeze(-1) & mb.alive[:-1]\n", MARPO_TESTS,
             "MARPO: reflection_valid ignores whether the agent is alive at k+1"),
    Mutation("M08", PPO, "            err = torch.max(err, huber(target - v_clip, self.cfg.huber_delta))\n",
             "            err = torch.min(err, huber(target - v_clip, self.cfg.huber_delta))\n", UPDATE_TESTS,
             "value clip takes min instead of max"),
    Mutation("M09", LEARNER, "total = total + (-surrogate - cfg.entropy_coef * entropy)",
             "total = total + (-surrogate + cfg.entropy_coef * entropy)", UPDATE_TESTS,
             "entropy bonus with its sign flipped"),
    Mutation("M10", MARPO, "reflection_term(ratio[:-1], rho_next, adv[1:], reflection_valid(mb), lo1, hi1)",
             "reflection_term(ratio[:-1], rho_next, adv[1:], reflection_valid(mb), eps_lo, eps_hi)", MARPO_TESTS,
             "MARPO: reflection term clipped by PPO's fixed bounds while the logged bounds stay adaptive"),
    Mutation("M11", QMIX_LEARNER, "c.reward_scale, seed.reward_ms if c.standardise_rewards else None)",
             "c.reward_scale, None)", ("tests/test_qmix.py",),
             "QMix: reward standardiser skipped in the TD targets"),
    Mutation("M12", STATS, '        w = stratified_counts(rng_for(seed, "curve", key, name), sizes, reps)\n',
             '        w = stratified_counts(rng_for(seed, "curve", key, name), [sum(sizes)], reps)\n', STATS_TESTS,
             "IQM curves: bootstrap not stratified by task"),
    Mutation("M13", STATS, "    alpha = 100.0 * (1.0 - confidence) / 2.0\n",
             "    alpha = 100.0 * (1.0 - confidence)\n", STATS_TESTS,
             "a 90% interval reported as 95%"),
    Mutation("M14", TRAIN, '        self.deterministic = self.rc.eval_mode == "greedy"\n',
             '        self.deterministic = self.rc.eval_mode == "sample"\n', EVAL_TESTS,
             "evaluation: sampled instead of greedy actions"),
    Mutation("M15", EVALUATION, "        new = ts.done.cpu() & ~have\n", "        new = ts.done.cpu()\n", EVAL_TESTS,
             "evaluation: later episodes overwrite the first episode of each env"),
    Mutation("M16", EVALUATION, "    return 10_000_019 * (seed + 1) + index\n", "    return seed + index\n",
             EVAL_TESTS, "evaluation seeded like training (the run's seed)"),
    Mutation("M17", TRAIN, "eval_seed_of(self.spec.seed, len(self.rows))", "eval_seed_of(self.spec.seed, 0)",
             EVAL_TESTS,
             "evaluation: the same seed at every evaluation point"),
    Mutation("M18", SMAX, "            truncated = ~terminated & (next_states.state.step >= max_steps)\n",
             "            truncated = next_states.state.step >= max_steps\n", SMAX_TESTS,
             "SMAX: truncated set when a battle ends exactly at the step limit"),
    # --- other realistic bugs in the same paths ------------------------------------------------------
    Mutation("X01", ROLLOUT, "        delta = rewards[t] + gamma * not_term[t] * next_values[t] - values[t]\n",
             "        delta = rewards[t] + gamma * not_term[t] * next_values[t] + values[t]\n", PPO_TESTS,
             "GAE: sign of V(s_t) in the TD error"),
    Mutation("X02", LEARNER, 'compute_gae(d["rewards"], v_den, nxt, term, done_k, cfg.gamma, cfg.gae_lambda)',
             'compute_gae(d["rewards"], v_den, nxt, term, done_k, cfg.gae_lambda, cfg.gamma)', PPO_TESTS,
             "GAE: gamma and lambda swapped"),
    Mutation("X03", ROLLOUT, "        last = delta + gamma * lam * not_done[t] * last\n",
             "        last = delta + gamma * lam * last\n", PPO_TESTS,
             "GAE: recursion not cut at episode ends"),
    Mutation("X04", ROLLOUT, "    return adv, adv + values\n", "    return adv, adv\n", PPO_TESTS,
             "GAE: returns without the values"),
    Mutation("X05", LEARNER, '            v_last = self.critic("forward", last_state).squeeze(-1)  # [S, E]\n',
             '            v_last = self.critic("forward", data["state"][:, -1]).squeeze(-1)\n', PPO_TESTS,
             "collect: bootstrap from the rollout's last state instead of the next one"),
    Mutation("X06", ROLLOUT, "    return (x * m).sum() / m.sum().clamp(min=1.0)\n",
             "    return (x * m).sum() / m.numel()\n", UPDATE_TESTS + MARPO_TESTS[1:2],
             "masked_mean divides by every entry, not the masked ones"),
    Mutation("X07", PPO, "    return torch.where(a <= delta, 0.5 * x**2, delta * (a - 0.5 * delta))\n",
             "    return torch.where(a <= delta, 0.5 * x**2, delta * a)\n", UPDATE_TESTS,
             "Huber loss: linear branch without the -delta/2 offset"),
    Mutation("X08", PPO, "        var = (self.mean_sq / d - mean**2).clamp(min=1e-2)\n",
             "        var = (self.mean_sq / d - mean).clamp(min=1e-2)\n", UPDATE_TESTS,
             "ValueNorm: variance as E[x^2] - E[x]"),
    Mutation("X09", LEARNER, "entropy = masked_mean(-(logp_all[k].exp() * logp_all[k]).sum(-1), mb.alive)\n",
             "entropy = (-(logp_all[k].exp() * logp_all[k]).sum(-1)).mean()\n", UPDATE_TESTS,
             "entropy averaged over dead agents"),
    Mutation("X10", PPO, "    return torch.min(ratio * adv, ratio.clamp(lo, hi) * adv)\n",
             "    return torch.max(ratio * adv, ratio.clamp(lo, hi) * adv)\n", UPDATE_TESTS,
             "PPO surrogate: max instead of min (pessimistic bound lost)"),
    Mutation("X11", MAPPO, "        ratio = torch.exp(logp - mb.logp_old)\n",
             "        ratio = torch.exp(mb.logp_old - logp)\n", UPDATE_TESTS,
             "MAPPO: ratio inverted (pi_old / pi)"),
    Mutation("X12", MAPPO, "        surrogate = masked_mean(ppo_clip_surrogate(ratio, adv, lo, hi), mb.alive)\n",
             "        surrogate = ppo_clip_surrogate(ratio, adv, lo, hi).mean()\n", UPDATE_TESTS,
             "MAPPO: surrogate averaged over dead agents"),
    Mutation("X13", MARPO, "    not_end = ~mb.done[:-1]  # [T-1, E]\n", "    not_end = ~mb.done[1:]  # [T-1, E]\n",
             MARPO_TESTS, "MARPO: episode-end mask off by one step"),
    Mutation("X14", MARPO, "            refl = cfg.alpha * reflection_term(ratio[:-1], rho_next, adv[1:],",
             "            refl = cfg.alpha * reflection_term(ratio[:-1], rho_next, adv[:-1],", MARPO_TESTS,
             "MARPO: reflection uses the current step's advantage, not the next one's"),
    Mutation("X15", MARPO, "    return (p_old * (logp_old - logp_new)).sum(-1)\n",
             "    return (p_old * (logp_new - logp_old)).sum(-1)\n", MARPO_TESTS,
             "MARPO: categorical KL with its sign flipped"),
    Mutation("X16", MARPO, "    biased = max(kl, cfg.kl_floor) + cfg.kl_bias * (1.0 - min(progress, 1.0))\n",
             "    biased = max(kl, cfg.kl_floor) + cfg.kl_bias * (1.0 - progress)\n", MARPO_TESTS,
             "MARPO: delta's bias not clamped past the horizon"),
    Mutation("X17", STATS, "def _weighted_trimmed_mean(x: np.ndarray, weights: np.ndarray, cut: float = 0.25,",
             "def _weighted_trimmed_mean(x: np.ndarray, weights: np.ndarray, cut: float = 0.1,", STATS_TESTS,
             "IQM trims 10% instead of 25% at each end"),
    Mutation("X18", STATS, "    return [(x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])",
             "    return [(x[:, None] >= y[None, :]) + 0.5 * (x[:, None] == y[None, :])", STATS_TESTS,
             "probability of improvement: ties counted as wins (and a half)"),
    Mutation("X19", EVALUATION, "        returns[new] = ts.episode_return.cpu()[new].float()\n",
             "        returns[new] = ts.reward.cpu()[new].float()\n", EVAL_TESTS,
             "evaluation: last reward logged as the episode's return"),
    Mutation("X20", EVALUATION, "        actions, act_state = algo.act(ts, act_state, deterministic=deterministic)\n",
             "        actions, act_state = algo.act(ts, act_state, deterministic=False)\n", EVAL_TESTS,
             "evaluate() samples whatever the evaluation mode"),
    # --- the gaps of issue #38 (tests added for them) -----------------------------------------------
    Mutation("X21", NETS, "    return torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)\n",
             "    return torch.argmax(2 * logits - torch.log(-torch.log(u)), dim=-1)\n", ("tests/test_collection.py",),
             "sampler: actions drawn at another temperature than softmax(logits)"),
    Mutation("X22", QMIX_LEARNER, "a_star = q_on.masked_fill(~avail_next, -math.inf).argmax(-1, keepdim=True)\n",
             "a_star = q_tgt.masked_fill(~avail_next, -math.inf).argmax(-1, keepdim=True)\n",
             ("tests/test_qmix.py",), "QMix: double-Q picks the target network's argmax (plain max in disguise)"),
    Mutation("X23", QMIX_NETS, "w1 = torch.abs(mlp(s, p, \"hyper_w_1\", hypernet_layers))",
             "w1 = (mlp(s, p, \"hyper_w_1\", hypernet_layers))", ("tests/test_qmix.py",),
             "QMix mixer (one code for one seed and for a stack): first-layer weights not made non-negative"),
    Mutation("X24", QMIX, "        eps = 0.0 if deterministic else self.epsilon()\n",
             "        eps = 0.01 if deterministic else self.epsilon()\n", ("tests/test_qmix.py",),
             "QMix: greedy evaluation keeps a 1% exploration rate"),
]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return -1, out


def copy_repo(dest: Path, tests_ref: str | None, tests_dir: Path | None = None) -> None:
    """The working tree's tracked and untracked-not-ignored files under ``dest``; with ``tests_ref``,
    ``tests/`` as it is in that commit; with ``tests_dir``, that directory's files as ``tests/``."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree
            continue
        if (tests_ref is not None or tests_dir is not None) and rel.startswith("tests/"):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    if tests_dir is not None:
        shutil.copytree(tests_dir, dest / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    elif tests_ref is not None:
        names = subprocess.run(["git", "ls-tree", "-r", "--name-only", tests_ref, "--", "tests"], cwd=REPO,
                               check=True, capture_output=True, text=True).stdout.split()
        for rel in names:
            blob = subprocess.run(["git", "show", f"{tests_ref}:{rel}"], cwd=REPO, check=True,
                                  capture_output=True).stdout
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(blob)


def pytest_cmd(tests: list[str], deselect: list[str], stop_first: bool) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-rfE"]
    if stop_first:
        cmd.append("-x")
    for node in deselect:
        cmd += ["--deselect", node]
    return cmd + tests


def failing_nodes(output: str) -> list[str]:
    """Node ids of the FAILED / ERROR lines of pytest's short summary (``-rfE``)."""
    out = []
    for line in output.splitlines():
        for tag in ("FAILED ", "ERROR "):
            if line.startswith(tag):
                out.append(line[len(tag):].split(" - ")[0].strip())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated mutation ids")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--tests-from-ref", default=None, metavar="REF",
                    help="run the test files of this commit (e.g. HEAD) against the working tree's code")
    ap.add_argument("--tests-dir", default=None, metavar="DIR", type=Path,
                    help="use the files of DIR as tests/ (e.g. an older suite adapted to a renamed argument)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per test run (default 600)")
    args = ap.parse_args(argv)

    chosen = MUTATIONS
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {m.id for m in MUTATIONS})
        if unknown:
            ap.error(f"unknown mutation ids: {', '.join(unknown)}")
        chosen = [m for m in MUTATIONS if m.id in wanted]
    if args.list:
        for m in chosen:
            print(f"{m.id}  {m.file}  {m.description}\n      tests: {' '.join(m.tests)}")
        return 0

    with tempfile.TemporaryDirectory(prefix="mutation_check_") as tmp:
        root = Path(tmp) / "repo"
        copy_repo(root, args.tests_from_ref, args.tests_dir)
        env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
        # The copy's packages must shadow the editable install of the working tree.
        rc, out = _run([sys.executable, "-c", "import marpo_bench, baselines; print(marpo_bench.__file__); "
                        "print(baselines.__file__)"], root, env, 120)
        if rc != 0 or any(not line.startswith(str(root)) for line in out.split()):
            print(f"the copy's packages are not the ones imported:\n{out}", file=sys.stderr)
            return 2

        def present(m: Mutation) -> list[str]:
            return [t for t in m.tests if (root / t).is_file()]

        all_tests = sorted({t for m in chosen for t in present(m)})
        source = (f"tests from {args.tests_dir}" if args.tests_dir else
                  f"tests from {args.tests_from_ref}" if args.tests_from_ref else "tests of the working tree")
        print(f"{len(chosen)} mutations; {source}; baseline run of {len(all_tests)} test files ...", flush=True)
        t0 = time.perf_counter()
        rc, out = _run(pytest_cmd(all_tests, [], stop_first=False), root, env, args.timeout * 3)
        broken = failing_nodes(out)
        print(f"baseline: exit {rc} in {time.perf_counter() - t0:.0f} s; "
              f"{len(broken)} test(s) already failing, deselected:", flush=True)
        for node in broken:
            print(f"    {node}")
        if rc not in (0, 1):
            print(out[-3000:], file=sys.stderr)
            return 2

        results: list[tuple[Mutation, str, float]] = []
        missing = False
        for m in chosen:
            path = root / m.file
            text = path.read_text()
            count = text.count(m.old)
            tests = present(m)
            t = time.perf_counter()
            if count != 1:
                verdict = "PATTERN MISSING" if count == 0 else f"PATTERN MISSING (x{count})"
                missing = True
            elif not tests:
                verdict = "no tests"
            else:
                path.write_text(text.replace(m.old, m.new))
                try:
                    rc, out = _run(pytest_cmd(tests, [n for n in broken if n.split("::")[0] in tests], True),
                                   root, env, args.timeout)
                finally:
                    path.write_text(text)
                verdict = {0: "NOT caught", 1: "caught", 5: "no tests"}.get(rc, "caught (error)")
                if rc == -1:
                    verdict = "caught (timeout)"
                if rc == 1:
                    first = failing_nodes(out)
                    verdict += f" by {first[0].split('::', 1)[-1]}" if first else ""
            dt = time.perf_counter() - t
            results.append((m, verdict, dt))
            print(f"{m.id}  {verdict:<80.80}  {dt:5.0f} s  {m.description}", flush=True)

    caught = sum(v.startswith("caught") for _, v, _ in results)
    print(f"\n{'id':<4}  {'result':<12}  description")
    for m, v, _ in results:
        short = "caught" if v.startswith("caught") else v
        print(f"{m.id:<4}  {short:<12}  {m.description}")
    print(f"\n{caught} of {len(results)} caught ({source})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
