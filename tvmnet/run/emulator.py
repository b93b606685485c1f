"""An emulated aarch64 board: TVM's RPC server under qemu-user, for users without a board and for tests.

No VM, chroot or binfmt_misc: ``qemu-aarch64-static`` runs an arm64 CPython 3.11 (Debian packages
unpacked into ``sysroot/``) with the aarch64 wheels of apache-tvm (``site/``, runtime only). The
server's child processes are spawned with ``sys.executable``, so qemu's ``-0`` makes that a host shell
wrapper (``sysroot/usr/bin/python``) that re-enters qemu. ``QEMU_CPU`` is the board's CPU model, so
code using instructions the board lacks fails as on the board. Everything lives under
``CACHE_DIR/emulator``: ``run/<board>-<port>.json`` records a server, ``logs/`` holds its output.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from tvmnet.core.errors import DeviceError, ToolchainError, UsageError
from tvmnet.core.paths import CACHE_DIR, TARGETS_DIR
from tvmnet.core.targets import load_target, preset_names
from tvmnet.core.threads import RUN_ENV

QEMU = "qemu-aarch64-static"
DEBS = ["python3.11-minimal", "libpython3.11-stdlib", "libstdc++6"]  # apt adds libc6, libssl3, libffi8...
WHEELS = ["numpy", "ml_dtypes", "typing_extensions", "psutil", "cloudpickle"]
PLATFORMS = ["manylinux_2_28_aarch64", "manylinux_2_24_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64"]
_CHILDREN: dict = {}  # pid -> Popen of servers this process started, reaped by stop()


def cache_dir() -> Path:
    return CACHE_DIR / "emulator"


def boards() -> list:
    """Presets qemu-user can emulate: aarch64 with a ``qemu_cpu`` (aliases of such presets count)."""

    def raw(name):
        return json.loads((TARGETS_DIR / f"{name}.json").read_text())

    found = []
    for name in preset_names():
        try:
            data = raw(name)
            data = raw(data["alias_of"]) if "alias_of" in data else data
        except (OSError, ValueError):
            continue
        if data.get("arch") == "aarch64" and data.get("qemu_cpu"):
            found.append(name)
    return found


def _board(board: str):
    if board not in boards():
        raise UsageError(f"cannot emulate board {board!r}; choose one of {', '.join(boards())} (--board)")
    return load_target(board)


def _versions() -> dict:
    try:
        return {p: importlib.metadata.version(p) for p in ("apache-tvm", "apache-tvm-ffi")}
    except importlib.metadata.PackageNotFoundError as err:
        raise ToolchainError(
            f"{err.name} is not installed on this host; install it with `pip install apache-tvm==0.27.0.post1`"
        ) from err


def _run(cmd: list, log: Path, what: str, **kw) -> None:
    """Run a set-up step, appending its output to ``log``; fail with the step's last output line."""
    with log.open("a") as fh:
        fh.write(f"$ {shlex.join(map(str, cmd))}\n")
        fh.flush()
        res = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
    if res.returncode != 0:
        last = ([ln for ln in log.read_text().splitlines() if ln.strip()] or ["no output"])[-1]
        raise ToolchainError(
            f"emulator set-up failed to {what} (exit {res.returncode}: {last.strip()}); "
            f"full output in {log}; fix that and run it again"
        )


def _apt_sysroot(root: Path, log: Path) -> None:
    """Unpack arm64 Debian packages into ``root/sysroot`` through a private apt (the host's dpkg is untouched)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ToolchainError(
            "the emulator fetches its arm64 userland with apt-get and dpkg-deb, which this host "
            "lacks; run it on Debian 12 (bookworm) or derivatives with Debian sources"
        )
    apt = root / "apt"
    for d in ("lists/partial", "cache/archives/partial", "state"):
        (apt / d).mkdir(parents=True, exist_ok=True)
    (apt / "status").touch()
    conf = apt / "apt.conf"
    conf.write_text(
        "\n".join(
            [
                'APT::Architecture "arm64";',
                'APT::Architectures { "arm64"; };',
                'APT::Install-Recommends "false";',
                'APT::Sandbox::User "root";',
                'Acquire::Languages "none";',
                f'Dir::State "{apt}/state";',
                f'Dir::State::Lists "{apt}/lists";',
                f'Dir::State::status "{apt}/status";',
                f'Dir::Cache "{apt}/cache";',
            ]
        )
        + "\n"
    )
    env = {**os.environ, "APT_CONFIG": str(conf), "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "-q", "update"], log, "fetch the arm64 package lists (apt-get update)", env=env)
    _run(
        ["apt-get", "-q", "-y", "install", "--download-only", *DEBS],
        log,
        f"download {' '.join(DEBS)} for arm64",
        env=env,
    )
    for deb in sorted((apt / "cache" / "archives").glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root / "sysroot")], log, f"unpack {deb.name}")
    shutil.rmtree(apt)


def _pip_site(root: Path, versions: dict, log: Path) -> None:
    """Install the aarch64 wheels into ``root/site`` and drop the compiler library the device never needs."""
    site = root / "site"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "--target",
        str(site),
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
    ]
    cmd += [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd += [f"{p}=={v}" for p, v in versions.items()] + WHEELS
    _run(cmd, log, "download the aarch64 wheels of apache-tvm (pip)")
    for lib in site.glob("tvm/lib/libtvm_compiler.*"):
        lib.unlink()


def _write_wrapper(root: Path) -> Path:
    """The board's ``python``: a host script that runs the arm64 CPython under qemu (``-0`` sets sys.executable)."""
    sysroot, wrapper = root / "sysroot", root / "sysroot" / "usr" / "bin" / "python"
    q = shlex.quote
    wrapper.write_text(
        "#!/bin/sh\n# aarch64 CPython under qemu-user; QEMU_CPU selects the CPU model.\n"
        f"export PYTHONPATH={q(str(root / 'site'))} PYTHONNOUSERSITE=1 TVM_USE_RUNTIME_LIB=1\n"
        "unset PYTHONHOME LD_LIBRARY_PATH LD_PRELOAD TVM_LIBRARY_PATH\n"
        f'exec {QEMU} -L {q(str(sysroot))} -0 {q(str(wrapper))} {q(str(sysroot / "usr/bin/python3.11"))} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def _size_mb(path: Path) -> float:
    return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def prepare(board: str = "rpi4", say: Callable = print) -> Path:
    """Set up (once) the arm64 Python userland and TVM runtime wheels; returns the cache dir.

    A marker written last (with the host's TVM versions) makes a half-finished or outdated set-up redo.
    """
    spec = _board(board)
    if shutil.which(QEMU) is None:
        raise ToolchainError(
            f"emulating {board} needs {QEMU}, which is not on PATH; install it with `apt-get install qemu-user-static`"
        )
    root, versions = cache_dir(), _versions()
    marker = root / "ready.json"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and json.loads(marker.read_text()) == versions:
            return root
        start = time.monotonic()
        marker.unlink(missing_ok=True)
        for d in ("apt", "sysroot", "site"):
            shutil.rmtree(root / d, ignore_errors=True)
        log = root / "prepare.log"
        log.write_text("")
        say(f"emulator: setting up an arm64 Python 3.11 userland in {root} (once; log {log})")
        say(f"emulator: [1/3] arm64 Debian packages via a private apt ({', '.join(DEBS)} and dependencies)")
        _apt_sysroot(root, log)
        say(
            f"emulator: [2/3] aarch64 wheels: apache-tvm {versions['apache-tvm']} (runtime only), "
            f"apache-tvm-ffi {versions['apache-tvm-ffi']}, {', '.join(WHEELS)}"
        )
        _pip_site(root, versions, log)
        wrapper = _write_wrapper(root)
        say(f"emulator: [3/3] checking that the emulated Python imports tvm (QEMU_CPU={spec.qemu_cpu})")
        _run(
            [wrapper, "-c", "import tvm; assert tvm.cpu().exist; print('tvm', tvm.__version__)"],
            log,
            "import tvm under emulation",
            env={**os.environ, "QEMU_CPU": spec.qemu_cpu},
            timeout=300,
        )
        marker.write_text(json.dumps(versions))
        say(f"emulator: ready in {time.monotonic() - start:.0f} s, {_size_mb(root):.0f} MB in {root}")
    return root


def server_command(board: str, host: str, port: int, tracker: Optional[str] = None, key: Optional[str] = None) -> list:
    """The argv ``start()`` runs: the RPC server under the board's qemu CPU model (self-contained: uses ``env``)."""
    spec = _board(board)
    wrapper = cache_dir() / "sysroot" / "usr" / "bin" / "python"
    argv = [
        "env",
        f"QEMU_CPU={spec.qemu_cpu}",
        *(f"{k}={v}" for k, v in RUN_ENV.items()),  # tvmnet's thread policy for the models it runs
        str(wrapper),
        "-m",
        "tvm.exec.rpc_server",
        "--host",
        host,
        "--port",
        str(port),
        "--port-end",
        str(port + 1),
    ]
    if tracker:
        argv += ["--tracker", tracker, "--key", key or board]
    return argv


def _record(board: str, port: int) -> Path:
    return cache_dir() / "run" / f"{board}-{port}.json"


def _alive(pid: int) -> bool:
    """Whether ``pid`` is still our RPC server (not a zombie, not a recycled pid)."""
    try:
        return b"tvm.exec.rpc_server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _kill(pid: int) -> bool:
    """Terminate the server's process group (SIGTERM, then SIGKILL after 5 s); whether it was alive."""
    was_alive = _alive(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _alive(pid):
            break
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    if pid in _CHILDREN:
        _CHILDREN.pop(pid).wait()
    return was_alive


def _answers(host: str, port, probe: bytes = b"\0\0\0\0") -> bool:
    """Whether ``host:port`` accepts connections. The default probe is a wrong RPC magic, on which the
    server just closes the connection and goes on listening."""
    try:
        with socket.create_connection(("127.0.0.1" if host in ("0.0.0.0", "") else host, int(port)), timeout=2) as s:
            s.sendall(probe)
        return True
    except OSError:
        return False


def _registered(tracker: str, key: str, port: int) -> bool:
    """Whether the tracker lists a server with ``key`` on ``port`` (one short query, no retries)."""
    from tvm.rpc import base

    thost, tport = tracker.rsplit(":", 1)
    try:
        with socket.create_connection((thost, int(tport)), timeout=2) as sock:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
                return False
            base.sendjson(sock, [base.TrackerCode.SUMMARY])
            code, info = base.recvjson(sock)
    except (OSError, ValueError):
        return False
    return code == base.TrackerCode.SUCCESS and any(
        s.get("key") == f"server:{key}" and s.get("addr", [None, None])[1] == port for s in info["server_info"]
    )


def _summary(rec: dict, note: str = "") -> str:
    where = (
        f"registered at tracker {rec['tracker']} under key {rec['key']} (use --tracker {rec['tracker']} "
        f"--key {rec['key']})"
        if rec.get("tracker")
        else f"use it with --rpc {rec['host']}:{rec['port']}"
    )
    exposed = (
        ""
        if rec["host"] in ("127.0.0.1", "localhost", "::1")
        else (f" It is bound to {rec['host']}: anyone who can reach port {rec['port']} can run code as this user.")
    )
    return (
        f"{note}Emulated {rec['board']} (qemu-user, CPU {rec['qemu_cpu']}) serves TVM RPC at "
        f"{rec['host']}:{rec['port']} (pid {rec['pid']}, log {rec['log']}); {where}; stop it with "
        f"`tvmnet emulator stop --board {rec['board']} --port {rec['port']}`. Timings from an emulated board "
        "are emulation times (30-45x slower than native), not board times. The server runs any library it is "
        f"sent, so it binds to loopback unless told otherwise (--host).{exposed}"
    )


def start(
    board: str = "rpi4",
    host: str = "127.0.0.1",
    port: int = 9090,
    tracker: Optional[str] = None,
    key: Optional[str] = None,
    say: Callable = print,
    wait: float = 60.0,
) -> str:
    """Start the emulated board's RPC server as a daemon (own session); returns a human summary."""
    spec = _board(board)
    if tracker and (":" not in tracker or not tracker.rsplit(":", 1)[1].isdigit()):
        raise UsageError(f"tracker {tracker!r} is not HOST:PORT; write e.g. --tracker 127.0.0.1:9190")
    if key and not tracker:
        raise UsageError(f"--key {key} only applies with --tracker HOST:PORT; drop it or add a tracker")
    if tracker and not _answers(*tracker.rsplit(":", 1), probe=b""):
        raise DeviceError(
            f"tracker {tracker} does not answer; start one (`python -m tvm.exec.rpc_tracker "
            f"--host 0.0.0.0 --port {tracker.rsplit(':', 1)[1]}`) or fix --tracker"
        )
    rec_path = _record(board, port)
    if rec_path.is_file():
        rec = json.loads(rec_path.read_text())
        if _alive(rec["pid"]):
            return _summary(rec, "Already running. ")
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as err:
        raise DeviceError(
            f"cannot serve on {host}:{port} ({err.strerror}); choose another --port, or see "
            "`tvmnet emulator status` for emulators already running"
        ) from err
    root = prepare(board, say)
    log = root / "logs" / f"{board}-{port}.log"
    log.parent.mkdir(exist_ok=True)
    rec_path.parent.mkdir(exist_ok=True)
    began = time.monotonic()
    with log.open("a") as fh:
        proc = subprocess.Popen(
            server_command(board, host, port, tracker, key),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=root,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    rec = {
        "board": board,
        "host": host,
        "port": port,
        "pid": proc.pid,
        "qemu_cpu": spec.qemu_cpu,
        "log": str(log),
        "tracker": tracker,
        "key": (key or board) if tracker else None,
        "started": time.time(),
    }
    rec_path.write_text(json.dumps(rec))
    while not (_registered(tracker, rec["key"], port) if tracker else _answers(host, port)):
        if proc.poll() is not None or time.monotonic() - began > wait:
            why = f"exited with {proc.returncode}" if proc.returncode is not None else f"not ready after {wait:.0f} s"
            _kill(proc.pid)
            rec_path.unlink(missing_ok=True)
            tail = ([ln for ln in log.read_text().splitlines() if ln.strip()] or ["no output"])[-1].strip()
            raise DeviceError(f"the emulated {board} RPC server {why} (last log line: {tail}); see {log}")
        time.sleep(0.5 if tracker else 0.2)
    say(f"emulator: {board} RPC server up in {time.monotonic() - began:.1f} s")
    return _summary(rec)


def stop(board: str = "rpi4", port: int = 9090) -> str:
    """Stop the emulator of ``board`` on ``port`` (its whole process group); returns a message."""
    _board(board)
    rec_path = _record(board, port)
    if not rec_path.is_file():
        return f"no emulated {board} is recorded on port {port}; `tvmnet emulator status` lists the running ones"
    pid = json.loads(rec_path.read_text())["pid"]
    was_alive = _kill(pid)
    rec_path.unlink(missing_ok=True)
    return (
        f"stopped the emulated {board} on port {port} (pid {pid})"
        if was_alive
        else f"the emulated {board} on port {port} (pid {pid}) had already exited; its record is removed"
    )


def status() -> str:
    """One line per recorded emulator: board, address, pid, whether it is alive, its log."""
    recs = [json.loads(p.read_text()) for p in sorted((cache_dir() / "run").glob("*.json"))]
    if not recs:
        return "no emulator is running; start one with `tvmnet emulator start --board rpi4`"
    lines = []
    for r in recs:
        state = "alive" if _alive(r["pid"]) else "dead (remove with `tvmnet emulator stop`)"
        via = f", tracker {r['tracker']} key {r['key']}" if r.get("tracker") else ""
        lines.append(f"{r['board']} at {r['host']}:{r['port']} (pid {r['pid']}, {state}{via}, log {r['log']})")
    return "\n".join(lines)
