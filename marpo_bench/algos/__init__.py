"""Algorithm registry: name -> (module path, class name, one-line description).

Adding an algorithm = one file plus one line here. Classes are imported lazily so that
``marpo-bench list`` and argument validation stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

ALGORITHMS: dict[str, tuple[str, str, str]] = {
    "mappo": ("baselines.mappo", "MAPPO", "MAPPO (Yu et al. 2022): PPO with a centralised critic, GAE, ValueNorm"),
    "marpo": ("marpo_bench.algos.marpo", "MARPO",
              "MARPO (Wu et al. 2025): MAPPO + reflection term + KL-derived asymmetric clipping"),
    "marpo_noreflect": ("marpo_bench.algos.marpo", "MARPONoReflection",
                        "MARPO ablation: no reflection term (MAPPO objective + KL-derived asymmetric clip)"),
    "marpo_symclip": ("marpo_bench.algos.marpo", "MARPOSymmetricClip",
                      "MARPO ablation: reflection term with PPO's fixed symmetric clip [1-eps, 1+eps]"),
    "marpo_ppoclip": ("marpo_bench.algos.marpo", "MARPOPPOMainClip",
                      "MARPO ablation: adaptive bounds in the reflection term only, PPO's clip in L0 (official code)"),
    "qmix": ("baselines.qmix", "QMix",
             "QMix (Rashid et al. 2018): recurrent per-agent Q, monotonic hypernetwork mixer"),
}


def get_algorithm(name: str) -> Any:
    """The algorithm class registered as ``name`` (ValueError naming the valid ones otherwise)."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(sorted(ALGORITHMS))}")
    module, cls, _ = ALGORITHMS[name]
    return getattr(importlib.import_module(module), cls)
