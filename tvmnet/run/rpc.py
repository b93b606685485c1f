"""Run artifacts on a remote board over TVM RPC (a server, or a tracker with a device key).

The board runs TVM's own RPC server (``python -m tvm.exec.rpc_server``, or
``tvmnet emulator start``); many boards under one key at a TVM tracker
(``python -m tvm.exec.rpc_tracker``) are how tuning spreads over devices. A TVM RPC server
runs whatever library it is sent: keep it on loopback or a trusted network.
"""

from __future__ import annotations

import contextlib
import time
from typing import Optional

from tvmnet.build.artifact import Artifact
from tvmnet.core.endpoint import Endpoint, parse_hostport, probe, with_deadline
from tvmnet.core.errors import ArtifactError, DeviceError, err_line
from tvmnet.run.runner import Session


def connect(endpoint: Endpoint, session_timeout: float = 0):
    """An RPC session, or DeviceError within ``endpoint.timeout`` seconds."""
    from tvm import rpc

    if endpoint.rpc:
        host, port = parse_hostport(endpoint.rpc)
        probe(host, port, endpoint.timeout, "RPC server")
        return with_deadline(
            lambda: rpc.connect(host, port, session_timeout=session_timeout),
            endpoint.timeout,
            f"RPC server {host}:{port}",
        )
    host, port = parse_hostport(endpoint.tracker, "--tracker")
    probe(host, port, endpoint.timeout, "RPC tracker")
    tracker = with_deadline(lambda: rpc.connect_tracker(host, port), endpoint.timeout, f"RPC tracker {host}:{port}")
    return with_deadline(
        lambda: tracker.request(endpoint.key, priority=1, session_timeout=session_timeout),
        endpoint.timeout,
        f"a device with key {endpoint.key!r} at tracker {host}:{port}",
    )


_ARCH_MARKERS = {"aarch64": ("aarch64", "arm64"), "x86_64": ("x86_64", "x86-64", "amd64")}
_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


def remote_arch(remote) -> Optional[str]:
    """The remote server's CPU architecture, read from its process (no upload needed)."""
    try:
        maps = bytes(remote.download("/proc/self/maps")).decode(errors="replace")
        for arch, markers in _ARCH_MARKERS.items():
            if any(f"/{m}-linux" in maps or f"/lib/{m}" in maps for m in markers):
                return arch
    except Exception:  # noqa: BLE001 - fall through to the ELF header
        pass
    try:
        head = bytes(remote.download("/proc/self/exe"))[:20]
        if head[:4] == b"\x7fELF":
            return _ELF_MACHINES.get(int.from_bytes(head[18:20], "little"))
    except Exception:  # noqa: BLE001
        pass
    return None


class RemoteSession(Session):
    where = "remote"


@contextlib.contextmanager
def open_remote(artifact: Artifact, endpoint: Endpoint, say=print, session_timeout: float = 0):
    """Upload and load the artifact on the board; refuses a wrong-architecture artifact first."""
    from tvm.runtime.vm import VirtualMachine  # runtime only: works where just the TVM runtime is installed

    if artifact.target["device"] != "cpu":
        raise ArtifactError(
            f"artifact {artifact.path} targets {artifact.target['device']}; RPC deployment is for CPU boards"
        )
    say(f"connecting to {endpoint}")
    remote = connect(endpoint, session_timeout)
    arch = remote_arch(remote)
    want = artifact.target["arch"]
    if arch is not None and arch != want:
        raise ArtifactError(
            f"artifact {artifact.path} is built for {want} but the device at {endpoint} is {arch}; "
            f"compile for the board's target (e.g. --target rpi4) -- nothing was uploaded"
        )
    t0 = time.perf_counter()
    try:
        name = f"tvmnet_{artifact.path.name}_{int(time.time())}.so"
        remote.upload(str(artifact.library), name)
        rlib = remote.load_module(name)
        dev = remote.cpu()
        vm = VirtualMachine(rlib, dev)
    except Exception as err:
        raise DeviceError(f"loading {artifact.library.name} on {endpoint} failed: {err_line(err)}") from err
    say(
        f"uploaded and loaded {artifact.library.name} ({artifact.library.stat().st_size / 1e6:.1f} MB) on "
        f"{endpoint} [{arch or 'arch unknown'}] in {time.perf_counter() - t0:.1f} s"
    )
    session = RemoteSession(vm, dev, artifact)
    session.where = f"{endpoint} ({arch or 'unknown arch'})"
    try:
        yield session
    finally:
        with contextlib.suppress(Exception):
            remote.remove(name)


def deploy(artifact: Artifact, endpoint: Endpoint, samples=4, rtol=None, atol=None, seed=0, runs=10, say=print):
    """Upload, load, validate against PyTorch on the host, and time on the device."""
    from tvmnet.run.reference import Reference
    from tvmnet.run.validate import compare, seeded_inputs

    t0 = time.perf_counter()
    reference = Reference(artifact)
    with open_remote(artifact, endpoint, say=say) as session:
        report = compare(session.run, reference, artifact, samples, rtol, atol, seed, where=session.where)
        say(f"timing on the device ({runs} repeats)")
        timing = session.time(seeded_inputs(artifact.input_shape, 1, seed)[0], number=1, repeat=runs)
        where = session.where
    return report, timing, where, time.perf_counter() - t0
