"""Two or more builds of one model timed in turn, in this process: round by round, each
build once per round (order reversed every other round), so that a slow phase of the machine
falls on all of them alike. The figure that decides is the median over rounds of the per-round
ratio to the first build (below 1: faster than it)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import List, Sequence


@dataclass(frozen=True)
class InTurn:
    median_ms: List[float]  # per build
    ratio: List[float]  # per build: median over rounds of (its time / the first build's time)
    rounds: int
    runs: int

    def fastest(self) -> int:
        return min(range(len(self.ratio)), key=lambda i: (self.ratio[i], i))


def time_in_turn(executables: Sequence, input_shape, rounds: int = 9, runs: int = 10) -> InTurn:
    """Load each ``tvm.compile`` result on this CPU and time ``main`` on one seeded input."""
    import numpy as np
    import tvm
    from tvm import relax

    from tvmnet.core.threads import run_policy

    run_policy()  # as the model will run: the builds compared under the same pool policy

    dev = tvm.cpu(0)
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(tuple(input_shape)).astype("float32"), dev)
    timers = []
    for ex in executables:
        vm = relax.VirtualMachine(ex, dev)
        vm.set_input("main", x)
        timers.append(vm.time_evaluator("invoke_stateful", dev, number=runs, repeat=1))
    for timer in timers:  # warm-up: weights into the caches, the thread pool started
        timer("main")
    samples = [[] for _ in timers]
    for r in range(rounds):
        order = range(len(timers)) if r % 2 == 0 else reversed(range(len(timers)))
        for i in order:
            samples[i].append(timers[i]("main").mean * 1e3)
    ratios = [statistics.median(s / b for s, b in zip(mine, samples[0])) for mine in samples]
    return InTurn([statistics.median(s) for s in samples], ratios, rounds, runs)
