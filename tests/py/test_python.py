"""The Python package (python/segpipe): installed with pip into a fresh
virtual environment with no network, then used from outside the checkout;
its results are checked against the CLI's on the same inputs (labels voxel
for voxel, passports, mask PNGs), arrays against files, errors as
exceptions, and the GIL released while C runs."""
import hashlib, json, os, shutil, subprocess, sys, tempfile, textwrap
import numpy as np
import nibabel as nib
from PIL import Image
import sp

SRC = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")


def venv_python(tmp):
    """A venv (system numpy visible) with `pip install --no-index ./python`,
    made once per test run (sp.once: the module's shards share it)."""
    def make(d):
        src = os.path.join(d, "src")   # a copy: pip's build/ and egg-info stay out of the checkout
        shutil.copytree(os.path.join(sp.ROOT, "python"), src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", os.path.join(d, "venv")], check=True)
        p = subprocess.run([os.path.join(d, "venv", "bin", "pip"), "install", "-q", "--no-index", "--no-build-isolation",
                            src], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    return os.path.join(sp.once(("python venv",), make), "venv", "bin", "python")


def pyrun(tmp, code, **env):
    """Run code with the installed package from tmp (not the checkout)."""
    e = sp.python_env(dict(os.environ, SEGPIPE_LIBRARY=os.path.join(sp.BUILD, "libsegpipe.so"), **env))
    e.pop("PYTHONPATH", None)
    p = subprocess.run([venv_python(tmp), "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=tmp,
                       env=e, timeout=600)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _no_segpipe_env():
    """os.environ without SEGPIPE_* and PYTHONPATH: what a new user's shell has."""
    return sp.python_env({k: v for k, v in os.environ.items() if not k.startswith("SEGPIPE_") and k != "PYTHONPATH"})


@sp.realistic("README's journey: `make install`, a fresh venv, `import segpipe` with no variable (the other "
              "test_python tests: the binding)")
def test_python_installed_without_variables(tmp):
    """README's journey: `make install PREFIX=P`, `pip install ./python` into
    a fresh venv (setup.py records P's library), then `import segpipe` from
    another folder with no variable at all; the labels, affine and passport
    it writes equal the installed CLI's."""
    prefix = os.path.join(tmp, "prefix")
    make = ["make", "-s", "install", f"PREFIX={prefix}"] + (["SANITIZE=1"] if "asan" in sp.BUILD else [])
    p = subprocess.run(make, cwd=sp.ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    venv, src = os.path.join(tmp, "venv"), os.path.join(tmp, "src")
    shutil.copytree(os.path.join(sp.ROOT, "python"), src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
    p = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "--no-index", "--no-build-isolation", src],
                       capture_output=True, text=True, env=dict(_no_segpipe_env(), SEGPIPE_PREFIX=prefix))
    assert p.returncode == 0, p.stdout + p.stderr
    work = os.path.join(tmp, "elsewhere")
    os.mkdir(work)
    cli = subprocess.run([os.path.join(prefix, "bin", "segpipe"), "ct", SRC, "-o", "cli/x.nii.gz", "-q"], cwd=work,
                         capture_output=True, text=True, env=_no_segpipe_env())
    assert cli.returncode == 0 and "warning" not in cli.stderr, cli.stderr    # a real CT: no doubt raised
    p = subprocess.run([os.path.join(venv, "bin", "python"), "-c", textwrap.dedent(f"""
        import json, segpipe
        img = segpipe.segment({SRC!r}, "py/x.nii.gz")
        print(json.dumps({{"file": segpipe.__file__, "lib": segpipe.library_path(),
                           "names": img.label_names, "affine": img.affine.tolist()}}))
    """)], cwd=work, capture_output=True, text=True, env=_no_segpipe_env(), timeout=600)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["file"].startswith(venv) and os.path.realpath(got["lib"]).startswith(os.path.realpath(prefix)), got
    a, b = nib.load(os.path.join(work, "cli", "x.nii.gz")), nib.load(os.path.join(work, "py", "x.nii.gz"))
    assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)) and np.allclose(a.affine, b.affine)
    assert np.allclose(np.array(got["affine"]), nib.load(SRC).affine)
    pa, pb = (json.load(open(os.path.join(work, d, "x.passport.json"))) for d in ("cli", "py"))
    assert pa["structures"] == pb["structures"] and len(pa["structures"]) > 10
    # the same provenance of the same input and model, written by C and by Python
    va, vb = pa["provenance"], pb["provenance"]
    assert va["input"] == vb["input"] and va["input"]["sha256"] == hashlib.sha256(open(SRC, "rb").read()).hexdigest()
    assert va["model"] == vb["model"] and va["warnings"] == vb["warnings"] == []
    names = {int(k): v for k, v in got["names"].items()}
    assert {s["name"] for s in pa["structures"]} <= set(names.values()) and names[1] == "spleen"


def test_python_segment_nibabel_like_cli(tmp):
    """segment(): a nibabel image in, a nibabel image out (affine, label
    table) equal to `segpipe ct --roi-subset ... --preview` on the file, the
    output folder made; label_names is the mapping passport() takes."""
    out = os.path.join(tmp, "cli.nii.gz")
    sp.run("ct", SRC, "-o", out, "-q", "--roi-subset", "liver,spleen", "--preview", os.path.join(tmp, "cli.png"),
           check=True)
    cli = nib.load(out)
    pyrun(tmp, f"""
        import json, numpy as np, nibabel as nib, segpipe
        img = segpipe.segment(nib.load({SRC!r}), "new/dir/py.nii.gz", roi_subset=["liver", "spleen"],
                              preview="py.png")
        assert isinstance(img, nib.Nifti1Image)
        np.save("labels.npy", np.asanyarray(img.dataobj)); np.save("affine.npy", img.affine)
        r = segpipe.ct({SRC!r}, roi_subset="liver,spleen")
        p = segpipe.passport({SRC!r}, r.labels, label_names=r.label_names)
        q = segpipe.passport(nib.load({SRC!r}), img, label_names=img.label_names)
        json.dump([p, q, img.label_names], open("p.json", "w"))
    """)
    lab = np.load(os.path.join(tmp, "labels.npy"))
    assert np.array_equal(lab, np.asanyarray(cli.dataobj)) and np.allclose(np.load(os.path.join(tmp, "affine.npy")),
                                                                           cli.affine)
    assert sorted(np.unique(lab).tolist())[1:] and os.path.exists(os.path.join(tmp, "new", "dir", "py.nii.gz"))
    assert os.path.exists(os.path.join(tmp, "new", "dir", "py.passport.json")) and os.path.exists(
        os.path.join(tmp, "py.png"))
    p, q, names = json.load(open(os.path.join(tmp, "p.json")))
    want = {names[str(v)] for v in np.unique(lab) if v}
    assert {s["name"] for s in p["structures"]} == want == {s["name"] for s in q["structures"]} == {"liver", "spleen"}


def test_python_ct_matches_cli(tmp):
    """ct() of a file and of an array: the CLI's labels and passport (one
    tile of the example CT)"""
    SRC = sp.one_tile_ct()
    out = sp.ct_run(SRC)   # `segpipe ct`, once per test run
    cli = np.asanyarray(nib.load(out).dataobj)
    cli_pass = json.load(open(out.replace(".nii.gz", ".passport.json")))
    pyrun(tmp, f"""
        import json, numpy as np, nibabel as nib, segpipe
        assert 'site-packages' in segpipe.__file__, segpipe.__file__
        r = segpipe.ct({SRC!r})
        np.save('file.npy', r.labels)
        json.dump(r.passport, open('file.json', 'w'))
        json.dump(r.seconds, open('seconds.json', 'w'))
        im = nib.load({SRC!r})
        a = segpipe.ct(np.asanyarray(im.dataobj), affine=im.affine, passport=False)
        np.save('array.npy', a.labels)
        assert a.passport is None
    """)
    got = np.load(os.path.join(tmp, "file.npy"))
    assert got.dtype == np.uint16 and got.shape == cli.shape and np.array_equal(got, cli)
    assert np.array_equal(np.load(os.path.join(tmp, "array.npy")), cli)
    pj = json.load(open(os.path.join(tmp, "file.json")))
    assert pj["structures"] == cli_pass["structures"] and pj["scan"] == cli_pass["scan"]
    assert json.load(open(os.path.join(tmp, "seconds.json")))["inference"] > 0


def test_python_reoriented_array(tmp):
    """An array flipped along i with the matching affine: same anatomy, so
    the labels are the CLI's labels flipped back (one tile of the example CT)."""
    im = nib.load(sp.one_tile_ct())
    a = np.asanyarray(im.dataobj)[::-1]
    aff = im.affine.copy()
    aff[:3, 3] += aff[:3, 0] * (a.shape[0] - 1)
    aff[:3, 0] *= -1
    flipped = os.path.join(tmp, "flipped.nii.gz")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(a), aff), flipped)
    out = os.path.join(tmp, "cli.nii.gz")
    sp.run("ct", flipped, "-o", out, "-q", "--no-passport", check=True)
    cli = np.asanyarray(nib.load(out).dataobj)
    np.save(os.path.join(tmp, "a.npy"), a)
    np.save(os.path.join(tmp, "aff.npy"), aff)
    pyrun(tmp, """
        import numpy as np, segpipe
        r = segpipe.ct(np.load('a.npy'), affine=np.load('aff.npy'), passport=False)
        np.save('out.npy', r.labels)
    """)
    assert np.array_equal(np.load(os.path.join(tmp, "out.npy")), cli)


def test_python_passport_matches_cli(tmp):
    lab = os.path.join(sp.CTDIR, "example_seg_fast.nii.gz")
    cli = os.path.join(tmp, "cli.json")
    sp.run("passport", "--ct", SRC, "--labels", lab, "-o", cli, "-q", check=True)
    pyrun(tmp, f"""
        import json, numpy as np, nibabel as nib, segpipe
        ct, lab = nib.load({SRC!r}), nib.load({lab!r})
        names = {{int(k): v for k, v in json.load(open({os.path.join(sp.CTDIR, "total_v2_labels.json")!r})).items()}}
        p = segpipe.passport(np.asanyarray(ct.dataobj), np.asanyarray(lab.dataobj), affine=ct.affine,
                             label_names=[names.get(i) for i in range(max(names) + 1)])
        json.dump(p, open('py.json', 'w'))
        q = segpipe.passport({SRC!r}, {lab!r})
        json.dump(q, open('files.json', 'w'))
        try:
            segpipe.passport({SRC!r}, np.zeros((2, 2, 2)))
            raise SystemExit('no error for mismatched labels')
        except ValueError as e:
            assert 'shape' in str(e) and isinstance(e, segpipe.Error) and e.exit_code == 3
    """)
    c = json.load(open(cli))
    files = json.load(open(os.path.join(tmp, "files.json")))
    diff = [(x, y) for x, y in zip(files["structures"], c["structures"]) if x != y]
    assert not diff and len(files["structures"]) == len(c["structures"]), diff[:1]
    arr = json.load(open(os.path.join(tmp, "py.json")))
    assert [s["volume_ml"] for s in arr["structures"]] == [s["volume_ml"] for s in c["structures"]]


def test_python_masks_match_cli(tmp):
    sys.path.insert(0, os.path.join(sp.ROOT, "tools", "train"))
    from render_rooms import render
    img, _ = render((240, 320), seed=100007)
    path = os.path.join(tmp, "room.png")
    Image.fromarray(img).save(path)
    out = os.path.join(tmp, "out")
    sp.run("masks", path, "-o", out, "-q", check=True)
    pyrun(tmp, f"""
        import numpy as np, segpipe
        from PIL import Image
        m = segpipe.masks(np.asarray(Image.open({path!r}).convert('RGB')))
        for k, v in m.items():
            np.save(k + '.npy', v)
        assert set(m) == set(m.areas) and m.seconds['inference'] > 0
        f = segpipe.masks({path!r}, masks=['floor'])
        assert list(f) == ['floor']
    """)
    for name in ("wall", "floor", "ceiling", "window"):
        cli = np.asarray(Image.open(os.path.join(out, f"room.{name}.png"))) == 255
        assert np.array_equal(np.load(os.path.join(tmp, name + ".npy")), cli), name


def test_python_errors_and_gil(tmp):
    pyrun(tmp, f"""
        import os, threading, time, numpy as np, segpipe
        for bad, status, code in (('/nonexistent.nii.gz', 'io', 6), ({os.path.join(sp.ROOT, 'README.md')!r}, 'input', 3)):
            try:
                segpipe.ct(bad)
                raise SystemExit('no error')
            except segpipe.Error as e:
                assert e.status == status and e.exit_code == code and str(e), (e.status, e.exit_code, str(e))
        try:
            segpipe.Model('/nonexistent-model')
            raise SystemExit('no error')
        except segpipe.Error as e:
            assert e.status == 'model' and 'nonexistent-model' in str(e)
        try:   # a path is a path, never joined under the bundled models' folder
            segpipe.Model('../nonexistent-model')
            raise SystemExit('no error')
        except segpipe.Error as e:
            assert e.status == 'model' and 'model ../nonexistent-model: no such folder' in str(e) and '/models/' not in str(e), str(e)
        try:
            segpipe.ct(np.zeros((4, 4, 4)), affine=np.zeros((4, 4)))
            raise SystemExit('no error')
        except segpipe.Error as e:
            assert e.status == 'input'
        # the CLI's checks (issue 37): a photo named, a 2D slice refused, a label map warned about
        from PIL import Image
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save('photo.png')
        for bad, code, text in (('photo.png', 3, 'segpipe masks'), (np.zeros((64, 64)), 3, '2D slice')):
            try:
                segpipe.segment(bad, 'never/x.nii.gz')
                raise SystemExit('no error')
            except segpipe.Error as e:
                assert e.exit_code == code and text in str(e), (e.exit_code, str(e))
        assert not os.path.exists('never')
        import warnings, nibabel as nib
        im = nib.load({SRC!r})
        lab = nib.Nifti1Image((np.asanyarray(im.dataobj) > 200).astype(np.uint8), im.affine)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            try:
                segpipe.segment(lab, roi_subset=['no_such_organ'])
                raise SystemExit('no error')
            except segpipe.Error as e:
                assert e.exit_code == 2 and 'no_such_organ' in str(e), (e.exit_code, str(e))
        assert [x.category for x in w] == [segpipe.SegpipeWarning] and 'label map' in str(w[0].message), w
        # a T1 in 0..255 (many values) is an MRI, not a label map: the CLI's text (ct_cmd.c's rule)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            segpipe.segment({os.path.join(sp.SHARED, 'data', 'mri', 'tinyT1.nii.gz')!r}, 't1seg.nii.gz')
        assert [str(x.message).split(': ', 1)[1] for x in w] == ['less than 1% of the voxels are below -500: no air '
            'in Hounsfield units, so this does not look like a CT (an MRI? use segpipe mri)'], [str(x.message) for x in w]
        # an array without its affine: said, not silently taken as 1 mm
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            segpipe.ct(np.full((8, 8, 8), -1000.0), passport=False)
        assert any('without affine=' in str(x.message) for x in w), [str(x.message) for x in w]
        # the GIL is released while C runs: this thread keeps counting
        m = segpipe.Model(threads=1)
        done, n = [], 0
        t = threading.Thread(target=lambda: done.append(m.ct({SRC!r}, passport=False)))
        t0 = time.time(); t.start()
        while t.is_alive():
            n += 1
        t.join()
        assert done and n > 1e5, n
        print(n, time.time() - t0)
    """)



def test_python_library_warnings(tmp):
    """The library's own warnings reach Python as SegpipeWarning, as the CLI
    prints them: a DICOM-SEG written for a series without a
    StudyInstanceUID (the shared series; 6 of its slices) warns that the
    output gets a new study; pydicom reads the SEG and its study UID is new."""
    import pydicom
    series = os.path.join(sp.CTDIR, "example_ct_dicom")
    d = os.path.join(tmp, "series")
    os.makedirs(d)
    for f in sorted(os.listdir(series))[:6]:
        shutil.copy(os.path.join(series, f), d)
    assert not getattr(pydicom.dcmread(os.path.join(d, os.listdir(d)[0])), "StudyInstanceUID", "")
    out = pyrun(tmp, f"""
        import warnings, segpipe
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            segpipe.segment({d!r}, 'seg.dcm', output_type='dicom')
        print([(x.category.__name__, str(x.message)) for x in w])
    """)
    w = eval(out.strip().splitlines()[-1])
    assert any(c == "SegpipeWarning" and "no StudyInstanceUID" in m for c, m in w), w
    seg = pydicom.dcmread(os.path.join(tmp, "seg.dcm"))
    assert seg.Modality == "SEG" and seg.StudyInstanceUID

def test_python_classify_matches_cli(tmp):
    from test_classify import package, photo
    d = package(tmp, "cls")
    path = os.path.join(tmp, "p.png")
    Image.fromarray(photo(50, 70, 1)).save(path)
    out = os.path.join(tmp, "c.json")
    sp.run("classify", path, "--model", d, "--top", "4", "--json", out, "-q", check=True)
    cli = {t["label"]: t["probability"] for t in json.load(open(out))["photos"][0]["top"]}
    got = json.loads(pyrun(tmp, f"""
        import json, numpy as np, segpipe
        from PIL import Image
        m = segpipe.Model({d!r})
        a = m.classify(np.asarray(Image.open({path!r}).convert('RGB')), top=4)
        b = m.classify({path!r}, top=2)
        assert [x[0] for x in b] == [x[0] for x in a[:2]] and set(a.probabilities) == {{'red', 'green', 'blue', 'bright'}}
        print(json.dumps(dict(a)))
    """))
    assert set(got) == set(cli) and all(abs(got[k] - cli[k]) < 1e-12 for k in cli), (got, cli)


def _header_fields(struct):
    """Field names of `typedef struct NAME {...} NAME;` in include/segpipe.h, in order."""
    import re
    h = open(os.path.join(sp.ROOT, "include", "segpipe.h")).read()
    body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (struct, struct), h, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names = []
    for decl in body.split(";"):
        decl = decl.strip()
        if not decl:
            continue
        m = re.search(r"\(\s*\*\s*(\w+)\s*\)", decl)   # a function pointer
        names += [m.group(1)] if m else [re.sub(r"\[.*\]", "", d).strip().split()[-1].lstrip("*")
                                         for d in decl.split(",")]
    return names


def test_python_structs_mirror_the_header(tmp):
    """ctypes needs each parameter struct's every field: one missing at the
    end makes sp_*_default_params write past Python's copy. The binding's
    structs list the header's fields, in order."""
    sys.path.insert(0, os.path.join(sp.ROOT, "python"))
    try:
        from segpipe import _lib
    finally:
        sys.path.pop(0)
    pairs = [("sp_ct_params", _lib.CtParams), ("sp_runtime_params", _lib.RuntimeParams),
             ("sp_passport_params", _lib.PassportParams), ("sp_masks_params", _lib.MasksParams),
             ("sp_mask", _lib.Mask), ("sp_masks_result", _lib.MasksResult), ("sp_classify_params", _lib.ClassifyParams),
             ("sp_class_score", _lib.ClassScore), ("sp_classify_result", _lib.ClassifyResult),
             ("sp_volume_info", _lib.VolumeInfo), ("sp_stage_time", _lib.StageTime), ("sp_timings", _lib.Timings),
             ("sp_read_params", _lib.ReadParams)]
    for name, cls in pairs:
        assert [f[0] for f in cls._fields_] == _header_fields(name), name
