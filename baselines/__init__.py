"""Baseline algorithms the suite compares MARPO against: MAPPO and QMix."""
