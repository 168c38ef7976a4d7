#!/usr/bin/env bash
# The device story end to end on a GPU machine, in under 8 minutes on one GPU:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# 1. the CUDA tests (tests/test_cuda.py; skipped on machines without CUDA);
# 2. `glass generate` in bfloat16 on the GPU, eager and compiled (CUDA graphs);
# 3. a short `glass eval` in bfloat16 (dense, griffin, glass);
# 4. `glass bench` at density 0.5, eager (glass, and glass-linear and glass-refresh-linear, whose
#    selections solve one k x k system per block) and compiled, with the device name and peak memory;
# 5. a 2-process torchrun prior when two GPUs exist.
# Every step's output lands in OUT_DIR (default gpu-check/); the bench records are JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
PY=${PY:-.venv/bin/python}
GLASS=${GLASS:-.venv/bin/glass}
model=${MODEL:-smollm2-135m}
step() { echo "== $*" | tee -a "$out/log.txt"; }

$PY - <<'PYEOF' | tee "$out/device.txt"
import torch
assert torch.cuda.is_available(), "no CUDA device visible: this script checks the GPU path"
for i in range(torch.cuda.device_count()):
    print(f"cuda:{i}", torch.cuda.get_device_name(i))
PYEOF

step "default prior, sampled on the GPU (skipped when cached)"
$GLASS prior "$model" --device cuda 2>&1 | tail -n 3 | tee "$out/prior.txt"
step "CUDA tests"
$PY -m pytest -q tests/test_cuda.py tests/test_dtypes.py 2>&1 | tee "$out/tests.txt"
step "generate, bfloat16, eager and compiled"
$GLASS generate "$model" "Why is the sky blue?" --device cuda --dtype bfloat16 --method glass --density 0.5 \
    --max-new-tokens 64 2>&1 | tee "$out/generate.txt"
$GLASS generate "$model" "Why is the sky blue?" --device cuda --dtype bfloat16 --method glass --density 0.5 \
    --max-new-tokens 64 --compile 2>&1 | tee "$out/generate-compiled.txt"
step "eval, bfloat16"
$GLASS eval "$model" --device cuda --dtype bfloat16 --methods dense,griffin,glass-a,glass --prompt-tokens 8,32 \
    --prompts 8 --gen-tokens 64 --no-plots --out "$out/eval" 2>&1 | tail -n 30 | tee "$out/eval.txt"
step "bench, density 0.5, eager and compiled"
$GLASS bench "$model" --device cuda --dtype bfloat16 --density 0.5 --prompt-tokens 16 --gen-tokens 128 \
    --repeats 3 --json --quiet --method glass,glass-linear,glass-refresh-linear,glass-refresh-linear:refresh-growth=2 \
    > "$out/bench-eager.json"
$GLASS bench "$model" --device cuda --dtype bfloat16 --density 0.5 --prompt-tokens 16 --gen-tokens 128 \
    --repeats 3 --json --quiet --compile > "$out/bench-compiled.json"
if [ "$($PY -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    step "torchrun prior on 2 GPUs"
    $PY -m torch.distributed.run --nproc_per_node 2 -m glass_llm prior "$model" --device cuda --tokens 2048 \
        -o "$out/prior-2gpu.safetensors" 2>&1 | tail -n 5 | tee "$out/prior-2gpu.txt"
fi
step "done: results in $out/"
