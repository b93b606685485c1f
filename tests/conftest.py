"""Shared fixtures. Tests are grouped by marker: unit (no build), e2e (local TVM build and
run), tune (a real tiny MetaSchedule run), device (an RPC device: the emulated Pi), gpu."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_class() -> str:
    """This machine's class key for the `x86` preset (names its database directory)."""
    from tvmnet.core.targets import load_target

    return load_target("x86").machine_class()["key"]


def run_cli(*args, cwd=None, env=None, timeout=900):
    """Run the real `tvmnet` command line in a subprocess; returns CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tvmnet", *map(str, args)],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def x86_small(tmp_path_factory):
    """An untuned x86 artifact of MobileNet 0.25-96, built once for the session."""
    out = tmp_path_factory.mktemp("art") / "mnet-025-96"
    res = run_cli("compile", "--target", "x86", "--alpha", "0.25", "--resolution", "96", "-o", out, "--no-tuning-log")
    assert res.returncode == 0, res.stderr
    return out


TINY_TUNE = ["--target", "x86", "--alpha", "0.25", "--resolution", "32", "--population", "16", "--no-progress"]


@pytest.fixture(scope="session")
def tuned(tmp_path_factory):
    """A tiny real cold tune (no warm start) of the GEMM kernels of MobileNet 0.25-32 into
    <logs>/<this machine's class>; returns (logs root, the finished process)."""
    logs = tmp_path_factory.mktemp("logs")
    res = run_cli(
        "tune",
        *TINY_TUNE,
        "--kernels",
        "matmul",
        "--trials",
        "12",
        "--per-task",
        "2",
        "--log-dir",
        logs,
        "--no-warm-start",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return logs, res


@pytest.fixture(scope="session")
def emulated_rpi4():
    """One emulated Pi 4 (qemu-user, TVM's RPC server) on a free loopback port for the whole run,
    shared by the modules that only talk to it (an emulator start takes ~18 s); (host, port)."""
    from tvmnet.run import emulator

    port = free_port()
    emulator.prepare("rpi4")
    emulator.start("rpi4", host="127.0.0.1", port=port)
    yield "127.0.0.1", port
    emulator.stop("rpi4", port)
