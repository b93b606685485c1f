"""The compile pipeline, in phases, in one place.

Phase 1 ``graph``: graph-level rewrites on Relax (BN folding, pointwise conv -> GEMM); the
   constant weight arithmetic they leave is evaluated in NumPy (``FoldWeightArithmetic``).
Phase 2 ``lower``: legalize to TIR and fuse (conv/matmul + bias + ReLU become one kernel).
   The module after this phase is what MetaSchedule tunes; tuning and compile share it, so
   database records always match the kernels that get built.
Phase 3 ``schedule``: apply tuned records from the database; default GPU schedules (dlight)
   for CUDA kernels without records; weight pre-packing for tuned CPU kernels; on x86, the
   tuned GEMMs prefetch their next weight strip (``PrefetchWeights``).

A pass that does not apply to a target is an empty ``Sequential([])``, not an ``if``.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Optional

import tvm
from tvm import relax
from tvm.relax import transform as T

from tvmnet.passes.fold_batchnorm import FoldBatchNorm
from tvmnet.passes.fold_constants import FoldWeightArithmetic
from tvmnet.passes.pointwise_to_gemm import PointwiseToGemm
from tvmnet.passes.stem_reads_nchw import StemReadsNCHW
from tvmnet.passes.weight_prefetch import PrefetchWeights, prefetches_on

log = logging.getLogger(__name__)

_EMPTY = tvm.transform.Sequential([])


LAYOUTS = ("NCHW", "NHWC")


def generation(layout: str, gemm: bool = True, precision: str = "fp32") -> str:
    """The pipeline generation a lowered module's kernels come from: the layout and the graph
    passes that shape them (a tuning record serves only kernels of the same shape). Logs record
    it (``class.json``: ``generations``) so that a log made before a pipeline change shows as stale."""
    if precision == "int8":  # passes/int8.py: the QDQ graph in integers, NHWC; 1x1 convs on VNNI where it is
        return "int8 NHWC: QdqToInteger + PointwiseToVnni (VNNI CPUs)"
    passes = ["FoldBatchNorm"] + (["ConvertLayout", "StemReadsNCHW"] if layout == "NHWC" else [])
    return f"{layout}: " + " + ".join(passes + (["PointwiseToGemm"] if gemm else []))


def to_nhwc() -> tvm.transform.Pass:
    """NCHW/OIHW convolutions -> NHWC/OHWI. Relax inserts one transpose after the input, which
    ``StemReadsNCHW`` folds into the first conv, and one before the pooled features (1x1
    spatially: a copy); the weight transposes are constants and fold away."""
    return tvm.transform.Sequential(
        [
            T.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]}),
            T.CanonicalizeBindings(),
            FoldWeightArithmetic(),
            T.FoldConstant(),
            StemReadsNCHW(),
            T.DeadCodeElimination(),
        ],
        name="tvmnet.nhwc",
    )


def graph_passes(gemm: bool = True, layout: str = "NCHW") -> tvm.transform.Pass:
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    return tvm.transform.Sequential(
        [
            FoldBatchNorm(),
            FoldWeightArithmetic(),  # the weight arithmetic in NumPy: FoldConstant builds a kernel per call
            T.FoldConstant(),
            to_nhwc() if layout == "NHWC" else _EMPTY,
            PointwiseToGemm() if gemm else _EMPTY,
            T.DecomposeOpsForInference(),  # any batch_norm not after a conv
            T.CanonicalizeBindings(),
            FoldWeightArithmetic(),
            T.FoldConstant(),
        ],
        name="tvmnet.graph",
    )


def lower_passes(is_cpu: bool) -> tvm.transform.Pass:
    return tvm.transform.Sequential(
        [
            T.LegalizeOps(),
            T.AnnotateTIROpPattern(),
            T.FoldConstant(),
            T.FuseOps(),
            T.FuseTIR(),
            T.RewriteDataflowReshape(),  # reshape kernels -> free views, so they are not tuned
            T.DeadCodeElimination(),
            T.AttachAttrLayoutFreeBuffers() if is_cpu else _EMPTY,
        ],
        name="tvmnet.lower",
    )


def lower_to_tir(mod: tvm.IRModule, spec, gemm: bool = True, layout: Optional[str] = None) -> tvm.IRModule:
    """Phases 1 and 2: the fused TIR module that tuning and compile both start from.
    ``layout`` None: the target's default (NHWC on CPUs)."""
    with spec.tvm_target():
        mod = graph_passes(gemm, layout or spec.default_layout)(mod)
        log.debug("graph phase: %s", op_counts(mod))
        mod = lower_passes(spec.is_cpu)(mod)
    return mod


def _gpu_default_schedule() -> tvm.transform.Pass:
    from tvm.s_tir import dlight as dl

    class Guarded(dl.ScheduleRule):
        """A dlight rule that declines (returns None) instead of crashing: dlight's GEMV
        rule asserts on some 1x1-spatial matmuls (e.g. MobileNet at 32x32), and one failing
        rule must not stop the next from scheduling the kernel."""

        def __init__(self, rule):
            self.rule = rule

        def apply(self, func, target, tunable):
            try:
                return self.rule.apply(func, target, tunable)
            except Exception:  # noqa: BLE001
                log.debug("dlight rule %s declined %s", type(self.rule).__name__, func)
                return None

    rules = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]
    return dl.ApplyDefaultSchedule(*[Guarded(r) for r in rules])


def finalize(mod: tvm.IRModule, spec, database=None) -> tvm.IRModule:
    """Phase 3: apply tuned records (if any), default GPU schedules, CPU weight pre-packing,
    then (x86) the GEMMs' strip-ahead weight prefetches."""
    with spec.tvm_target():
        seq = tvm.transform.Sequential(
            [
                T.MetaScheduleApplyDatabase(enable_warning=False) if database is not None else _EMPTY,
                _gpu_default_schedule() if not spec.is_cpu else _EMPTY,
                tvm.transform.Sequential(
                    [
                        T.SplitLayoutRewritePreproc(),
                        T.LiftTransformParams(),
                        T.FoldConstant(),
                        T.CanonicalizeBindings(),
                        T.DeadCodeElimination(),
                    ]
                )
                if spec.is_cpu and database is not None
                else _EMPTY,
                PrefetchWeights if prefetches_on(spec.arch) and database is not None else _EMPTY,
            ],
            name="tvmnet.schedule",
        )
        if database is not None:
            with database:
                return seq(mod)
        return seq(mod)


def op_counts(mod: tvm.IRModule) -> Counter:
    """Count Relax operator calls (e.g. ``relax.nn.batch_norm``) in every Relax function."""
    counts: Counter = Counter()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            counts[expr.op.name] += 1

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


def tir_kernels(mod: tvm.IRModule) -> list:
    """Names of the TIR kernels (PrimFuncs) in a lowered module."""
    return sorted(g.name_hint for g, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))


def own_kernel_calls(mod: tvm.IRModule) -> list:
    """(name, PrimFunc, calls) of the kernels a tvmnet pass scheduled itself (``own_kernels``)."""
    from collections import defaultdict

    calls = defaultdict(int)

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.args and isinstance(expr.args[0], tvm.ir.GlobalVar):
            calls[expr.args[0].name_hint] += 1

    for _, f in mod.functions_items():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, visit)
    funcs = {g.name_hint: f for g, f in mod.functions_items()}
    return [(name, funcs[name], calls[name]) for name in own_kernels(mod)]


def own_kernel_kind(name: str) -> str:
    """The kind of a kernel tvmnet scheduled itself, from its name: the VNNI stem conv, the stem's
    quantize-and-pad (``stem_prep``: other), else a pointwise GEMM (VNNI or ARM)."""
    if name.startswith("stem_prep"):
        return "other"
    return "stem conv" if name.startswith("vnni_stem") else "pointwise GEMM"


def own_kernels(mod: tvm.IRModule) -> list:
    """Names of the kernels a tvmnet pass scheduled itself (``tirx.is_scheduled``: the VNNI ones),
    which no tuning log serves."""
    return sorted(
        g.name_hint
        for g, f in mod.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and bool(f.attrs.get("tirx.is_scheduled", False))
    )


KERNEL_KINDS = ("pointwise GEMM", "depthwise conv", "stem conv", "fc", "mean", "other")


def kernel_kind(name: str, mod=None) -> str:
    """Which of MobileNet's kernel kinds a fused kernel is, from its name and (for convs, whose
    names do not tell the stem from a depthwise conv in every layout) its TIR."""
    if "matmul" in name:
        return "pointwise GEMM" if "relu" in name else "fc"
    if "conv2d" in name:
        if "nchw_in" in name:
            return "stem conv"
        if mod is None:
            raise ValueError(f"kernel {name}: pass its module to tell a stem conv from a depthwise one")
        text = mod.script() if hasattr(mod, "script") else str(mod)
        return "depthwise conv" if ("group_conv2d" in text or "depthwise" in text) else "stem conv"
    if name.startswith("mean"):
        return "mean"
    return "other"


def extract_tasks(mod, spec):
    """The tuning tasks (one per distinct fused kernel) of a lowered module, those already
    scheduled (by a pass or dlight) left out."""
    from tvm.s_tir import meta_schedule as ms

    def scheduled(task) -> bool:
        funcs = [f for _, f in task.mod.functions_items()]
        return any(bool(x.attrs and x.attrs.get("tirx.is_scheduled", False)) for x in [task.mod, *funcs])

    tasks = ms.relax_integration.extract_tasks(mod, spec.tvm_target())
    return [t for t in tasks if not scheduled(t)]
