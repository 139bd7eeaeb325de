"""Task packages run one part model at a time (issue #43: segpipe held all
five part sessions of TotalSegmentator's `total` at once, 12.7 GB of GPU
memory against TotalSegmentator's 3.1 GB, which loads, runs and frees one
part after the other).

`segpipe ct --model PKG INPUT` (one input) loads each part's ONNX Runtime
session when the part is about to run and releases it once its labels are
merged (`--parts on-demand`, the default); `--parts resident`, `--inputs`,
the service and the Python binding's default hold all parts from load to
free. Checked here: the labels are byte-identical either way (full task,
--roi-subset with and without the 6 mm crop model, a subtask's crop, the
Python binding repeated and concurrent), the process's
peak RSS drops by about the sessions of the parts that are no longer held
together (networks large enough that their sessions dominate), and a part
that cannot be loaded mid-run is named in the error and leaves no output.
"""
import json, os, shutil, sys, threading

import numpy as np
import nibabel as nib
import sp
import test_totalseg as T
import test_totalseg_tasks as TT


def run_both(tmp, model, name, *extra):
    """`segpipe ct` on the fixture's CT with each --parts mode -> {mode: output path}"""
    out = {}
    for mode in ("on-demand", "resident"):
        o = os.path.join(tmp, f"{name}-{mode}.nii.gz")
        T.run_ct(model, o, "--parts", mode, *extra)
        out[mode] = o
    return out


def assert_same(out):
    a, b = (open(out[m], "rb").read() for m in ("on-demand", "resident"))
    assert a == b, "the labels files differ"
    la, lb = (T.labels_of(out[m]) for m in ("on-demand", "resident"))
    assert np.array_equal(la, lb)
    return la


def test_totalseg_parts_on_demand_same_labels(tmp):
    """On-demand and resident parts give byte-identical labels files and
    statistics: the full task, --roi-subset (crop model + needed parts; and
    without crop model), and a subtask (liver_vessels: its 6 mm crop model,
    then its model on the crop, each loaded for its own step)."""
    fx = T.fixture()
    full = run_both(tmp, fx["pkg"], "full", "--report", os.path.join(tmp, "report.json"))
    lab = assert_same(full)
    assert len(np.unique(lab)) > 10   # several parts' structures present: the merge is exercised
    s = [open(full[m].replace(".nii.gz", ".statistics.json")).read() for m in ("on-demand", "resident")]
    assert s[0] == s[1]   # the statistics beside the labels too
    # the subset: the two structures the full run labels most, and the one the 6 mm crop model finds most
    # (random weights: else its box may hold nothing)
    man = json.load(open(os.path.join(fx["pkg"], "segpipe.json")))
    organ = os.path.join(tmp, "organ.nii.gz")
    T.run_ct(os.path.join(fx["pkg"], man["roi_crop"]["dir"]), organ, "--no-passport")
    ol = T.labels_of(organ)
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    want = {int(i) for i in ids[np.argsort(counts)[-2:]]} | {int(np.bincount(ol[ol > 0]).argmax())}
    roi = ",".join(T.upstream_maps()[0][i] for i in sorted(want))
    for pkg, name in ((fx["pkg"], "roi-crop"), (fx["nocrop"], "roi-nocrop")):
        r = assert_same(run_both(tmp, pkg, name, "--roi-subset", roi, "--no-passport"))
        assert r.any() and set(np.unique(r)) <= {0, *want}, (name, np.unique(r), want)
    sub = TT.subtask(fx)
    assert_same(run_both(tmp, sub["compact_pkg"], "subtask", "--no-passport"))


def test_totalseg_parts_on_demand_python(tmp):
    """The Python binding: Model(parts_on_demand=True) called repeatedly and
    from two threads at once gives the resident Model's labels, which equal
    the CLI's."""
    if "asan" in sp.BUILD:
        raise sp.Skip("the sanitizer build's library cannot be loaded into python")
    fx = T.fixture()
    cli = os.path.join(tmp, "cli.nii.gz")
    T.run_ct(fx["nocrop"], cli, "--no-passport", "--parts", "resident")
    sys.path.insert(0, os.path.join(sp.ROOT, "python"))
    os.environ["SEGPIPE_LIBRARY"] = os.path.join(sp.BUILD, "libsegpipe.so")
    import segpipe
    ref = T.labels_of(cli)
    for on_demand in (False, True):
        m = segpipe.Model(fx["nocrop"], threads=1, parts_on_demand=on_demand)
        try:
            assert len(m.parts) == 5
            for _ in range(2):
                assert np.array_equal(m.ct(fx["ct"], passport=False).labels, ref)
            got = [None, None]

            def one(i):
                got[i] = m.ct(fx["ct"], passport=False).labels
            th = [threading.Thread(target=one, args=(i,)) for i in range(2)]
            for t in th:
                t.start()
            for t in th:
                t.join()
            assert all(g is not None and np.array_equal(g, ref) for g in got)
        finally:
            m.close()


BIG_FEATURES = "32,64,128,256"   # 22 MB of float32 weights a part (TotalSegmentator's: 32..320, 6 stages)


def big_package():
    """five parts of `total` with networks whose sessions dominate the run's
    memory (patch 32, so one tile on the small CT below), made once per test
    run, and a 20x20x16-voxel CT at 1.5 mm (one tile a part)"""
    def make(d):
        home = os.path.join(d, "home")
        p = T.py(T.FAKE, home, "--patch", "32", "--features", BIG_FEATURES, "--ids", "291,292,293,294,295")
        assert p.returncode == 0, p.stderr
        p = T.py(T.IMPORTER, home, "-o", os.path.join(d, "total"), "--no-crop-model")
        assert p.returncode == 0, p.stderr
        shutil.rmtree(home)
        rng = np.random.default_rng(7)
        ct = rng.normal(40, 300, (10, 10, 8)).clip(-1000, 2000).astype(np.int16)
        nib.save(nib.Nifti1Image(ct, np.diag([3.0, 3.0, 3.0, 1.0])), os.path.join(d, "ct.nii.gz"))
    d = sp.once(("totalseg big parts", BIG_FEATURES), make)
    return os.path.join(d, "total"), os.path.join(d, "ct.nii.gz")


@sp.realistic("the peak-RSS saving measured on five TotalSegmentator-sized parts (about 20 MB of weights "
              "each); test_totalseg_parts_on_demand_same_labels runs the same on-demand C paths on small parts")
def test_totalseg_parts_on_demand_peak_rss(tmp):
    """One-input `segpipe ct` on a task package holds one part's session at
    a time: its peak RSS (--report's peak_rss_bytes, the kernel's VmHWM) is
    lower than with all parts resident by at least 3/4 of the weights of the
    four parts it no longer holds together (the ONNX files' sizes); the
    labels are the same. Fails if the parts stay loaded."""
    pkg, ct = big_package()
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    sizes = sorted(os.path.getsize(os.path.join(pkg, p["dir"], "model.onnx")) for p in man["parts"])
    assert len(sizes) == 5 and sizes[0] > 15e6, sizes
    peak, labs = {}, {}
    for mode in ("on-demand", "resident"):
        out, rep = os.path.join(tmp, f"{mode}.nii.gz"), os.path.join(tmp, f"{mode}.json")
        p = sp.run("ct", ct, "-o", out, "--model", pkg, "-q", "--no-passport", "-t", "2", "--no-cache-graph",
                   "--parts", mode, "--report", rep)
        assert p.returncode == 0, p.stderr
        r = json.load(open(rep))
        peak[mode] = r["peak_rss_bytes"]
        assert r["seconds"]["load_model"] > 0
        labs[mode] = open(out, "rb").read()
    assert labs["on-demand"] == labs["resident"]
    saved = peak["resident"] - peak["on-demand"]
    assert saved >= 0.75 * sum(sizes[:4]), (peak, sizes)


def test_totalseg_parts_on_demand_broken_part(tmp):
    """A part whose ONNX file is not a model: on demand the run fails when it
    reaches that part (after parts 1-2 ran), naming the part and why, exit 4
    (model), no labels, passport or statistics written; resident fails at
    load the same way. A missing ONNX file is found at load in both modes."""
    fx = T.fixture()
    pkg = os.path.join(tmp, "total")
    shutil.copytree(fx["nocrop"], pkg)
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    part3 = man["parts"][2]["dir"]
    with open(os.path.join(pkg, part3, "model.onnx"), "wb") as f:
        f.write(b"not an onnx model" * 64)
    for mode in ("on-demand", "resident"):
        out = os.path.join(tmp, mode, "labels.nii.gz")
        p = sp.run("ct", fx["ct"], "-o", out, "--model", pkg, "--parts", mode, "-t", "1")
        assert p.returncode == 4, (p.returncode, p.stderr)
        assert part3 in p.stderr, p.stderr
        if mode == "on-demand":
            assert "part 3 of 5" in p.stderr and "loaded when the run reached it" in p.stderr, p.stderr
            assert "inference" not in p.stdout   # no stage table: nothing finished
        d = os.path.dirname(out)
        assert not os.path.exists(d) or os.listdir(d) == [], os.listdir(d)
    os.remove(os.path.join(pkg, part3, "model.onnx"))
    for mode in ("on-demand", "resident"):
        out = os.path.join(tmp, "missing-" + mode + ".nii.gz")
        p = sp.run("ct", fx["ct"], "-o", out, "--model", pkg, "--parts", mode, "-t", "1")
        assert p.returncode == 4 and part3 in p.stderr and not os.path.exists(out), p.stderr
    p = sp.run("ct", "--inputs", os.path.join(tmp, "list.txt"), "-o", tmp, "--model", pkg, "--parts", "resident")
    assert p.returncode == 2 and "--parts takes one INPUT" in p.stderr, p.stderr
    p = sp.run("ct", fx["ct"], "-o", os.path.join(tmp, "x.nii.gz"), "--model", pkg, "--parts", "lazy")
    assert p.returncode == 2 and "on-demand or resident" in p.stderr, p.stderr
