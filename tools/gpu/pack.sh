#!/usr/bin/env bash
# pack.sh — run HERE (the development machine, no GPU needed): put in .gpu/
# (git-ignored) everything the GPU machine needs to run segpipe, in folders
# that each fit one call of the workplace's `device` tool (64 MiB with the
# working tree; docs/gpu.md "Running on the GPU machine"):
#   .gpu/p1  base.tar.xz: `make install` of a slim build (NO_FFMPEG=1
#            NO_HEIF=1) into /opt/segpipe with libsegpipe_cuda.so and the
#            shared libraries the binaries need beyond the C library; the
#            test CTs from ../shared; the last part of the CUDA plugin
#   .gpu/pN  the other parts of the CUDA provider plugin's npm tarball
#            (com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9, sha512
#            checked here and again there by tools/gpu/stage.sh)
# Then, on the GPU machine, one call per folder, back to back (the machine
# stays warm 30 s between calls):
#   carry [".gpu/p1"]: bash tools/gpu/stage.sh     ... [".gpu/pN"]: the same
#   then:              bash tools/gpu/run.sh test|bench
set -euo pipefail
cd "$(dirname "$0")/../.."
B=build-gpu
SLIM=(BUILD=$B NO_FFMPEG=1 NO_HEIF=1 NO_DICOM=1)
make -j"$(nproc)" "${SLIM[@]}" all cuda >/dev/null
rm -rf .gpu
mkdir -p .gpu/root .gpu/p1
make "${SLIM[@]}" install DESTDIR="$PWD/.gpu/root" PREFIX=/opt/segpipe >/dev/null
lib=.gpu/root/opt/segpipe/lib
for f in .gpu/root/opt/segpipe/bin/segpipe $lib/libsegpipe.so.0 $lib/libsegpipe_cuda.so; do ldd "$f"; done |
  awk '/=> \//{print $3}' | sort -u |
  grep -vE '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libonnxruntime[^/]*)\.so' |
  while read -r so; do cp -L "$so" "$lib/"; done
rm -f $lib/segpipe/libonnxruntime_providers_cuda.so
tar -C .gpu/root -cJf .gpu/p1/base.tar.xz opt
rm -rf .gpu/root
cp ../shared/data/ct/example_ct_sm.nii.gz ../shared/data/ct/example_ct.nii.gz .gpu/p1/
chmod u+w .gpu/p1/*.nii.gz     # writable: both calls that carried them read-only were cut off (cause unproven)

pkg=com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$pkg" >/dev/null 2>&1)
tgz=$(ls "$tmp"/*.tgz)
want=$(sed -n 's/^cuda_sha512=//p' scripts/install-deps.sh)
got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
[ "$got" = "$want" ] || { echo "pack: $pkg fails its sha512 check" >&2; exit 1; }
split -b 50M -d -a 1 "$tgz" "$tmp/cuda.part."
parts=("$tmp"/cuda.part.*)
n=${#parts[@]}
mv "${parts[n-1]}" .gpu/p1/            # the short last part rides with the base
for ((i = 0; i < n - 1; i++)); do
  mkdir -p .gpu/p$((i + 2))
  mv "${parts[i]}" .gpu/p$((i + 2))/
done
echo "$n" > .gpu/p1/cuda.parts
if [ -f models/isnet/model.onnx ]; then   # ISNet (fetched by tools/fetch/fetch_isnet.sh) for `run.sh isnet`
  mkdir -p .gpu/p5 && cp models/isnet/model.onnx .gpu/p5/isnet.onnx
fi
du -sh .gpu/p*
