#!/usr/bin/env bash
# One-command set-up on a fresh Debian/Ubuntu machine with Python 3.11:
#   system packages: the aarch64 cross compiler (ARM builds) and qemu-user (the emulated Pi)
#   Python packages: tvmnet (editable) with its pinned TVM, TVM-FFI and torch
#   the emulated Raspberry Pi's arm64 userland (cached in ~/.cache/tvmnet/emulator)
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
PY="${PYTHON:-python3}"

if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
    echo "[setup] apt: g++-aarch64-linux-gnu qemu-user-static"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
        g++-aarch64-linux-gnu qemu-user-static
fi
command -v llvm-mca >/dev/null || { echo "[setup] apt: llvm (llvm-mca, for tvmnet/proxy/)"; $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends llvm; }

echo "[setup] pip: torch (CPU build) and tvmnet"
"$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install -q --disable-pip-version-check -e ".[dev]"

if [ "${TVMNET_SKIP_EMULATOR:-0}" != 1 ]; then
    echo "[setup] emulated Raspberry Pi userland"
    "$PY" -m tvmnet emulator prepare --board rpi4
fi
echo "[setup] done: run the tests with: $PY -m pytest"
