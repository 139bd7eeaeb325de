#!/usr/bin/env bash
# pack.sh — run HERE (the development machine, no GPU needed): put in .gpu/
# (git-ignored) everything the GPU machine needs to run segpipe, in folders
# that each fit one call of the workplace's `device` tool (64 MiB with the
# working tree; docs/gpu.md "Running on the GPU machine"):
#   .gpu/p1  base.tar.xz: `make install` of a slim build (NO_FFMPEG=1
#            NO_HEIF=1) into /opt/segpipe with libsegpipe_cuda.so and the
#            shared libraries the binaries need beyond the C library; the
#            test CTs from ../shared; with build/brainchop-models
#            (tools/fetch/fetch_brainchop.sh) mindgrab + dk104 packages and
#            their upstream folders (zoo.tar), t1_crop for `run.sh mri`;
#            nibabel (Debian's, pure Python) for the Python peers; with the
#            git mirrors of TotalSegmentator and nnU-Net (NNUNET_SRC, default
#            /work/.mirror) their sources for `run.sh totalseg` (tssrc.tar.xz,
#            bench/totalseg_pipeline.py --pack-sources)
#   .gpu/pN  the other parts of the CUDA provider plugin's npm tarball
#            (44 MiB each: with the working tree a call carries < 64 MiB)
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
split -b 44M -d -a 1 "$tgz" "$tmp/cuda.part."
parts=("$tmp"/cuda.part.*)
n=${#parts[@]}
for ((i = 0; i < n; i++)); do
  mkdir -p .gpu/p$((i + 2))
  mv "${parts[i]}" .gpu/p$((i + 2))/
done
echo "$n" > .gpu/p1/cuda.parts
x=.gpu/p1                              # extras ride with the base
if [ -f models/isnet/model.onnx ] && [ -n "${SP_PACK_ISNET:-}" ]; then   # for `run.sh isnet`: a folder of its own
  mkdir -p .gpu/p$((n + 2)) && cp models/isnet/model.onnx .gpu/p$((n + 2))/isnet.onnx
fi
if [ -f build/brainchop-models/t1_crop.nii.gz ]; then   # tools/fetch/fetch_brainchop.sh: for `run.sh mri`
  mkdir -p $x/zoo
  for m in mindgrab:mindgrab dk104:model21_104class; do
    python3 tools/import/import_brainchop.py "build/brainchop-models/meshnet/${m#*:}" -o "$x/zoo/brainchop-${m%%:*}" \
      --name "brainchop-${m%%:*}" >/dev/null
  done
  cp -r build/brainchop-models/meshnet/mindgrab build/brainchop-models/meshnet/model21_104class $x/zoo/
  tar -C $x -cf $x/zoo.tar zoo && rm -rf $x/zoo
  cp build/brainchop-models/t1_crop.nii.gz $x/
fi
# the Python peers (bench/brainchop.py, bench/totalseg_pipeline.py) read NIfTI with nibabel (pure Python; not in
# the GPU machine's venv)
tar -C /usr/lib/python3/dist-packages --exclude=tests -cJf $x/nibabel.tar.xz nibabel
if [ -d "${NNUNET_SRC:-/work/.mirror}/wasserth+TotalSegmentator/repo" ]; then   # for `run.sh totalseg` (2.4 MB)
  /usr/bin/python3 bench/totalseg_pipeline.py --pack-sources $x/tssrc.tar.xz --src "${NNUNET_SRC:-/work/.mirror}"
fi
du -sh .gpu/p*
