#!/usr/bin/env bash
# make-deb.sh DEBDIR VERSION — `make deb`'s second half: split the tree that
# `make install PREFIX=/usr DESTDIR=DEBDIR/stage` made into Debian packages by
# role, the way debhelper would lay them out (docs/packaging.md):
#   segpipe          /usr/bin/segpipe, man pages, bash completion, docs,
#                    segpipe.service, /etc/segpipe/segpipe.conf (conffile)
#   libsegpipe0      /usr/lib/libsegpipe.so.0, ONNX Runtime in /usr/lib/segpipe/
#                    (private: run paths of segpipe and libsegpipe only), models
#   libsegpipe-dev   header, libsegpipe.so link, static library, pkg-config
#   python3-segpipe  /usr/lib/python3/dist-packages/segpipe
# Depends come from dpkg-shlibdeps, control files from dpkg-gencontrol; each
# package gets md5sums, copyright (machine-readable) and changelog.gz, the
# library an ldconfig trigger and a shlibs file. No root needed (dpkg-deb
# --root-owner-group). Writes DEBDIR/<package>_<version>_<arch>.deb.
set -euo pipefail
D=$1 V=$2
here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
D=$(cd "$D" && pwd)
S=$D/stage
cd "$D"
rm -rf debian ./*.deb
mkdir -p debian
cp "$here/debian/control" debian/control
maint=$(sed -n 's/^Maintainer: //p' debian/control)
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$src" log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH=$epoch
cat > debian/changelog <<EOF
segpipe ($V) unstable; urgency=medium

  * Built from segpipe's sources; the changes are in
    /usr/share/doc/segpipe/CHANGELOG.md.

 -- $maint  $(LC_ALL=C date -u -R -d "@$epoch")
EOF

pkgs=(segpipe libsegpipe0 libsegpipe-dev python3-segpipe)
# take PATH... from the staged install into package PKG
take() {
  local p=$1; shift
  for f in "$@"; do
    [ -e "$S/$f" ] || [ -L "$S/$f" ] || continue
    mkdir -p "debian/$p/$(dirname "$f")"
    mv "$S/$f" "debian/$p/$f"
  done
}
take segpipe usr/bin/segpipe usr/share/man usr/share/bash-completion usr/share/doc/segpipe
take libsegpipe0 usr/lib/libsegpipe.so.0 usr/lib/libsegpipe_cuda.so usr/lib/segpipe usr/share/segpipe
take libsegpipe-dev usr/include usr/lib/libsegpipe.so usr/lib/libsegpipe.a usr/lib/pkgconfig
rm -f debian/libsegpipe0/usr/lib/segpipe/libonnxruntime_providers_cuda.so   # 230 MB: GPU hosts add it (docs/gpu.md)
left=$(cd "$S" && find . ! -type d | sed 's|^\./||')
if [ -n "$left" ]; then
  echo "make-deb: files of the install that no package takes:" >&2; echo "$left" >&2; exit 1
fi

# segpipe: the service unit, its configuration, maintainer scripts
install -D -m 644 "$here/segpipe.service" debian/segpipe/lib/systemd/system/segpipe.service
install -D -m 644 "$here/segpipe.conf" debian/segpipe/etc/segpipe/segpipe.conf
mkdir -p debian/segpipe/DEBIAN
echo /etc/segpipe/segpipe.conf > debian/segpipe/DEBIAN/conffiles
install -m 755 "$here/debian/segpipe.postinst" debian/segpipe/DEBIAN/postinst
install -m 755 "$here/debian/segpipe.postrm" debian/segpipe/DEBIAN/postrm
gzip -9n debian/segpipe/usr/share/man/man1/*.1

# python3-segpipe: the module's files as they are in the sources
install -d debian/python3-segpipe/usr/lib/python3/dist-packages/segpipe
install -m 644 "$src"/python/segpipe/*.py debian/python3-segpipe/usr/lib/python3/dist-packages/segpipe/
mkdir -p debian/python3-segpipe/DEBIAN
install -m 755 "$here/debian/python3-segpipe.postinst" debian/python3-segpipe/DEBIAN/postinst
install -m 755 "$here/debian/python3-segpipe.prerm" debian/python3-segpipe/DEBIAN/prerm

# what dh_strip does: debug symbols out of what is shipped
strip --remove-section=.comment --remove-section=.note --strip-unneeded \
  debian/segpipe/usr/bin/segpipe debian/libsegpipe0/usr/lib/libsegpipe.so.0 \
  $(ls debian/libsegpipe0/usr/lib/segpipe/libsegpipe_gdcm.so 2>/dev/null)
strip --remove-section=.comment --strip-debug --enable-deterministic-archives \
  debian/libsegpipe-dev/usr/lib/libsegpipe.a

# libsegpipe0: shlibs (what packages linking libsegpipe.so.0 depend on), ldconfig trigger
mkdir -p debian/libsegpipe0/DEBIAN
echo "libsegpipe 0 libsegpipe0 (>= $V)" > debian/libsegpipe0/DEBIAN/shlibs
echo "activate-noawait ldconfig" > debian/libsegpipe0/DEBIAN/triggers
# the private ONNX Runtime belongs to libsegpipe0: for this build only (not shipped)
echo "libonnxruntime 1 libsegpipe0 (= $V)" > debian/shlibs.local

for p in "${pkgs[@]}"; do
  install -d "debian/$p/usr/share/doc/$p" "debian/$p/DEBIAN"
  install -m 644 "$here/debian/copyright" "debian/$p/usr/share/doc/$p/copyright"
  gzip -9nc debian/changelog > "debian/$p/usr/share/doc/$p/changelog.gz"
  chmod 644 "debian/$p/usr/share/doc/$p/changelog.gz"
  [ ! -f "$here/lintian/$p" ] || install -D -m 644 "$here/lintian/$p" "debian/$p/usr/share/lintian/overrides/$p"
  echo "misc:Depends=" > "debian/$p.substvars"
done

dpkg-shlibdeps -Tdebian/segpipe.substvars -ldebian/libsegpipe0/usr/lib/segpipe debian/segpipe/usr/bin/segpipe
dpkg-shlibdeps --warnings=1 -Tdebian/libsegpipe0.substvars -ldebian/libsegpipe0/usr/lib/segpipe \
  debian/libsegpipe0/usr/lib/libsegpipe.so.0 debian/libsegpipe0/usr/lib/segpipe/*.so* \
  $(ls debian/libsegpipe0/usr/lib/libsegpipe_cuda.so 2>/dev/null)
# FFmpeg is opened with dlopen (src/io/av_load.h), which dpkg-shlibdeps cannot
# see: the packages holding the SONAMEs the library names
ff=$(strings debian/libsegpipe0/usr/lib/libsegpipe.so.0 | grep -E '^lib(avformat|avcodec|swscale|avutil)\.so\.[0-9]+$' |
  while read -r so; do dpkg -S "*/$so" | head -1 | cut -d: -f1; done | sort -u | paste -sd, - | sed 's/,/, /g')
echo "dlopen:Depends=$ff" >> debian/libsegpipe0.substvars

for p in "${pkgs[@]}"; do
  find "debian/$p" -type d -exec chmod 755 {} +
  (cd "debian/$p" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | LC_ALL=C sort -z |
     xargs -0 md5sum) > "debian/$p/DEBIAN/md5sums"
  chmod 644 "debian/$p/DEBIAN/md5sums"
  dpkg-gencontrol -p"$p" -P"debian/$p" -T"debian/$p.substvars" -fdebian/files
  dpkg-deb --root-owner-group -Zgzip --build "debian/$p" . >/dev/null
done
ls ./*.deb
