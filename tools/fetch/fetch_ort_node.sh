#!/usr/bin/env bash
# Fetch onnxruntime-node 1.20.1 (ONNX Runtime's own Node.js binding, with
# its prebuilt linux-x64 library) into third_party/ort-node/ (git-ignored),
# checked against the npm registry's published sha512. The tests use it as
# an independent reference run of ISNet (another ONNX Runtime build, another
# language, driven by tests/ref/ort_run.js), as the photo-masks issue asks.
# Idempotent. Usage: tools/fetch/fetch_ort_node.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
dst=third_party/ort-node/node_modules
if [ -f "$dst/onnxruntime-node/package.json" ] && [ -f "$dst/onnxruntime-common/package.json" ]; then
  exit 0
fi
declare -A sums=(
  [onnxruntime-node]="sha512-di/I4HDXRw+FLgq+TyHmQEDd3cEp9iFFZm0r4uJ1Wd7b/WE1VXtKWo8yemex347c6GNF/3Pv86ZfPhIWxORr0w=="
  [onnxruntime-common]="sha512-YiU0s0IzYYC+gWvqD1HzLc46Du1sXpSiwzKb63PACIJr6LfL27VsXSXQvt68EzD3V0D5Bc0vyJTjmMxp0ylQiw=="
)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dst"
for pkg in onnxruntime-common onnxruntime-node; do
  (cd "$tmp" && npm pack --silent "$pkg@1.20.1" >/dev/null 2>&1)
  tgz="$tmp/$pkg-1.20.1.tgz"
  got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  if [ "$got" != "${sums[$pkg]}" ]; then
    echo "fetch_ort_node: $pkg-1.20.1.tgz fails its sha512 check" >&2
    exit 1
  fi
  rm -rf "$dst/$pkg" "$tmp/package"
  tar -xzf "$tgz" -C "$tmp" --exclude='package/bin/napi-v3/win32' --exclude='package/bin/napi-v3/darwin' \
    --exclude='package/bin/napi-v3/linux/arm64'
  mv "$tmp/package" "$dst/$pkg"
done
echo "fetch_ort_node: onnxruntime-node 1.20.1 in $dst"
