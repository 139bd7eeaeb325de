"""`make install` into a temporary prefix (DESTDIR), the installed tree then
moved elsewhere (so neither the checkout nor the prefix it was installed for
is reachable by path): the installed segpipe runs `ct` with its default
model, lists its models, serves health/ready, and an external C program
builds against it with pkg-config."""
import os, shutil, subprocess, urllib.request
import numpy as np
import nibabel as nib
import sp
from test_server import free_port


def test_install_relocatable(tmp):
    dest = os.path.join(tmp, "dest")
    args = ["make", "-s", "install", f"DESTDIR={dest}", "PREFIX=/opt/segpipe", f"BUILD={os.path.basename(sp.BUILD)}"]
    if "asan" in sp.BUILD:
        args.append("SANITIZE=1")
    subprocess.run(args, cwd=sp.ROOT, check=True, capture_output=True)
    root = os.path.join(tmp, "elsewhere")
    shutil.move(os.path.join(dest, "opt", "segpipe"), root)
    seg = os.path.join(root, "bin", "segpipe")
    env = {k: v for k, v in sp.run_env().items() if not k.startswith("SEGPIPE")}
    for f in ("segpipe", "libsegpipe.so"):   # no absolute build path compiled in
        path = os.path.join(root, "bin" if f == "segpipe" else "lib", f)
        assert sp.ROOT.encode() not in open(path, "rb").read(), f
    run = lambda *a, **kw: subprocess.run([seg, *a], capture_output=True, text=True, cwd=tmp, env=env, timeout=300, **kw)
    r = run("models")
    assert r.returncode == 0 and os.path.join(root, "share", "segpipe", "models", "demo-ct") in r.stdout, r.stdout
    ct = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    out = os.path.join(tmp, "inst.nii.gz")
    r = run("ct", ct, "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    ref = sp.ct_run(ct)   # the build tree's `segpipe ct`, once per test run
    assert np.array_equal(np.asanyarray(nib.load(out).dataobj), np.asanyarray(nib.load(ref).dataobj))
    port = free_port()
    p = subprocess.Popen([seg, "serve", "--port", str(port), "--model",
                          "demo=" + os.path.join(root, "share", "segpipe", "models", "demo-ct")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp, env=env)
    try:
        assert "ready on" in p.stdout.readline()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10) as resp:
            assert resp.status == 200
    finally:
        p.terminate()
        assert p.wait(timeout=60) == 0
    src = os.path.join(tmp, "ext.c")
    open(src, "w").write('#include <segpipe.h>\n#include <stdio.h>\nint main(int argc, char **argv) {\n'
                         '  sp_read_params p = sp_read_default_params();\n'
                         '  printf("%s %llu %s\\n", SP_VERSION_STRING, (unsigned long long)p.max_voxels, sp_models_dir());\n'
                         '  sp_volume *v = NULL;\n'
                         '  if (argc > 1 && sp_volume_read(argv[1], &p, &v)) return printf("%s\\n", sp_last_error()), 1;\n'
                         '  sp_volume_free(v);\n'
                         '  return 0;\n}\n')
    pc = subprocess.run(["pkg-config", "--define-prefix", "--cflags", "--libs", "segpipe"], capture_output=True,
                        text=True, check=True, env={**env, "PKG_CONFIG_PATH": os.path.join(root, "lib", "pkgconfig")})
    exe = os.path.join(tmp, "ext")
    flags = pc.stdout.split() + ["-Wl,-rpath," + os.path.join(root, "lib")]
    if "asan" in sp.BUILD:
        flags.append("-fsanitize=address,undefined")
    subprocess.run(["cc", src, "-o", exe, *flags], check=True, capture_output=True)
    r = subprocess.run([exe, os.path.join(sp.CTDIR, "example_ct_dicom")], capture_output=True, text=True, env=env, cwd=tmp)
    assert r.returncode == 0 and r.stdout.split()[1] == str(1 << 30), r.stdout + r.stderr
    assert r.stdout.split()[2] == os.path.join(root, "share", "segpipe", "models")
    # GDCM's reader is opened from PREFIX/lib/segpipe/ on the first series (src/io/gdcm_load.c), by the
    # CLI (../lib/segpipe from bin/) and by a program linking libsegpipe.so.0 (above: segpipe/ from lib/);
    # without it, a clear error and nothing written
    dcm_out = os.path.join(tmp, "dcm.nii.gz")
    r = run("resample", os.path.join(sp.CTDIR, "example_ct_dicom"), "-o", dcm_out, "--spacing", "4,4,4")
    assert r.returncode == 0 and os.path.exists(dcm_out), r.stderr
    os.rename(os.path.join(root, "lib", "segpipe", "libsegpipe_gdcm.so"), os.path.join(tmp, "gdcm.so"))
    os.unlink(dcm_out)
    r = run("resample", os.path.join(sp.CTDIR, "example_ct_dicom"), "-o", dcm_out, "--spacing", "4,4,4")
    assert r.returncode == 5 and "libsegpipe_gdcm.so is not installed" in r.stderr, (r.returncode, r.stderr)
    assert root not in r.stderr and not os.path.exists(dcm_out)

