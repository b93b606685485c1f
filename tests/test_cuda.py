"""CUDA: builds here (nvcc is in the image); running needs an NVIDIA GPU (tests marked gpu)."""

import ctypes
import json
import shutil

import pytest
from conftest import run_cli


def gpu_available() -> bool:
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed")
needs_gpu = pytest.mark.skipif(not gpu_available(), reason="no NVIDIA GPU on this machine")


@pytest.fixture(scope="module")
def cuda_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda") / "mnet-sm80"
    res = run_cli("compile", "--target", "cuda-sm80", "--alpha", "0.25", "--resolution", "64", "-o", out)
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.e2e
@needs_nvcc
def test_cuda_build_exports_a_loadable_library(cuda_artifact):
    import tvm  # noqa: F401  (loads libtvm_ffi globally, as the runtime does)

    meta = json.loads((cuda_artifact / "metadata.json").read_text())
    assert meta["target"]["device"] == "cuda" and meta["target"]["target"]["arch"] == "sm_80"
    assert meta["target"]["host"]["kind"] == "llvm"
    lib = cuda_artifact / "model.so"
    data = lib.read_bytes()
    assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == 62  # x86-64 host code
    assert b"cuda" in data  # the embedded device module is tagged for TVM's CUDA loader
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)  # the host library links and loads


@pytest.mark.e2e
@pytest.mark.slow  # extended run (`pytest -m slow`, run by CI after the default one): ~45 s
@needs_nvcc
def test_sm90_preset_and_alias_build(tmp_path):
    res = run_cli("compile", "--target", "cuda", "--alpha", "0.25", "--resolution", "32", "-o", tmp_path / "c")
    assert res.returncode == 0, res.stderr
    meta = json.loads((tmp_path / "c" / "metadata.json").read_text())
    assert meta["target"]["name"] == "cuda-sm90" and meta["target"]["target"]["arch"] == "sm_90"


@pytest.mark.e2e
@pytest.mark.skipif(gpu_available(), reason="checks the no-GPU errors")
@needs_nvcc
def test_without_gpu_run_bench_tune_say_so(cuda_artifact):
    for cmd in (
        ["validate", cuda_artifact],
        ["bench", cuda_artifact],
        ["tune", "--target", "cuda-sm80", "--alpha", "0.25", "--resolution", "32", "--trials", "2"],
    ):
        res = run_cli(*cmd)
        assert res.returncode == 8, res.stderr
        lines = [l for l in res.stderr.splitlines() if l.startswith("tvmnet: error:")]
        assert len(lines) == 1 and "GPU" in lines[0] and "Traceback" not in res.stderr


@pytest.mark.gpu
@needs_gpu
def test_validate_on_gpu(cuda_artifact):
    res = run_cli("validate", cuda_artifact, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["ok"]


@pytest.mark.gpu
@needs_gpu
def test_bench_on_gpu(cuda_artifact):
    res = run_cli("bench", cuda_artifact, "--rounds", "2", "--runs", "10")
    assert res.returncode == 0, res.stderr
    assert "PyTorch eager" in res.stdout
