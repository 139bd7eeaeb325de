#!/usr/bin/env bash
# make fuzz: build the NIfTI reader fuzzer with clang (libFuzzer + ASan +
# UBSan) and run it for FUZZ_SECONDS (default 60), seeded with the shared
# cases (gzip and plain). Crashes land in tests/fuzz/regressions/, which the
# test suite replays on every run.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${FUZZ_SECONDS:-60}"
out=build-fuzz
mkdir -p "$out/corpus"
ORT=third_party/onnxruntime
[ -f "$ORT/lib/libonnxruntime.so.1" ] || bash scripts/install-deps.sh
clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc -I$ORT/include \
  tests/fuzz/fuzz_nifti.c src/core/*.c src/io/*.c src/pipeline/*.c src/runtime/*.c src/server/*.c \
  -L$ORT/lib -Wl,-rpath,$PWD/$ORT/lib -l:libonnxruntime.so.1 -lmicrohttpd -ljpeg -lpng -lwebp -lheif -lcjson -ldeflate -lz -lm -ldl -pthread \
  -o "$out/fuzz_nifti"
for f in ../shared/data/ct/example_ct_sm.nii.gz ../shared/data/ct/example_seg.nii.gz \
         ../shared/data/ct/example_mr_sm.nii.gz ../shared/data/mri/tinyT1.nii.gz; do
  [ -f "$f" ] || continue
  cp "$f" "$out/corpus/"
  (gzip -dc "$f" | head -c 65536 > "$out/corpus/$(basename "$f" .gz).head") || true
done
cp tests/fuzz/regressions/* "$out/corpus/" 2>/dev/null || true
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp"
set +e
"$out/fuzz_nifti" "$out/corpus" -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 \
  -artifact_prefix=tests/fuzz/regressions/ -print_final_stats=1 2>&1 | tee "$out/fuzz.log" | tail -25
rc=${PIPESTATUS[0]}
set -e
runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/fuzz.log" | grep -o '[0-9]*$' || echo 0)
echo "fuzz: ${runs} executions in ${secs} s, exit ${rc} ($( [ "$rc" = 0 ] && echo 'no crash' || echo 'CRASH: see tests/fuzz/regressions/'))"
exit "$rc"
