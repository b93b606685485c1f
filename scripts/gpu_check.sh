#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool), after scripts/gpu_prepare.sh ran here:
#   run(command="bash scripts/gpu_check.sh 0.5", carry=[".device/site", ".device/build/mnet-0.5-b1", ".device/build/mnet-0.5-b8"])
#   run(command="bash scripts/gpu_check.sh 1.0", carry=[".device/site", ".device/build/mnet-1.0-b1", ".device/build/mnet-1.0-b8"])
# Validates each CUDA artifact against PyTorch on the GPU and benchmarks it against
# PyTorch CUDA eager; figures land in $OUT (bench-*.json, validate-*.json, log.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.device/site:$PWD" TVM_USE_RUNTIME_LIB=1 PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
python3 -c 'import tvm, torch; print("tvm", tvm.__version__, "cuda", tvm.cuda(0).exist, "torch", torch.__version__, torch.cuda.is_available())'
status=0
ALPHAS=("$@")
[ ${#ALPHAS[@]} -eq 0 ] && ALPHAS=(0.5 1.0)
for alpha in "${ALPHAS[@]}"; do
    for dir in .device/build/mnet-"$alpha"-b*; do
        [ -d "$dir" ] || continue
        name="$(basename "$dir")"
        echo "== $name"
        python3 -m tvmnet validate "$dir" --json > "$OUT/validate-$name.json" || status=1
        cat "$OUT/validate-$name.json"
        python3 -m tvmnet bench "$dir" --rounds 5 --runs 50 --json "$OUT/bench-$name.json" || status=1
    done
done
exit $status
