"""Where a number came from: the code's git commit, the package versions, the machine.

One copy, used by the runner (``run.json``), the report (its provenance table) and the regression
check (the reference's machine kind). Nothing here names a host or a path: a stored result says
what kind of machine made it, not which one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGE_ROOT = Path(__file__).resolve().parent

# Vector-ISA flags (Linux /proc/cpuinfo names) that select different float kernels in torch's BLAS
# and in XLA's host-compiled code; two CPUs that differ in any of them may round differently.
_ISA_PREFIXES = ("avx", "fma", "amx", "f16c", "sse4")


def now() -> str:
    """The current UTC time, ISO 8601 to the second (the store's timestamps)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The commit the checkout holding this package is at (None outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_PACKAGE_ROOT, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def uncommitted_changes() -> bool | None:
    """Whether the code (``marpo_bench/``, ``baselines/``) differs from its git commit: changed or
    untracked files (None without git). Read-only git commands."""
    root = _PACKAGE_ROOT.parent
    paths = ["--", "marpo_bench", "baselines"]
    try:
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", *paths], cwd=root, capture_output=True, timeout=10)
        new = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", *paths], cwd=root,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if diff.returncode not in (0, 1) or new.returncode != 0:
        return None
    return diff.returncode == 1 or bool(new.stdout.strip())


@functools.cache
def code_provenance() -> tuple[str | None, bool | None]:
    """(git commit, uncommitted changes) of the code this process loaded, read once per process
    (pool workers read it as they start): a commit made while a long study runs must not be
    recorded for runs whose code was imported before it."""
    return git_commit(), uncommitted_changes()


def package_version(pkg: str) -> str | None:
    """The installed distribution's version, None when it is not installed."""
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def tool_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Python and ``packages`` as installed ("not installed" for absent ones): what a report was
    made with."""
    return {p: package_version(p) or "not installed" for p in packages} | {"python": platform.python_version()}


def versions() -> dict[str, str]:
    """Python, the core packages, every registered env family's backend packages and every
    plugin's distribution, as installed (absent ones left out)."""
    from marpo_bench import registry

    backends = {p for fam in registry.env_families().values() for p in fam.packages}
    extra = sorted(backends | registry.plugin_distributions())
    out = {"python": platform.python_version()}
    for pkg in ("marpo-bench", "torch", "numpy", "pandas", "pyarrow", *extra):
        if (v := package_version(pkg)) is not None:
            out[pkg] = v
    return out


def _cpuinfo() -> dict[str, str]:
    """The first CPU's fields of Linux ``/proc/cpuinfo`` (empty elsewhere)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text("utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str | None:
    """The CPU's model name (Linux; None elsewhere): runs timed on different CPU models are
    flagged in the report's cost section."""
    return _cpuinfo().get("model name")


def cpu_kind() -> str:
    """The CPU model and its vector-ISA extensions: what bit-for-bit reproducibility depends on
    beyond the package versions (seen: the same code and versions on two AVX-512 hosts differed at
    the 1e-7 level within a few thousand env steps)."""
    fields = _cpuinfo()
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = " ".join(sorted(f for f in fields.get("flags", "").split() if f.startswith(_ISA_PREFIXES)))
    return f"{model} [{flags}]" if flags else model


def host(gpu: str | None = None) -> dict[str, Any]:
    """What a run's timing depends on (``run.json``'s ``host``): CPU, core count, GPU, load."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpus": os.cpu_count(), "gpu": gpu, "system": platform.system(),
            "load_1min": round(load, 2) if load is not None else None}


def machine_kind() -> dict[str, Any]:
    """The machine kind a regression reference's exact numbers depend on (no host name, no paths)."""
    import torch

    return {
        "cpus": os.cpu_count(), "machine": platform.machine(), "system": platform.system(), "cpu": cpu_kind(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": 1,
        "deterministic_algorithms": True, "versions": versions(),
    }
