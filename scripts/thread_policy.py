"""Which TVM thread-pool policy holds under load: each policy in fresh processes, one busy
neighbour beside every start, median / p90 / p99 of single inferences.

    python3 scripts/thread_policy.py build/mnet [--starts 5] [--runs 60] [--busy 1] [--policies a,b]

Policies (the runtime's own knobs; environment variables do not reach a board's RPC server, the
runtime's `runtime.config_threadpool` does):

    tvmnet      the model library's own (unbound, spin 2000, a yield that sleeps when contended)
    pinned      TVM's default: one worker per core, each bound to its core
    unpinned    TVM_BIND_THREADS=0: the same workers, the OS places them
    share-all   runtime.config_threadpool(-3, T): every worker may run on every core
    nospin      TVM_THREAD_POOL_SPIN_COUNT=0: workers sleep at once instead of spinning
    one-thread  TVM_NUM_THREADS=1

All but ``tvmnet`` set TVMNET_YIELD=os: TVM's own sched_yield, as a library built before
build/policy.c had.

Each start is a new process (the pool is made once per process and a neighbour that lands on a
pinned worker's core decides a whole start), so the figures are per start, not pooled.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_OS = {"TVMNET_YIELD": "os"}  # TVM's own sched_yield, not the model library's contended-sleep yield

POLICIES = {
    "tvmnet": {},  # what the model library sets (core/threads.py, build/policy.c)
    "pinned": {"TVM_BIND_THREADS": "1", "TVM_THREAD_POOL_SPIN_COUNT": "300000", **_OS},  # TVM's defaults
    "unpinned": {"TVM_BIND_THREADS": "0", **_OS},
    "share-all": {"TVMNET_POLICY_SHARE_ALL": "1", **_OS},
    "nospin": {"TVM_THREAD_POOL_SPIN_COUNT": "0", **_OS},
    "spin-2k": {"TVM_THREAD_POOL_SPIN_COUNT": "2000", "TVM_BIND_THREADS": "1", **_OS},
    "spin-2k-unpinned": {"TVM_THREAD_POOL_SPIN_COUNT": "2000", "TVM_BIND_THREADS": "0", **_OS},
    "spin-200-unpinned": {"TVM_THREAD_POOL_SPIN_COUNT": "200", "TVM_BIND_THREADS": "0", **_OS},
    "nospin-unpinned": {"TVM_THREAD_POOL_SPIN_COUNT": "0", "TVM_BIND_THREADS": "0", **_OS},
    "one-thread": {"TVM_NUM_THREADS": "1"},
}

_CHILD = """
import json, os, sys, time
import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine
art, runs = sys.argv[1], int(sys.argv[2])
if os.environ.get("TVMNET_POLICY_SHARE_ALL"):
    tvm.get_global_func("runtime.config_threadpool")(-3, int(os.environ.get("TVM_NUM_THREADS", "2")))
meta = json.load(open(os.path.join(art, "metadata.json")))
dev = tvm.cpu(0)
vm = VirtualMachine(tvm.runtime.load_module(os.path.join(art, "model.so")), dev)
x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(meta["input"]["shape"]).astype("float32"), dev)
vm.set_input("main", x)
for _ in range(10):
    vm.invoke_stateful("main")
ms = []
for _ in range(runs):
    t = time.perf_counter(); vm.invoke_stateful("main"); ms.append((time.perf_counter() - t) * 1e3)
print(json.dumps(ms))
"""


def one_start(art: str, policy: str, runs: int) -> list:
    env = dict(os.environ)
    env.setdefault("TVM_NUM_THREADS", "2")
    env.update(POLICIES[policy])
    out = subprocess.run([sys.executable, "-c", _CHILD, art, str(runs)], env=env, capture_output=True, text=True,
                         timeout=600, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    import numpy as np

    from tvmnet.run.load import busy_neighbours

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact")
    p.add_argument("--starts", type=int, default=5)
    p.add_argument("--runs", type=int, default=60)
    p.add_argument("--busy", type=int, default=1)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--json")
    a = p.parse_args()
    rows = {}
    with busy_neighbours(a.busy):
        for start in range(a.starts):  # policies interleaved start by start: drift hits all alike
            for pol in a.policies.split(","):
                ms = one_start(a.artifact, pol, a.runs)
                rows.setdefault(pol, []).append(
                    [statistics.median(ms), float(np.percentile(ms, 90)), float(np.percentile(ms, 99))]
                )
                print(f"start {start + 1} {pol:<11} median {rows[pol][-1][0]:7.2f}  p90 {rows[pol][-1][1]:7.2f}  "
                      f"p99 {rows[pol][-1][2]:7.2f} ms", flush=True)  # fmt: skip
    print(f"\n{a.artifact}, {a.busy} busy process(es), {a.runs} runs per start; per start: median / p90 ms")
    for pol, r in rows.items():
        print(f"{pol:<11} " + "  ".join(f"{m:.1f}/{p90:.1f}" for m, p90, _ in r))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
