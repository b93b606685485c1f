"""The thread policy of TVM's runtime pool when a model runs: workers not bound to a core
(``TVM_BIND_THREADS=0``) that spin briefly, then sleep (``TVM_THREAD_POOL_SPIN_COUNT=2000``;
TVM's defaults: bound, 300000).

A worker that finished its share spins, waiting for the next parallel kernel, before it sleeps.
On a machine with a busy neighbour, a long spin holds a core the main thread or the neighbour
needs, and a worker bound to the neighbour's core waits for its time slice at every parallel
kernel: a whole process start can run 20-40x slower. No spin at all costs a wake-up per parallel
kernel on an idle machine. Measured on a Zen 4 (2 vCPU, Dec 6; MobileNet 0.5-224, each start a
fresh process, `scripts/thread_policy.py build/mnet --busy 1`), median / p90 of 60-100 runs:

| policy | one busy process beside it, 8 starts | idle, 5-6 starts |
|---|---|---|
| TVM's default (bound, spin 300000) | medians 2.9-68 ms; p90 above 100 ms in 4 of 8 starts | 1.5-2.3 ms |
| bound, spin 20000 | p90 above 110 ms in 3 of 4 starts | 1.5-1.7 ms |
| bound, spin 2000 | medians 2.9-4.1 ms; p90 above 100 ms in 1 of 8, then 4 of 8 starts | 1.6-2.9 ms |
| bound, spin 0 | medians 3.0-7.3 ms; p90 3.1-8.0 ms in all 8, twice | 1.9-2.1 ms: ~30% slower |
| unbound, spin 300000 (`TVM_BIND_THREADS=0`) | medians 2.9-3.8 ms; p90 6-69 ms | |
| **unbound, spin 2000 (tvmnet's)** | **medians 3.1-3.9 ms; p90 3.3-3.9 ms in 7 of 8 starts, 22 in one** | **1.5-1.6 ms** |
| `runtime.config_threadpool(-3)` (all cores) | medians up to 114 ms | |
| one thread | 2.7-3.1 / 2.8-3.5 ms | about twice the idle time |

The pool reads the variables when it starts, so ``run_policy()`` is called before a model first
runs in a process (an explicit setting wins). A board's RPC server takes no environment from
us: every CPU artifact's library carries the policy itself (``build.compiler.policy_object``, a
constructor that sets the variables, unless set, when the library is loaded, before the pool
starts in that process; a server that ran a parallel kernel before keeps its pool as it is).
``tvmnet emulator start`` sets them too.

The library also replaces TVM's ``sched_yield`` (``build/policy.c``): under Linux's EEVDF
scheduler, the pool's yield loops queued its threads behind a busy neighbour for 40-120 ms about
once in 50 runs, whatever the spin count. The library's yield sleeps 1 us instead for 50 ms after
a yield took over 1 ms; under one busy process, p99 7-12 ms instead of 50-120, medians as before,
idle unchanged (docs/benchmarks.md). ``TVMNET_YIELD=os`` keeps TVM's.
"""

from __future__ import annotations

import os

RUN_ENV = {"TVM_BIND_THREADS": "0", "TVM_THREAD_POOL_SPIN_COUNT": "2000"}


def run_policy() -> None:
    """Set the policy for models run by this process (and processes started from it)."""
    for key, value in RUN_ENV.items():
        os.environ.setdefault(key, value)
