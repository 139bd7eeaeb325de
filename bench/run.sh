#!/usr/bin/env bash
# make bench: segpipe and the Python peer on the same generated inputs, in
# one run, on this machine. Not part of the test suite. Writes bench/out/:
#   bench.md, bench.json        segpipe bench (demo model) on every case
#   tsfast/                     the TotalSegmentator --fast architecture (random weights)
#   threads/                    inference seconds for threads x tile batch
#   peer.json, summary.md       peer vs segpipe per stage, with the outputs compared
#   *.png                       plots (bench/plots.py)
# BENCH_QUICK=1 uses only the 458x379x224 case (and skips the sweeps).
set -euo pipefail
cd "$(dirname "$0")/.."
SEG=build/segpipe
OUT=bench/out
DATA=bench/data
CT=../shared/data/ct
mkdir -p "$OUT" "$DATA"
dpkg-query -W -f='${Status}' python3-matplotlib 2>/dev/null | grep -q "install ok installed" || \
  SP_EXTRA_PKGS=python3-matplotlib bash scripts/install-deps.sh

# 1. inputs at real sizes, from the real example CT (git-ignored)
bash bench/make_data.sh
cases=("$DATA/ct_458x379x224.nii.gz")
[ "${BENCH_QUICK:-0}" = 1 ] || cases+=("$DATA/ct_512x512x280.nii.gz" "$DATA/ct_512x512x458.nii.gz" "$DATA/ct_512x512x824.nii.gz")

# 2. segpipe bench, demo model
$SEG bench --model models/demo-ct "${cases[@]}" --runs 2 --out "$OUT" > /dev/null

# 3. peer, same inputs, outputs compared
echo "[" > "$OUT/peer.json.tmp"
first=1
for c in "${cases[@]}"; do
  name=$(basename "$c" .nii.gz)
  $SEG ct "$c" -o "$OUT/$name.seg.nii.gz" --save-model-labels "$OUT/$name.model_labels.nii.gz" -q
  /usr/bin/python3 bench/peer/peer.py "$c" "$OUT/$name.model_labels.nii.gz" "$CT/total_v2_labels.json" \
      -o "$OUT/peer_$name" > "$OUT/peer_$name.json"
  [ $first = 1 ] || echo "," >> "$OUT/peer.json.tmp"
  first=0
  /usr/bin/python3 - "$c" "$OUT/peer_$name.json" "$OUT/$name.seg.nii.gz" "$OUT/$name.seg.statistics.json" >> "$OUT/peer.json.tmp" <<'PY'
import json, sys
import numpy as np, nibabel as nib
case, peer, seg, stats = sys.argv[1:]
p = json.load(open(peer))
a = np.asanyarray(nib.load(seg).dataobj)
b = np.asanyarray(nib.load(p["labels"]).dataobj)
sa, sb = json.load(open(stats)), json.load(open(p["statistics"]))
p["case"] = case
p["labels_identical"] = bool(a.shape == b.shape and np.array_equal(a, b))
p["statistics_equal"] = sa == sb
print(json.dumps(p))
PY
done
echo "]" >> "$OUT/peer.json.tmp"
mv "$OUT/peer.json.tmp" "$OUT/peer.json"

if [ "${BENCH_QUICK:-0}" != 1 ]; then
  # 4. TotalSegmentator --fast architecture, random weights: realistic inference, RSS
  if [ ! -f "$DATA/totalseg-fast/model.onnx" ]; then
    /usr/bin/python3 tools/import/import_nnunet.py --random-weights --arch totalseg-fast \
        --labels "$CT/total_v2_labels.json" -o "$DATA/totalseg-fast" 2>/dev/null
  fi
  $SEG bench --model "$DATA/totalseg-fast" "$DATA/ct_512x512x280.nii.gz" --runs 1 --out "$OUT/tsfast" > /dev/null
  # 4b. peak memory: logits vs split head, 4 sizes, 1 and 4 threads; serve with two models
  /usr/bin/python3 bench/memory.py > "$OUT/memory.md"
  # 5. thread scaling x tile batch (inference stage), demo model, example_ct
  for t in 1 2; do for b in 1 2 4; do
    $SEG bench --model models/demo-ct "$CT/example_ct.nii.gz" --threads $t --tile-batch $b --runs 1 \
        --out "$OUT/threads/t${t}_b${b}" > /dev/null
  done; done
fi

# 6. passport cost vs label count (458x379x224)
/usr/bin/python3 bench/passport_scaling.py "$DATA/ct_458x379x224.nii.gz" "$OUT/ct_458x379x224.seg.nii.gz" \
    "$OUT/passport_scaling.json" > /dev/null

# 7. service load (loopback)
/usr/bin/python3 bench/serve_load.py "$OUT/serve_load.json" > /dev/null
# DICOM series to volume: segpipe vs dcm2niix
/usr/bin/python3 bench/dicom_read.py > "$OUT/dicom_read.md"
/usr/bin/python3 bench/serve_masks_load.py "$OUT/serve_masks_load.json" > /dev/null

# 8. photo masks: RSS over 1,000 photos (service and CLI)
/usr/bin/python3 bench/masks_rss.py "$OUT/masks_rss.json"

# 9. video: batch x workers sweep against inference alone (demo-matte, rendered clip)
if [ ! -f "$DATA/clip/clip.mp4" ]; then
  /usr/bin/python3 tools/train/make_demo_video.py "$DATA/clip" --frames 300 --size 320x240
  ffmpeg -loglevel error -y -framerate 25 -i "$DATA/clip/frames/%06d.png" -c:v libx264 -pix_fmt yuv420p \
      "$DATA/clip/clip.mp4"
fi
$SEG bench video "$DATA/clip/clip.mp4" --out "$OUT/video" | tail -n 20

# 10. summary and plots
/usr/bin/python3 bench/report.py "$OUT"
cat "$OUT/summary.md"
