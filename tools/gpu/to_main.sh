#!/usr/bin/env bash
# to_main.sh — run HERE from a helper's worktree: the workplace's `device`
# tool sends the lead's checkout, not this one, so copy into its ignored
# .gpuwt/ what a GPU call needs: .gpuwt/src (this tree's GPU scripts, benches,
# tests/gpu, tools/import, tools/dev, python/, scripts/install-deps.sh) and .gpuwt/.gpu
# (tools/gpu/pack.sh's folders). Calls carry [".gpuwt/src", ".gpuwt/.gpu/pN"]
# and start with `cd .gpuwt/src && ln -sfn ../.gpu .gpu`.
set -euo pipefail
cd "$(dirname "$0")/../.."
M=${1:-/work/main}
rm -rf "$M/.gpuwt/src"
mkdir -p "$M/.gpuwt/src"
git ls-files -co --exclude-standard tools/gpu tools/import tools/dev bench/gpu_ct.py bench/gpu_profile.py \
  bench/totalseg_pipeline.py bench/load_overlap.py tests/gpu tests/py/nnunet_fixture.py python \
  scripts/install-deps.sh models/demo-ct | tar -cf - -T - | tar -xf - -C "$M/.gpuwt/src"
if [ "${2:-}" != "--no-pack" ]; then
  rm -rf "$M/.gpuwt/.gpu"
  cp -r .gpu "$M/.gpuwt/.gpu"
fi
du -sh "$M/.gpuwt/src" "$M/.gpuwt/.gpu"/* 2>/dev/null
