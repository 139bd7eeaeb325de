#!/usr/bin/env bash
# Benchmark inputs made from the real example CT (never committed):
#   ct_458x379x224   example_ct at 0.8 x 0.8 x 1.5 mm
#   ct_512x512xN     resampled to 458x379xN, padded with air to 512x512
#                    (TotalSegmentator's runtime-table sizes N = 280, 458, 824)
set -euo pipefail
cd "$(dirname "$0")/.."
D=bench/data
CT=../shared/data/ct/example_ct.nii.gz
mkdir -p $D
[ -f $D/ct_458x379x224.nii.gz ] || build/segpipe resample $CT -o $D/ct_458x379x224.nii.gz --spacing 0.8,0.8,1.5
for n in 280 458 824; do
  [ -f $D/ct_512x512x$n.nii.gz ] || build/segpipe resample $CT -o $D/ct_512x512x$n.nii.gz --shape 458,379,$n --pad 512,512,$n
done
