#!/usr/bin/env bash
# Run HERE (the build machine, no GPU needed): prepares what the GPU check carries to an
# NVIDIA machine that has Python 3.12 + PyTorch (CUDA) but no package registry.
#   .device/site/   the TVM runtime (host's apache-tvm package without the 250 MB compiler
#                   library; py3-none, so it serves Python 3.12) + apache-tvm-ffi cp312
#   .device/build/  CUDA artifacts of MobileNet 1.0-224 and 0.5-224, batch 1 and 8
# The device tool carries at most 64 MiB per call: carry .device/site plus one model's
# artifacts per call (see scripts/gpu_check.sh). `.device/` is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${TARGET:-cuda-sm90}"
DEV=.device
mkdir -p "$DEV/site" "$DEV/build" "$DEV/wheels"

echo "[gpu-prepare] TVM runtime for the device"
SRC="$(python3 -c 'import tvm, os; print(os.path.dirname(tvm.__file__))')"
rsync -a --delete --exclude libtvm_compiler.so --exclude __pycache__ --exclude 3rdparty --exclude include \
      --exclude src --exclude web --exclude cmake "$SRC/" "$DEV/site/tvm/"
FFI="$(python3 -c 'import importlib.metadata as m; print(m.version("apache-tvm-ffi"))')"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    "apache-tvm-ffi==$FFI" -d "$DEV/wheels"
rm -rf "$DEV/site/tvm_ffi"
python3 -m zipfile -e "$DEV"/wheels/apache_tvm_ffi-*cp312*.whl "$DEV/site/"

echo "[gpu-prepare] CUDA artifacts for $TARGET"
for alpha in 1.0 0.5; do
    for batch in 1 8; do
        python3 -m tvmnet compile --target "$TARGET" --alpha "$alpha" --batch "$batch" \
            -o "$DEV/build/mnet-$alpha-b$batch"
    done
done
du -sh "$DEV/site" "$DEV"/build/*
