"""Where tvmnet's data folders live (the repository root: targets/, tuning_logs/), and file digests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ROOT = Path(os.environ.get("TVMNET_HOME", Path(__file__).resolve().parents[2]))
TARGETS_DIR = ROOT / "targets"
TUNING_LOGS_DIR = Path(os.environ.get("TVMNET_TUNING_LOGS", ROOT / "tuning_logs"))  # the shipped logs
CACHE_DIR = Path(os.environ.get("TVMNET_CACHE", Path.home() / ".cache" / "tvmnet"))


def sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
