"""Fix for MetaSchedule's builder on small machines (every build times out out of the box).

``default_build`` runs ``import tvm.s_tir.tensor_intrin`` in every builder worker; that
package imports the intrinsics of every backend (CUDA alone ~23 s on a 2-core machine,
35-47 s in all), and ``LocalBuilder`` restarts its worker pool for each batch with a 30 s
timeout, so every candidate fails to build. The worker initializer below registers a light
``tvm.s_tir.tensor_intrin`` package in ``sys.modules`` that loads only the intrinsics of the
target being tuned, before ``default_build`` asks for the package.
"""
from __future__ import annotations

import importlib
import sys
import types
from functools import partial

_INTRIN_MODULES = {"x86": ("x86",), "arm": ("arm_cpu",), "cuda": ("cuda",), "llvm": ()}


def _install_light_tensor_intrin(families: tuple) -> None:
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    import tvm.s_tir as s_tir

    real_dir = [str(p) for p in s_tir.__path__]
    pkg = types.ModuleType(name)
    pkg.__path__ = [d + "/tensor_intrin" for d in real_dir]
    pkg.__package__ = name
    sys.modules[name] = pkg
    s_tir.tensor_intrin = pkg
    for fam in families:
        importlib.import_module(f"{name}.{fam}")


def intrin_families(spec) -> tuple:
    if spec.device == "cuda":
        return _INTRIN_MODULES["cuda"]
    if spec.arch == "aarch64":
        return _INTRIN_MODULES["arm"]
    if spec.arch == "x86_64":
        return _INTRIN_MODULES["x86"]
    return ()


def worker_initializer(spec):
    """A picklable initializer for ``LocalBuilder(initializer=...)``."""
    return partial(_install_light_tensor_intrin, intrin_families(spec))


def make_builder(spec, max_workers=None, timeout_sec: float = 60.0):
    from tvm.s_tir import meta_schedule as ms

    from .targets import host_cores

    return ms.builder.LocalBuilder(max_workers=max_workers or host_cores(), timeout_sec=timeout_sec,
                                   initializer=worker_initializer(spec))
