#!/usr/bin/env bash
# Run the benchmark suite at 1 and 2 threads and print Markdown tables for docs/BENCHMARKS.md.
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for this command only (they force a slower
# OpenBLAS kernel on this machine); the tests and CI keep the environment as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.benchmarks/run}
mkdir -p "$out"
# fastcnn and torch run in separate processes (each keeps its own OpenMP settings), paired
# and alternating: fastcnn, torch, torch, fastcnn; the report takes the median of the runs.
run() {  # threads selection tag; torch runs keep torch's own threading defaults
  local keep=0
  case $3 in torch*) keep=1 ;; esac
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE FASTCNN_NUM_THREADS=$1 FASTCNN_NO_THREAD_DEFAULTS=$keep \
    python -m pytest benches -p no:cacheprovider --benchmark-only --benchmark-group-by=group \
      --benchmark-min-rounds=5 --benchmark-json="$out/threads$1-$3.json" -q -k "$2" "${@:4}" >/dev/null
}
for t in 2 1; do
  run $t "not torch" fastcnn-a "${@:2}"
  run $t "torch" torch-a "${@:2}"
  run $t "torch" torch-b "${@:2}"
  run $t "not torch" fastcnn-b "${@:2}"
done
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -c \
  "from threadpoolctl import threadpool_info; import numpy; print('BLAS:', [(i['internal_api'], i['version'], i['architecture']) for i in threadpool_info()])"
for t in 2 1; do
  echo "## $t thread(s)"; echo
  python benches/bench_report.py "$out"/threads$t-*.json
done
