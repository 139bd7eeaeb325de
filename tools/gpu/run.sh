#!/usr/bin/env bash
# run.sh — ON THE GPU MACHINE, after tools/gpu/stage.sh installed segpipe in
# /opt/segpipe: sets up the environment (the CUDA plugin needs CUDA 13's
# libraries and cuDNN 9, which that machine has under /usr/local/cuda and in
# PyTorch's venv) and runs, in order, each mode named:
#   check   segpipe version (lists the GPU when the plugin and kernels load)
#   test    tests/gpu/test_gpu.py: the GPU path against the CPU path
#   bench   bench/gpu_ct.py: segpipe vs a PyTorch nnU-Net predictor
#   profile bench/gpu_profile.py: where the time goes (kernel groups of both
#           sides, provider-option and tile-batch variants of segpipe)
#   auto    profile, then bench with the fastest fp16 setting whose labels
#           agree with the peer (profile's best.env, kept in /root/gpu)
#   best    that bench alone, with the best.env an earlier call's profile kept
#   cold    after bench: `segpipe version` and cold `segpipe ct` fp16 with CUDA_MODULE_LOADING EAGER/LAZY
#   overlap the model's sessions made beside the read (issue #42): TS-fast random
#           package (fp16) and the 170x170x500 synthetic CT of bench/gpu_ct.py made
#           here, one untimed run (graph cache), `segpipe version` x3, then
#           bench/load_overlap.py: cold `segpipe ct --device cuda --precision fp16`
#           with SEGPIPE_SERIAL_LOAD=1 and without, alternated, SP_OV_RUNS (4) each;
#           SP_OV_GZ=1: the CT gzipped (.nii.gz, gzip -6) as the input
#   video   demo-matte video sweep and /v1/segment-batch dynamic batching
#           on the GPU (docs/performance.md, "On the GPU machine")
#   mri     brainchop's mindgrab + dk104 (issue #44): the chain with the
#           native MeshNet executor at 16 and 4 threads, ONNX Runtime's CPU
#           and CUDA providers, then bench/brainchop.py (segpipe vs the
#           PyTorch network, CPU 16 threads and GPU); pack.sh's zoo.tar
#   mricold the same chain on the GPU alone, cold (issue #44): tools/gpu/mri_cold.py,
#           cuDNN HEURISTIC (the one-input default) vs EXHAUSTIVE vs CUDA_MODULE_LOADING=EAGER,
#           alternated, SP_MRI_RUNS (4) each, then mindgrab and dk104 alone; `segpipe version` x2;
#           SP_MRI_VARIANTS (also serial, base), SP_MRI_BASE: the binary of 'base' (an earlier build)
#   cpu     bench/cpu_ct_peer.py: `segpipe ct` on the CPU against PyTorch's
#           nnU-Net sliding window, TotalSegmentator-fast, 16 and 4 threads;
#           8 cases through `--inputs` one after another and 4 at a time
#   cpucalls  bench/cpu_ct_peer.py at 16 and 4 threads (SP_CPU_THREADS):
#           segpipe's default tile batch and one tile at a time; SP_CPU_VARIANTS
#           (auto,tb1) adds e.g. tb4 (four concurrent single-tile calls) or
#           tb4b (the same batch as one batched call, SEGPIPE_TILE_CALLS=batched)
#   isnet   tools/gpu/isnet_bisect.py on /root/gpu/isnet.onnx (pack.sh with SP_PACK_ISNET=1)
#   classify  torchvision ResNet-50 (random weights) photos/s, CPU and GPU
#   totalseg  bench/totalseg_pipeline.py (issue #43): TotalSegmentator's own
#           pipeline (its python_api, nnU-Net's predictor on PyTorch) against
#           `segpipe ct --model PKG` on the same fake-home weights, the full
#           `total` task and --roi-subset liver, on example_ct resampled to
#           512x512x224 (0.71 x 0.59 x 1.5 mm); pack.sh's tssrc.tar.xz.
#           SP_TS_DEVICE (cuda), SP_TS_FEATURES (32,64,128,256,320,320),
#           SP_TS_PATCH (128), SP_TS_ROUNDS (2), SP_TS_THREADS (16),
#           SP_TS_ROI (liver; empty: the full task only), SP_TS_CT (a check
#           on a smaller scan: /root/gpu/example_ct_sm.nii.gz), SP_TS_TOOLS
#           (totalsegmentator,segpipe: one of them for a check; segpipe alone needs
#           no tssrc.tar.xz), SP_TS_PARTS (on-demand,resident: segpipe once per
#           --parts mode, GPU peak also sampled by nvidia-smi); the home and the
#           package are kept in /root/gpu for the next call
# Outputs go to $OUT (the device tool's folder) or ./gpu-out.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
CUDNN=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/cudnn/lib 2>/dev/null | head -1)
CUBLAS=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu*/lib 2>/dev/null | tr '\n' ':')
export SEGPIPE=/opt/segpipe/bin/segpipe
export SEGPIPE_LD=/opt/segpipe/lib:/opt/segpipe/lib/segpipe:/usr/local/cuda/lib64:${CUDNN}:${CUBLAS}
export SEGPIPE_DATA=/root/gpu
export PYTHONPATH=/root/gpu/pylib${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
LD_LIBRARY_PATH=$SEGPIPE_LD $SEGPIPE version | tee "$OUT/version.txt"
rc=0
for mode in "$@"; do
  case $mode in
    check) ;;
    test) PYTHONUNBUFFERED=1 python3 tests/gpu/test_gpu.py 2>&1 | tee "$OUT/test_gpu.txt"; rc=$((rc | PIPESTATUS[0])) ;;
    profile|auto) SEGPIPE_LIBRARY=/opt/segpipe/lib/libsegpipe.so.0 PYTHONUNBUFFERED=1 python3 bench/gpu_profile.py \
        "$OUT" 2>&1 | tee "$OUT/gpu_profile.txt"; rc=$((rc | PIPESTATUS[0]))
      [ -f "$OUT/best.env" ] && cp "$OUT/best.env" /root/gpu/best.env
      [ "$mode" = auto ] && { . /root/gpu/best.env 2>/dev/null; SP_BENCH_QUICK=1 PYTHONUNBUFFERED=1 python3 \
        bench/gpu_ct.py "$OUT" 2>&1 | tee "$OUT/gpu_ct.txt"; rc=$((rc | PIPESTATUS[0])); rm -f "$OUT/gpu_ct.md"; } ;;
    best) . /root/gpu/best.env 2>/dev/null          # bench with profile's pick (an earlier call's)
      SP_BENCH_QUICK=1 PYTHONUNBUFFERED=1 python3 bench/gpu_ct.py "$OUT" 2>&1 | tee "$OUT/gpu_ct.txt"
      rc=$((rc | PIPESTATUS[0])); rm -f "$OUT/gpu_ct.md" ;;
    bench) PYTHONUNBUFFERED=1 python3 bench/gpu_ct.py "$OUT" 2>&1 | tee "$OUT/gpu_ct.txt"; rc=$((rc | PIPESTATUS[0])) ;;
    cold)   # where a cold `segpipe ct` goes beyond its stages: process + provider start, lazy kernel loading
      d=$(ls -td /tmp/gpu-ct-* | head -1)     # bench/gpu_ct.py's package and first volume (run bench first)
      TIMEFORMAT="segpipe version: %R s"
      for i in 1 2; do { time LD_LIBRARY_PATH=$SEGPIPE_LD $SEGPIPE version >/dev/null; } 2>&1; done | tee -a "$OUT/cold.txt"
      for i in 1 2; do for m in EAGER LAZY; do
        CUDA_MODULE_LOADING=$m LD_LIBRARY_PATH=$SEGPIPE_LD python3 -c 'import json, subprocess, sys, time
t0 = time.perf_counter(); subprocess.run(sys.argv[2:], check=True); wall = time.perf_counter() - t0
r = json.load(open("/tmp/cold.json"))["seconds"]
print(f"CUDA_MODULE_LOADING={sys.argv[1]}: wall {wall:.2f} s, " + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if v > 0.005))' \
          $m $SEGPIPE ct $d/ct_0.nii -o /tmp/cold.nii.gz -m $d/totalseg-fast-random --device cuda --precision fp16 \
          --no-passport --report /tmp/cold.json -q | tee -a "$OUT/cold.txt"
      done; done ;;
    overlap)
      d=/tmp/ov; mkdir -p $d
      [ -f $d/ct.nii ] || python3 -c 'import os, sys; sys.path[:0] = ["bench", "tools/import", "tests/gpu"]
import nii; from gpu_ct import synthetic_ct; from import_nnunet import add_fp16, random_model
net, man = random_model("totalseg-fast", "/tmp/ov/pkg", None, 0); add_fp16("/tmp/ov/pkg", man)
nii.write("/tmp/ov/ct.nii", synthetic_ct((170, 170, 500), 1), (3.0, 3.0, 3.0))' || { rc=1; continue; }
      LD_LIBRARY_PATH=$SEGPIPE_LD $SEGPIPE ct $d/ct.nii -o $d/warm.nii.gz -m $d/pkg --device cuda --precision fp16 \
        --no-passport -q   # untimed: the optimised-graph cache, the files in the page cache
      TIMEFORMAT="segpipe version: %R s"
      for i in 1 2 3; do { time LD_LIBRARY_PATH=$SEGPIPE_LD $SEGPIPE version >/dev/null; } 2>&1; done | tee -a "$OUT/overlap.txt"
      in=$d/ct.nii; [ "${SP_OV_GZ:-}" = 1 ] && { gzip -6 -k -f $d/ct.nii; in=$d/ct.nii.gz; }
      LD_LIBRARY_PATH=$SEGPIPE_LD PYTHONUNBUFFERED=1 python3 bench/load_overlap.py $SEGPIPE $SEGPIPE $in $d/pkg \
        --runs "${SP_OV_RUNS:-4}" --json "$OUT/load_overlap.json" -- --device cuda --precision fp16 2>&1 | tee -a "$OUT/overlap.txt"
      rc=$((rc | PIPESTATUS[0])) ;;
    video)
      python3 tools/train/make_demo_video.py /tmp/clip --frames 300 --size 320x240 >/dev/null
      LD_LIBRARY_PATH=$SEGPIPE_LD $SEGPIPE bench video /tmp/clip/frames --model /opt/segpipe/share/segpipe/models/demo-matte \
        --device cuda --batch 1,2,4,8,16 --workers 2,4,8 --save none --out /tmp/bv 2>&1 | tee "$OUT/video_cuda.txt"
      SEGPIPE_BENCH_DEVICE=cuda LD_LIBRARY_PATH=$SEGPIPE_LD python3 bench/serve_masks_load.py "$OUT/serve_masks_cuda.json" \
        --seconds 10 2>&1 | tee "$OUT/serve_masks_cuda.txt" ;;
    mri)
      Z=/root/gpu/zoo T1=/root/gpu/t1_crop.nii.gz
      tar -C /root/gpu -xf /root/gpu/zoo.tar && mkdir -p /root/gpu/bm && ln -sfn $Z /root/gpu/bm/meshnet
      [ -d /root/gpu/pylib/nibabel ] || { mkdir -p /root/gpu/pylib && tar -C /root/gpu/pylib -xJf /root/gpu/nibabel.tar.xz; }
      cp tools/gpu/numpy2_shim.py /root/gpu/pylib/sitecustomize.py
      chain=$Z/brainchop-mindgrab,$Z/brainchop-dk104
      runs=("native 16 cpu 1" "native 4 cpu 1" "ort 16 cpu 0" "cuda 16 cuda 0" "cuda-again 16 cuda 0")
      [ "${SP_MRI_PEERS_ONLY:-}" ] && runs=()   # an earlier call's chain outputs kept in /tmp
      for v in "${runs[@]}"; do
        set -- $v
        TIMEFORMAT="$1 threads=$2: %R s wall, %U+%S s CPU"
        { time LD_LIBRARY_PATH=$SEGPIPE_LD SEGPIPE_MESHNET=$4 $SEGPIPE mri $T1 --model $chain -o /tmp/chain_$1.nii.gz \
          --threads $2 --device $3 --report "$OUT/chain_$1.json" -q; } 2>&1 | tail -3 | tee -a "$OUT/mri.txt"
      done
      python3 -c 'import numpy as np, nibabel as nib, sys
a, b = (np.asarray(nib.load(f"/tmp/chain_{m}.nii.gz").dataobj) for m in ("native", "cuda"))
print(f"chain labels native vs cuda: {100 * (a == b).mean():.4f}% of voxels, {100 * (a[(a > 0) | (b > 0)] == b[(a > 0) | (b > 0)]).mean():.3f}% of labelled")' \
        2>&1 | tee -a "$OUT/mri.txt"
      for d in cpu cuda; do
        PYTHONUNBUFFERED=1 python3 bench/brainchop.py --threads 16 \
          --input $T1 --zoo /root/gpu/bm --models-dir $Z --device $d 2>&1 | tee -a "$OUT/mri.txt"
      done ;;
    mricold)
      Z=/root/gpu/zoo
      [ -d $Z ] || tar -C /root/gpu -xf /root/gpu/zoo.tar
      [ -d /root/gpu/pylib/nibabel ] || { mkdir -p /root/gpu/pylib && tar -C /root/gpu/pylib -xJf /root/gpu/nibabel.tar.xz; }
      cp tools/gpu/numpy2_shim.py /root/gpu/pylib/sitecustomize.py
      TIMEFORMAT="segpipe version: %R s"
      for i in 1 2; do { time LD_LIBRARY_PATH=$SEGPIPE_LD $SEGPIPE version >/dev/null; } 2>&1; done | tee -a "$OUT/mri_cold.txt"
      LD_LIBRARY_PATH=$SEGPIPE_LD PYTHONUNBUFFERED=1 python3 tools/gpu/mri_cold.py $SEGPIPE /root/gpu/t1_crop.nii.gz \
        $Z/brainchop-mindgrab $Z/brainchop-dk104 "$OUT" --runs "${SP_MRI_RUNS:-4}" \
        --variants "${SP_MRI_VARIANTS:-heuristic,exhaustive,eager}" ${SP_MRI_BASE:+--base "$SP_MRI_BASE"} 2>&1 |
        tee -a "$OUT/mri_cold.txt"
      rc=$((rc | PIPESTATUS[0])) ;;
    cpucalls) PYTHONUNBUFFERED=1 python3 bench/cpu_ct_peer.py "$OUT" --threads "${SP_CPU_THREADS:-16,4}" --variants "${SP_CPU_VARIANTS:-auto,tb1}" 2>&1 | tee "$OUT/cpu_calls.txt"
      rc=$((rc | PIPESTATUS[0])) ;;
    cpu) PYTHONUNBUFFERED=1 python3 bench/cpu_ct_peer.py "$OUT" 2>&1 | tee "$OUT/cpu_ct_peer.txt"
      rc=$((rc | PIPESTATUS[0]))
      # 8 cases (example_ct) through one demo-ct model: one after another vs 4 at a time
      mkdir -p /tmp/cases && for i in 1 2 3 4 5 6 7 8; do cp /root/gpu/example_ct.nii.gz /tmp/cases/c$i.nii.gz; done
      ls /tmp/cases/*.nii.gz > /tmp/cases.txt
      for j in 1 4; do for t in 4 16; do
        rm -rf /tmp/cases_out; TIMEFORMAT="8 cases, --jobs $j --threads $t: %R s wall, %U+%S s CPU"
        { time LD_LIBRARY_PATH=$SEGPIPE_LD $SEGPIPE ct --inputs /tmp/cases.txt -o /tmp/cases_out --jobs $j --threads $t \
          --no-passport -q; } 2>&1 | tail -2 | tee -a "$OUT/cpu_ct_peer.txt"
      done; done ;;
    isnet)
      LD_LIBRARY_PATH=$SEGPIPE_LD SEGPIPE_LIBRARY=/opt/segpipe/lib/libsegpipe.so.0 PYTHONUNBUFFERED=1 \
        python3 tools/gpu/isnet_bisect.py /root/gpu/isnet.onnx "$OUT/isnet" 2>&1 | tee "$OUT/isnet.txt" ;;
    classify)
      python3 tools/import/export_torchvision.py --arch resnet50 --classes 7 --random-weights -o /tmp/r50 >/dev/null
      python3 -c 'import sys; sys.path.insert(0, "tests/py"); from test_classify import photo; from PIL import Image
for i in range(256): Image.fromarray(photo(480, 640, i)).save(f"/tmp/p{i}.jpg")'
      for dev in cuda cpu; do for b in 1 16; do
        LD_LIBRARY_PATH=$SEGPIPE_LD $SEGPIPE classify /tmp/p*.jpg --model /tmp/r50 --device $dev --batch $b --quiet \
          --json "$OUT/classify_${dev}_b$b.json"; done; done
      python3 -c 'import json, glob
for f in sorted(glob.glob("'"$OUT"'/classify_*.json")):
    d = json.load(open(f)); print(f.split("/")[-1], round(d["photos_per_second"], 1), "photos/s", {k: round(v, 3) for k, v in d["seconds"].items()})' | tee "$OUT/classify.txt" ;;
    totalseg)
      [ -d /root/gpu/pylib/nibabel ] || { mkdir -p /root/gpu/pylib && tar -C /root/gpu/pylib -xJf /root/gpu/nibabel.tar.xz; }
      cp tools/gpu/numpy2_shim.py /root/gpu/pylib/sitecustomize.py
      CT=${SP_TS_CT:-/root/gpu/ct_512x512x224.nii.gz}
      [ -f $CT ] || LD_LIBRARY_PATH=$SEGPIPE_LD $SEGPIPE resample /root/gpu/example_ct.nii.gz -o $CT --shape 512,512,224
      F=${SP_TS_FEATURES:-32,64,128,256,320,320} P=${SP_TS_PATCH:-128} D=${SP_TS_DEVICE:-cuda}
      tag=${D}_f${F//,/-}_p$P
      PYTHONUNBUFFERED=1 python3 bench/totalseg_pipeline.py $CT --src /root/gpu/tssrc.tar.xz --device $D \
        --features $F --patch $P --rounds "${SP_TS_ROUNDS:-2}" --threads "${SP_TS_THREADS:-16}" \
        --roi "${SP_TS_ROI-liver}" --tools "${SP_TS_TOOLS:-totalsegmentator,segpipe}" \
        --segpipe-parts "${SP_TS_PARTS:-}" \
        --work /root/gpu/ts_f${F//,/-}_p$P --json "$OUT/totalseg_$tag.json" 2>&1 |
        tee "$OUT/totalseg_$tag.txt"; rc=$((rc | PIPESTATUS[0])) ;;
    *) echo "run.sh: unknown mode $mode (check, test, bench, profile, auto, best, video, mri, mricold, cpu, isnet, classify, totalseg)" >&2; rc=2 ;;
  esac
done
exit $rc
