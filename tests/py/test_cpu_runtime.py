"""ONNX Runtime on the CPU (issue 45): the arena per model and the
optimised-graph cache change speed and memory, never results. Labels with
the arena on and off, and from a cached graph, must be equal voxel for
voxel / pixel for pixel (nibabel and PIL read the outputs); bad settings are
refused with a clear message."""
import json, os, shutil, stat, subprocess
import numpy as np
import nibabel as nib
from PIL import Image
import sp

CT = os.path.join(sp.SHARED, "data", "ct", "example_ct_sm.nii.gz")
ROOMS = os.path.join(sp.ROOT, "models", "demo-rooms")


def run_env(*args, **env):
    e = sp.run_env()
    if "XDG_CACHE_HOME" in env:   # the folder under test, not the test run's SEGPIPE_CACHE_DIR
        e.pop("SEGPIPE_CACHE_DIR", None)
    e.update(env)
    return subprocess.run([sp.SEGPIPE, *map(str, args)], capture_output=True, text=True, timeout=600, env=e)


def room(tmp):
    import sys
    sys.path.insert(0, os.path.join(sp.ROOT, "tools", "train"))
    from render_rooms import render
    p = os.path.join(tmp, "room.png")
    Image.fromarray(render((240, 320), seed=100007)[0]).save(p)
    return p


def test_arena_on_off_same_ct_labels(tmp):
    """demo-ct on the real example CT: --arena on and --arena off (the
    default for CT models) give equal labels at the native grid and at the
    model grid."""
    if not os.path.exists(CT):
        raise sp.Skip("../shared/data/ct missing")
    got = {}
    for a in ("on", "off"):
        out, ml = os.path.join(tmp, a + ".nii.gz"), os.path.join(tmp, a + ".model.nii.gz")
        p = sp.run("ct", CT, "-o", out, "--arena", a, "--no-passport", "--save-model-labels", ml, "-t", "2", "-v")
        assert p.returncode == 0, p.stderr
        assert ("arena on" in p.stderr) == (a == "on"), p.stderr
        got[a] = [np.asarray(nib.load(f).dataobj) for f in (out, ml)]
    for x, y in zip(got["on"], got["off"]):
        assert x.shape == y.shape and np.array_equal(x, y)
    assert len(np.unique(got["on"][0])) > 3   # real structures, not an empty result


def test_tile_calls_same_labels_as_one_batched_call(tmp):
    """On the CPU a batch of tiles runs as concurrent single-tile calls
    (window_calls.c); SEGPIPE_TILE_CALLS=batched runs it as one batched
    call, as before. demo-ct on the real CT at tile batch 4 (a 122x81x30
    crop: 3 x 2 tiles, batches of 4 and a last one of another size, 2),
    and its split-head package (features accumulated, the head at the
    argmax): labels equal at the native and the model grid."""
    if not os.path.exists(CT):
        raise sp.Skip("../shared/data/ct missing")
    from test_memory import split_demo
    split = split_demo(tmp)
    im = nib.load(CT)
    crop = os.path.join(tmp, "crop.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(im.dataobj)[:, 20:, :], im.affine, im.header), crop)
    for model, tb in ((sp.DEMO, "4"), (split, "4")):
        got = {}
        for mode in ("calls", "batched"):
            out, ml = os.path.join(tmp, mode + ".nii.gz"), os.path.join(tmp, mode + ".model.nii.gz")
            env = {"SEGPIPE_TILE_CALLS": "batched"} if mode == "batched" else {}
            p = sp.run("ct", crop, "-o", out, "--model", model, "--tile-batch", tb, "--no-passport",
                       "--save-model-labels", ml, "-t", "2", "-v", env=env)
            assert p.returncode == 0 and "6 tiles" in p.stderr, p.stderr
            got[mode] = [np.asarray(nib.load(f).dataobj) for f in (out, ml)]
        for x, y in zip(got["calls"], got["batched"]):
            assert x.shape == y.shape and np.array_equal(x, y), (model, tb, int((x != y).sum()))
        assert len(np.unique(got["calls"][0])) > 3   # real structures, not an empty result


def big_head_package(d, classes=8, patch=(128, 128, 128)):
    """A package whose head is big for its tile: a 3x3x3 convolution to
    `classes` logits (PyTorch's export, random weights) on `patch` tiles at
    1.5 mm; -> its folder."""
    import torch
    os.makedirs(d)
    torch.manual_seed(5)
    net = torch.nn.Conv3d(1, classes, 3, padding=1)
    torch.onnx.export(net, torch.zeros(1, 1, *patch), os.path.join(d, "model.onnx"), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    man = json.load(open(os.path.join(sp.TINYSEG, "segpipe.json")))
    man.update(name="big-head", patch_size=list(patch), spacing=[1.5, 1.5, 1.5],
               labels={str(k): "background" if k == 0 else f"class_{k}" for k in range(classes)})
    json.dump(man, open(os.path.join(d, "segpipe.json"), "w"))
    return d


def test_auto_tile_batch_calls_big_heads_on_4_threads(tmp):
    """The automatic tile batch (ct.c auto_tile_batch): 8 classes on 128^3
    tiles (67 MB of logits a tile: 3 tiles by the 256 MB rule) run 3 at a
    time at 2 threads and as 4 concurrent calls at 4 threads, when 3x their
    logits a call fit in half the available memory; the labels are those of
    one tile at a time."""
    if not os.path.exists(CT):
        raise sp.Skip("../shared/data/ct missing")
    avail = [int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemAvailable:")][0]
    tile = 4.0 * 8 * 128 ** 3
    if 0.5 * avail < 4 * 3 * tile:
        raise sp.Skip(f"{avail >> 20} MB available: 4 calls of this model want {int(24 * tile) >> 20}")
    pk = big_head_package(os.path.join(tmp, "big-head"))
    got = {}
    for name, extra, said in (("t2", ("-t", "2"), "3 at a time (concurrent calls)"),
                              ("t4", ("-t", "4"), "4 at a time (concurrent calls)"),
                              ("one", ("-t", "4", "--tile-batch", "1"), "1 at a time")):
        out = os.path.join(tmp, name + ".nii.gz")
        p = sp.run("ct", CT, "-o", out, "--model", pk, "--no-passport", "-v", *extra)
        assert p.returncode == 0 and "9 tiles of 128x128x128, " + said in p.stderr, p.stderr
        got[name] = np.asarray(nib.load(out).dataobj)
    assert np.array_equal(got["t2"], got["one"]) and np.array_equal(got["t4"], got["one"])
    assert len(np.unique(got["one"])) > 3   # several classes win somewhere


def test_arena_on_off_same_masks(tmp):
    """The photo model (arena on by default) gives the same masks with
    --arena off; the default is the manifest's task rule (on for masks)."""
    ph = room(tmp)
    masks = {}
    for a in ("auto", "off"):
        out = os.path.join(tmp, a)
        p = sp.run("masks", ph, "-o", out, "--model", ROOMS, "--arena", a)
        assert p.returncode == 0, p.stderr
        masks[a] = {f: np.asarray(Image.open(os.path.join(out, f))) for f in sorted(os.listdir(out))
                    if f.endswith(".png")}
    assert masks["auto"].keys() == masks["off"].keys() and len(masks["auto"]) >= 2
    for f in masks["auto"]:
        assert np.array_equal(masks["auto"][f], masks["off"][f]), f
    assert any(m.any() for m in masks["auto"].values())


def test_arena_refusals(tmp):
    p = sp.run("ct", CT, "-o", os.path.join(tmp, "x.nii.gz"), "--arena", "sometimes")
    assert p.returncode == 2 and "--arena is auto, on or off" in p.stderr
    p = sp.run("masks", room(tmp), "-o", tmp, "--model", ROOMS, "--arena", "1")
    assert p.returncode == 2 and "--arena is auto, on or off" in p.stderr
    p = run_env("masks", room(tmp), "-o", os.path.join(tmp, "o"), "--model", ROOMS, SEGPIPE_ARENA="maybe")
    assert p.returncode != 0 and "unknown arena setting 'maybe'" in p.stderr
    pk = os.path.join(tmp, "pk")
    shutil.copytree(ROOMS, pk)
    mf = json.load(open(os.path.join(pk, "segpipe.json")))
    mf["arena"] = "yes"
    json.dump(mf, open(os.path.join(pk, "segpipe.json"), "w"))
    p = sp.run("masks", room(tmp), "-o", os.path.join(tmp, "o2"), "--model", pk)
    assert p.returncode != 0 and '"arena" must be true or false' in p.stderr
    assert not os.path.exists(os.path.join(tmp, "o2", "room.masks.json"))
    mf["arena"] = False   # the manifest turns it off
    json.dump(mf, open(os.path.join(pk, "segpipe.json"), "w"))
    p = sp.run("masks", room(tmp), "-o", os.path.join(tmp, "o3"), "--model", pk)
    assert p.returncode == 0, p.stderr


def test_graph_cache_keyed_private_and_same_masks(tmp):
    """--cache-graph: the optimised graph goes to $XDG_CACHE_HOME/segpipe/graphs
    (created 0700) as <sha256>.ort; the next run loads it and gives equal
    masks; a damaged entry is replaced, not trusted; a folder others can
    write is not used."""
    ph = room(tmp)
    xdg = os.path.join(tmp, "xdg")
    gdir = os.path.join(xdg, "segpipe", "graphs")

    def masks(k, extra, **env):
        out = os.path.join(tmp, "o%d" % k)
        p = run_env("masks", ph, "-o", out, "--model", ROOMS, *extra, **env)
        assert p.returncode == 0, p.stderr
        return p, {f: np.asarray(Image.open(os.path.join(out, f))) for f in sorted(os.listdir(out))
                   if f.endswith(".png")}

    _, ref = masks(0, ["--no-cache-graph"])
    assert not os.path.exists(xdg) or not os.listdir(xdg)
    for k in (1, 2):
        _, got = masks(k, ["--cache-graph"], XDG_CACHE_HOME=xdg)
        assert got.keys() == ref.keys() and all(np.array_equal(got[f], ref[f]) for f in ref)
        if k == 1:
            ents = sorted(os.listdir(gdir), key=lambda f: not f.endswith(".ort"))   # the graph, and its key's memo
            assert len(ents) == 2 and all(len(e) == 64 + 4 for e in ents), ents
            assert ents[0].endswith(".ort") and ents[1].endswith(".key"), ents
            first = os.stat(os.path.join(gdir, ents[0])).st_mtime_ns
    assert os.stat(os.path.join(gdir, ents[0])).st_mtime_ns == first   # read, not rewritten
    assert stat.S_IMODE(os.stat(gdir).st_mode) == 0o700
    with open(os.path.join(gdir, ents[0]), "wb") as f:   # damaged: warned, replaced, the model's own file used
        f.write(b"not a graph" * 100)
    p, got = masks(3, ["--cache-graph"], XDG_CACHE_HOME=xdg)
    assert all(np.array_equal(got[f], ref[f]) for f in ref)
    with open(os.path.join(gdir, ents[0]), "rb") as f:
        assert not f.read(11) == b"not a graph"   # rewritten from the model
    shared = os.path.join(tmp, "open")   # a folder others can write: not used, the run still works
    os.makedirs(shared)
    os.chmod(shared, 0o777)
    masks(4, ["--cache-graph"], SEGPIPE_CACHE_DIR=shared)
    assert os.listdir(shared) == []


def test_graph_cache_default_keyed_by_model_bytes_and_bounded(tmp):
    """The CLI caches the optimised graph by default: the first run writes
    one entry, the second loads it (-v says so) with labels equal to an
    uncached run (--no-cache-graph, which writes nothing); a changed model
    (the logits head's class-0 bias raised) gets its own entry and its own
    labels, never the old graph's; with SEGPIPE_CACHE_MAX_MB=0 a new entry
    evicts the others."""
    import onnx
    from onnx import numpy_helper
    ct = sp.one_tile_ct()
    cache = os.path.join(tmp, "cache")
    pkg = os.path.join(tmp, "pk")
    shutil.copytree(sp.DEMO, pkg)

    def ct_run(k, *extra, **env):
        out = os.path.join(tmp, "o%d.nii.gz" % k)
        p = run_env("ct", ct, "-o", out, "--model", pkg, "--no-passport", "-v", "-t", "2", *extra,
                    **dict({"SEGPIPE_CACHE_DIR": cache}, **env))
        assert p.returncode == 0, p.stderr
        return "(optimised graph cache)" in p.stderr, np.asarray(nib.load(out).dataobj)

    def entries():   # the graphs (each model file also has a 64-byte .key memo of its bytes' hash)
        return sorted(f for f in os.listdir(cache) if f.endswith(".ort")) if os.path.isdir(cache) else []

    hit, nocache = ct_run(0, "--no-cache-graph")
    assert not hit and entries() == []
    hit, first = ct_run(1)
    assert not hit and len(entries()) == 1 and entries()[0].endswith(".ort")
    hit, second = ct_run(2)
    assert hit and len(entries()) == 1
    assert np.array_equal(first, nocache) and np.array_equal(second, nocache) and len(np.unique(nocache)) > 3
    m = onnx.load(os.path.join(pkg, "model.onnx"))
    head = [n for n in m.graph.node if n.op_type == "Conv"][-1]
    for t in m.graph.initializer:
        if t.name == head.input[2]:
            orig = numpy_helper.to_array(t).copy()
            b = orig.copy()
            b[0] += 1000.0   # background wins everywhere
            t.CopyFrom(numpy_helper.from_array(b, t.name))
    onnx.save(m, os.path.join(pkg, "model.onnx"))
    hit, changed = ct_run(3)
    assert not hit and len(entries()) == 2 and not changed.any()
    hit, again = ct_run(4)
    assert hit and not again.any()
    mp = os.path.join(pkg, "model.onnx")   # back to the first bytes, in place, same size and mtime: the
    st = os.stat(mp)                       # key memo must not trust the file's size and times alone
    for t in m.graph.initializer:
        if t.name == head.input[2]:
            t.CopyFrom(numpy_helper.from_array(orig, t.name))
    data = m.SerializeToString()
    assert len(data) == st.st_size
    with open(mp, "r+b") as f:
        f.write(data)
    os.utime(mp, ns=(st.st_atime_ns, st.st_mtime_ns))
    hit, back = ct_run(7)
    assert hit and np.array_equal(back, nocache)   # the first model's graph, found by its bytes
    m.graph.doc_string = "third variant"   # (the first model's bias, a new doc string)
    onnx.save(m, os.path.join(pkg, "model.onnx"))
    hit, _ = ct_run(5, SEGPIPE_CACHE_MAX_MB="0")
    assert not hit and len(entries()) == 1
    assert len(os.listdir(cache)) == 1   # the memos went too
    hit, _ = ct_run(6)
    assert hit   # the one kept is the newest


def test_inputs_jobs_same_results_in_list_order(tmp):
    """`segpipe ct --inputs LIST --jobs 2`: cases run two at a time sharing
    one model; every case's labels equal the one-at-a-time run's byte for
    byte, the report lists them in the list's order with the throughput, a
    bad case fails alone, and --jobs out of 1..8 is refused."""
    if not os.path.exists(CT):
        raise sp.Skip("../shared/data/ct missing")
    im = nib.load(CT)
    a = np.asarray(im.dataobj)
    cases = []
    shapes = []
    for k, (x0, z0) in enumerate(((0, 0), (20, 4), (10, 2))):   # three different crops of the real CT, one tile each
        p = os.path.join(tmp, f"case{k}.nii.gz")
        c = a[x0:x0 + 64 + 4 * k, 20:84, z0:z0 + 26]
        nib.save(nib.Nifti1Image(c, im.affine, im.header), p)
        cases.append(p)
        shapes.append(c.shape)
    bad = os.path.join(tmp, "bad.nii.gz")
    with open(bad, "wb") as f:
        f.write(b"not a nifti")
    lst = os.path.join(tmp, "list.txt")
    with open(lst, "w") as f:
        f.write("\n".join([cases[0], bad, cases[1], cases[2]]) + "\n")
    reps = {}
    for j in ("1", "2"):
        out = os.path.join(tmp, "out" + j)
        p = sp.run("ct", "--inputs", lst, "-o", out, "--jobs", j, "-t", "2")
        assert p.returncode == 3 and "bad.nii.gz" in p.stderr, (p.returncode, p.stderr[-3000:])   # input error
        reps[j] = json.load(open(os.path.join(out, "shard-0-of-1.json")))
        assert [e["input"] for e in reps[j]["inputs"]] == [cases[0], bad, cases[1], cases[2]]
        assert [e["state"] for e in reps[j]["inputs"]] == ["done", "failed", "done", "done"]
        assert reps[j]["jobs"] == int(j) and reps[j]["done"] == 3 and reps[j]["cases_per_minute"] > 0
        assert "cases/minute" in p.stdout, (p.stdout[-2000:], p.stderr[-3000:])
    for k in range(3):
        f1, f2 = (os.path.join(tmp, "out" + j, f"case{k}.nii.gz") for j in ("1", "2"))
        x1, x2 = np.asarray(nib.load(f1).dataobj), np.asarray(nib.load(f2).dataobj)
        assert x1.shape == shapes[k] and np.array_equal(x1, x2)
        assert len(np.unique(x1)) > 2
        assert os.path.exists(f2.replace(".nii.gz", ".passport.json"))
    for j in ("0", "9", "x"):
        p = sp.run("ct", "--inputs", lst, "-o", os.path.join(tmp, "o"), "--jobs", j)
        assert p.returncode == 2 and "--jobs" in p.stderr


def test_bench_throughput_jobs(tmp):
    """`segpipe bench --jobs 2`: bench.json's "throughput" runs every case
    one after another and two at a time on one model; its cases per minute
    are the case count over each pass's wall seconds, bench.md shows the
    table; an unreadable case is counted as failed in both passes (not
    fatal); --jobs out of 1..8 is refused with exit 2."""
    ct = sp.one_tile_ct()
    bad = os.path.join(tmp, "bad.nii.gz")
    with open(bad, "wb") as f:
        f.write(b"\x1f\x8b not a volume")
    out = os.path.join(tmp, "b")
    p = sp.run("bench", "--model", sp.DEMO, ct, ct, "--jobs", "2", "-t", "2", "--out", out)
    assert p.returncode == 0, p.stderr
    t = json.load(open(os.path.join(out, "bench.json")))["throughput"]
    assert t["ok"] and t["cases"] == 2 and t["jobs"] == 2 and t["failed"] == 0, t
    assert abs(t["cases_per_minute"] - 120.0 / t["parallel_s"]) < 1e-6 * t["cases_per_minute"]
    assert abs(t["sequential_cases_per_minute"] - 120.0 / t["sequential_s"]) < 1e-6 * t["sequential_cases_per_minute"]
    assert abs(t["speedup"] - t["sequential_s"] / t["parallel_s"]) < 1e-9 and t["peak_rss_bytes"] > 0
    md = open(os.path.join(out, "bench.md")).read()
    assert "## Throughput" in md and "| 2 | 2 |" in md
    p = sp.run("bench", "--model", sp.DEMO, ct, bad, "--jobs", "2", "-t", "2", "--out", out)
    t = json.load(open(os.path.join(out, "bench.json")))["throughput"]
    assert p.returncode == 0 and not t["ok"] and t["failed"] == 2 and t["cases"] == 2, t   # once per pass
    for j in ("0", "9", "x"):
        p = sp.run("bench", "--model", sp.DEMO, ct, "--jobs", j, "--out", out)
        assert p.returncode == 2 and "--jobs" in p.stderr, p.stderr


def test_serve_warm_up_makes_the_one_thread_sessions(tmp):
    """The service's warm-up (sp_ct_warm_up) makes the one-thread session
    the window's concurrent tile calls run on, so the first request does not
    (demo-ct: tile batch 4 on 2 threads: 2 sessions before any request, the
    same after one); where the calls share the model's session (4 calls on 8
    threads) or the batch is one call (SEGPIPE_TILE_CALLS=batched), none is
    made: 1."""
    import time
    from test_server import Server, jget

    def sessions(s):
        for _ in range(600):
            m = jget(s.url + "/v1/status")[1]["models"][0]
            if m["state"] != "loading":
                return m["sessions"]
            time.sleep(0.1)
        raise AssertionError("the model stayed loading")
    for threads, env, want in (("2", {}, 2), ("8", {}, 1), ("2", {"SEGPIPE_TILE_CALLS": "batched"}, 1)):
        s = Server("--model", f"demo={sp.DEMO}", "--threads", threads, "--workers", "1", env=env)
        try:
            assert sessions(s) == want, (threads, env)
            if want == 2:
                code, r = jget(s.url + "/v1/ct?model=demo", data=open(CT, "rb").read(),   # 9 tiles: calls
                               ctype="application/octet-stream")
                assert code == 200 and r["passport"]["structures"]
                assert sessions(s) == 2
        finally:
            rc, _ = s.stop()
        assert rc == 0
