"""Run artifacts on a remote board over TVM RPC (a server, or a tracker with a device key).

The board runs TVM's own RPC server (``python -m tvm.exec.rpc_server``, or
``tvmnet emulator start``); many boards under one key at a TVM tracker
(``python -m tvm.exec.rpc_tracker``) are how tuning spreads over devices. A TVM RPC server
runs whatever library it is sent: keep it on loopback or a trusted network.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from typing import Optional

from .artifact import Artifact
from .errors import ArtifactError, DeviceError, UsageError, err_line
from .runner import Session


def parse_hostport(value: str, what: str = "--rpc") -> tuple:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{what} {value!r} is not HOST:PORT; write e.g. {what} 192.168.1.20:9090")
    return host, int(port)


@dataclass(frozen=True)
class Endpoint:
    """Where to run: a server (``rpc``) or a tracker plus device key."""

    rpc: Optional[str] = None
    tracker: Optional[str] = None
    key: Optional[str] = None
    timeout: float = 30.0

    def __post_init__(self):
        if bool(self.rpc) == bool(self.tracker):
            raise UsageError("give exactly one of --rpc HOST:PORT or --tracker HOST:PORT --key KEY")
        if self.tracker and not self.key:
            raise UsageError("--tracker needs --key (the key the boards registered under)")
        parse_hostport(self.rpc or self.tracker, "--rpc" if self.rpc else "--tracker")
        if self.timeout <= 0:
            raise UsageError(f"--connect-timeout {self.timeout} must be positive")

    def __str__(self):
        return self.rpc if self.rpc else f"{self.tracker} (key {self.key})"


def endpoint_from_args(args) -> Endpoint:
    return Endpoint(rpc=getattr(args, "rpc", None), tracker=getattr(args, "tracker", None),
                    key=getattr(args, "key", None), timeout=getattr(args, "connect_timeout", 30.0))


def _probe(host: str, port: int, timeout: float, what: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 10.0)):
            pass
    except OSError as err:
        raise DeviceError(f"cannot reach {what} {host}:{port} ({err.strerror or err}); check the address and that "
                          f"the server runs there (`tvmnet emulator start` for an emulated board)") from err


def _with_deadline(fn, timeout: float, what: str):
    """Run a blocking TVM call in a thread; give up after ``timeout`` seconds."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised below
            box["error"] = err

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise DeviceError(f"{what} did not answer within {timeout:g} s (busy with another session, or hung); "
                          "retry later or raise --connect-timeout")
    if "error" in box:
        err = box["error"]
        raise DeviceError(f"{what} failed: {err_line(err)}") from err
    return box["value"]


def connect(endpoint: Endpoint, session_timeout: float = 0):
    """An RPC session, or DeviceError within ``endpoint.timeout`` seconds."""
    from tvm import rpc

    if endpoint.rpc:
        host, port = parse_hostport(endpoint.rpc)
        _probe(host, port, endpoint.timeout, "RPC server")
        return _with_deadline(lambda: rpc.connect(host, port, session_timeout=session_timeout), endpoint.timeout,
                              f"RPC server {host}:{port}")
    host, port = parse_hostport(endpoint.tracker, "--tracker")
    _probe(host, port, endpoint.timeout, "RPC tracker")
    tracker = _with_deadline(lambda: rpc.connect_tracker(host, port), endpoint.timeout, f"RPC tracker {host}:{port}")
    return _with_deadline(lambda: tracker.request(endpoint.key, priority=1, session_timeout=session_timeout),
                          endpoint.timeout, f"a device with key {endpoint.key!r} at tracker {host}:{port}")


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
        raise ArtifactError(f"artifact {artifact.path} targets {artifact.target['device']}; RPC deployment is for CPU boards")
    say(f"connecting to {endpoint}")
    remote = connect(endpoint, session_timeout)
    arch = remote_arch(remote)
    want = artifact.target["arch"]
    if arch is not None and arch != want:
        raise ArtifactError(f"artifact {artifact.path} is built for {want} but the device at {endpoint} is {arch}; "
                            f"compile for the board's target (e.g. --target rpi4) -- nothing was uploaded")
    t0 = time.perf_counter()
    try:
        name = f"tvmnet_{artifact.path.name}_{int(time.time())}.so"
        remote.upload(str(artifact.library), name)
        rlib = remote.load_module(name)
        dev = remote.cpu()
        vm = VirtualMachine(rlib, dev)
    except Exception as err:
        raise DeviceError(f"loading {artifact.library.name} on {endpoint} failed: "
                          f"{err_line(err)}") from err
    say(f"uploaded and loaded {artifact.library.name} ({artifact.library.stat().st_size / 1e6:.1f} MB) on "
        f"{endpoint} [{arch or 'arch unknown'}] in {time.perf_counter() - t0:.1f} s")
    session = RemoteSession(vm, dev, artifact)
    session.where = f"{endpoint} ({arch or 'unknown arch'})"
    try:
        yield session
    finally:
        with contextlib.suppress(Exception):
            remote.remove(name)


def deploy(artifact: Artifact, endpoint: Endpoint, samples=4, rtol=1e-4, atol=1e-4, seed=0, runs=10, say=print):
    """Upload, load, validate against PyTorch on the host, and time on the device."""
    from .reference import Reference
    from .validate import compare, seeded_inputs

    t0 = time.perf_counter()
    reference = Reference(artifact)
    with open_remote(artifact, endpoint, say=say) as session:
        report = compare(session.run, reference, artifact, samples, rtol, atol, seed, where=session.where)
        say(f"timing on the device ({runs} repeats)")
        timing = session.time(seeded_inputs(artifact.input_shape, 1, seed)[0], number=1, repeat=runs)
        where = session.where
    return report, timing, where, time.perf_counter() - t0


def _host_random_fill(arg) -> None:
    import numpy as np

    arg.copyfrom(np.random.uniform(-1, 1, size=[int(d) for d in arg.shape]).astype(str(arg.dtype)))


def alloc_argument_from_host(session, device, args_info, alloc_repeat):
    """MetaSchedule's argument allocation, filled from the host: a board with only the TVM
    runtime lacks ``tvm.contrib.random.random_fill_for_measure``, which the default uses."""
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    return alloc_argument_common(_host_random_fill, device, args_info, alloc_repeat)


def create_session_fail_fast(rpc_config):
    """MetaSchedule session factory that fails at once when no board with the key is
    registered (the default waits for one until each candidate's timeout, so a dead board
    costs ``timeout`` seconds per candidate)."""
    rpc_config.count_num_servers(allow_missing=False)
    # a board that dies after the count leaves the request pending for ever: bound it
    return _with_deadline(rpc_config.connect_server, float(rpc_config.session_timeout_sec),
                          f"a device with key {rpc_config.tracker_key!r}")


def make_rpc_runner(cfg: Endpoint, evaluator, timeout: float):
    """MetaSchedule runner measuring on the boards registered under a tracker key."""
    from tvm.s_tir import meta_schedule as ms

    if not cfg.tracker:
        raise UsageError("tuning over RPC needs a tracker: start `python -m tvm.exec.rpc_tracker`, register the "
                         "boards with --tracker/--key, then pass --tracker HOST:PORT --key KEY")
    host, port = parse_hostport(cfg.tracker, "--tracker")
    _probe(host, port, cfg.timeout, "RPC tracker")
    rpc_config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=cfg.key,
                                     session_priority=1, session_timeout_sec=int(max(timeout, 10)))
    if _with_deadline(rpc_config.count_num_servers, cfg.timeout, f"RPC tracker {cfg.tracker}") == 0:
        raise DeviceError(f"no board is registered under key {cfg.key!r} at tracker {cfg.tracker}; start one with "
                          f"`python -m tvm.exec.rpc_server --tracker {cfg.tracker} --key {cfg.key}` (or "
                          f"`tvmnet emulator start --tracker {cfg.tracker} --key {cfg.key}`)")
    return ms.runner.RPCRunner(rpc_config=rpc_config, evaluator_config=evaluator, max_workers=1,
                               f_alloc_argument=alloc_argument_from_host, f_create_session=create_session_fail_fast)
