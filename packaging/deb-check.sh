#!/usr/bin/env bash
# deb-check.sh DEBDIR [CT] — `make deb-check`: the packages of `make deb`,
# installed for real and removed again (docs/packaging.md).
#
# The scratch root is an overlay of this system (lower: /, read-only; upper:
# a temporary folder) in a private mount namespace, so the packages' real
# dependencies are there and nothing of this system changes. In it:
#   dpkg --root installs the four packages (maintainer scripts and the
#   ldconfig trigger run chrooted), then, chrooted: `segpipe version`,
#   `segpipe ct CT` with the bundled default model, `import segpipe` and a
#   call into libsegpipe from Python, the loader's view (libsegpipe.so.0 on
#   the system path, ONNX Runtime only in /usr/lib/segpipe/), bash completion,
#   `systemd-analyze verify` of segpipe.service where systemd-analyze runs;
#   then dpkg --purge, and the upper layer must hold nothing new but dpkg's
#   own records. lintian (when installed) must report no errors.
# Needs root (mount, chroot); exits 77 when it cannot make the scratch root.
# SP_DEB_CHECK_OUT=DIR keeps the CT run's outputs there (for the tests).
set -euo pipefail
D=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
ct=${2:-$here/../../shared/data/ct/example_ct_sm.nii.gz}
say() { echo "deb-check: $*"; }
fail() { echo "deb-check: FAIL: $*" >&2; exit 1; }
debs=("$D"/*.deb)
[ ${#debs[@]} -eq 4 ] && [ -f "${debs[0]}" ] || fail "expected the 4 packages of make deb in $D"
[ -f "$ct" ] || fail "no CT at $ct"

if [ "${SP_DEB_CHECK_INNER:-}" != 1 ]; then
  if [ -z "${SP_DEB_CHECK_NO_LINTIAN:-}" ] && command -v lintian >/dev/null 2>&1; then
    say "lintian"
    out=$(lintian --tag-display-limit 0 "${debs[@]}" 2>&1 | grep -v 'running with root privileges' || true)
    [ -z "$out" ] || echo "$out"
    if echo "$out" | grep -q '^E: '; then fail "lintian reports errors"; fi
    say "lintian: $(echo "$out" | grep -c '^E: ' || true) errors, $(echo "$out" | grep -c '^W: ' || true) warnings"
  else
    say "lintian: skipped (not installed, or SP_DEB_CHECK_NO_LINTIAN set; scripts/install-deps.sh installs it)"
  fi
  [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null 2>&1 || { say "needs root and unshare"; exit 77; }
  SP_DEB_CHECK_INNER=1 exec unshare -m --propagation private bash "$0" "$D" "$ct"
fi

w=$(mktemp -d /var/tmp/segpipe-deb-check.XXXXXX)
m=$w/root
trap 'umount -R "$m" 2>/dev/null || true; rm -rf "$w"' EXIT
mkdir -p "$w/upper" "$w/work" "$m" "$w/io"
if ! mount -t overlay overlay -o "lowerdir=/,upperdir=$w/upper,workdir=$w/work" "$m" 2>"$w/mount.err"; then
  say "cannot mount an overlay of / here ($(cat "$w/mount.err"))"; exit 77
fi
for d in proc dev sys; do mount --rbind "/$d" "$m/$d"; done
mount -t tmpfs tmpfs "$m/tmp"                   # scratch for the runs, not the upper layer
cp "$ct" "$w/io/ct.nii.gz"
mount --bind "$w/io" "$m/mnt"
in_root() { chroot "$m" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp LANG=C.UTF-8 TMPDIR=/tmp "$@"; }

say "dpkg --root: install"
dpkg --root="$m" --force-unsafe-io -i "${debs[@]}" >"$w/dpkg.log" 2>&1 || { cat "$w/dpkg.log"; fail "dpkg -i"; }
for p in segpipe libsegpipe0 libsegpipe-dev python3-segpipe; do
  st=$(dpkg --root="$m" -s "$p" 2>/dev/null | sed -n 's/^Status: //p')
  [ "$st" = "install ok installed" ] || fail "$p: status '$st'"
done
[ -s "$m/etc/segpipe/api-keys" ] || fail "postinst made no /etc/segpipe/api-keys"
[ "$(stat -c %a "$m/etc/segpipe/api-keys")" = 600 ] || fail "/etc/segpipe/api-keys is not mode 600"

say "the loader's view"
ldc=$(in_root ldconfig -p); lb=$(in_root ldd /usr/bin/segpipe); ll=$(in_root ldd /usr/lib/libsegpipe.so.0)
grep -qE 'libsegpipe.so.0 .*=> (/usr)?/lib/libsegpipe.so.0$' <<<"$ldc" || fail "libsegpipe.so.0 not in ld.so.cache"
! grep -q libonnxruntime <<<"$ldc" || fail "ONNX Runtime is on the system library path"
grep -qE 'libonnxruntime.so.1 => /usr/(bin/\.\./)?lib/segpipe/libonnxruntime.so.1 ' <<<"$lb" || fail "segpipe's ONNX Runtime"
grep -qE 'libonnxruntime.so.1 => (/usr)?/lib/segpipe/libonnxruntime.so.1 ' <<<"$ll" || fail "libsegpipe's ONNX Runtime"
! grep -q 'not found' <<<"$lb$ll" || fail "a library is missing: $lb $ll"

say "segpipe version, segpipe ct"
in_root segpipe version | tee "$w/io/version.txt"
grep -q '^commit: [0-9a-f]' "$w/io/version.txt" || fail "no commit in segpipe version"
! grep -q 'install-deps' "$w/io/version.txt" || fail "the installed binary points to scripts/install-deps.sh"
grep -q '^default model: /usr/share/segpipe/models/demo-ct$' "$w/io/version.txt" || fail "default model"
in_root segpipe ct /mnt/ct.nii.gz -o /mnt/out.nii.gz -q || fail "segpipe ct"
[ -s "$w/io/out.nii.gz" ] && [ -s "$w/io/out.passport.json" ] || fail "segpipe ct wrote no labels or passport"

say "python3: import segpipe"
in_root python3 -c 'import segpipe, sys
assert segpipe.__file__ == "/usr/lib/python3/dist-packages/segpipe/__init__.py", segpipe.__file__
v = segpipe.version(); print("python3-segpipe:", v)
assert v["onnxruntime"] and v["segpipe"]' || fail "import segpipe"

say "man pages, bash completion"
[ -f "$m/usr/share/man/man1/segpipe.1.gz" ] && [ -f "$m/usr/share/man/man1/segpipe-ct.1.gz" ] || fail "man pages"
comp=$(in_root bash -c 'source /usr/share/bash-completion/completions/segpipe
  COMP_WORDS=(segpipe c); COMP_CWORD=1; _segpipe segpipe; echo "${COMPREPLY[*]}"
  COMP_WORDS=(segpipe ct --roi-s); COMP_CWORD=2; _segpipe segpipe; echo "${COMPREPLY[*]}"')
echo "$comp"
[ "$(echo "$comp" | sed -n 1p)" = "ct classify" ] || fail "completion of commands"
[ "$(echo "$comp" | sed -n 2p)" = "--roi-subset" ] || fail "completion of options"
if in_root systemd-analyze --version >/dev/null 2>&1; then
  in_root systemd-analyze verify /lib/systemd/system/segpipe.service 2>&1 | tee "$w/verify.txt"
  ! grep -qi 'segpipe.service' "$w/verify.txt" || fail "systemd-analyze verify segpipe.service"
fi
[ -z "${SP_DEB_CHECK_OUT:-}" ] || cp "$w/io/out.nii.gz" "$w/io/out.passport.json" "$w/io/version.txt" "$SP_DEB_CHECK_OUT/"

say "dpkg --root: purge"
dpkg --root="$m" --purge python3-segpipe libsegpipe-dev segpipe libsegpipe0 >"$w/dpkg.log" 2>&1 || {
  cat "$w/dpkg.log"; fail "dpkg --purge"; }
grep -i 'warning' "$w/dpkg.log" && fail "dpkg warned while purging"
umount -R "$m/mnt" "$m/tmp" "$m/proc" "$m/dev" "$m/sys"

# what stays in the upper layer: the records of dpkg, the loader, man-db and
# systemd-analyze (run/) only;
# a new directory or any other file is something the packages left behind
left=$(cd "$w/upper" && find . -mindepth 1 ! -type d | sed 's|^\./||' |
  grep -vE '^(var/lib/dpkg/|var/log/|var/cache/ldconfig/|etc/ld\.so\.cache$|var/cache/debconf/|var/cache/man/|run/)' || true)
newdirs=$(cd "$w/upper" && find . -mindepth 1 -type d ! -path './run/*' ! -path './var/cache/man/*' | sed 's|^\./||' | while read -r d; do [ -d "/$d" ] || echo "$d"; done)
[ -z "$left$newdirs" ] || fail "left behind after purge: $left $newdirs"
say "ok: installed, ran, removed, nothing left"
