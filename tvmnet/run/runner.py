"""Run a compiled artifact: locally (CPU or CUDA) or on a remote device over TVM RPC.

Both use the VM's stateful interface (``set_input``/``invoke_stateful``/``get_outputs``),
the only one that works over RPC when ``main`` returns a tuple.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass

import numpy as np

from tvmnet.build.artifact import Artifact
from tvmnet.core.errors import ArtifactError, DeviceError, err_line
from tvmnet.core.threads import run_policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float
    runs: int

    def __str__(self):
        return f"median {self.median_ms:.3f} ms, p90 {self.p90_ms:.3f} ms over {self.runs} runs"


def percentile(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


class Session:
    """A loaded artifact on one device."""

    def __init__(self, vm, device, artifact: Artifact):
        self.vm, self.device, self.artifact = vm, device, artifact

    def run(self, x: np.ndarray) -> np.ndarray:
        import tvm

        x = np.ascontiguousarray(x, dtype=np.float32)
        try:
            self.vm.set_input("main", tvm.runtime.tensor(x, self.device))
            self.vm.invoke_stateful("main")
            out = self.vm.get_outputs("main")
        except Exception as err:
            raise DeviceError(f"running the model failed on {self.device}: {err_line(err)}") from err
        while not hasattr(out, "numpy"):
            out = out[0]
        return out.numpy()

    def time(self, x: np.ndarray, number: int = 10, repeat: int = 30, min_repeat_ms: int = 0) -> Timing:
        import tvm

        self.vm.set_input("main", tvm.runtime.tensor(np.ascontiguousarray(x, np.float32), self.device))
        try:
            timer = self.vm.time_evaluator(
                "invoke_stateful", self.device, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms
            )
            res = timer("main")
        except Exception as err:
            raise DeviceError(f"timing the model failed on {self.device}: {err_line(err)}") from err
        ms = [r * 1e3 for r in res.results]
        return Timing(statistics.median(ms), percentile(ms, 90), len(ms))


def open_local(artifact: Artifact) -> Session:
    """Load an artifact on this machine; refuses one built for another machine."""
    import tvm
    from tvm.runtime.vm import VirtualMachine  # runtime only: works where just the TVM runtime is installed

    from tvmnet.core.targets import TargetSpec

    spec = TargetSpec.from_json(artifact.target)
    why = spec.host_mismatch()
    if why:
        raise ArtifactError(
            f"artifact {artifact.path} cannot run here: {why}; run it on its board with "
            f"`tvmnet validate {artifact.path} --rpc HOST:PORT` (or `tvmnet deploy`)"
        )
    if spec.device == "cuda":
        dev = tvm.cuda(0)
        if not dev.exist:
            raise DeviceError(
                f"artifact {artifact.path} is built for CUDA and this machine has no usable NVIDIA GPU; "
                "run it on a machine with one"
            )
    else:
        spec.use_threads()
        run_policy()  # before the pool starts: workers that sleep at once hold up under load
        dev = tvm.cpu(0)
    try:
        lib = tvm.runtime.load_module(str(artifact.library))
        vm = VirtualMachine(lib, dev)
    except Exception as err:
        raise ArtifactError(
            f"cannot load {artifact.library}: {err_line(err)}; rebuild it with `tvmnet compile`"
        ) from err
    return Session(vm, dev, artifact)
