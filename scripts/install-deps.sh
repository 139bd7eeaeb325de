#!/usr/bin/env bash
# install-deps.sh — install everything segpipe needs to build and test.
#
# Idempotent: every step checks first and does nothing when its piece is
# already there, so `make` can call it whenever something is missing.
#   1. Debian packages (apt-get; `apt-get update` once, only if a package
#      is missing).
#   2. ONNX Runtime: a system installation (pkg-config libonnxruntime), or
#      ONNXRUNTIME_DIR pointing at an official release folder, or else the
#      npm package com.github.asus4.onnxruntime@0.4.9 (ONNX Runtime 1.29.0),
#      checked against its published sha512 and unpacked into
#      third_party/onnxruntime/ (git-ignored).
#   2b. The web page's viewer and its browser tests (docs/ui.md): npm
#      @niivue/niivue@0.69.0 (BSD-2; its browser bundle, embedded in
#      libsegpipe at build time) and playwright-core@1.65.1 (Apache-2.0;
#      drives Debian's chromium in the tests), both sha512-checked, into
#      third_party/niivue/ and third_party/playwright-core/.
#   3. With SP_CUDA=1 (GPU machines, docs/gpu.md): ONNX Runtime's CUDA
#      provider plugin, npm com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9
#      (sha512 checked), as libonnxruntime_providers_cuda.so beside the core
#      library, where segpipe looks for it. It needs CUDA 13 and cuDNN 9 on
#      the library path at run time (not installed here).
set -euo pipefail
cuda_sha512=sha512-FopIhNE/Ng+v2X65wVc9clPCBCvhvA53Hxo2U0Kf5fGdVsC7iCA+mZ0KLWggcQAj7TIZ6pNidR4AC10g74Xo6w==

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# --- 1. Debian packages ----------------------------------------------------
pkgs=(
  build-essential pkg-config clang llvm libclang-rt-14-dev
  libdeflate-dev zlib1g-dev libcjson-dev libmicrohttpd-dev libjpeg62-turbo-dev libpng-dev libwebp-dev libheif-dev libheif-examples
  libavformat-dev libavcodec-dev libavutil-dev libswscale-dev ffmpeg libgdcm-dev libgdcm-tools libdcmtk-dev dcmtk dicom3tools orthanc libzip-dev dcm2niix libhiredis-dev libssl-dev redis-server
  python3 python3-pip python3-venv python3-setuptools python3-wheel python3-numpy python3-scipy python3-skimage python3-nibabel python3-onnx python3-pydicom python3-torch python3-torchvision python3-pil python-matplotlib-data python3-matplotlib
  curl openssl chromium
  dpkg-dev fakeroot lintian groff-base
)
# npm fetches ONNX Runtime; the Debian package is only needed when no npm
# (e.g. from a NodeSource node) is on the PATH already.
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
if [ "${SP_EXTRA_PKGS:-}" ]; then
  # shellcheck disable=SC2206
  pkgs+=(${SP_EXTRA_PKGS})
fi
missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# npm_fetch PKG SHA512 DIR: the package's tarball into DIR, checked against
# its published sha512; prints the tarball's path
npm_fetch() {
  local pkg=$1 want=$2 dir=$3 tgz got
  (cd "$dir" && npm pack --silent "$pkg" >/dev/null)
  tgz=$(ls "$dir"/*.tgz)
  got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  if [ "$got" != "$want" ]; then
    printf 'install-deps: checksum mismatch for %s\n  want %s\n  got  %s\n' "$pkg" "$want" "$got" >&2
    return 1
  fi
  echo "$tgz"
}

# --- 2b. the web page's viewer (niivue) and browser driver (playwright-core)
niivue_sha512=sha512-YMjQvJgD1W2b7DuoxkwlC4VxbrgIePRJ5qyQzXKxi2v2MBVg285P/CIQyg46oDDGDIcaNlbd+MhtO/edMbXJkA==
playwright_sha512=sha512-hqPpz7blSMPxWVdoeE1yiBSzXsKiVOd2k+kjCvmUywD2GPO2Dd9HfcWnq9NN0GHbNZDFgZ9JfBFr+X5/BLo0qw==
web_deps() {
  local t tgz
  if [ ! -f third_party/niivue/niivue.umd.js ]; then
    t=$(mktemp -d)
    echo "install-deps: fetching @niivue/niivue@0.69.0 (the web page's viewer) from npm"
    tgz=$(npm_fetch "@niivue/niivue@0.69.0" "$niivue_sha512" "$t") || { rm -rf "$t"; return 1; }
    tar -xzf "$tgz" -C "$t" package/dist/niivue.umd.js package/package.json
    mkdir -p third_party/niivue
    cp "$t/package/package.json" third_party/niivue/
    mv "$t/package/dist/niivue.umd.js" third_party/niivue/niivue.umd.js.part
    mv third_party/niivue/niivue.umd.js.part third_party/niivue/niivue.umd.js
    rm -rf "$t"
  fi
  if [ ! -f third_party/playwright-core/package.json ]; then
    t=$(mktemp -d)
    echo "install-deps: fetching playwright-core@1.65.1 (browser tests) from npm"
    tgz=$(npm_fetch "playwright-core@1.65.1" "$playwright_sha512" "$t") || { rm -rf "$t"; return 1; }
    tar -xzf "$tgz" -C "$t"
    rm -rf third_party/playwright-core
    mv "$t/package" third_party/playwright-core
    rm -rf "$t"
  fi
}
mkdir -p third_party
web_deps

# --- 3. (SP_CUDA=1) the CUDA provider plugin -------------------------------
cuda_plugin() {
  local dir=$1 pkg="com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9" t tgz
  [ -f "$dir/libonnxruntime_providers_cuda.so" ] && return 0
  t=$(mktemp -d)
  echo "install-deps: fetching ONNX Runtime's CUDA provider plugin ($pkg, 180 MB) from npm"
  tgz=$(npm_fetch "$pkg" "$cuda_sha512" "$t") || { rm -rf "$t"; return 1; }
  tar -xzf "$tgz" -C "$t" package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so
  mv "$t/package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so" "$dir/"
  rm -rf "$t"
  echo "install-deps: CUDA provider plugin in $dir"
}
after_ort() {
  [ "${SP_CUDA:-0}" = 1 ] || return 0
  cuda_plugin "$1"
}

# --- 2. ONNX Runtime --------------------------------------------------------
if pkg-config --exists libonnxruntime 2>/dev/null; then
  echo "install-deps: using system ONNX Runtime $(pkg-config --modversion libonnxruntime)"
  after_ort "$(pkg-config --variable=libdir libonnxruntime)"
  exit 0
fi
if [ -n "${ONNXRUNTIME_DIR:-}" ]; then
  if [ -f "$ONNXRUNTIME_DIR/include/onnxruntime_c_api.h" ] || \
     [ -f "$ONNXRUNTIME_DIR/include/onnxruntime/onnxruntime_c_api.h" ]; then
    echo "install-deps: using ONNX Runtime from ONNXRUNTIME_DIR=$ONNXRUNTIME_DIR"
    after_ort "$ONNXRUNTIME_DIR/lib"
    exit 0
  fi
  echo "install-deps: ONNXRUNTIME_DIR=$ONNXRUNTIME_DIR has no include/onnxruntime_c_api.h" >&2
  exit 1
fi

ort="$root/third_party/onnxruntime"
if [ -f "$ort/lib/libonnxruntime.so.1" ] && [ -f "$ort/include/onnxruntime_c_api.h" ]; then
  after_ort "$ort/lib"
  exit 0
fi

pkg="com.github.asus4.onnxruntime@0.4.9"
want="sha512-BkzxduSZ9IkeDP6Q8lz2TFU2ie7hSSvS7ZIfzMooExoq0CNzJnuuGaUJ7IsojBgqO4ouD1jXah8OYyJbCN29Fg=="
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "install-deps: fetching ONNX Runtime ($pkg) from npm"
tgz=$(npm_fetch "$pkg" "$want" "$tmp") || exit 1
tar -xzf "$tgz" -C "$tmp" \
  package/Plugins/Linux/x64/libonnxruntime.so \
  package/Plugins/Linux/x64/libonnxruntime_providers_shared.so \
  'package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers'
rm -rf "$ort.part"
mkdir -p "$ort.part/lib" "$ort.part/include"
cp "$tmp"/package/Plugins/Linux/x64/*.so "$ort.part/lib/"
cp "$tmp"/package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers/*.h "$ort.part/include/"
ln -sf libonnxruntime.so "$ort.part/lib/libonnxruntime.so.1"
echo "1.29.0" > "$ort.part/VERSION"
rm -rf "$ort"
mv "$ort.part" "$ort"
echo "install-deps: ONNX Runtime 1.29.0 in $ort"
after_ort "$ort/lib"
