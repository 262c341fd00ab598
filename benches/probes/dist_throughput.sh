#!/usr/bin/env bash
# docs/DISTRIBUTED.md: training throughput of 1 process x 2 threads against 2 MPI ranks x 1
# thread, alternating, for bn and lenet (ROUNDS rounds, default 3).  Run from the repository root.
set -euo pipefail
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
for round in $(seq "${ROUNDS:-3}"); do
  for model in bn lenet; do
    FASTCNN_NUM_THREADS=2 python benches/probes/dist_bench.py throughput "$model" --steps 30
    FASTCNN_NUM_THREADS=1 mpiexec -n 2 python benches/probes/dist_bench.py throughput "$model" --steps 30 --dist
  done
done
