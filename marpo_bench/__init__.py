"""marpo-bench: train and compare cooperative MARL algorithms (MARPO, MAPPO, QMix) with defensible
statistics."""

__version__ = "0.1.0"
