"""The emulated Raspberry Pi (qemu-user + TVM's RPC server): it serves, runs aarch64 code, and is listed."""

from __future__ import annotations

import numpy as np
import pytest

from tvmnet.core.errors import UsageError
from tvmnet.run import emulator

BOARD = "rpi4"


@pytest.fixture(scope="module")
def server(emulated_rpi4):
    """The run's emulated rpi4 (conftest); (host, port)."""
    return emulated_rpi4


def _add_library(path):
    """A Relax module adding two float32 vectors, cross-compiled for a Pi 4."""
    import tvm
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class Add:
        @R.function
        def main(x: R.Tensor((16,), "float32"), y: R.Tensor((16,), "float32")) -> R.Tensor((16,), "float32"):
            return R.add(x, y)

    target = tvm.target.Target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 4}
    )
    ex = tvm.compile(Add, target=target)
    ex.export_library(str(path), fcompile=tvm.support.cc.cross_compiler("aarch64-linux-gnu-g++"))


@pytest.mark.device
def test_runs_aarch64_library(server, tmp_path):
    import tvm
    from tvm import relax, rpc

    lib = tmp_path / "add.so"
    _add_library(lib)
    remote = rpc.connect(*server, session_timeout=60)
    assert remote.cpu().exist
    remote.upload(str(lib))
    dev = remote.cpu()
    vm = relax.VirtualMachine(remote.load_module("add.so"), dev)
    x, y = np.random.rand(16).astype("float32"), np.random.rand(16).astype("float32")
    out = vm["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(y, dev))
    np.testing.assert_allclose(out.numpy(), x + y, rtol=1e-6)


@pytest.mark.device
def test_status_lists_it(server):
    host, port = server
    assert f"{BOARD} at {host}:{port}" in emulator.status()
    assert "alive" in emulator.status()


@pytest.mark.device
def test_unknown_board_lists_boards():
    with pytest.raises(UsageError) as err:
        emulator.start("nosuchboard")
    msg = str(err.value)
    assert "nosuchboard" in msg and "rpi4" in msg and "rpi3b" in msg and "x86" not in msg
    assert "\n" not in msg
