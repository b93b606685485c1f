"""Pass tests: TVMScript before/expected with assert_structural_equal, and whole-model
op counts and numerics against PyTorch."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.ir.expr import Constant
from tvm.script import ir as I
from tvm.script import relax as R

from tvmnet.core.config import ModelConfig
from tvmnet.frontend import from_torch
from tvmnet.models import build_model
from tvmnet.passes import FoldBatchNorm, FoldWeightArithmetic, PointwiseToGemm, op_counts
from tvmnet.passes.pipeline import graph_passes


@pytest.mark.unit
def test_fold_batchnorm_structure():
    @I.ir_module
    class Before:
        @R.function
        def main(
            x: R.Tensor((1, 3, 8, 8), "float32"),
            w: R.Tensor((4, 3, 3, 3), "float32"),
            gamma: R.Tensor((4,), "float32"),
            beta: R.Tensor((4,), "float32"),
            mean: R.Tensor((4,), "float32"),
            var: R.Tensor((4,), "float32"),
        ):
            with R.dataflow():
                y = R.nn.conv2d(x, w, strides=[2, 2], padding=[1, 1, 1, 1])
                bn = R.nn.batch_norm(y, gamma, beta, mean, var, axis=1, epsilon=1e-3, training=False)
                z = bn[0]
                r = R.nn.relu(z)
                R.output(r)
            return r

    @I.ir_module
    class Expected:
        @R.function
        def main(
            x: R.Tensor((1, 3, 8, 8), "float32"),
            w: R.Tensor((4, 3, 3, 3), "float32"),
            gamma: R.Tensor((4,), "float32"),
            beta: R.Tensor((4,), "float32"),
            mean: R.Tensor((4,), "float32"),
            var: R.Tensor((4,), "float32"),
        ):
            with R.dataflow():
                lv = R.add(var, R.const(1e-3, "float32"))
                lv1 = R.sqrt(lv)
                scale = R.divide(gamma, lv1)
                lv3 = R.reshape(scale, R.shape([4, 1, 1, 1]))
                w2 = R.multiply(w, lv3)
                y = R.nn.conv2d(x, w2, strides=[2, 2], padding=[1, 1, 1, 1])
                lv6 = R.multiply(mean, scale)
                bias = R.subtract(beta, lv6)
                lv8 = R.reshape(bias, R.shape([1, 4, 1, 1]))
                z = R.add(y, lv8)
                r = R.nn.relu(z)
                R.output(r)
            return r

    tvm.ir.assert_structural_equal(FoldBatchNorm()(Before), Expected)


def _constants(mod):
    found = []
    relax.analysis.post_order_visit(
        mod["main"],
        lambda e: found.append(e.value.numpy()) if isinstance(e, Constant) and hasattr(e.value, "numpy") else None,
    )
    return found


@pytest.mark.unit
def test_fold_weight_arithmetic_gives_foldconstants_bits_without_building_kernels():
    """conv + BatchNorm with constant weights, then the NHWC weight transpose: the folded weights
    and bias are FoldConstant's, bit for bit, and no call on constants is left for it to build."""
    rng = np.random.default_rng(0)

    def c(*shape):
        return relax.const(rng.standard_normal(shape).astype("float32"))

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, c(4, 3, 3, 3), padding=[1, 1, 1, 1]))
            var = relax.const(rng.uniform(0.5, 2, 4).astype("float32"))
            bn = bb.emit(relax.op.nn.batch_norm(y, c(4), c(4), c(4), var, axis=1, epsilon=1e-3, training=False))
            z = bb.emit(relax.op.permute_dims(bb.emit(relax.TupleGetItem(bn, 0)), [0, 2, 3, 1]))
            out = bb.emit_output(
                relax.op.add(z, relax.op.reshape(relax.op.permute_dims(c(4, 1), [1, 0]), (1, 1, 1, 4)))
            )
        bb.emit_func_output(out)
    mod = FoldBatchNorm()(bb.get())
    numpy_folded = FoldWeightArithmetic()(mod)
    left = [
        n
        for n in (
            "relax.multiply",
            "relax.divide",
            "relax.subtract",
            "relax.sqrt",
            "relax.reshape",
            "relax.permute_dims",
        )
        if op_counts(numpy_folded)[n]
    ]
    assert left == ["relax.permute_dims"]  # only the activation's transpose: it is not constant
    assert op_counts(numpy_folded)["relax.add"] == 2  # the bias add and the last add, on activations
    reference = relax.transform.FoldConstant()(mod)
    mine, theirs = _constants(relax.transform.FoldConstant()(numpy_folded)), _constants(reference)
    assert len(mine) == len(theirs) >= 3
    for a, b in zip(mine, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.unit
def test_fold_batchnorm_leaves_training_mode_alone():
    @I.ir_module
    class Training:
        @R.function
        def main(
            x: R.Tensor((1, 4, 8, 8), "float32"),
            w: R.Tensor((4, 1, 3, 3), "float32"),
            g: R.Tensor((4,), "float32"),
            b: R.Tensor((4,), "float32"),
            m: R.Tensor((4,), "float32"),
            v: R.Tensor((4,), "float32"),
        ):
            with R.dataflow():
                y = R.nn.conv2d(x, w, padding=[1, 1, 1, 1], groups=4)
                bn = R.nn.batch_norm(y, g, b, m, v, axis=1, training=True)
                z = bn[0]
                R.output(z)
            return z

    tvm.ir.assert_structural_equal(FoldBatchNorm()(Training), Training)


@pytest.mark.unit
def test_pointwise_to_gemm_structure():
    @I.ir_module
    class Before:
        @R.function
        def main(
            x: R.Tensor((1, 8, 4, 4), "float32"),
            w: R.Tensor((16, 8, 1, 1), "float32"),
            b: R.Tensor((1, 16, 1, 1), "float32"),
            dw: R.Tensor((16, 1, 3, 3), "float32"),
        ):
            with R.dataflow():
                y = R.nn.conv2d(x, w)
                z = R.add(y, b)
                r = R.nn.relu(z)
                d = R.nn.conv2d(r, dw, padding=[1, 1, 1, 1], groups=16)  # depthwise: untouched
                R.output(d)
            return d

    @I.ir_module
    class Expected:
        @R.function
        def main(
            x: R.Tensor((1, 8, 4, 4), "float32"),
            w: R.Tensor((16, 8, 1, 1), "float32"),
            b: R.Tensor((1, 16, 1, 1), "float32"),
            dw: R.Tensor((16, 1, 3, 3), "float32"),
        ):
            with R.dataflow():
                wm = R.reshape(w, R.shape([16, 8]))
                xm = R.reshape(x, R.shape([1, 8, 16]))
                g = R.matmul(wm, xm)
                b3 = R.reshape(b, R.shape([1, 16, 1]))
                s = R.add(g, b3)
                a = R.nn.relu(s)
                r = R.reshape(a, R.shape([1, 16, 4, 4]))
                d = R.nn.conv2d(r, dw, padding=[1, 1, 1, 1], groups=16)
                R.output(d)
            return d

    tvm.ir.assert_structural_equal(PointwiseToGemm()(Before), Expected)


@pytest.mark.unit
def test_pointwise_to_gemm_structure_nhwc():
    """NHWC: out (N, H*W, O) = X (N, H*W, I) @ W^T, channels innermost; the bias is (1, 1, O)."""

    @I.ir_module
    class Before:
        @R.function
        def main(
            x: R.Tensor((1, 4, 4, 8), "float32"),
            w: R.Tensor((16, 1, 1, 8), "float32"),
            b: R.Tensor((1, 1, 1, 16), "float32"),
        ):
            with R.dataflow():
                y = R.nn.conv2d(x, w, data_layout="NHWC", kernel_layout="OHWI", out_layout="NHWC")
                z = R.add(y, b)
                r = R.nn.relu(z)
                R.output(r)
            return r

    @I.ir_module
    class Expected:
        @R.function
        def main(
            x: R.Tensor((1, 4, 4, 8), "float32"),
            w: R.Tensor((16, 1, 1, 8), "float32"),
            b: R.Tensor((1, 1, 1, 16), "float32"),
        ):
            with R.dataflow():
                xm = R.reshape(x, R.shape([1, 16, 8]))
                wm = R.reshape(w, R.shape([16, 8]))
                wt = R.permute_dims(wm, axes=[1, 0])
                g = R.matmul(xm, wt)
                b3 = R.reshape(b, R.shape([1, 1, 16]))
                s = R.add(g, b3)
                a = R.nn.relu(s)
                r = R.reshape(a, R.shape([1, 4, 4, 16]))
                R.output(r)
            return r

    tvm.ir.assert_structural_equal(PointwiseToGemm()(Before), Expected)


@pytest.mark.unit
def test_pointwise_to_gemm_skips_strided_and_3x3():
    @I.ir_module
    class Mod:
        @R.function
        def main(
            x: R.Tensor((1, 8, 4, 4), "float32"),
            w: R.Tensor((16, 8, 1, 1), "float32"),
            w3: R.Tensor((16, 8, 3, 3), "float32"),
        ):
            with R.dataflow():
                y = R.nn.conv2d(x, w, strides=[2, 2])
                z = R.nn.conv2d(x, w3, padding=[1, 1, 1, 1])
                R.output(y, z)
            return (y, z)

    tvm.ir.assert_structural_equal(PointwiseToGemm()(Mod), Mod)


def _build_and_run(mod, x):
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm", "num-cores": 2}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    while not hasattr(out, "numpy"):
        out = out[0]
    return out.numpy()


@pytest.mark.e2e
def test_whole_model_fold_and_gemm():
    cfg = ModelConfig(0.25, 64)
    model = build_model(cfg)
    mod = from_torch(model, cfg.input_shape)
    before = op_counts(mod)
    assert before["relax.nn.batch_norm"] == 27 and before["relax.nn.conv2d"] == 27

    with tvm.target.Target({"kind": "llvm", "num-cores": 2}):
        folded = tvm.transform.Sequential([FoldBatchNorm(), FoldWeightArithmetic(), relax.transform.FoldConstant()])(
            mod
        )
        lowered = graph_passes(gemm=True)(mod)
    after = op_counts(folded)
    assert after["relax.nn.batch_norm"] == 0
    assert after["relax.nn.conv2d"] == 27
    # between each conv and its ReLU: exactly one bias add, no per-channel multiply/subtract/divide
    assert after["relax.add"] == 28 and after["relax.nn.relu"] == 27  # 27 bias adds + the FC bias
    assert after["relax.multiply"] == after["relax.subtract"] == after["relax.divide"] == 0
    low = op_counts(lowered)
    assert low["relax.matmul"] == 13 + 1 and low["relax.nn.conv2d"] == 14  # 13 pointwise + FC; stem + 13 dw

    rng = np.random.default_rng(0)
    x = rng.standard_normal(cfg.input_shape).astype("float32")
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    for m in (folded, lowered):
        out = _build_and_run(m, x)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.e2e
def test_whole_model_nhwc_matches_pytorch():
    """The CPU layout: every conv in NHWC, one transpose in (the image) and one out (the pooled
    features), all 13 pointwise convs and the FC as GEMMs, numerics as PyTorch's."""
    cfg = ModelConfig(0.25, 64)
    model = build_model(cfg)
    mod = from_torch(model, cfg.input_shape)
    with tvm.target.Target({"kind": "llvm", "num-cores": 2}):
        nhwc = graph_passes(gemm=True, layout="NHWC")(mod)
    counts = op_counts(nhwc)
    assert counts["relax.matmul"] == 13 + 1 and counts["relax.nn.conv2d"] == 13  # 13 depthwise
    # the input transpose is folded into the stem (StemReadsNCHW): one call_tir reading NCHW;
    # the one permute left is the pooled features' (1x1 spatially)
    assert counts["relax.call_tir"] == 1 and counts["relax.permute_dims"] == 1 and counts["relax.layout_transform"] == 0
    stem = [f for g, f in nhwc.functions_items() if g.name_hint.startswith("conv2d_nchw_in_nhwc_out")]
    assert len(stem) == 1
    assert [int(d) for d in stem[0].params[0].shape] == list(cfg.input_shape)  # it reads the NCHW image
    convs = []
    relax.analysis.post_order_visit(
        nhwc["main"],
        lambda e: convs.append(e) if isinstance(e, relax.Call) and e.op.name == "relax.nn.conv2d" else None,
    )
    assert {(c.attrs.data_layout, c.attrs.kernel_layout) for c in convs} == {("NHWC", "OHWI")}
    assert all(int(c.attrs.groups) > 1 for c in convs)

    x = np.random.default_rng(1).standard_normal(cfg.input_shape).astype("float32")
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_build_and_run(nhwc, x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.unit
def test_graph_passes_refuses_an_unknown_layout():
    with pytest.raises(ValueError, match="NCHW, NHWC"):
        graph_passes(layout="NCWH")


def _strip_gemm(strips=16, k=256, m=12, k_outside_rows=False):
    """A GEMM in the packed-strip form our schedules give: out[i, s*16 + j] = sum_k a[i, k] *
    w[s, k, j], (strip, 2-row block) pairs in a parallel loop (w: strips x k x 16 floats = 256 KB);
    inside it the 2 rows, then k (or k, then the 2 rows, as the packed micro-kernels)."""
    from tvm import s_tir, te

    a = te.placeholder((m, k), name="a")
    w = te.placeholder((strips, k, 16), name="w")
    r = te.reduce_axis((0, k), name="r")
    out = te.compute((m, strips * 16), lambda i, n: te.sum(a[i, r] * w[n // 16, r, n % 16], axis=r), name="out")
    sch = s_tir.Schedule(te.create_prim_func([a, w, out]))
    i, n, rr = sch.get_loops(sch.get_sblock("out"))
    no, ni = sch.split(n, [strips, 16])
    io, ii = sch.split(i, [None, 2])
    sch.reorder(no, io, *((rr, ii) if k_outside_rows else (ii, rr)), ni)
    sch.parallel(sch.fuse(no, io))
    sch.vectorize(ni)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


@pytest.mark.unit
@pytest.mark.parametrize("k_outside_rows", [False, True], ids=["one burst per iteration", "spread over the k loop"])
def test_prefetch_weights_adds_strip_ahead_prefetches_and_keeps_the_numbers(k_outside_rows):
    from tvmnet.passes.weight_prefetch import PrefetchWeights, prefetching_kernels

    func = _strip_gemm(k_outside_rows=k_outside_rows).with_attr("global_symbol", "fused_matmul_x")
    mod = tvm.IRModule({"fused_matmul_x": func})
    small = tvm.IRModule({"fused_matmul_small": _strip_gemm(strips=2, k=64)})  # 8 KB of weights
    new = PrefetchWeights(tvm.IRModule(dict(mod.functions)))
    assert prefetching_kernels(new) == ["fused_matmul_x"] and prefetching_kernels(PrefetchWeights(small)) == []
    script = new["fused_matmul_x"].script()
    assert "T.prefetch(" in script
    # 4096 lines over 96 iterations: 43 in a burst, or 1 per step of the 256-step k loop
    inside_k = (
        script.index("T.prefetch(") > script.index("for r in range(256)") if "for r in range(256)" in script else False
    )
    assert inside_k == k_outside_rows, script
    target = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})
    libs = [tvm.tirx.build(m, target=target) for m in (mod, new)]
    assert "prefetcht1" in libs[1].inspect_source("asm") and "prefetcht1" not in libs[0].inspect_source("asm")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 256)).astype("float32")
    w = rng.standard_normal((16, 256, 16)).astype("float32")
    outs = []
    for lib in libs:
        out = tvm.runtime.tensor(np.zeros((12, 256), "float32"))
        lib["fused_matmul_x"](tvm.runtime.tensor(a), tvm.runtime.tensor(w), out)
        outs.append(out.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])  # a prefetch changes no number
    np.testing.assert_allclose(outs[0], a @ w.transpose(1, 0, 2).reshape(256, 256), rtol=1e-4, atol=1e-4)
