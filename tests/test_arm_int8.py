"""int8 on the aarch64 boards: tvmnet's ARM GEMM (passes/arm_kernel.py: smlal on the Pi 4's
Cortex-A72, sdot on the Pi 5's A76) built for the boards, and whole int8 builds validated on the
emulated Pi 4 and Pi 5 against ONNX Runtime's integer kernels on the same quantized model (the
default run's small Pi 4 build is in test_rpc.py, on its emulated board)."""

import json

import numpy as np
import pytest
from conftest import free_port, run_cli

from tvmnet.run import emulator


@pytest.mark.unit
@pytest.mark.parametrize(
    "board, kind, instr", [("rpi4", "smlal", "smlal"), ("rpi5", "sdot", "sdot"), ("rpi4", "smull", "sadalp")]
)
def test_the_arm_gemm_builds_on_the_boards_instruction_without_a_workspace(board, kind, instr):
    """The board's CPU picks the inner step (the A76 has the dot product, the A72 has not); the
    kernel cross-compiles to it, with no workspace allocation inside the parallel loop."""
    import tvm

    from tvmnet import load_target
    from tvmnet.passes import arm_kernel

    target = load_target(board).tvm_target()
    chosen = arm_kernel.kind_for(target)
    assert kind in chosen or (kind == "smull" and chosen == arm_kernel.SMLAL)
    chosen = arm_kernel.SMULL if kind == "smull" else chosen
    asm = tvm.tirx.build(arm_kernel.scheduled(chosen, 196, 128, 256), target=target).inspect_source("asm")
    assert asm.count(instr) >= 16  # a 7 x 16 (smlal, sdot) or 4 x 4 (smull) register tile, unrolled
    assert "TVMBackendAllocWorkspace" not in asm
    assert arm_kernel.kind_for(load_target("x86").tvm_target()) is None


@pytest.mark.unit
def test_the_arm_packings_keep_the_integers():
    """sdot reads [N/4, K/4, 4, 4] and sums (a - 128) * w, so the bias carries 128 * sum(w); smlal
    reads int16 [N/8, K, 8]. Both give the plain u8 x s8 sums, checked in NumPy."""
    from tvmnet.passes import arm_kernel

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 16)).astype(np.int64)
    w = rng.integers(-127, 128, (8, 16)).astype(np.int8)
    bias = rng.integers(-1000, 1000, 8).astype(np.int32)
    want = a @ w.astype(np.int64).T + bias
    packed, b2 = arm_kernel.pack(arm_kernel.SDOT, w, bias)
    assert packed.shape == (2, 4, 4, 4) and np.array_equal(packed[1, 2, 3], w[4 + 3, 8:12])
    unpacked = packed.transpose(0, 2, 1, 3).reshape(8, 16).astype(np.int64)
    assert np.array_equal((a - 128) @ unpacked.T + b2, want)
    packed, b3 = arm_kernel.pack(arm_kernel.SMLAL, w, bias)
    assert packed.dtype == np.int16 and packed.shape == (1, 16, 8)
    assert np.array_equal(a @ packed[0].astype(np.int64) + b3, want)


@pytest.fixture(scope="module")
def boards():
    """``boards(name)`` -> the RPC address of an emulated board, started on first use."""
    started = {}

    def get(board):
        if board not in started:
            started[board] = free_port()
            emulator.start(board, host="127.0.0.1", port=started[board])
        return f"127.0.0.1:{started[board]}"

    yield get
    for board, port in started.items():
        emulator.stop(board, port)


def compile_and_deploy(board, rpc, alpha, resolution, out):
    res = run_cli(
        "compile", "--target", board, "--precision", "int8", "--alpha", alpha, "--resolution", resolution, "-o", out
    )
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "metadata.json").read_text())
    res = run_cli("deploy", out, "--rpc", rpc, "--samples", "2", "--runs", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS" in res.stdout and "(aarch64)" in res.stdout and "ONNX Runtime's integer kernels" in res.stdout
    assert "max abs error   0.000e+00" in res.stdout  # the same integers as ONNX Runtime's
    return meta


@pytest.mark.device
@pytest.mark.slow
@pytest.mark.parametrize("board, kind", [("rpi4", "smull"), ("rpi5", "sdot")])
def test_int8_1_0_224_validates_on_the_emulated_pi4_and_pi5(boards, board, kind, tmp_path):
    """The Pi 5 build runs sdot on QEMU's Cortex-A76 (the Pi 4's A72 model would fault on it)."""
    meta = compile_and_deploy(board, boards(board), "1.0", "224", tmp_path / "q")
    assert any(p.startswith("PointwiseToArm(") and kind in p for p in meta["passes"])


@pytest.mark.slow
def test_an_int8_estimate_tune_for_the_pi4_tunes_the_stem_and_compile_applies_it(tmp_path):
    """`tune --estimate --precision int8` for a board: the GEMMs are tvmnet's (nothing to tune), the
    pool and classifier keep the nearest class's schedules (the proxy ranks int8 classifiers at
    rho 0.76), the stem and the depthwise convs are searched by the proxy; compile applies them."""
    logs = tmp_path / "logs"
    args = ["--target", "rpi4", "--precision", "int8", "--alpha", "0.25", "--resolution", "64"]
    res = run_cli("tune", *args, "--estimate", "--trials", "24", "--log-dir", logs)
    assert res.returncode == 0, res.stderr[-3000:]
    import re

    assert "int8 kernels" in res.stderr and "keep the nearest class's schedules" in res.stderr
    assert int(re.search(r"(\d+) tasks, per-task cap", res.stderr).group(1)) >= 5  # the stem and the depthwise convs
    db = logs / "estimated" / "aarch64-cortex-a72-neon-4c"
    assert (db / "database_tuning_record.json").read_text().count("\n") >= 1
    out = tmp_path / "q"
    res = run_cli("compile", *args, "-o", out, "--tuning-log", db)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "metadata.json").read_text())["tuning"]["kernels_tuned"] >= 1
