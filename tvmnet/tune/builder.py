"""MetaSchedule builder that works on small machines (out of the box every build times out).

Two problems, both in ``LocalBuilder``:

1. ``default_build`` runs ``import tvm.s_tir.tensor_intrin`` in every builder worker; that
   package imports the intrinsics of every backend (CUDA alone ~23 s on a 2-core machine,
   35-47 s in all) and the build times out at 30 s, so every candidate fails.
   Fix: the worker initializer registers a light ``tvm.s_tir.tensor_intrin`` package in
   ``sys.modules`` that loads only the target's intrinsics.
2. ``LocalBuilder`` starts a new worker pool for every batch (each worker pays ``import tvm``,
   ~4 s), which dominates small batches. Fix: ``PersistentBuilder`` keeps one pool for the
   whole tuning run and restarts it only after a worker dies.
"""

from __future__ import annotations

import importlib
import signal
import sys
import types
from functools import partial

_INTRIN_MODULES = {"x86": ("x86",), "arm": ("arm_cpu",), "cuda": ("cuda",)}


def _install_light_tensor_intrin(families: tuple) -> None:
    """Register ``tvm.s_tir.tensor_intrin`` as a package that loads only ``families``' modules
    (once per process; a later call adds its families). A process that has already imported the
    full package keeps it."""
    name = "tvm.s_tir.tensor_intrin"
    pkg = sys.modules.get(name)
    if pkg is None:
        import tvm.s_tir as s_tir

        pkg = types.ModuleType(name)
        pkg.__path__ = [d + "/tensor_intrin" for d in s_tir.__path__]
        pkg.__package__ = name
        pkg.tvmnet_light = True
        sys.modules[name] = pkg
        s_tir.tensor_intrin = pkg
    elif not getattr(pkg, "tvmnet_light", False):
        return
    for fam in families:
        importlib.import_module(f"{name}.{fam}")


def intrin_families(spec) -> tuple:
    """The tensor-intrinsic modules a target spec's kernels can use."""
    return target_intrin_families(spec.tvm_target())


def target_intrin_families(target) -> tuple:
    """The tensor-intrinsic modules of a ``tvm.target.Target``: CUDA's, ARM's or x86's."""
    if target.kind.name == "cuda":
        return _INTRIN_MODULES["cuda"]
    if target.kind.name == "llvm":
        triple = str(target.attrs.get("mtriple", "") or "")
        return _INTRIN_MODULES["arm"] if triple.startswith("aarch64") else _INTRIN_MODULES["x86"]
    return ()


def _init_worker(families: tuple) -> None:
    # Ctrl-C reaches the whole process group; the tuner stops at a safe point, so the
    # workers must not die half-way through a batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _install_light_tensor_intrin(families)


def worker_initializer(spec):
    """A picklable initializer for builder worker processes."""
    return partial(_init_worker, intrin_families(spec))


def export_shared(rt_mod, cross_compiler=None) -> str:
    """Export a candidate as a shared library (cross-compiled for ARM) for RPC runners."""
    import os
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
    if cross_compiler:
        from tvm.support import cc

        rt_mod.export_library(path, fcompile=cc.cross_compiler(cross_compiler))
    else:
        rt_mod.export_library(path)
    return path


def make_builder(spec, max_workers=None, timeout_sec: float = 60.0, shared_library: bool = False):
    from tvm.s_tir.meta_schedule.builder import local_builder as lb

    f_export = (
        partial(export_shared, cross_compiler=spec.cross_compiler) if (shared_library or spec.cross_compiler) else None
    )
    return pool_builder(
        spec,
        lambda x: lb._worker_func(*x),
        lambda b: (None, f_export, b.mod, b.target, lb._serialize_params(b.params)),
        "build",
        max_workers,
        timeout_sec,
    )


def pool_builder(spec, work, job_of, what: str, max_workers=None, timeout_sec: float = 60.0):
    """A MetaSchedule builder that runs ``work(job_of(build_input))`` for each candidate in one
    persistent pool of worker processes (restarted only after a worker is killed); the value
    ``work`` returns is the candidate's artifact path. ``what`` names the work in errors."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    from tvmnet.core.targets import host_cores

    workers = max_workers or host_cores()
    initializer = worker_initializer(spec)

    @derived_object
    class PersistentBuilder(ms.builder.PyBuilder):
        def __init__(self):
            super().__init__()
            self.pool = None

        def build(self, build_inputs):
            if self.pool is None:
                self.pool = PopenPoolExecutor(max_workers=workers, timeout=timeout_sec, initializer=initializer)
            results, broken = [], False
            for res in self.pool.map_with_error_catching(work, [job_of(b) for b in build_inputs]):
                if res.status == StatusKind.COMPLETE:
                    results.append(ms.builder.BuilderResult(res.value, None))
                elif res.status == StatusKind.TIMEOUT:
                    broken = True
                    results.append(ms.builder.BuilderResult(None, f"{what} timed out after {timeout_sec} s"))
                else:
                    results.append(ms.builder.BuilderResult(None, f"{what} failed:\n" + str(res.value)))
            if broken:  # a killed worker: start afresh next time
                self.pool.shutdown()
                self.pool = None
            return results

    return PersistentBuilder()
