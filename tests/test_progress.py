"""A run's progress bar on long runs: its env steps and its last evaluation return, carried by the
progress callback (pool and in-process runs) or the driver's metrics messages (Ray)."""

from __future__ import annotations

import io

from rich.console import Console

from marpo_bench.config import format_steps
from marpo_bench.executors import pool
from marpo_bench.executors.common import GridBars


def _bars() -> tuple[GridBars, io.StringIO]:
    out = io.StringIO()
    return GridBars(Console(file=out, width=140, force_terminal=True, color_system=None), 3), out


def test_a_runs_bar_shows_its_env_steps_and_its_last_evaluation_return() -> None:
    bars, out = _bars()
    with bars:
        cb = bars.callback("mappo__jax_mpe-simple_spread__s0")
        cb(400_000, 2_000_000)  # before its first evaluation message: steps only
        cb(1_200_000, 2_000_000, -21.34)
        cb(1_250_000, 2_000_000)  # a later message without an evaluation keeps the last one
    final = out.getvalue().split("mappo__jax_mpe-simple_spread__s0")[-1]  # the bar as last drawn
    assert "1.25M/2M  eval -21.3" in final.splitlines()[0]
    assert "0/3" in out.getvalue()  # the grid bar still counts runs


def test_env_steps_are_written_in_a_few_characters() -> None:
    assert [format_steps(n) for n in (950, 12_000, 300_000, 1_200_000, 20_000_000)] == ["950", "12k", "300k", "1.2M",
                                                                                       "20M"]


def test_a_pool_workers_callback_sends_the_evaluation_return_to_the_parent(monkeypatch) -> None:
    sent: list[tuple] = []

    class Queue:
        def put(self, item: tuple) -> None:
            sent.append(item)

    monkeypatch.setattr(pool, "_progress_queue", Queue())
    cb = pool._queue_progress("r")
    cb(100, 200)
    cb(200, 200, 0.75)
    assert sent == [("r", 100, 200, None), ("r", 200, 200, 0.75)]
    bars, out = _bars()
    with bars:
        for item in sent:
            bars.update(*item)  # what the parent's drain does with each message
    assert "200/200  eval 0.75" in out.getvalue()


def test_ray_workers_send_every_evaluation_and_the_driver_shows_the_last_return(tmp_path) -> None:
    from marpo_bench.executors.ray import QueueSink, _DriverStore

    class Queue:
        def __init__(self) -> None:
            self.items: list[tuple] = []

        def put(self, item: tuple) -> None:
            self.items.append(item)

    q = Queue()
    sink = QueueSink(q, "r", None, None)
    sink.progress(10, 100)
    sink.progress(20, 100)  # within half a second of the last one: dropped
    sink.progress(30, 100, -5.0)  # carries an evaluation: always sent
    assert [m[2] for m in q.items] == [(10, 100, None), (30, 100, -5.0)]
    bars, out = _bars()
    with bars:
        driver = _DriverStore(tmp_path, "s", bars, bars.console)
        for m in q.items:
            driver.apply(m)
        driver.apply(("metrics", "r", ([{"env_steps": 30, "eval_return_mean": -4.25}], ())))
    assert "30/100  eval -4.25" in out.getvalue()
