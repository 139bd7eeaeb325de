#!/usr/bin/env bash
# make fuzz: build the libFuzzer targets with clang (libFuzzer + ASan +
# UBSan) and run each for FUZZ_SECONDS (default 60):
#   fuzz_nifti   the NIfTI reader (plain and gzip), seeded with the shared cases
#   fuzz_ct      sp_ct_run on the tiny model with fuzzed dim/pixdim/vox_offset/datatype/affine
#   fuzz_kserve  KServe v2 JSON request parsing and checking
#   fuzz_dicom   the DICOM series reader (GDCM; one-file series or zips) and the
#                DICOM-SEG writer (DCMTK), seeded with the shared series' slices
#                and pydicom's test files (Debian python3-pydicom)
# Crashes (UBSan included) land in tests/fuzz/regressions/ (NIfTI inputs,
# replayed by the test suite) or tests/fuzz/regressions-<target>/ (replayed
# by the next fuzz run: the folder is part of its corpus).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${FUZZ_SECONDS:-60}"
out=build-fuzz
ORT=third_party/onnxruntime
[ -f "$ORT/lib/libonnxruntime.so.1" ] || bash scripts/install-deps.sh
FLAGS="-std=c11 -D_GNU_SOURCE -g -O1 -Iinclude -Isrc -I$ORT/include"
CXXFLAGS="-std=c++17 -D_GNU_SOURCE -g -O1 -Iinclude -Isrc -I/usr/include/gdcm-3.0"
LIBS="-L$ORT/lib -Wl,-rpath,$PWD/$ORT/lib -l:libonnxruntime.so.1 -lavformat -lavcodec -lswscale -lavutil
      -lgdcmMSFF -lgdcmDSED -lgdcmCommon -ldcmseg -ldcmfg -ldcmiod -ldcmdata -loflog -lofstd -lzip -lstdc++
      -lmicrohttpd -ljpeg -lpng -lwebp -lheif -lcjson -ldeflate -lz -lm -ldl -pthread"
objs() {   # the library once, instrumented, for every target
  mkdir -p "$out/obj"
  for f in src/core/*.c src/io/*.c src/pipeline/*.c src/runtime/*.c src/server/*.c; do
    o="$out/obj/$(echo "${f%.c}" | tr / _).o"
    [ "$o" -nt "$f" ] || echo "clang $FLAGS -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -c $f -o $o"
  done | xargs -P "$(nproc)" -I{} sh -c '{}'
  for f in src/io/dicom.cc src/io/dicom_seg.cc; do   # C++: GDCM and DCMTK (the libraries themselves uninstrumented)
    o="$out/obj/$(echo "${f%.cc}" | tr / _).o"
    [ "$o" -nt "$f" ] || clang++ $CXXFLAGS -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -c "$f" -o "$o"
  done
  clang -c src/server/ui_assets.S -o "$out/obj/src_server_ui_assets.o"   # the web page's files
}
build() {
  # shellcheck disable=SC2086
  # linked by clang++: the C++ objects (GDCM, DCMTK callers) need UBSan's C++ runtime
  clang++ -x c $FLAGS -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined "tests/fuzz/$1.c" -x none \
    "$out"/obj/*.o $LIBS -o "$out/$1"
}
seed() {   # seed() TARGET: the corpus folder, filled with starting inputs
  local c="$out/corpus-$1"
  mkdir -p "$c"
  case $1 in
  fuzz_nifti)
    for f in ../shared/data/ct/example_ct_sm.nii.gz ../shared/data/ct/example_seg.nii.gz \
             ../shared/data/ct/example_mr_sm.nii.gz ../shared/data/mri/tinyT1.nii.gz; do
      [ -f "$f" ] || continue
      cp "$f" "$c/"
      (gzip -dc "$f" | head -c 65536 > "$c/$(basename "$f" .gz).head") || true
    done
    cp tests/fuzz/regressions/* "$c/" 2>/dev/null || true ;;
  fuzz_ct)
    python3 - "$c" <<'PY'
import struct, sys
d = struct.pack("<3h", 12, 10, 8) + struct.pack("<3f", 3, 3, 3) + struct.pack("<f", 352) + bytes([3])
d += struct.pack("<3f", 1, 1, 1) + bytes([1, 1, 1, 0, 0])
open(sys.argv[1] + "/ok", "wb").write(d + bytes(range(256)) * 4)
PY
    ;;
  fuzz_dicom)
    for f in ../shared/data/ct/example_ct_dicom/*; do [ -f "$f" ] && cp "$f" "$c/" && break; done
    for f in CT_small.dcm MR_small_RLE.dcm MR_small_jpeg_ls_lossless.dcm MR_small_implicit.dcm MR_small_bigendian.dcm \
             JPEG2000.dcm image_dfl.dcm MR_truncated.dcm no_meta.dcm badVR.dcm; do
      [ -f "/usr/lib/python3/dist-packages/pydicom/data/test_files/$f" ] && \
        cp "/usr/lib/python3/dist-packages/pydicom/data/test_files/$f" "$c/"
    done
    cp tests/fuzz/regressions-dicom/* "$c/" 2>/dev/null || true ;;
  fuzz_kserve)   # a first byte of 0: JSON mode, one input (fuzz_kserve.c)
    printf '\000{"inputs": [{"name": "input", "shape": [1, 1, 8, 8, 8], "datatype": "FP32", "data": [%s0]}]}' \
      "$(printf '1.5, %.0s' $(seq 511))" > "$c/ok"
    printf '\000{"inputs": [{"name": "input", "shape": [1, 1, 8, 8, 8], "datatype": "FP32", "data": [[1e999]]}]}' > "$c/inf"
    # binary: a 128-byte header (first byte 0202 = 32 << 2 | 2), then 2048 bytes of one tensor
    { printf '\202'; printf '%-128s' '{"inputs": [{"name": "input", "shape": [1, 1, 8, 8, 8], "datatype": "FP32", "parameters": {"binary_data_size": 2048}}]}'; head -c 2048 /dev/zero; } > "$c/bin" ;;
  esac
  echo "$c"
}
mkdir -p "$out"
objs
status=0
for t in ${FUZZ_TARGETS:-fuzz_nifti fuzz_ct fuzz_kserve fuzz_dicom}; do
  build "$t"
  corpus=$(seed "$t")
  art=tests/fuzz/regressions/
  [ "$t" = fuzz_nifti ] || { art="tests/fuzz/regressions-${t#fuzz_}/"; mkdir -p "$art"; }
  # full stacks on malloc, so the ONNX Runtime suppression sees its frames
  export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:fast_unwind_on_malloc=0"
  export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp"
  set +e
  maxlen=65536
  [ "$t" = fuzz_dicom ] && maxlen=1048576   # a whole uncompressed 512x512 slice
  "$out/$t" "$corpus" "$art" -max_total_time="$secs" -rss_limit_mb=2048 -max_len="$maxlen" -timeout=20 \
    -artifact_prefix="$art" -print_final_stats=1 > "$out/$t.log" 2>&1
  rc=$?
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/$t.log" | grep -o '[0-9]*$' || echo 0)
  echo "$t: ${runs} executions in ${secs} s, exit ${rc} ($( [ "$rc" = 0 ] && echo 'no crash' || echo "CRASH: see $art and $out/$t.log"))"
  [ "$rc" = 0 ] || status=$rc
done
exit "$status"
