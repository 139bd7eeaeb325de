#!/usr/bin/env bash
# Fetch brainchop's pretrained brain MRI models (the MeshNet folders of
# neuroneural/brainchop-models on GitHub, pinned commit) and its example T1
# into build/brainchop-models (git-ignored: weights are never committed),
# every file checked against the sha256 below. Needs git and GitHub; where
# GitHub cannot be reached (CI here: only Debian and npm), it says so and
# exits 0, and tests/py/test_brainchop.py skips. Copying the folder to
# ../shared/models/brainchop-models makes the tests run without GitHub.
#   tools/fetch/fetch_brainchop.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/../.."
dest="${1:-build/brainchop-models}"
commit=3d81b598b4c3d09e61d8a3664247fc939ccd384c
sums=$(cat <<'SUMS'
acb7659d328d65046d667e596f0bc6fbbaef39affa0cd36f8c387eee86ae74c3  meshnet/mindgrab/layers.json
e321f27014eb05f187667873d5301be57f9aac4c5be427e68e9f484748d643fd  meshnet/mindgrab/model.json
31f1bda17b8d3eee17a54cf3f199899763a6615a049f05ab2a05f18eb98ec23a  meshnet/mindgrab/model.pth
7f93edb82252cdc59e3faf3ae5a27622bc748d02db64df2cf429ad807891c261  meshnet/model11_gw_ae/model.bin
09d1afa152a907a545ce814842613559fbfe2bfdaab0bc8708ea79cd3e17229c  meshnet/model11_gw_ae/model.json
10ebff5980dd2afe1a1407dd951d1258dfc95fec51641bab9b4a9b88d76808c5  meshnet/model18cls/colormap.json
725096439f64ece1ca45ec3c5115c9fa6004f6538cac3032b85966d3772b605e  meshnet/model18cls/model.bin
fe0f89503d9f412e6b79a8f55ea0cb074f7c3668e0344ab2e00efc2debec6f6e  meshnet/model18cls/model.json
57346ac8b66ebe8d92296b1cf9988143be4949b6ef9695a790ef3d7fba3fb81b  meshnet/model18cls/model.json.tfjs.bak
0798b61d58626010708284cab719f2674c817c789acb84e8eec5265a46e8fbbc  meshnet/model18cls/model.pth
71f3ce5c5d9d0db1208937f55fa35b9970ce63c1a24753cf74c471fe9a3c27eb  meshnet/model20chan3cls/colormap.json
aecc03e3db596bfffab0ea1143f0848dbf4da4e317e04ef202986c6888cd467f  meshnet/model20chan3cls/model.bin
53932edad5330073bbac906049a31b84a2ca3d8c65d658feea848130004b984b  meshnet/model20chan3cls/model.json
a450db760609a91a38b3ff1810a465841c39b1ff138cab005071c897ad0da069  meshnet/model21_104class/colormap.json
8a0aa1e2d94e5edc94c54aed900da978d2a1388bee4621cee05e473db64b84af  meshnet/model21_104class/model.bin
aa8b23c241655dc3235f9603d5422368c76eb80e73e84adccb2dafdb882118b2  meshnet/model21_104class/model.json
09e80b88aac5069cf536114c9082a30e574c2ef12fbd396cd7c02e8ccb025622  meshnet/model21_104class/model.pth
32794cec0233349b82b12279fd255c0c50d1536f21533fd223d48375fd923840  meshnet/model21_104class/model_D95.json
10ebff5980dd2afe1a1407dd951d1258dfc95fec51641bab9b4a9b88d76808c5  meshnet/model30chan18cls/colormap.json
7039651d91c4cee0b7b1ddfe93fe2f5cb9b71d99f5a126fdef407e2a36bb52d4  meshnet/model30chan18cls/model.bin
d28521c0965e452c371314e4b5b4dcef7b19aa91241b17ef894ac24952139701  meshnet/model30chan18cls/model.json
3895b0c40b1ef299bda68ac79bce6f1bbbb6e28d9dd990ef121402c08bc34645  meshnet/model30chan50cls/colormap.json
a7e597568dc7750c64cce8c64c4ca3ec7215716949efd741f19904da1baffa81  meshnet/model30chan50cls/model.bin
02c62b2e84192876fb48e08fa8ba91ea71a5b8e6e5357830771f191496c030af  meshnet/model30chan50cls/model.json
c972b5be1a82b47ce55aad409a6dd9c67db64f333a79cee2e53810291c532489  meshnet/model30chan50cls/model.json.tfjs.bak
4e411f33ad72148bda65e75ba5780bf95039dd29a8227165078e8f84fc407085  meshnet/model30chan50cls/model.pth
36a45c1cc84ccb73482f3ad5a4d482da1f965e55c4b59f8f18d3649a8e7fd94d  meshnet/model5_gw_ae/colormap.json
71f3ce5c5d9d0db1208937f55fa35b9970ce63c1a24753cf74c471fe9a3c27eb  meshnet/model5_gw_ae/colormap3.json
ca0d1b8ff72f8719d9525acaf9a1f1cb66dbb173b4ee1d7540f99e022cf4bfd8  meshnet/model5_gw_ae/model.bin
c013b89170e5d6a3bfcff7f4d4cd5aae1e28ceea6b529cb29e4a9b0ae9b2f972  meshnet/model5_gw_ae/model.json
8b83b35b971305b9baeef9f927a5f0d4432c7beea60743f54e8d960031298ba3  meshnet/model5_gw_ae/model.pth
f0c1a6e538dba66df1644dd9b3e1d112b64319dd76e24cd21d46625c650fd71d  meshnet/subcortical/model.json
aa5235ab3a034135277c47f8e7c32849895c6e31ee6c4e942d63a6aec5ff4ee4  meshnet/subcortical/model.pth
9f5708dd1980fe0017ad70f63d895bae66bd9f5487eb1c38d129591116113613  t1_crop.nii.gz
SUMS
)
if [ -f "$dest/.complete" ]; then echo "fetch_brainchop: $dest already there"; exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! timeout 120 git clone -q --filter=blob:none --no-checkout https://github.com/neuroneural/brainchop-models "$tmp/r" 2>/dev/null; then
  echo "fetch_brainchop: GitHub unreachable; brainchop's weights not fetched (their tests will skip)" >&2
  exit 0
fi
git -C "$tmp/r" checkout -q "$commit" -- meshnet t1_crop.nii.gz
(cd "$tmp/r" && echo "$sums" | sha256sum --quiet -c -) || { echo "fetch_brainchop: checksum mismatch" >&2; exit 1; }
mkdir -p "$dest"
cp -r "$tmp/r/meshnet" "$tmp/r/t1_crop.nii.gz" "$dest/"
touch "$dest/.complete"
echo "fetch_brainchop: $dest"
