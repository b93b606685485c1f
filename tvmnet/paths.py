"""Where tvmnet's data folders live (the repository root: targets/, tuning_logs/)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("TVMNET_HOME", Path(__file__).resolve().parent.parent))
TARGETS_DIR = ROOT / "targets"
TUNING_LOGS_DIR = Path(os.environ.get("TVMNET_TUNING_LOGS", ROOT / "tuning_logs"))   # the shipped logs
CACHE_DIR = Path(os.environ.get("TVMNET_CACHE", Path.home() / ".cache" / "tvmnet"))
