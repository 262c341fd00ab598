#!/usr/bin/env bash
# Run the benchmark suite at 1 and 2 threads and print Markdown tables for docs/BENCHMARKS.md.
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for this command only (they force a slower
# OpenBLAS kernel on this machine); the tests and CI keep the environment as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.benchmarks/run}
mkdir -p "$out"
for t in 2 1; do
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE FASTCNN_NUM_THREADS=$t \
    python -m pytest benches -p no:cacheprovider --benchmark-only --benchmark-group-by=group \
      --benchmark-min-rounds=5 --benchmark-json="$out/threads$t.json" -q "${@:2}" >/dev/null
done
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -c \
  "from threadpoolctl import threadpool_info; import numpy; print('BLAS:', [(i['internal_api'], i['version'], i['architecture']) for i in threadpool_info()])"
for t in 2 1; do
  echo "## $t thread(s)"; echo
  python scripts/bench_report.py "$out/threads$t.json"
done
