#!/usr/bin/env bash
# On the GPU machine, after tools/gpu/stage.sh: assemble ONNX Runtime's CUDA
# provider plugin, then measure segpipe on the GPU (slim build: NO_FFMPEG=1
# NO_HEIF=1, its libraries carried): providers, ISNet video (pipeline vs
# inference alone), demo-matte video sweep, dynamic batching of
# /v1/segment-batch. Results in $OUT.
set -uo pipefail
G=/root/gpu
if [ ! -f $G/cuda/libonnxruntime_providers_cuda.so ]; then
  cat $G/cuda.part.* > $G/cuda.tgz
  echo "cuda.tgz sha256 $(sha256sum $G/cuda.tgz | cut -c1-64)"
  mkdir -p $G/cuda && tar xzf $G/cuda.tgz -C $G/cuda --strip-components=4 package/Plugins/Linux/x64/
  rm -f $G/cuda.tgz $G/cuda.part.*
fi
CUDNN=$(python3 -c 'import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__) + "/lib")' 2>/dev/null ||
        echo /opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib)
export LD_LIBRARY_PATH=$G/base/lib:$G/base/ort:$G/cuda:/usr/local/cuda/lib64:$CUDNN:${LD_LIBRARY_PATH:-}
export SEGPIPE_ORT_CUDA_EP=$G/cuda/libonnxruntime_providers_cuda.so
[ -f .gpu/segpipe-new ] && cp .gpu/segpipe-new $G/base/segpipe
SEG=$G/base/segpipe
export SEGPIPE=$SEG
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
$SEG version | tee $OUT/version.txt
[ "${1:-}" = check ] && exit 0
python3 tools/make_demo_video.py /tmp/clip --frames 300 --size 320x240 > /dev/null
python3 tools/make_demo_video.py /tmp/clip640 --frames 40 --size 640x480 > /dev/null
export SEGPIPE_BACKTRACE=1
echo "== ISNet video, GPU"
$SEG bench video /tmp/clip640/frames --model models/isnet --device cuda --batch 1 --workers 1,2,4 --save png \
    --out /tmp/bi 2>&1 | tee $OUT/isnet_video_cuda.txt
echo "== demo-matte video sweep, GPU"
$SEG bench video /tmp/clip/frames --model models/demo-matte --device cuda --batch 1,4,16 --workers 2,4,8,12 --save png --out /tmp/bv 2>&1 |
    tee $OUT/demo_matte_sweep_cuda.txt
cp /tmp/bv/bench-video.json $OUT/demo_matte_sweep_cuda.json
$SEG bench video /tmp/clip/frames --model models/demo-matte --device cuda --batch 1,2,4,8,16 --workers 2,4,8 --save none \
    --out /tmp/bv2 2>&1 | tee $OUT/demo_matte_sweep_cuda_nosave.txt
echo "== dynamic batching, GPU"
SEGPIPE_BENCH_DEVICE=cuda python3 bench/serve_masks_load.py $OUT/serve_masks_load_cuda.json --seconds 10 2>&1 |
    tee $OUT/serve_masks_load_cuda.txt
echo "== dynamic batching, CPU (16 cores)"
python3 bench/serve_masks_load.py $OUT/serve_masks_load_cpu16.json --seconds 10 2>&1 | tee $OUT/serve_masks_load_cpu16.txt
