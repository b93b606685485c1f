"""Where a board is: an RPC server, or a tracker and a device key (``--rpc``, ``--tracker``,
``--key``), and the two guards every connection to one goes through: a TCP probe that fails
fast with the fix, and a deadline on blocking TVM calls."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Optional

from tvmnet.core.errors import DeviceError, UsageError, err_line


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
    return Endpoint(
        rpc=getattr(args, "rpc", None),
        tracker=getattr(args, "tracker", None),
        key=getattr(args, "key", None),
        timeout=getattr(args, "connect_timeout", 30.0),
    )


def probe(host: str, port: int, timeout: float, what: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 10.0)):
            pass
    except OSError as err:
        raise DeviceError(
            f"cannot reach {what} {host}:{port} ({err.strerror or err}); check the address and that "
            f"the server runs there (`tvmnet emulator start` for an emulated board)"
        ) from err


def with_deadline(fn, timeout: float, what: str):
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
        raise DeviceError(
            f"{what} did not answer within {timeout:g} s (busy with another session, or hung); "
            "retry later or raise --connect-timeout"
        )
    if "error" in box:
        err = box["error"]
        raise DeviceError(f"{what} failed: {err_line(err)}") from err
    return box["value"]
