"""int8 (issue 32, first part): `compile --precision int8` quantizes with ONNX Runtime's
quantize_static (QDQ), builds the QDQ model with TVM, and `validate` checks it against the same
quantized model in ONNX Runtime; bad input gets a one-line error and nothing is lost."""

import json

import numpy as np
import pytest
from conftest import run_cli


@pytest.fixture(scope="module")
def int8_small(tmp_path_factory):
    """An int8 x86 artifact of MobileNet 0.25-96 (calibrated on 8 seeded samples)."""
    out = tmp_path_factory.mktemp("int8") / "mnet-int8"
    res = run_cli("compile", "--target", "x86", "--alpha", "0.25", "--resolution", "96", "--precision", "int8",
                  "--calibration-samples", "8", "-o", out)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


# ---------------------------------------------------------------------------------- calibration


@pytest.mark.unit
def test_calibration_images_are_resized_centre_cropped_and_normalised(tmp_path):
    from PIL import Image

    from tvmnet.quantize import calibration as cal

    Image.new("RGB", (200, 120), (255, 0, 0)).save(tmp_path / "a.png")  # wide: resized, then cropped
    Image.new("L", (64, 64), 128).save(tmp_path / "b.jpg")  # grey: converted to RGB
    c = cal.from_dir(tmp_path, (1, 3, 96, 96))
    assert c.source == "images" and len(c.inputs) == 2 and c.describe().startswith("2 images from ")
    red = c.inputs[0]
    assert red.shape == (1, 3, 96, 96) and red.dtype == np.float32
    assert red[0, 0].mean() == pytest.approx((1 - 0.485) / 0.229, abs=1e-3)  # ImageNet mean/std
    assert red[0, 1].mean() == pytest.approx((0 - 0.456) / 0.224, abs=1e-3)
    assert cal.from_dir(tmp_path, (1, 3, 96, 96), limit=1).to_json()["files"] == 1
    seeded = cal.seeded((1, 3, 8, 8), 3)
    assert len(seeded.inputs) == 3 and np.array_equal(seeded.inputs[0], cal.seeded((1, 3, 8, 8), 3).inputs[0])


@pytest.mark.unit
def test_a_bad_calibration_folder_gets_a_one_line_error(tmp_path):
    from tvmnet.core.errors import UsageError
    from tvmnet.quantize import calibration as cal

    with pytest.raises(UsageError, match="no such folder"):
        cal.from_dir(tmp_path / "missing", (1, 3, 96, 96))
    with pytest.raises(UsageError, match="the folder is empty"):
        cal.from_dir(tmp_path, (1, 3, 96, 96))
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(UsageError, match=r"not \.jpg/\.jpeg/\.png \(first: notes\.txt\)"):
        cal.from_dir(tmp_path, (1, 3, 96, 96))
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 this is no JPEG")
    with pytest.raises(UsageError, match="broken.jpg is not a readable JPEG or PNG"):
        cal.from_dir(tmp_path, (1, 3, 96, 96))


# ------------------------------------------------------------------------------ the command line


@pytest.mark.unit
def test_int8_on_cuda_and_calibration_without_int8_are_refused_in_one_line(tmp_path):
    res = run_cli("compile", "--target", "cuda", "--alpha", "0.25", "--resolution", "32", "--precision", "int8",
                  "-o", tmp_path / "a")  # fmt: skip
    assert res.returncode != 0 and "--precision int8 builds for CPU targets" in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if "error" in ln]) == 1 and not (tmp_path / "a").exists()
    res = run_cli(
        "compile", "--alpha", "0.25", "--resolution", "32", "--calibration-samples", "4", "-o", tmp_path / "b"
    )
    assert res.returncode != 0 and "are for --precision int8" in res.stderr


@pytest.mark.e2e
def test_a_failed_int8_compile_keeps_the_artifact_already_there(int8_small, tmp_path):
    out, _ = int8_small
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = run_cli(
        "compile", "--alpha", "0.25", "--resolution", "96", "--precision", "int8", "--calibration", tmp_path, "-o", out
    )  # fmt: skip  (tmp_path: an empty folder)
    assert res.returncode != 0 and "the folder is empty; put JPEG/PNG images in it" in res.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# -------------------------------------------------------------------------- compile and validate


@pytest.mark.e2e
def test_int8_compile_records_the_quantization_and_ships_the_quantized_reference(int8_small):
    import onnx

    out, res = int8_small
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["precision"] == "int8" and meta["layout"] == "NHWC" and meta["passes"][0] == "QdqToInteger(NHWC)"
    assert ("PointwiseToVnni" in meta["passes"]) == host_has_vnni()
    q = meta["quantization"]
    assert q["name"] == "onnxruntime.quantization.quantize_static" and q["format"] == "QDQ"
    assert q["calibration"] == {"source": "seeded samples", "count": 8, "seed": 0, "distribution": "standard normal"}
    ref = onnx.load(str(out / q["reference"]))
    ops = [n.op_type for n in ref.graph.node]
    assert "BatchNormalization" not in ops and ops.count("QuantizeLinear") >= 28  # BN folded before quantizing
    weights = {i.name: i for i in ref.graph.initializer}
    per_channel = [n for n in ref.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights
                   and weights[n.input[0]].data_type == onnx.TensorProto.INT8 and len(weights[n.input[1]].dims) == 1]  # fmt: skip
    assert len(per_channel) >= 27  # every conv's and the classifier's weights: int8, a scale per output channel
    assert "quantizing to int8 with ONNX Runtime" in res.stderr and "8 seeded samples" in res.stderr


@pytest.mark.e2e
def test_int8_validates_within_one_output_step_of_the_quantized_model(int8_small):
    out, _ = int8_small
    res = run_cli("validate", out, "--json")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rep = json.loads(res.stdout)
    assert rep["ok"] and rep["rtol"] == 0 and 0 < rep["atol"] < 0.1  # one output quantization step
    assert rep["max_abs"] <= rep["atol"] and rep["top1_agree"] == rep["samples"]
    assert "quantized model" in rep["reference"]
    assert "integer kernels" in rep["reference"]  # bit-exact on a Zen 4 (max_abs 0): the same integer arithmetic
    assert any("fp32 PyTorch" in n for n in rep["notes"]) and any("ONNX operators define" in n for n in rep["notes"])


@pytest.mark.e2e
def test_int8_validation_fails_on_a_swapped_input_and_on_wrong_scales(int8_small, tmp_path):
    import onnx
    from onnx import numpy_helper

    from tvmnet.build.artifact import load_artifact
    from tvmnet.run.reference import Reference
    from tvmnet.run.runner import open_local
    from tvmnet.run.validate import compare

    out, _ = int8_small
    art = load_artifact(out)
    session = open_local(art)
    swapped = compare(lambda x: session.run(x[:, ::-1].copy()), Reference(art), art, samples=3)  # channels swapped
    assert not swapped.ok and "outputs differ" in swapped.failures[0]

    # the same model with one activation scale doubled, compiled as given, checked against the right reference
    model = onnx.load(str(out / "reference_int8.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] != "input")
    scale = inits[q.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 2, scale.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    res = run_cli("compile", "--onnx", bad, "--precision", "int8", "-o", tmp_path / "bad")
    assert res.returncode == 0 and "already quantized: compiled as it is" in res.stderr, res.stderr[-2000:]
    bad_art = load_artifact(tmp_path / "bad")
    wrong = compare(open_local(bad_art).run, Reference(art), art, samples=3)
    assert not wrong.ok


@pytest.mark.e2e
def test_an_already_quantized_onnx_model_is_compiled_as_it_is_and_not_calibrated_again(int8_small, tmp_path):
    out, _ = int8_small
    res = run_cli("compile", "--onnx", out / "reference_int8.onnx", "--precision", "int8",
                  "--calibration-samples", "4", "-o", tmp_path / "q")  # fmt: skip
    assert res.returncode != 0 and "is already quantized; drop --calibration" in res.stderr
    assert not (tmp_path / "q").exists()


# ------------------------------------------------------------------------- the QdqToInteger pass


def _qdq_conv_layer(zx=3, bias_scale_off=1.0, cin=2, cout=4, ksize=3, hw=5):
    """One quantized conv layer as ONNX Runtime's QDQ graph reads in Relax, and its constants."""
    import tvm
    from tvm import relax

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (cout, cin, ksize, ksize)).astype("int8")
    sw = rng.uniform(0.01, 0.02, cout).astype("float32")
    sx, so, zo = np.float32(0.05), np.float32(0.4), 7
    b = rng.integers(-500, 500, cout).astype("int32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, cin, hw, hw), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            dx = bb.emit(relax.op.dequantize(x, relax.const(sx), relax.const(zx, "uint8"), axis=1))
            zw = relax.const(np.zeros(cout, "int8"))
            dw = bb.emit(relax.op.dequantize(relax.const(w), relax.const(sw), zw, axis=0))
            conv = bb.emit(relax.op.nn.conv2d(dx, dw, padding=[ksize // 2] * 4))
            db = bb.emit(
                relax.op.dequantize(
                    relax.const(b), relax.const(sx * sw * bias_scale_off), relax.const(np.zeros(cout, "int32")), axis=0
                )
            )
            bias = bb.emit(relax.op.reshape(db, (1, cout, 1, 1)))
            y = bb.emit(relax.op.add(conv, bias))
            q = bb.emit_output(
                relax.op.quantize(y, relax.const(so), relax.const(zo, "uint8"), axis=1, out_dtype="uint8")
            )
        bb.emit_func_output(q)
    return bb.get(), dict(w=w, sw=sw, sx=sx, so=so, zo=zo, b=b, zx=zx), tvm


@pytest.mark.unit
def test_qdq_to_integer_structure():
    from tvm import relax

    from tvmnet.passes.qdq_to_integer import QdqToInteger

    before, c, tvm = _qdq_conv_layer()
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2, 5, 5), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            xi = bb.emit(relax.op.astype(x, "int32"))  # the stem's input has a zero point: taken off first
            xc = bb.emit(relax.op.subtract(xi, relax.const(np.full((1, 1, 1, 1), 3, "int32"))))
            w = relax.const(c["w"].astype("int32"))
            acc = bb.emit(relax.op.nn.conv2d(xc, w, padding=[1, 1, 1, 1], out_dtype="int32"))
            s = bb.emit(relax.op.add(acc, relax.const(c["b"].reshape(1, -1, 1, 1))))
            m = ((c["sx"] * c["sw"]) / c["so"]).astype("float32").reshape(1, -1, 1, 1)
            f = bb.emit(relax.op.multiply(relax.op.astype(s, "float32"), relax.const(m)))
            f = bb.emit(relax.op.add(relax.op.round(f), relax.const(np.full((1, 1, 1, 1), 7, "float32"))))
            out = bb.emit_output(relax.op.astype(relax.op.clip(f, 0, 255), "uint8"))
        bb.emit_func_output(out)
    after = QdqToInteger()(before)
    tvm.ir.assert_structural_equal(relax.transform.Normalize()(after), relax.transform.Normalize()(bb.get()))


@pytest.mark.unit
def test_qdq_to_integer_computes_the_integer_layer_exactly_and_leaves_a_foreign_bias_scale_alone():

    from tvmnet.passes.qdq_to_integer import QdqToInteger

    for zx in (3, 0):  # the stem (a zero point), and every layer after a ReLU (none: uint8 x int8 directly)
        _check_one_layer(zx)
    odd, _, _ = _qdq_conv_layer(bias_scale_off=1.5)  # the bias is not on the accumulator's scale
    kept = QdqToInteger()(odd).script()
    assert 'out_dtype="int32"' not in kept and "R.nn.conv2d" in kept and "R.dequantize" in kept  # left in float


def _check_one_layer(zx):
    import tvm.target
    from tvm import relax

    from tvmnet.passes.qdq_to_integer import QdqToInteger

    before, c, tvm = _qdq_conv_layer(zx=zx)
    after = QdqToInteger()(before)
    if zx == 0:  # the convolution reads the uint8 input and the int8 weights as they are (VNNI's operands)
        assert "R.nn.conv2d(x, " in after.script() and 'R.astype(x, dtype="int32")' not in after.script()
    x = np.random.default_rng(1).integers(0, 256, (1, 2, 5, 5)).astype("uint8")
    target = tvm.target.Target({"kind": "llvm"})

    def run(mod):
        return relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()

    ours, floats = run(after), run(before)
    # the integer layer by hand: exact int32 accumulation (zero point off before padding), int32 bias,
    # ONNX Runtime's requantization (float multiplier, round half to even, zero point, clamp)
    xc = np.pad(x.astype(np.int64) - c["zx"], ((0, 0), (0, 0), (1, 1), (1, 1)))
    acc = np.zeros((1, 4, 5, 5), np.int64)
    for i in range(3):
        for j in range(3):
            acc += np.einsum("nchw,oc->nohw", xc[:, :, i : i + 5, j : j + 5], c["w"][:, :, i, j].astype(np.int64))
    acc += c["b"].reshape(1, -1, 1, 1)
    mult = ((c["sx"] * c["sw"]) / c["so"]).astype(np.float32).reshape(1, -1, 1, 1)
    want = np.clip(np.rint(acc.astype(np.float32) * mult) + c["zo"], 0, 255).astype(np.uint8)
    assert ours.dtype == np.uint8 and np.array_equal(ours, want)
    assert np.abs(ours.astype(int) - floats.astype(int)).max() <= 1  # the float QDQ graph: a tie at most


def _run(mod, x):
    import tvm
    from tvm import relax

    target = tvm.target.Target({"kind": "llvm", "mcpu": host_mcpu()})
    return relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def host_mcpu() -> str:
    from tvmnet.core.targets import host_cpu

    return host_cpu()


def host_has_vnni() -> bool:
    import tvm

    from tvmnet.passes.vnni_kernel import has_vnni

    return has_vnni(tvm.target.Target({"kind": "llvm", "mcpu": host_mcpu()}))


@pytest.mark.unit
def test_qdq_to_integer_in_nhwc_gives_the_nchw_bits_with_one_transpose_each_way():
    from tvmnet.passes.qdq_to_integer import QdqToInteger

    before, _, _ = _qdq_conv_layer(zx=3)
    nhwc = QdqToInteger("NHWC")(before)
    text = nhwc.script()
    assert 'data_layout="NHWC"' in text and 'kernel_layout="OHWI"' in text and text.count("R.permute_dims") == 2
    x = np.random.default_rng(1).integers(0, 256, (1, 2, 5, 5)).astype("uint8")
    assert np.array_equal(_run(nhwc, x), _run(QdqToInteger()(before), x))
    with pytest.raises(ValueError, match="NCHW or NHWC"):
        QdqToInteger("NCWH")


@pytest.mark.unit
def test_pointwise_to_vnni_structure_and_what_it_leaves_alone():
    """A 1x1 int8 layer becomes a call of the VNNI GEMM kernel on the activations as a matrix,
    with the weights packed [N/16, K/4, 16, 4]; a 3x3 layer and a layer with 8 outputs stay convs."""
    from tvmnet.passes.pointwise_to_vnni import PointwiseToVnni
    from tvmnet.passes.qdq_to_integer import QdqToInteger
    from tvmnet.passes.vnni_kernel import pack_weights

    before, c, _ = _qdq_conv_layer(zx=0, cin=8, cout=32, ksize=1, hw=7)
    after = PointwiseToVnni()(QdqToInteger("NHWC")(before))
    text = after["main"].script()
    assert "R.call_tir(vnni_gemm_m49_k8_n32" in text and "R.nn.conv2d" not in text
    (call,) = [b.value for b in after["main"].body.blocks[0].bindings if "call_tir" in str(getattr(b.value, "op", ""))]
    operands = call.args[1].fields
    assert [int(d) for d in operands[0].ty.shape] == [49, 8]  # the NHWC activations as a matrix
    w = c["w"].reshape(32, 8)
    assert np.array_equal(operands[1].value.numpy(), pack_weights(w))
    assert np.array_equal(pack_weights(w)[1, 0, 3], w[16 + 3, 0:4])  # [n // 16, k // 4, n % 16, k % 4]
    for layer in (_qdq_conv_layer(zx=0, cin=8, cout=32, ksize=3, hw=7), _qdq_conv_layer(zx=0, cin=8, cout=8, ksize=1)):
        kept = PointwiseToVnni()(QdqToInteger("NHWC")(layer[0])).script()
        assert "vnni_gemm" not in kept and "R.nn.conv2d" in kept


@pytest.mark.unit
@pytest.mark.skipif(not host_has_vnni(), reason="this CPU has no AVX-512 VNNI: the kernel cannot run here")
def test_the_vnni_kernel_is_exact_and_runs_on_vpdpbusd():
    """The kernel against NumPy (int32 sums, the requantization), and through the pass on a QDQ
    layer against the NCHW integer graph: the same bits."""
    import tvm

    from tvmnet.passes import vnni_kernel
    from tvmnet.passes.pointwise_to_vnni import PointwiseToVnni
    from tvmnet.passes.qdq_to_integer import QdqToInteger

    m, k, n = 98, 64, 48
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    bias = rng.integers(-3000, 3000, n).astype(np.int32)
    mult = rng.uniform(1e-5, 3e-4, n).astype(np.float32)
    zo = np.array([5.0], np.float32)
    lib = tvm.tirx.build(
        vnni_kernel.scheduled(m, k, n), target=tvm.target.Target({"kind": "llvm", "mcpu": host_mcpu()})
    )
    assert "vpdpbusd" in lib.inspect_source("asm")
    args = [tvm.runtime.tensor(v) for v in (a, vnni_kernel.pack_weights(w), bias, mult, zo, np.zeros((m, n), np.uint8))]
    lib(*args)
    acc = a.astype(np.int64) @ w.astype(np.int64).T + bias
    want = np.clip(np.rint(acc.astype(np.float32) * mult) + zo[0], 0, 255).astype(np.uint8)
    assert np.array_equal(args[-1].numpy(), want)

    before, _, _ = _qdq_conv_layer(zx=0, cin=8, cout=32, ksize=1, hw=7)
    x = rng.integers(0, 256, (1, 8, 7, 7)).astype("uint8")
    assert np.array_equal(_run(PointwiseToVnni()(QdqToInteger("NHWC")(before)), x), _run(QdqToInteger()(before), x))


@pytest.mark.e2e
def test_the_int8_kernels_do_not_depend_on_the_calibration():
    """A tune calibrates on seeded samples, a user's compile on images: the same kernels (the scales
    and zero points are kernel arguments, never numbers written into the code), so the records apply."""
    from tvmnet.core.config import ModelConfig
    from tvmnet.core.targets import load_target
    from tvmnet.tune.options import TuneOptions
    from tvmnet.tune.search import prepare_tasks

    spec = load_target("x86")
    kernels = []
    for n in (2, 5):
        opts = TuneOptions(ModelConfig(alpha=0.25, resolution=32), spec, precision="int8", calibration_samples=n)
        _, tasks = prepare_tasks(opts)
        kernels.append({t.task_name: t.dispatched[0].script() for t in tasks})
    assert len(kernels[0]) >= 8 and kernels[0] == kernels[1]


# ------------------------------------------------------------------------------------------ bench


@pytest.mark.e2e
def test_bench_times_an_int8_artifact_beside_ort_int8_and_tvmnets_fp32_build(int8_small, x86_small, tmp_path):
    out, _ = int8_small
    fig = tmp_path / "bench.json"
    res = run_cli("bench", out, "--fp32", x86_small, "--engines", "tvmnet,onnxruntime", "--rounds", "2", "--runs", "3",
                  "--warmup", "1", "--json", fig)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "tvmnet (TVM) int8" in res.stdout and "ONNX Runtime int8" in res.stdout and "tvmnet fp32 build" in res.stdout
    data = json.loads(fig.read_text())
    assert data["precision"] == "int8" and set(data["engines"]) == {"tvmnet", "tvmnet-fp32", "onnxruntime"}
    step = 0.1  # the output step of 0.25-96 is ~0.02: ORT's integer kernels on the same model agree within it
    assert data["engines"]["onnxruntime"]["max_abs_diff"] <= step
    assert "the artifact's int8 QDQ model" in data["engines"]["onnxruntime"]["note"]
    bad = run_cli("bench", x86_small, "--fp32", x86_small, "--rounds", "1")
    assert bad.returncode != 0 and "--fp32 DIR times tvmnet's fp32 build beside an int8 artifact" in bad.stderr


# ----------------------------------------------------------------------------- the extended run


@pytest.mark.e2e
@pytest.mark.slow  # extended run: ~1 min (two int8 builds of the real sizes, validated)
@pytest.mark.parametrize("alpha", ["0.5", "1.0"])
def test_int8_224_validates_against_ort_int8(alpha, tmp_path):
    out = tmp_path / f"q{alpha}"
    res = run_cli("compile", "--alpha", alpha, "--precision", "int8", "--calibration-samples", "8", "-o", out)
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_cli("validate", out, "--json")
    rep = json.loads(res.stdout)
    assert res.returncode == 0 and rep["ok"] and rep["max_abs"] <= rep["atol"], rep


@pytest.mark.e2e
@pytest.mark.tune
@pytest.mark.slow  # extended run: ~1 min (a tiny real int8 tune)
def test_an_int8_tune_writes_records_that_the_int8_compile_applies(tmp_path):
    from conftest import host_class

    logs = tmp_path / "logs"
    res = run_cli("tune", "--alpha", "0.25", "--resolution", "32", "--precision", "int8", "--trials", "24",
                  "--log-dir", logs, "--no-progress")  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "q"
    res = run_cli("compile", "--alpha", "0.25", "--resolution", "32", "--precision", "int8",
                  "--tuning-log", logs / host_class(), "-o", out)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["tuning"]["kernels_tuned"] > 0  # the int8 kernels' own records, measured here
    assert run_cli("validate", out).returncode == 0
