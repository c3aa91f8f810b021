"""Fault injection for tests (hidden from users): ``MARPO_BENCH_FAULT=kind@step[:run_id_part],...``
with kind ``nan`` (that iteration's loss becomes NaN), ``raise`` (RuntimeError), ``exit`` (the
process dies, as in a crash) or ``sigkill`` (the process SIGKILLs itself, as the kernel's OOM
killer does), at the first iteration with env steps >= step of the runs whose id contains
``run_id_part`` (every run when omitted). The trainer applies them (``train._Run.on_iteration``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from marpo_bench.config import ConfigError

FAULT_ENV = "MARPO_BENCH_FAULT"
FAULT_KINDS = ("nan", "raise", "exit", "sigkill")


@dataclass(frozen=True)
class Fault:
    """A fault injected at the first iteration with ``env_steps >= step`` of the runs whose id
    contains ``match``: ``nan`` (a NaN loss), ``raise`` (RuntimeError), ``exit`` (a crash) or
    ``sigkill`` (the process is killed by SIGKILL, as by the OOM killer)."""

    kind: str
    step: int
    match: str = ""

    def applies(self, run_id: str) -> bool:
        return self.match in run_id


def parse_faults(text: str) -> tuple[Fault, ...]:
    """Parse ``kind@step[:run_id_part]`` items separated by commas (ConfigError when malformed)."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        head, _, match = item.partition(":")
        kind, sep, step = head.strip().partition("@")
        if kind not in FAULT_KINDS or not sep or not step.strip().isdigit():
            raise ConfigError(f"bad {FAULT_ENV} item {item!r}: use kind@step[:run_id_part], "
                              f"kind one of {', '.join(FAULT_KINDS)}")
        out.append(Fault(kind, int(step), match.strip()))
    return tuple(out)


def faults_from_env() -> tuple[Fault, ...]:
    """The faults requested through ``MARPO_BENCH_FAULT`` (none when unset)."""
    return parse_faults(os.environ.get(FAULT_ENV, ""))
