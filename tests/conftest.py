"""Test-session settings."""

import torch

# One intra-op thread: the suite's networks are small, and on a loaded 2-core machine OpenMP's
# spinning barriers can slow multi-threaded torch ops by orders of magnitude.
torch.set_num_threads(1)
