#!/usr/bin/env bash
# The prepared GPU run of issue 14: GPU kernel tests (one autotune config per kernel), the AdamW and LoRA benchmarks
# at their target shapes, one real `tune` epoch on CUDA; results, logs and a summary in bench/results/.
# Under 8 minutes on an H100-class GPU; without CUDA the same steps run under Triton's interpreter on small shapes.
#
#   bench/gpu.sh [--out DIR] [--steps tests,adamw,lora,tune]      (same as: automl-ft bench gpu ...)
#
# Exit status: 0 when every step passed, 1 when one failed or timed out (the others still ran).
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" -m automl_ft.bench.bench_gpu "$@"
