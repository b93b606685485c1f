"""StemToVnni and its kernels (passes/vnni_stem.py): structure, and exactness against NumPy and
against the generic integer stem of QdqToInteger."""

import numpy as np
import pytest

from tests.test_int8 import _run, host_has_vnni, host_mcpu


def _qdq_stem(cout=16, hw=14, stride=2, zx=117):
    """The stem as ONNX Runtime's QDQ graph reads in Relax: the float input quantized and
    dequantized (zero point ``zx``), a 3x3 conv with padding 1, the bias, the output's quantize."""
    from tvm import relax

    rng = np.random.default_rng(1)
    w = rng.integers(-127, 128, (cout, 3, 3, 3)).astype("int8")
    sw = rng.uniform(0.01, 0.02, cout).astype("float32")
    sx, so, zo = np.float32(0.02), np.float32(0.3), 0
    b = rng.integers(-500, 500, cout).astype("int32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, hw, hw), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            xq = bb.emit(relax.op.quantize(x, relax.const(sx), relax.const(zx, "uint8"), axis=1, out_dtype="uint8"))
            dx = bb.emit(relax.op.dequantize(xq, relax.const(sx), relax.const(zx, "uint8"), axis=1))
            dw = bb.emit(
                relax.op.dequantize(relax.const(w), relax.const(sw), relax.const(np.zeros(cout, "int8")), axis=0)
            )
            conv = bb.emit(relax.op.nn.conv2d(dx, dw, strides=[stride] * 2, padding=[1] * 4))
            db = bb.emit(
                relax.op.dequantize(relax.const(b), relax.const(sx * sw), relax.const(np.zeros(cout, "int32")), axis=0)
            )
            y = bb.emit(relax.op.add(conv, bb.emit(relax.op.reshape(db, (1, cout, 1, 1)))))
            q = bb.emit_output(
                relax.op.quantize(y, relax.const(so), relax.const(zo, "uint8"), axis=1, out_dtype="uint8")
            )
        bb.emit_func_output(q)
    return bb.get(), dict(w=w, b=b, zx=zx, sw=sw)


@pytest.mark.unit
def test_stem_to_vnni_structure_and_what_it_leaves_alone():
    """The stem becomes the padded quantize and the VNNI conv, weights packed [N/16, C*3, 16, 4]
    with kw = 3 zero, the input's zero point folded into the bias; a stem with 8 outputs or
    stride 1 stays a conv."""
    from tvmnet.passes.qdq_to_integer import QdqToInteger
    from tvmnet.passes.stem_to_vnni import StemToVnni
    from tvmnet.passes.vnni_stem import pack

    before, c = _qdq_stem()
    after = StemToVnni()(QdqToInteger("NHWC")(before))
    text = after["main"].script()
    assert "stem_prep_c3_h14_w14" in text and "vnni_stem_c3_h14_w14_n16" in text
    assert "R.nn.conv2d" not in text and "R.quantize" not in text
    calls = [b.value for b in after["main"].body.blocks[0].bindings if "call_tir" in str(getattr(b.value, "op", ""))]
    prep, conv = calls
    assert [int(d) for d in prep.ty.shape] == [3, 16, 32]  # padded rows; a row rounded up to 16 bytes
    packed, folded = (conv.args[1].fields[i].value.numpy() for i in (1, 2))
    w = c["w"].transpose(0, 2, 3, 1)  # OHWI
    assert packed.shape == (1, 9, 16, 4) and not packed[..., 3].any()
    assert np.array_equal(packed[0, 2 * 3 + 1, 5, :3], w[5, 1, :, 2])  # [n // 16, c * 3 + kh, n % 16, kw]
    assert np.array_equal(folded, c["b"] - c["zx"] * w.reshape(16, -1).astype(np.int64).sum(axis=1))
    assert np.array_equal(pack(w, c["b"], c["zx"])[0], packed)
    for kept in (_qdq_stem(cout=8)[0], _qdq_stem(stride=1)[0]):
        assert "vnni_stem" not in StemToVnni()(QdqToInteger("NHWC")(kept)).script()


@pytest.mark.unit
@pytest.mark.skipif(not host_has_vnni(), reason="this CPU has no AVX-512 VNNI: the kernel cannot run here")
@pytest.mark.parametrize("cout,hw", [(16, 14), (32, 24), (16, 19)])
def test_the_vnni_stem_is_bit_identical_to_the_integer_stem(cout, hw):
    """Through the pass on random inputs (odd sizes too: a window reads past the last column),
    the same uint8 output as QdqToInteger's generic integer stem, and that output against NumPy."""
    from tvmnet.passes.qdq_to_integer import QdqToInteger
    from tvmnet.passes.stem_to_vnni import StemToVnni

    before, c = _qdq_stem(cout=cout, hw=hw)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((1, 3, hw, hw)) * 1.5).astype("float32")  # some inputs clip at 0 and 255
    generic = QdqToInteger("NHWC")(before)
    ours = _run(StemToVnni()(generic), x)
    assert np.array_equal(ours, _run(generic, x))

    sx, so = np.float32(0.02), np.float32(0.3)
    xq = np.clip(np.rint(x[0] / sx) + c["zx"], 0, 255).astype(np.int64) - c["zx"]
    pad = np.zeros((3, hw + 2, hw + 2), np.int64)
    pad[:, 1:-1, 1:-1] = xq  # the float model pads with 0, which is zx once quantized
    o = (hw - 1) // 2 + 1
    acc = sum(
        np.einsum(
            "cyx,nc->nyx", pad[:, kh : kh + 2 * o : 2, kw : kw + 2 * o : 2], c["w"][:, :, kh, kw].astype(np.int64)
        )
        for kh in range(3)
        for kw in range(3)
    )
    mult = (sx * c["sw"] / so).astype(np.float32)[:, None, None]
    want = np.clip(np.rint((acc + c["b"][:, None, None]).astype(np.float32) * mult), 0, 255).astype(np.uint8)
    assert np.array_equal(ours[0], want)
    assert 0 < (want == 0).mean() < 0.9  # the clamp is exercised, and not everywhere


@pytest.mark.unit
@pytest.mark.skipif(not host_has_vnni(), reason="this CPU has no AVX-512 VNNI: the kernel cannot run here")
def test_the_vnni_kernels_run_on_vpdpbusd_without_a_workspace_per_tile():
    """The stem's and the pointwise GEMM's inner step is vpdpbusd, and no kernel asks TVM's workspace pool for memory
    inside its parallel loop (a 'local' accumulator or a local variable did, per tile: 2x slower)."""
    import tvm

    from tvmnet.passes import vnni_kernel, vnni_stem

    target = tvm.target.Target({"kind": "llvm", "mcpu": host_mcpu()})
    conv = tvm.tirx.build(vnni_stem.scheduled(3, 224, 224, 16), target=target).inspect_source("asm")
    prep = vnni_stem.prep(3, 224, 224, "uint8").with_attr("global_symbol", "prep")
    prep = tvm.tirx.build(prep, target=target).inspect_source("asm")
    gemm = tvm.tirx.build(vnni_kernel.scheduled(196, 256, 256), target=target).inspect_source("asm")
    assert "vpdpbusd" in conv and "vpdpbusd" in gemm
    assert all("TVMBackendAllocWorkspace" not in asm for asm in (conv, prep, gemm))
