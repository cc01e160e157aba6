#!/usr/bin/env bash
# The GPU run of the whole suite, recorded under benchmarks/results/cuda/<dtype>/:
#   bash benchmarks/run_gpu.sh [OUT_DIR]      (default benchmarks/results/cuda)
# Every benchmark with --device cuda, in fp32 and in bf16 autocast. GPU timings are
# steady, so each measurement runs for MIN_RUN_TIME seconds (default 0.1) rather than 1.
# BENCHES and DTYPES (space-separated) choose a subset, e.g. to finish an interrupted run:
#   BENCHES="losses recall" DTYPES=bf16 bash benchmarks/run_gpu.sh
# ARGS is appended to every command, e.g. ARGS="--only sweep" with BENCHES=composite.
# A failing benchmark is reported and the others still run; the exit status is 1 if any
# failed.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=${1:-benchmarks/results/cuda}
mrt=${MIN_RUN_TIME:-0.1}
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
status=0
for bench in ${BENCHES:-composite train_step losses recall}; do
  for dtype in ${DTYPES:-fp32 bf16}; do
    start=$(date +%s)
    if ! "$py" -m benchmarks "$bench" --device cuda --dtype "$dtype" --min-run-time "$mrt" \
        --out-dir "$out/$dtype" ${ARGS:-}; then
      echo "FAILED: $bench $dtype"
      status=1
    fi
    echo "TIME: $bench $dtype $(( $(date +%s) - start )) s"
  done
done
exit $status
