"""marpo-bench: train and compare cooperative MARL algorithms (MARPO, MAPPO, QMix) with defensible
statistics."""

__version__ = "0.1.0"

import os as _os

# On a busy machine, OpenMP's default spin-waiting makes multi-threaded torch ops on our small
# tensors slower by one to two orders of magnitude (measured: MAPPO training at 2 threads, load
# average ~5 on 2 cores, 549 env steps/s spinning vs 12,659 passive). Passive waiting costs
# nothing measurable on an idle machine. Must be set before torch loads OpenMP; a user's own
# setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
