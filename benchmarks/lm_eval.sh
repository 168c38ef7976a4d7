#!/usr/bin/env bash
# Zero-shot accuracy of dense, GRIFFIN and GLASS (density 0.5) on the seven offline
# lm-eval tasks, for SmolLM2-135M and Gemma-3-270m; prints the accuracy table quoted in BENCHMARKS.md.
#
#   LIMIT=100 bash benchmarks/lm_eval.sh        # first LIMIT validation docs per task
#
# The published tables were made with (23 min and 15 min, prior build included, on a shared 2-core CPU):
#   LIMIT=100 MODELS=smollm2-135m bash benchmarks/lm_eval.sh
#   LIMIT=25  MODELS=gemma3-270m  bash benchmarks/lm_eval.sh
#
# Results go to benchmarks/lm_eval_results/<model>/<method>/ (harness JSON); the
# table is rebuilt from them by benchmarks/lm_eval_table.py. One CPU thread per run:
# on a shared 2-core machine this is much faster than two contended threads.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${LIMIT:-100}
DENSITY=${DENSITY:-0.5}
PRIOR_TOKENS=${PRIOR_TOKENS:-8192}
MODELS=${MODELS:-"smollm2-135m gemma3-270m"}
METHODS=${METHODS:-"dense griffin glass-a glass"}
GLASS=${GLASS:-.venv/bin/glass}
OUT=benchmarks/lm_eval_results
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

for model in $MODELS; do
  for method in $METHODS; do
    echo "== $model $method (limit $LIMIT)" >&2
    start=$(date +%s)
    "$GLASS" lm-eval --model glass \
      --model_args "pretrained=$model,method=$method,density=$DENSITY,prior_tokens=$PRIOR_TOKENS" \
      --tasks glass_offline --limit "$LIMIT" --batch_size 8 --seed 0 \
      --output_path "$OUT/$model/$method"
    echo "== $model $method took $(( $(date +%s) - start )) s" >&2
  done
done
.venv/bin/python benchmarks/lm_eval_table.py "$OUT" > "$OUT/lm_eval_table.md"
cat "$OUT/lm_eval_table.md"
