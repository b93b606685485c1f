"""Kernels timed where they run: :class:`Replay` records the VM's kernel calls once (functions
and the very tensors they get), then calls them again in order from Python: the same kernels on
the same buffers, so each kernel is timed in place (the replay takes as long as the VM run,
within 3%). A candidate for one kernel replaces it in the sequence and only its calls are timed.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

from tvmnet.core.errors import UsageError

KERNEL_PREFIXES = ("fused_", "mean", "max", "sum", "transpose", "reshape")


def now() -> int:
    return time.perf_counter_ns()


@dataclass
class Call:
    name: str
    func: Callable
    args: list


class Replay:
    """An artifact loaded on this machine with its kernel calls recorded for replay."""

    def __init__(self, artifact):
        import tvm
        from tvm import relax

        from tvmnet.core.targets import TargetSpec

        spec = TargetSpec.from_json(artifact.target)
        why = spec.host_mismatch()
        if why or spec.device != "cpu":
            raise UsageError(
                f"in-place timing runs the model on this machine's CPU, and {artifact.path} "
                f"{'cannot run here: ' + why if why else 'is not a CPU build'}"
            )
        spec.use_threads()
        self.device = tvm.cpu(0)
        self.artifact = artifact
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(artifact.library)), self.device)
        x = np.random.default_rng(0).standard_normal(artifact.input_shape).astype(np.float32)
        self.vm.set_input("main", tvm.runtime.tensor(x, self.device))
        calls: List[Call] = []

        def record(func, name, before, _ret, *args):
            if before and name.startswith(KERNEL_PREFIXES):
                calls.append(Call(name, func, list(args)))
            return 0

        self.vm.set_instrument(record)
        self.vm.invoke_stateful("main")
        self.vm.set_instrument(None)
        self.calls = calls
        for _ in range(10):
            self.run()

    def names(self) -> List[str]:
        return list(dict.fromkeys(c.name for c in self.calls))

    def run(self) -> None:
        for c in self.calls:
            c.func(*c.args)

    def vm_ms(self, number: int = 20, repeat: int = 10) -> float:
        res = self.vm.time_evaluator("invoke_stateful", self.device, number=number, repeat=repeat)("main")
        return 1e3 * statistics.median(res.results)

    def in_place_us(self, runs: int = 100) -> Dict[str, float]:
        """Per kernel: the median over ``runs`` replays of the time of all its calls, in us."""
        per = {n: [] for n in self.names()}
        for _ in range(runs):
            tot = dict.fromkeys(per, 0)
            for c in self.calls:
                t0 = now()
                c.func(*c.args)
                tot[c.name] += now() - t0
            for n, v in tot.items():
                per[n].append(v)
        return {n: statistics.median(v) / 1e3 for n, v in per.items()}

    def alone_us(self, runs: int = 50) -> Dict[str, float]:
        """Per kernel: all its calls, each timed back to back on its own (MetaSchedule's view)."""
        out = {}
        for name in self.names():
            total = 0.0
            for c in (c for c in self.calls if c.name == name):
                for _ in range(5):
                    c.func(*c.args)
                ts = []
                for _ in range(runs):
                    t0 = now()
                    c.func(*c.args)
                    ts.append(now() - t0)
                total += statistics.median(ts)
            out[name] = total / 1e3
        return out

    def candidate_us(self, name: str, func: Callable, args_for: Callable[[list], list], runs: int = 60) -> float:
        """In place: kernel ``name`` replaced by ``func`` (its arguments from ``args_for(old
        args)``), the median over ``runs`` replays of the time of its calls, in us."""
        subs = {i: args_for(c.args) for i, c in enumerate(self.calls) if c.name == name}
        if not subs:
            raise KeyError(name)
        ts = []
        for _ in range(runs):
            tot = 0
            for i, c in enumerate(self.calls):
                if i in subs:
                    a = subs[i]
                    t0 = now()
                    func(*a)
                    tot += now() - t0
                else:
                    c.func(*c.args)
            ts.append(tot)
        return statistics.median(ts) / 1e3

    def replace(self, name: str, func: Callable, args_for: Callable[[list], list]) -> None:
        """From now on the replay runs ``func`` for kernel ``name``."""
        for c in self.calls:
            if c.name == name:
                c.args, c.func = args_for(c.args), func


def vm_name(task_name: str, names: List[str]) -> Optional[str]:
    """The VM function of a tuning task: the task's name, or with ``_prepacked`` when compile
    pre-packed its weights."""
    for n in (task_name + "_prepacked", task_name):
        if n in names:
            return n
    return None


def candidate_args(mod, device):
    """``args_for`` for a scheduled kernel: the recorded tensors where the shapes agree (input,
    output, weights in the same layout); fresh random tensors for weights the candidate lays
    out otherwise (their values do not change its time)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    shapes = [
        tuple(int(s) for s in info.as_json()[2])
        for info in ms.arg_info.ArgInfo.from_entry_func(mod, remove_preproc=True)
    ]
    fresh: dict = {}

    def args_for(old):
        if len(old) != len(shapes):
            raise ValueError(f"candidate takes {len(shapes)} arguments, the kernel {len(old)}")
        out = []
        for k, (shape, arg) in enumerate(zip(shapes, old)):
            if tuple(arg.shape) == shape:
                out.append(arg)
            else:
                if k not in fresh:
                    fresh[k] = tvm.runtime.tensor(
                        0.05 * np.random.default_rng(k).standard_normal(shape, dtype=np.float32), device
                    )
                out.append(fresh[k])
        return out

    return args_for
