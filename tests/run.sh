#!/usr/bin/env bash
# Run the whole suite (make test). BUILD selects the build folder.
set -euo pipefail
cd "$(dirname "$0")/.."
export BUILD="${BUILD:-build}"
if [ "$BUILD" = "build-asan" ]; then
  # The Python tests load libsegpipe.so through ctypes: preload the runtime.
  export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
  export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
fi
exec /usr/bin/python3 tests/run.py "$@"
