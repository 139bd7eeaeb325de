#!/usr/bin/env bash
# stage.sh — run ON THE GPU MACHINE, once per folder that tools/gpu/pack.sh
# made (the call carries .gpu/pN): collects the pieces in /root/gpu; when the
# last part is there, checks the CUDA plugin tarball's sha512 (the value in
# scripts/install-deps.sh), installs segpipe into /opt/segpipe and the plugin
# beside its ONNX Runtime. Idempotent.
set -euo pipefail
G=/root/gpu
mkdir -p $G
for f in .gpu/p*/*; do
  [ -f "$f" ] || continue
  cp "$f" $G/
  echo "staged $(basename "$f") ($(stat -c %s "$f") bytes)"
done
if [ -f .gpu/p1/base.tar.xz ]; then      # carried in this call: (re)install
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall("/")' $G/base.tar.xz
  echo "segpipe installed in /opt/segpipe"
fi
n=$(cat $G/cuda.parts 2>/dev/null || echo 0)
have=$(find $G -maxdepth 1 -name "cuda.part.*" | wc -l)   # none yet: 0 (an ls would fail the script)
if [ ! -f /opt/segpipe/lib/segpipe/libonnxruntime_providers_cuda.so ] && [ "$n" -gt 0 ] && [ "$have" -eq "$n" ]; then
  cat $G/cuda.part.* > $G/cuda.tgz
  want=$(sed -n 's/^cuda_sha512=//p' scripts/install-deps.sh)
  got=$(python3 -c 'import base64, hashlib, sys
print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' $G/cuda.tgz)
  [ "$got" = "$want" ] || { echo "stage: the CUDA plugin tarball fails its sha512 check" >&2; exit 1; }
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
    $G/cuda.tgz package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so $G
  mv $G/package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so /opt/segpipe/lib/segpipe/
  rm -rf $G/cuda.tgz $G/cuda.part.* $G/package
  echo "CUDA provider plugin installed (sha512 ok)"
fi
ls $G /opt/segpipe/lib /opt/segpipe/lib/segpipe | tr '\n' ' '; echo
