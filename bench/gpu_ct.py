#!/usr/bin/env python3
"""GPU benchmark: `segpipe ct --device cuda` against a PyTorch implementation
of nnU-Net v2's sliding-window predictor on the same weights, same volumes,
same GPU, one run (docs/performance.md "GPU"). Run on the GPU machine by
tools/gpu/run.sh bench; writes OUT/gpu_ct.json and OUT/gpu_ct.md.

The network is TotalSegmentator --fast's architecture (118 classes, patch
128^3, 3 mm) with random weights (seed 0), built once by
tools/import/import_nnunet.py in this process: the ONNX files segpipe runs and the
PyTorch module the peer runs hold the same numbers. Volumes are synthetic CTs
at 3 mm (no resampling on either side).

The peer follows nnU-Net v2's predict_sliding_window_return_logits with
perform_everything_on_device: nnU-Net's steps and Gaussian (scipy), fp16
autocast, fp16 logit and weight accumulators on the GPU, batch 1, no
mirroring, cudnn.benchmark; then argmax on the GPU and the labels copied
to the host (segpipe's output). It is timed warm (model loaded, second run).
segpipe is timed cold (`segpipe ct`, a fresh process) and warm (the same
request to `segpipe serve`, third answer).
"""
import functools, json, os, resource, subprocess, sys, tempfile, time

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
sys.path.insert(0, os.path.join(root, "tools", "import"))
sys.path.insert(0, os.path.join(root, "tests", "gpu"))
import nii  # noqa: E402
from import_nnunet import add_fp16, random_model  # noqa: E402

SEG = os.environ.get("SEGPIPE", os.path.join(root, "build", "segpipe"))
SIZES = [tuple(int(v) for v in x.split("x")) for x in
         os.environ.get("SP_BENCH_SIZES", "128x128x160,170x170x500,256x256x300").split(",")]


env = nii.seg_env


def synthetic_ct(shape, seed):
    """Smooth random HU in -1000..1500 (body-like blobs in air)."""
    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 4)
    x = (x - x.mean()) / (x.std() + 1e-6)
    return np.clip(x * 500 - 100, -1000, 1500).astype(np.int16)


# ---------------------------------------------------------------- the peer
def steps_for(image, patch, step=0.5):
    """nnU-Net's compute_steps_for_sliding_window."""
    out = []
    for i, p in zip(image, patch):
        target = p * step
        n = int(np.ceil((i - p) / target)) + 1
        actual = (i - p) / (n - 1) if n > 1 else 99999999999
        out.append([int(np.round(actual * k)) for k in range(n)])
    return out


@functools.lru_cache(maxsize=2)
def gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10):
    """nnU-Net's compute_gaussian (cached, as nnU-Net caches it)."""
    tmp = np.zeros(patch)
    tmp[tuple(p // 2 for p in patch)] = 1
    g = gaussian_filter(tmp, [p * sigma_scale for p in patch], 0, mode="constant", cval=0)
    g = g / np.max(g) * value_scaling_factor
    g[g == 0] = np.min(g[g != 0])
    return torch.from_numpy(g)


def peer_predict(net, data, patch, dev, half=True):
    """data: (1, D0, D1, D2) float32 tensor on the host, network order."""
    shp = data.shape[1:]
    pad = [max(p - s, 0) for s, p in zip(shp, patch)]
    lo = [p // 2 for p in pad]
    with torch.inference_mode(), torch.autocast("cuda", enabled=half):
        x = data.to(dev)
        if any(pad):
            x = torch.nn.functional.pad(x, [v for d in reversed(range(3)) for v in (lo[d], pad[d] - lo[d])])
        steps = steps_for(x.shape[1:], patch)
        acc_t = torch.half if half else torch.float32
        g = gaussian(tuple(patch)).to(dev, acc_t)
        logits = None
        n_pred = torch.zeros(x.shape[1:], dtype=acc_t, device=dev)
        for a in steps[0]:
            for b in steps[1]:
                for c in steps[2]:
                    sl = (slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
                    pred = net(x[(slice(None),) + sl][None])[0]
                    if logits is None:
                        C = pred.shape[0]
                        logits = torch.zeros((C,) + tuple(x.shape[1:]), dtype=acc_t, device=dev)
                    logits[(slice(None),) + sl] += pred * g
                    n_pred[sl] += g
        logits /= n_pred
        crop = tuple(slice(lo[d], lo[d] + shp[d]) for d in range(3))
        lab = logits[(slice(None),) + crop].argmax(0).to(torch.uint8)
        return lab.cpu().numpy()


def run_peer(net, vol, man, dev, half):
    nm = man["normalization"]
    x = np.clip(vol.astype(np.float32), nm["lo"], nm["hi"])
    x = (x - nm["mean"]) / max(nm["std"], 1e-8)
    axes = man["axes"]
    data = torch.from_numpy(np.ascontiguousarray(np.transpose(x, axes)))[None]
    patch = man["patch_size"]
    torch.cuda.empty_cache()
    peer_predict(net, data, patch, dev, half)      # warm-up (cudnn.benchmark picks its algorithms)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    lab = peer_predict(net, data, patch, dev, half)
    torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    free, total = torch.cuda.mem_get_info()      # this process's context, weights and cache
    inv = np.argsort(axes)
    return np.transpose(lab, inv), {"seconds": sec, "gpu_memory_bytes": total - free,
                                    "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                                    "gpu_max_allocated_bytes": torch.cuda.max_memory_allocated()}


# ------------------------------------------------------------------ segpipe
def others_on_gpu():
    """GPU memory held before segpipe starts (this process, cache emptied):
    segpipe's report is the whole device's use, so this is taken off."""
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    return total - free


BEST = os.environ.get("SP_BENCH_OPTIONS", "")        # bench/gpu_profile.py's pick (run.sh auto)
TILE_BATCH = os.environ.get("SP_BENCH_TILE_BATCH", "0")
QUICK = os.environ.get("SP_BENCH_QUICK") == "1"       # no two-slot and cuDNN search variants
TWO_SLOTS = os.environ.get("SP_BENCH_TWO_SLOTS", "1") == "1"
COLD_REPEAT = int(os.environ.get("SP_BENCH_COLD_REPEAT", "1"))   # cold processes per search variant
SEARCH = dict(v.split(":", 1) for v in os.environ.get(   # name:SEGPIPE_CUDA_OPTIONS;... (DEFAULT: cuDNN's default algorithm)
    "SP_BENCH_SEARCH", "exhaustive:cudnn_conv_algo_search=EXHAUSTIVE;heuristic:cudnn_conv_algo_search=HEURISTIC").split(";"))


def run_segpipe_cold(vol_path, pkg, precision, tmp, options=BEST):
    base = others_on_gpu()
    out, rep = os.path.join(tmp, "lab.nii.gz"), os.path.join(tmp, "rep.json")
    e = env()
    if options:
        e["SEGPIPE_CUDA_OPTIONS"] = options
    t0 = time.perf_counter()
    tb = ["--tile-batch", TILE_BATCH] if TILE_BATCH != "0" else []
    p = subprocess.run([SEG, "ct", vol_path, "-o", out, "-m", pkg, "--device", "cuda", "--precision", precision,
                        "--no-passport", "--report", rep, "-q"] + tb, capture_output=True, text=True, env=e)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"segpipe ct failed ({p.returncode}): {p.stderr[-2000:]}")
    r = json.load(open(rep))
    return nii.read(out), {"wall_seconds": wall, "stages": r["seconds"], "peak_rss_bytes": r["peak_rss_bytes"],
                           "rss_anon_bytes": r.get("rss_anon_bytes"), "rss_file_bytes": r.get("rss_file_bytes"),
                           "gpu_memory_bytes": r.get("gpu_memory_bytes", 0) - base}


def run_segpipe_warm(vol_path, pkg, precision, port, options=BEST, slots=1):
    e = env()
    if options:
        e["SEGPIPE_CUDA_OPTIONS"] = options
    e["SEGPIPE_GPU_SLOTS"] = str(slots)
    srv = subprocess.Popen([SEG, "serve", "--model", f"ct={pkg}", "--port", str(port), "--device", "cuda",
                            "--precision", precision], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=e)
    try:
        a = nii.ct_requests(f"http://127.0.0.1:{port}", vol_path, 3, 300)[-1]
        return {"processing_seconds": a["processing_seconds"], "stages": a["seconds"]}
    except OSError as e:
        srv.terminate()
        print(f"segpipe serve failed: {e}; its stderr:\n{srv.communicate(timeout=60)[1].decode()[-3000:]}")
        return None
    finally:
        if srv.poll() is None:
            srv.terminate()
            srv.wait(60)


def search_variants(case, vpath, pkg, prec, tmp, lab_p, port):
    """cuDNN's algorithm search forced each way (issue #42): COLD_REPEAT cold
    `segpipe ct` processes each, alternated with the default's, and the warm
    `serve` request each way (the default: exhaustive in a service)."""
    case["segpipe_cold_repeats"] = {"default": [], **{k: [] for k in SEARCH}}
    for _ in range(COLD_REPEAT):
        for k, o in [("default", BEST)] + list(SEARCH.items()):
            lab, r = run_segpipe_cold(vpath, pkg, prec, tmp, o)
            r["label_agreement"] = agreement(lab, lab_p)
            case["segpipe_cold_repeats"][k].append(r)
    for j, (k, o) in enumerate(SEARCH.items()):
        case[f"segpipe_warm_{k}"] = run_segpipe_warm(vpath, pkg, prec, port + 1 + j, options=o)


def agreement(a, b):
    return float((a == b).mean())


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="gpu-ct-")
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    pkg = os.path.join(tmp, "totalseg-fast-random")
    net, man = random_model("totalseg-fast", pkg, None, 0)
    add_fp16(pkg, man, os.environ.get("SP_BENCH_NORM16") == "1")
    net = net.to(dev).eval()
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cases": [],
               "segpipe_cuda_options": BEST, "norm_fp16": os.environ.get("SP_BENCH_NORM16") == "1",
               "tile_batch": TILE_BATCH}
    for i, shape in enumerate(SIZES):
        vol = synthetic_ct(shape, i)
        vpath = os.path.join(tmp, f"ct_{i}.nii")
        nii.write(vpath, vol, (3.0, 3.0, 3.0))
        case = {"shape": list(shape), "spacing_mm": 3.0}
        for prec in ("fp16", "fp32"):
            lab_p, peer = run_peer(net, vol, man, dev, prec == "fp16")
            lab_s, cold = run_segpipe_cold(vpath, pkg, prec, tmp)
            warm = run_segpipe_warm(vpath, pkg, prec, 18600 + i * 2 + (prec == "fp32")) if shape == (170, 170, 500) \
                else None
            extra = shape == (170, 170, 500) and not QUICK
            two = run_segpipe_warm(vpath, pkg, prec, 18700 + (prec == "fp32"), slots=2) if extra and TWO_SLOTS \
                else None
            case[prec] = {"peer": peer, "segpipe_cold": cold, "segpipe_warm": warm, "segpipe_warm_two_slots": two,
                          "label_agreement": agreement(lab_s, lab_p)}
            if extra:
                search_variants(case[prec], vpath, pkg, prec, tmp, lab_p, 18800 + (prec == "fp32") * 4)
            print(json.dumps({"shape": shape, "precision": prec, **case[prec]}), flush=True)
        results["cases"].append(case)
    json.dump(results, open(os.path.join(out, "gpu_ct.json"), "w"), indent=1)
    with open(os.path.join(out, "gpu_ct.md"), "w") as f:
        f.write(table(results) + search_table(results))
    print(table(results) + search_table(results))


def device_window(stages):
    return sum(stages.get(k, 0) for k in ("upload", "window", "inference", "download"))


def search_table(r):
    """The cuDNN search variants: cold walls (each run), cold inference, warm request and window."""
    rows = ["\n| precision | search | cold wall (s, each run) | cold inference (s) | cold model load (s) | "
            "warm request (s) | warm upload+window+inference+download (s) | labels = peer |", "|---|---|---|---|---|---|---|---|"]
    each = lambda runs, f: " ".join(f(v) for v in runs)  # noqa: E731
    for c in r["cases"]:
        for prec in ("fp16", "fp32"):
            x = c[prec]
            for k, runs in x.get("segpipe_cold_repeats", {}).items():
                w = x.get(f"segpipe_warm_{k}") or (x["segpipe_warm"] if k == "default" else None)
                walls = each(runs, lambda v: f"{v['wall_seconds']:.2f}")
                inf = each(runs, lambda v: f"{v['stages'].get('inference', 0):.3f}")
                load = each(runs, lambda v: f"{sum(t for n, t in v['stages'].items() if n.startswith('load')):.2f}")
                warm = f"{w['processing_seconds']:.3f} | {device_window(w['stages']):.3f}" if w else "- | -"
                rows.append(f"| {prec} | {k} | {walls} | {inf} | {load} | {warm} | {100 * runs[-1]['label_agreement']:.2f}% |")
    return "\n".join(rows) + "\n"


def table(r):
    rows = [f"GPU: {r['gpu']}, PyTorch {r['torch']}; segpipe options '{r.get('segpipe_cuda_options', '')}', "
            f"fp16 norm {r.get('norm_fp16')}, tile batch {r.get('tile_batch')}\n",
            "| volume (3 mm) | precision | peer: window (s) | segpipe: upload+window+inference+download (s) | "
            "segpipe ct cold wall (s) | segpipe serve warm (s) | GPU memory peer / segpipe (GB) | "
            "segpipe RSS (GB) | labels agree |",
            "|---|---|---|---|---|---|---|---|---|"]
    for c in r["cases"]:
        for prec in ("fp16", "fp32"):
            x = c[prec]
            st = x["segpipe_cold"]["stages"]
            win = sum(st.get(k, 0) for k in ("upload", "window", "inference", "download"))
            warm = f"{x['segpipe_warm']['processing_seconds']:.2f}" if x["segpipe_warm"] else "-"
            rows.append(f"| {'x'.join(map(str, c['shape']))} | {prec} | {x['peer']['seconds']:.3f} | {win:.3f} | "
                        f"{x['segpipe_cold']['wall_seconds']:.2f} | {warm} | "
                        f"{x['peer']['gpu_memory_bytes'] / 1e9:.1f} / {x['segpipe_cold']['gpu_memory_bytes'] / 1e9:.1f} | "
                        f"{x['segpipe_cold']['peak_rss_bytes'] / 1e9:.2f} | {100 * x['label_agreement']:.2f}% |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
