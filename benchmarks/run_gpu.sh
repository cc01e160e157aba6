#!/usr/bin/env bash
# The GPU run, one command from a source checkout (estimated at about 8 minutes on an H100/H200):
#   bash benchmarks/run_gpu.sh [OUT_DIR] [OPTIONS]     (default OUT_DIR benchmarks/results/cuda)
# First (< 60 s, not yet measured): benchmarks/scripts/check_cuda_kernels.py, the Triton
# kernels of the gated residual against the reference (fp32, bf16) at VAL's three levels and
# their fwd+bwd speed against torch's elementwise ops, into OUT_DIR/kernels.md; skipped when
# OPTIONS name parts with --only (finishing a run). It takes --device, --tiny and
# --min-run-time from OPTIONS.
# Then the suite; from an installed package it is `valfusion bench --suite gpu --out-dir OUT_DIR`.
# It runs the parts of `benchmarks/suite.py` (GPU_SUITE) in order, most important first, each
# in its own process and written as soon as it finishes, so a run cut short keeps what it did:
#   levels-bf16           ~60 s  composite block at VAL's three levels, bf16 autocast: fwd+bwd
#                                summed over the levels vs ref 1 / ref 2, % of the bf16 GEMM
#                                ceiling per level, peak memory at N = 4096 vs ref 1
#   levels-fp32-tf32      ~60 s  the same in fp32 with TF32 allowed on both sides (--tf32)
#   train-step-bf16       ~60 s  training step of the reference VAL model (bench_train_step)
#   train-step-fp32-tf32  ~60 s
#   parts-bf16            ~40 s  self-attention and preservation alone
#   parts-fp32-tf32       ~40 s
#   sweep-bf16            ~45 s  time and peak memory against N
#   losses-bf16           ~40 s
#   recall-fp32           ~90 s  (sum ~495 s; the estimates are not yet measured on a GPU)
# Results: OUT_DIR/bf16/, OUT_DIR/fp32-tf32/, OUT_DIR/fp32/ and OUT_DIR/suite.md (status).
# OPTIONS go to `python -m benchmarks --suite gpu`, e.g. `--only sweep-bf16,recall-fp32` to
# finish an interrupted run, or `--device cpu --tiny --min-run-time 0.01` for a dry run on the
# CPU (what tests/test_bench_suite.py runs). Exit status: the suite's (2 on a usage error), else
# 1 if any part or the kernel check failed.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
# OUT_DIR, if given, comes first; an argument starting with "-" is already an option.
out=$root/benchmarks/results/cuda
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  out=$1
  shift
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
kernels=0
case " $* " in
  *" --only "* | *" --only="*) ;;
  *)
    "$py" "$root/benchmarks/scripts/check_cuda_kernels.py" --out "$out/kernels.md" "$@"
    kernels=$?
    ;;
esac
"$py" -m benchmarks --suite gpu --out-dir "$out" "$@"
suite=$?
if [ "$suite" -ne 0 ]; then
  exit "$suite"
fi
[ "$kernels" -eq 0 ] || exit 1
