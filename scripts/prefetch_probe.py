"""Probe (not in the pipeline): each compute-bound kernel prefetches the next weight-heavy
kernel's weights while it computes.

MobileNet 1.0-224's weights (17 MB) do not stay in the cache between inferences on a VM that
keeps ~8 MB of its L3, so every GEMM fetches its weights from DRAM in place (touching them just
before each kernel made the kernels 4.8% faster on Zen 3). This pass gives each GEMM (and the
stem) the next GEMM's (or the fc's) weight tensor as an extra argument and issues
``tirx.prefetch`` for it, spread over the iterations of its parallel loop (about
lines / iterations cache lines at the start of each), on the compiled module after the tuned
schedules are applied. It builds the model with and without it and times both in turn in one
process (the VM's kernel calls replayed, ``tvmnet.insitu.Replay``), and checks that the
prefetch arguments are the very tensors the later kernels read.

    python3 scripts/prefetch_probe.py --alpha 1.0 [--locality 1] [--rounds 12]

Locality 0-3 as LLVM's prefetch (x86: 3 = prefetcht0, 1 = prefetcht2). Zen 3, Dec 1: 1.000x
(locality 1) and 1.013x (3) end to end, within the VM's noise. Both builds now include the
pipeline's own in-kernel prefetch (``tvmnet.passes.weight_prefetch``), whose loop this probe reuses.
"""
import argparse
import math
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

LINE = 64
MIN_BYTES = 128 * 1024      # weights smaller than this are not worth a prefetch
HOSTS = ("matmul", "conv2d_nchw")   # compute-bound kernels that issue the prefetches


def with_prefetch(func, shape, dtype, locality):
    """``func`` with one more input buffer (``shape``) and prefetches of all of it spread over
    its outermost parallel loop; None when it has no parallel loop."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    from tvmnet.passes.weight_prefetch import prepend_prefetches

    numel = math.prod(shape)
    per_line = LINE // (tvm.DataType(dtype).bits // 8)
    lines = -(-numel // per_line)
    buf = tirx.decl_buffer([tirx.IntImm("int64", s) for s in shape], dtype, name="prefetch_src")
    done = []

    def on_for(loop):
        if done or loop.kind != tirx.ForKind.PARALLEL:
            return loop
        done.append(loop)
        return prepend_prefetches(loop, buf, -(-lines // int(loop.extent)), 0, locality)

    body = tvm_ffi.structural_map(func.body, (tirx.For, on_for), order="pre")
    if not done:
        return None
    params = list(func.params)
    return tirx.PrimFunc(params[:-1] + [buf] + params[-1:], body, func.ret_type, func.attrs)


def largest_constant(call):
    import tvm

    consts = [a for a in call.args[1].fields if isinstance(a, tvm.ir.expr.Constant)]
    return max(consts, key=lambda c: math.prod(c.value.shape), default=None)


def prefetch_pass(mod, locality):
    import tvm
    from tvm import relax

    main = mod["main"]
    call_tir = tvm.ir.Op.get("relax.call_tir")
    calls = [(b.var, b.value) for blk in main.body.blocks for b in blk.bindings
             if isinstance(b.value, relax.Call) and b.value.op.same_as(call_tir)]
    funcs, plan = {}, {}
    for i, (var, call) in enumerate(calls):
        name = call.args[0].name_hint
        if not any(h in name for h in HOSTS):
            continue
        nxt = next((w for w in (largest_constant(c) for _, c in calls[i + 1:])
                    if w is not None and math.prod(w.value.shape) * 4 >= MIN_BYTES), None)
        if nxt is None:
            continue
        shape = tuple(int(s) for s in nxt.value.shape)
        if (name, shape) not in funcs:
            f = with_prefetch(mod[call.args[0]], shape, str(nxt.value.dtype), locality)
            if f is None:
                continue
            funcs[(name, shape)] = (f"{name}_pf{len(funcs)}", f)
        plan[var] = (funcs[(name, shape)][0], list(call.args[1].fields) + [nxt], list(call.ty_args))
        print(f"  {name} prefetches {shape} ({math.prod(shape) * 4 / 1024:.0f} KB)")
    bb = relax.BlockBuilder(mod)
    gvs = {g: bb.add_func(f, g) for g, f in funcs.values()}
    new = {v: relax.call_tir(gvs[g], relax.Tuple(a), o[0] if len(o) == 1 else o) for v, (g, a, o) in plan.items()}
    blocks = []
    for blk in main.body.blocks:
        nb = [relax.VarBinding(b.var, new[b.var]) if b.var in new else b for b in blk.bindings]
        blocks.append(relax.DataflowBlock(nb) if isinstance(blk, relax.DataflowBlock) else relax.BindingBlock(nb))
    bb.update_func(mod.get_global_var("main"), relax.Function(main.params, relax.SeqExpr(blocks, main.body.body),
                                                              main.ret_ty, main.is_pure, main.attrs))
    return bb.get()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--target", default="x86")
    ap.add_argument("--locality", type=int, default=1, choices=range(4))
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()

    import tvm

    from tvmnet import ModelConfig, load_target
    from tvmnet.build.artifact import load_artifact
    from tvmnet.build.compiler import CompileOptions, _lower_and_choose_logs, compile_model, export
    from tvmnet.frontend import import_model
    from tvmnet.insitu.replay import Replay
    from tvmnet.passes import pipeline

    spec = load_target(args.target)
    model = ModelConfig(args.alpha, args.resolution)
    work = Path(tempfile.mkdtemp(prefix="tvmnet-prefetch-"))
    try:
        base = compile_model(CompileOptions(model=model, target=spec, output=work / "base"))
        mod, *_ = import_model(model)
        _, lowered, choice = _lower_and_choose_logs(mod, CompileOptions(model=model, target=spec, output=work / "x"))
        mod = prefetch_pass(pipeline.finalize(lowered, spec, choice.database), args.locality)
        shutil.copytree(base.path, work / "pf")
        export(tvm.compile(mod, target=spec.tvm_target()), spec, work / "pf" / base.library.name)
        runs = [Replay(load_artifact(work / d)) for d in ("base", "pf")]
        ptr = lambda t: np.from_dlpack(t).ctypes.data   # noqa: E731
        calls = runs[1].calls
        shared = sum(ptr(c.args[-2]) in {ptr(a) for c2 in calls[i + 1:] for a in c2.args}
                     for i, c in enumerate(calls) if "_pf" in c.name)
        print(f"{shared} of {sum('_pf' in c.name for c in calls)} prefetch arguments are a later kernel's weights")
        x = np.random.default_rng(0).standard_normal(base.input_shape).astype(np.float32)
        outs = [r.vm["main"](tvm.runtime.tensor(x, r.device))[0].numpy() for r in runs]
        print(f"outputs with and without differ by {float(np.abs(outs[0] - outs[1]).max()):.1e}")
        times = [[], []]
        for _ in range(args.rounds):
            for k, r in enumerate(runs):
                times[k].append(r.vm_ms(number=10, repeat=5))
        for label, t in zip(("without", "with prefetch"), times):
            print(f"{label:14s} median {statistics.median(t):.3f} ms over {args.rounds} rounds")
        print(f"with / without, per round: {statistics.median(b / a for a, b in zip(*times)):.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
