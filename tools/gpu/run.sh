#!/usr/bin/env bash
# run.sh — ON THE GPU MACHINE, after tools/gpu/stage.sh installed segpipe in
# /opt/segpipe: sets up the environment (the CUDA plugin needs CUDA 13's
# libraries and cuDNN 9, which that machine has under /usr/local/cuda and in
# PyTorch's venv) and runs, in order, each mode named:
#   check   segpipe version (lists the GPU when the plugin and kernels load)
#   test    tests/gpu/test_gpu.py: the GPU path against the CPU path
#   bench   bench/gpu_ct.py: segpipe vs a PyTorch nnU-Net predictor
# Outputs go to $OUT (the device tool's folder) or ./gpu-out.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
CUDNN=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/cudnn/lib 2>/dev/null | head -1)
CUBLAS=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu*/lib 2>/dev/null | tr '\n' ':')
export SEGPIPE=/opt/segpipe/bin/segpipe
export SEGPIPE_LD=/opt/segpipe/lib:/usr/local/cuda/lib64:${CUDNN}:${CUBLAS}
export SEGPIPE_DATA=/root/gpu
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
LD_LIBRARY_PATH=$SEGPIPE_LD $SEGPIPE version | tee "$OUT/version.txt"
rc=0
for mode in "$@"; do
  case $mode in
    check) ;;
    test) PYTHONUNBUFFERED=1 python3 tests/gpu/test_gpu.py 2>&1 | tee "$OUT/test_gpu.txt"; rc=$((rc | PIPESTATUS[0])) ;;
    bench) PYTHONUNBUFFERED=1 python3 bench/gpu_ct.py "$OUT" 2>&1 | tee "$OUT/gpu_ct.txt"; rc=$((rc | PIPESTATUS[0])) ;;
    *) echo "run.sh: unknown mode $mode (check, test, bench)" >&2; rc=2 ;;
  esac
done
exit $rc
