"""`make deb` and `make deb-check` (packaging/, docs/packaging.md).

The packages are built once per module. One test reads them as dpkg does
(control fields, md5sums recomputed here, no build path in any shipped
file, the private ONNX Runtime's run paths, the copyright file's licences); one installs them for real
(packaging/deb-check.sh: dpkg --root into an overlay of this system,
chrooted runs, purge, nothing left) and compares the installed segpipe's
labels and passport with the build tree's; one runs lintian (no errors).
Each says sp.Skip with the reason when its tools are absent."""
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import numpy as np
import nibabel as nib
import sp

_built = {}
PKGS = ["segpipe", "libsegpipe0", "libsegpipe-dev", "python3-segpipe"]


def debs():
    """{package: path} of `make deb`, built once per module"""
    for tool in ("dpkg-deb", "dpkg-shlibdeps", "dpkg-gencontrol"):
        if not shutil.which(tool):
            raise sp.Skip(f"needs {tool} (Debian's dpkg-dev)")
    if "asan" in sp.BUILD:
        raise sp.Skip("packages are made from the release build, not the sanitizer build")
    if "d" not in _built:
        r = subprocess.run(["make", "-s", "deb", f"BUILD={os.path.basename(sp.BUILD)}"], cwd=sp.ROOT,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        d = os.path.join(sp.BUILD, "deb")
        found = {f.split("_")[0]: os.path.join(d, f) for f in os.listdir(d) if f.endswith(".deb")}
        _built["d"] = found
    assert sorted(_built["d"]) == sorted(PKGS), _built["d"]
    return _built["d"]


def field(deb, name):
    return subprocess.run(["dpkg-deb", "-f", deb, name], capture_output=True, text=True, check=True).stdout.strip()


def test_deb_packages_by_role(tmp):
    d = debs()
    v = field(d["segpipe"], "Version")
    assert re.fullmatch(r"[0-9][0-9A-Za-z.+~]*", v), v
    dep = {p: field(d[p], "Depends") for p in PKGS}
    # from dpkg-shlibdeps: the libraries the binaries link, with versions
    assert re.search(r"libmicrohttpd12 \(>= ", dep["segpipe"]) and f"libsegpipe0 (= {v})" in dep["segpipe"], dep
    assert re.search(r"libc6 \(>= ", dep["libsegpipe0"]) and "onnxruntime" not in dep["libsegpipe0"], dep
    # FFmpeg, opened with dlopen (src/io/av_load.h): named by make-deb.sh from the library's SONAMEs
    for ff in ("libavformat", "libavcodec", "libswscale", "libavutil"):
        assert re.search(ff + r"[0-9]+\b", dep["libsegpipe0"]), (ff, dep["libsegpipe0"])
    assert f"libsegpipe0 (= {v})" in dep["libsegpipe-dev"] and "python3-numpy" in dep["python3-segpipe"], dep
    assert field(d["python3-segpipe"], "Architecture") == "all"
    assert re.fullmatch(r".+ <[^@\s]+@[^@\s]+>", field(d["segpipe"], "Maintainer"))
    want = {"segpipe": ["usr/bin/segpipe", "lib/systemd/system/segpipe.service", "etc/segpipe/segpipe.conf",
                        "usr/share/man/man1/segpipe-ct.1.gz", "usr/share/bash-completion/completions/segpipe"],
            "libsegpipe0": ["usr/lib/libsegpipe.so.0", "usr/lib/segpipe/libonnxruntime.so.1",
                            "usr/share/segpipe/models/demo-ct/model.onnx"],
            "libsegpipe-dev": ["usr/include/segpipe.h", "usr/lib/libsegpipe.so", "usr/lib/libsegpipe.a",
                               "usr/lib/pkgconfig/segpipe.pc"],
            "python3-segpipe": ["usr/lib/python3/dist-packages/segpipe/__init__.py"]}
    for p, files in want.items():
        root, ctl = os.path.join(tmp, p), os.path.join(tmp, p + ".ctl")
        subprocess.run(["dpkg-deb", "-x", d[p], root], check=True)
        subprocess.run(["dpkg-deb", "-e", d[p], ctl], check=True)
        for f in files + [f"usr/share/doc/{p}/copyright", f"usr/share/doc/{p}/changelog.gz"]:
            assert os.path.lexists(os.path.join(root, f)), (p, f)
        # md5sums: every shipped file but conffiles, each sum right (recomputed here)
        listed = dict(reversed(l.split(None, 1)) for l in open(os.path.join(ctl, "md5sums")).read().splitlines())
        shipped = {os.path.relpath(os.path.join(a, f), root) for a, _, fs in os.walk(root) for f in fs
                   if not os.path.islink(os.path.join(a, f))}
        assert set(listed) == {f for f in shipped if not f.startswith("etc/")}, p
        for f, s in listed.items():
            data = open(os.path.join(root, f), "rb").read()
            assert hashlib.md5(data).hexdigest() == s, (p, f)
            if f.endswith(".gz"):
                data = gzip.decompress(data)
            assert sp.ROOT.encode() not in data, f"{p}: {f} holds the build path"
    ctl = os.path.join(tmp, "libsegpipe0.ctl")
    assert open(os.path.join(ctl, "triggers")).read().split() == ["activate-noawait", "ldconfig"]
    assert open(os.path.join(ctl, "shlibs")).read().split()[:3] == ["libsegpipe", "0", "libsegpipe0"]
    assert open(os.path.join(tmp, "segpipe.ctl", "conffiles")).read().split() == ["/etc/segpipe/segpipe.conf"]
    # ONNX Runtime only in the private folder, reached by run paths; nothing generic in /usr/lib
    lib = os.path.join(tmp, "libsegpipe0", "usr", "lib")
    assert not [f for f in os.listdir(lib) if "onnxruntime" in f]
    for f, rp in [(os.path.join(tmp, "segpipe", "usr", "bin", "segpipe"), "$ORIGIN/../lib/segpipe"),
                  (os.path.join(lib, "libsegpipe.so.0"), "$ORIGIN/segpipe")]:
        dyn = subprocess.run(["readelf", "-d", f], capture_output=True, text=True, check=True).stdout
        assert re.findall(r"\(RUNPATH\) +Library runpath: \[(.*)\]", dyn) == [rp], dyn
        assert sp.ROOT not in dyn
    # copyright: machine-readable, every bundled component with its licence paragraph
    cr = open(os.path.join(tmp, "segpipe", "usr", "share", "doc", "segpipe", "copyright")).read()
    assert cr.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    used = set()
    for m in re.finditer(r"^License: (.+)$", cr, re.M):
        used |= set(re.split(r" and | or ", m.group(1).strip()))
    standalone = set(re.findall(r"(?:^|\n\n)License: (\S+)\n", cr))
    assert used <= standalone, used - standalone
    for part in ("third_party/onnxruntime/*", "third_party/niivue/*", "models/demo-ct/*", "src/pipeline/font_data.h"):
        assert f"Files: {part}" in cr or part in cr, part
    assert {"Expat", "BSD-2-Clause", "bitstream-vera"} <= standalone
    # the unit: hardened, the key as a credential
    unit = open(os.path.join(tmp, "segpipe", "lib", "systemd", "system", "segpipe.service")).read()
    for k in ("DynamicUser=yes", "ProtectSystem=strict", "StateDirectory=segpipe", "CacheDirectory=segpipe",
              "LoadCredential=api-keys:/etc/segpipe/api-keys", "NoNewPrivileges=yes"):
        assert k in unit, k
    assert "--api-key-file ${CREDENTIALS_DIRECTORY}/api-keys" in unit


@sp.realistic("the Debian packages installed into a scratch root, run and purged (test_deb_packages_by_role: their "
              "contents)")
def test_deb_install_run_remove(tmp):
    d = debs()
    if os.geteuid() != 0 or not shutil.which("unshare"):
        raise sp.Skip("installing into a scratch root needs root and unshare (mount, chroot)")
    ct = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    env = dict(os.environ, SP_DEB_CHECK_OUT=tmp, SP_DEB_CHECK_NO_LINTIAN="1")   # lintian: its own test
    r = subprocess.run(["bash", os.path.join(sp.ROOT, "packaging", "deb-check.sh"), os.path.dirname(d["segpipe"]), ct],
                       capture_output=True, text=True, env=env, timeout=600)
    if r.returncode == 77:
        raise sp.Skip("no scratch root here: " + r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "ok: installed, ran, removed, nothing left" in r.stdout
    # the installed segpipe gives the build tree's labels and passport
    ref = sp.ct_run(ct)   # the build tree's `segpipe ct`, once per test run
    a, b = nib.load(os.path.join(tmp, "out.nii.gz")), nib.load(ref)
    assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    assert np.allclose(a.affine, b.affine)
    pa = json.load(open(os.path.join(tmp, "out.passport.json")))
    pb = json.load(open(ref.replace(".nii.gz", ".passport.json")))
    assert [(s["name"], s["voxels"]) for s in pa["structures"]] == [(s["name"], s["voxels"]) for s in pb["structures"]]
    ver = open(os.path.join(tmp, "version.txt")).read()
    assert re.search(r"^commit: [0-9a-f]{12}", ver, re.M) and "ONNX Runtime 1." in ver, ver


@sp.realistic("lintian, a third-party reader of the packages")
def test_deb_lintian(tmp):
    d = debs()
    if not shutil.which("lintian"):
        raise sp.Skip("needs lintian (scripts/install-deps.sh installs it)")
    r = subprocess.run(["lintian", "--tag-display-limit", "0", *d.values()], capture_output=True, text=True,
                       timeout=600)
    tags = [l for l in (r.stdout + r.stderr).splitlines() if re.match(r"^[EWIXO]: ", l)]
    errors = [l for l in tags if l.startswith("E: ")]
    assert not errors, "\n".join(errors)
    # every warning is listed, with its reason, in docs/packaging.md
    doc = open(os.path.join(sp.ROOT, "docs", "packaging.md")).read()
    for w in (l for l in tags if l.startswith("W: ")):
        tag = w.split()[2]
        assert tag in doc, f"lintian warning not explained in docs/packaging.md: {w}"
