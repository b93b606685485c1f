"""Busy neighbours for ``tvmnet bench --busy N``: N processes that spin on a core each, so that
every engine is timed under the load a deployed model meets (a camera loop beside it on a Pi,
other requests on a server).

They never outlive the bench: each ends by itself after its deadline or as soon as its parent
is gone (checked every few milliseconds), and ``busy_neighbours`` ends them on the way out,
whatever happened (an error, Ctrl-C)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Iterator, List

# spins until the deadline or until its parent (the bench) is gone
_SPIN = """
import os, sys, time
parent, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while time.monotonic() < end and os.getppid() == parent:
    for _ in range(20000):
        pass
"""


@contextlib.contextmanager
def busy_neighbours(n: int, max_seconds: float = 3600.0) -> Iterator[List[subprocess.Popen]]:
    """``n`` busy-loop processes for the duration of the block (each at most ``max_seconds``)."""
    procs: List[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _SPIN, str(os.getpid()), str(max_seconds)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
