"""compile -> validate, end to end, with real TVM builds and real PyTorch references."""

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from tvmnet.build.artifact import load_artifact
from tvmnet.build.compiler import elf_machine

pytestmark = pytest.mark.e2e


def validate_ok(path, *extra):
    res = run_cli("validate", path, "--json", *extra)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["top1_agree"] == report["samples"]
    assert report["max_abs"] < 1e-4 and report["input_sensitivity"] > 1e-2
    return report


def test_x86_small_compile_validate(x86_small):
    meta = json.loads((x86_small / "metadata.json").read_text())
    assert meta["model"]["alpha"] == 0.25 and meta["input"]["shape"] == [1, 3, 96, 96]
    assert meta["output"]["shape"] == [1, 1000]
    assert meta["target"]["name"] == "x86" and meta["tuning"]["kernels_tuned"] == 0
    assert meta["tuning"]["kernels_total"] > 10 and meta["tvm_version"].startswith("0.27")
    assert elf_machine(x86_small / "model.so") == "x86_64"
    validate_ok(x86_small, "--samples", "3")


@pytest.mark.slow  # extended run (`pytest -m slow`, run by CI after the default one): ~40 s
def test_x86_second_pair_with_weights(tmp_path):
    """alpha 0.5 at 128 from a real checkpoint (with live BN statistics)."""
    from tvmnet.core.config import ModelConfig
    from tvmnet.models import build_model

    weights = tmp_path / "w.pt"
    torch.save(build_model(ModelConfig(0.5, 128, seed=7)).state_dict(), weights)
    out = tmp_path / "m"
    res = run_cli(
        "compile", "--alpha", "0.5", "--resolution", "128", "--weights", weights, "-o", out, "--no-tuning-log"
    )
    assert res.returncode == 0, res.stderr
    assert "naive and slow" not in res.stderr  # --no-tuning-log: the user asked for it
    validate_ok(out)


def test_validate_fails_on_wrong_numbers(x86_small, tmp_path):
    """Same artifact against a different set of weights: validate must fail and say so."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(x86_small, bad)
    meta = json.loads((bad / "metadata.json").read_text())
    meta["model"]["seed"] = 12345  # the reference is now a differently initialised model
    (bad / "metadata.json").write_text(json.dumps(meta))
    res = run_cli("validate", bad)
    assert res.returncode == 7
    assert "FAIL" in res.stdout and "validation failed" in res.stderr


@pytest.mark.slow  # extended run (`pytest -m slow`, run by CI after the default one): ~60 s (the emulator tests cross-build too)
def test_arm_cross_build_is_aarch64_and_refused_locally(tmp_path):
    out = tmp_path / "arm"
    res = run_cli("compile", "--target", "arm_cpu", "--alpha", "0.25", "--resolution", "64", "-o", out)
    assert res.returncode == 0, res.stderr
    assert elf_machine(out / "model.so") == "aarch64"
    raw = (out / "model.so").read_bytes()
    assert int.from_bytes(raw[18:20], "little") == 183
    assert b"TVM_THREAD_POOL_SPIN_COUNT" in raw and b"TVM_BIND_THREADS" in raw  # the policy travels to the board
    meta = load_artifact(out).metadata
    assert meta["target"]["target"]["mcpu"] == "cortex-a72" and meta["target"]["cross_compiler"]
    res = run_cli("validate", out)
    assert res.returncode == 5 and "--rpc" in res.stderr and "aarch64" in res.stderr


@pytest.mark.slow  # extended run (`pytest -m slow`, run by CI after the default one): ~55 s
def test_onnx_path_gives_same_numbers(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    res = run_cli("export-onnx", "--alpha", "0.25", "--resolution", "64", "-o", onnx_path)
    assert res.returncode == 0, res.stderr
    out_onnx, out_torch = tmp_path / "from-onnx", tmp_path / "from-torch"
    assert run_cli("compile", "--onnx", onnx_path, "-o", out_onnx, "--no-tuning-log").returncode == 0
    assert (
        run_cli("compile", "--alpha", "0.25", "--resolution", "64", "-o", out_torch, "--no-tuning-log").returncode == 0
    )
    validate_ok(out_onnx)  # against ONNX Runtime on the same file

    from tvmnet.core.config import ModelConfig
    from tvmnet.models import build_model
    from tvmnet.run.runner import open_local

    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype("float32")
    a = open_local(load_artifact(out_onnx)).run(x)
    b = open_local(load_artifact(out_torch)).run(x)
    with torch.no_grad():
        ref = build_model(ModelConfig(0.25, 64)).eval()(torch.from_numpy(x)).numpy()
    # fp32: the ONNX exporter folds BN itself, in another order than our pass; both within
    # validate's default tolerance of PyTorch and of each other
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(a, ref, rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(b, ref, rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale)


def test_recompile_replaces_artifact_and_failure_keeps_it(tmp_path, x86_small):
    import shutil

    out = tmp_path / "m"
    shutil.copytree(x86_small, out)  # an earlier artifact (the session's 0.25-96 build)
    first = (out / "metadata.json").read_text()
    res = run_cli(
        "compile",
        "--alpha",
        "0.25",
        "--resolution",
        "32",
        "--target",
        "x86",
        "--tuning-log",
        tmp_path / "no-such-log",
        "-o",
        out,
    )
    assert res.returncode != 0 and "tuning log" in res.stderr
    assert (out / "metadata.json").read_text() == first and (out / "model.so").is_file()
    assert run_cli("compile", "--alpha", "0.25", "--resolution", "64", "-o", out, "--no-tuning-log").returncode == 0
    assert load_artifact(out).input_shape == (1, 3, 64, 64)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]  # no staging leftovers


@pytest.mark.slow  # extended run (`pytest -m slow`, run by CI after the default one): ~35 s
def test_batch_compile(tmp_path):
    out = tmp_path / "b4"
    assert (
        run_cli(
            "compile", "--alpha", "0.25", "--resolution", "32", "--batch", "4", "-o", out, "--no-tuning-log"
        ).returncode
        == 0
    )
    validate_ok(out, "--samples", "2")


def test_python_api(tmp_path):
    from tvmnet import CompileOptions, ModelConfig, compile_model, load_target

    art = compile_model(CompileOptions(ModelConfig(0.25, 32), load_target("x86"), tmp_path / "api", tuning_log=None))
    assert art.library.is_file() and art.metadata["model"]["resolution"] == 32


@pytest.mark.e2e
def test_the_library_carries_the_thread_policy_to_whatever_process_loads_it(x86_small):
    """A board's RPC server takes no environment from us: the model's library sets tvmnet's thread
    policy itself when loaded (unless set), before TVM's pool starts in that process."""
    import os
    import subprocess
    import sys

    from tvmnet.core.threads import RUN_ENV

    probe = (
        "import ctypes, sys, tvm\n"
        "tvm.runtime.load_module(sys.argv[1])\n"  # what the RPC server's load_module does
        "getenv = ctypes.CDLL(None).getenv\n"
        "getenv.restype = ctypes.c_char_p\n"
        "print(*[(getenv(k.encode()) or b'-').decode() for k in sys.argv[2:]])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in RUN_ENV}
    lib = str(x86_small / "model.so")
    out = subprocess.run([sys.executable, "-c", probe, lib, *RUN_ENV], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == list(RUN_ENV.values()), out.stderr
    env["TVM_BIND_THREADS"] = "1"  # an explicit setting wins
    out = subprocess.run(
        [sys.executable, "-c", probe, lib, "TVM_BIND_THREADS"], env=env, capture_output=True, text=True
    )
    assert out.stdout.split() == ["1"]


_YIELD_PROBE = r"""
import ctypes, re, subprocess, sys, tvm
tvm.runtime.load_module(sys.argv[1])  # what the RPC server's load_module does
maps = [line.split() for line in open("/proc/self/maps") if len(line.split()) == 6]
def mapped(name):  # (load address, end of its last mapping, path) of a loaded library
    rows = [r for r in maps if r[5].endswith("/" + name)]
    base = min(int(r[0].split("-")[0], 16) for r in rows if int(r[2], 16) == 0)
    return base, max(int(r[0].split("-")[1], 16) for r in rows), rows[0][5]
rt_lo, _, rt_path = mapped("libtvm_runtime.so")
relocs = subprocess.run(["readelf", "-rW", rt_path], capture_output=True, text=True, check=True).stdout
offset = int(next(line.split()[0] for line in relocs.splitlines() if re.search(r"\bsched_yield\b", line)), 16)
slot = ctypes.c_void_p.from_address(rt_lo + offset).value  # where TVM's pool yields to
model_lo, model_hi, _ = mapped(sys.argv[1].rsplit("/", 1)[1])
flag = ctypes.c_int.in_dll(ctypes.CDLL(sys.argv[1]), "tvmnet_yield_patched").value
print(int(model_lo <= slot < model_hi), flag)
"""


@pytest.mark.e2e
def test_the_library_gives_tvms_runtime_a_yield_that_sleeps_when_contended(x86_small):
    """TVM's pool waits by calling sched_yield; on an EEVDF kernel that queues its threads behind a
    busy neighbour for 40-120 ms (build/policy.c). Once loaded, the model library's own yield
    stands in libtvm_runtime's PLT slot for sched_yield; TVMNET_YIELD=os leaves TVM's as it is."""
    import os
    import subprocess
    import sys

    lib = str(x86_small / "model.so")
    env = {k: v for k, v in os.environ.items() if k != "TVMNET_YIELD"}
    for extra, expected in (({}, ["1", "1"]), ({"TVMNET_YIELD": "os"}, ["0", "0"])):
        out = subprocess.run(
            [sys.executable, "-c", _YIELD_PROBE, lib], env={**env, **extra}, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == expected, (extra, out.stdout)
