#!/usr/bin/env python3
"""Peak memory of `segpipe ct` with TotalSegmentator --fast's architecture
(118 classes, random weights: bench/data/totalseg-fast, made by
bench/make_data.sh) on the four benchmark CTs: the logits path, the split
head (tools/import/onnx_split_head.py --split-concat, as the importer's --split-head
makes it) at 1 and 4 threads, the fp16 accumulator;
then `segpipe serve` with two models loaded (RSS after warm-up and after one
/v1/ct request). Writes bench/out/memory.json and prints a markdown table
for docs/performance.md.

  python3 bench/memory.py [--sizes 280,824] [--quick]
"""
import argparse, json, os, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from serve_util import start_server

SEG = os.environ.get("SEGPIPE", os.path.join(ROOT, "build", "segpipe"))
DATA = os.path.join(ROOT, "bench", "data")
SIZES = {"458x379x224": "ct_458x379x224.nii.gz", "512x512x280": "ct_512x512x280.nii.gz",
         "512x512x458": "ct_512x512x458.nii.gz", "512x512x824": "ct_512x512x824.nii.gz"}


def run_ct(model, case, tmp, *extra):
    rep = os.path.join(tmp, "report.json")
    subprocess.run([SEG, "ct", os.path.join(DATA, case), "-o", os.path.join(tmp, "out.nii.gz"), "--model", model,
                    "--report", rep, "-q", *extra], check=True)
    r = json.load(open(rep))
    sec = r["seconds"]
    return {"peak_rss_gb": r["peak_rss_bytes"] / 1e9, "total_s": sec.get("total", sum(sec.values())),
            "inference_s": r["seconds"].get("inference", 0), "window_s": r["seconds"].get("window", 0)}


def rss_of(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024 / 1e9
    return 0


def serve_two_models(split, tmp):
    p, port = start_server("--model", f"ts={split}", "--model", f"demo={os.path.join(ROOT, 'models', 'demo-ct')}",
                           "--workers", "1")
    try:
        warm = rss_of(p.pid)
        body = open(os.path.join(DATA, "ct_512x512x280.nii.gz"), "rb").read()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/ct?model=ts", data=body,
                                     headers={"Content-Type": "application/octet-stream"})
        urllib.request.urlopen(req, timeout=600).read()
        st = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status"))
        return {"after_warmup_gb": warm, "after_ct_gb": rss_of(p.pid),
                "peak_gb": st.get("peak_rss_bytes", 0) / 1e9}
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--quick", action="store_true", help="512x512x280 only, no 1-thread runs")
    a = ap.parse_args()
    plain = os.path.join(DATA, "totalseg-fast")
    if not os.path.exists(plain):
        sys.exit("bench/data/totalseg-fast is missing: run bench/make_data.sh")
    out = {"cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        split = os.path.join(tmp, "split")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "import", "onnx_split_head.py"), plain, "-o", split,
                        "--split-concat"], check=True, capture_output=True)
        sizes = ["512x512x280"] if a.quick else a.sizes.split(",")
        for size in sizes:
            case = SIZES[size]
            runs = [("logits, fp32 accumulator", plain, "4"), ("logits, fp16 accumulator", plain, "4"),
                    ("split head", split, "4"), ("split head", split, "1")]
            if a.quick:
                runs = runs[:3]
            for name, model, threads in runs:
                extra = ["--threads", threads] + (["--accumulator", "fp16"] if "fp16" in name else [])
                r = run_ct(model, case, tmp, *extra)
                r.update(size=size, path=name, threads=int(threads))
                print(json.dumps(r), flush=True)
                out["cases"].append(r)
        out["serve"] = serve_two_models(split, tmp)
        print(json.dumps(out["serve"]), flush=True)
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    json.dump(out, open(os.path.join(ROOT, "bench", "out", "memory.json"), "w"), indent=1)
    print("\n| CT | path | threads | peak RSS GB | total s | inference s | window s |\n|---|---|---|---|---|---|---|")
    for c in out["cases"]:
        print(f"| {c['size']} | {c['path']} | {c['threads']} | {c['peak_rss_gb']:.2f} | {c['total_s']:.1f} | "
              f"{c['inference_s']:.1f} | {c['window_s']:.2f} |")
    s = out["serve"]
    print(f"\nserve, two models (ts split + demo-ct), 1 worker: {s['after_warmup_gb']:.2f} GB after warm-up, "
          f"{s['after_ct_gb']:.2f} GB after one 512x512x280 /v1/ct, peak {s['peak_gb']:.2f} GB")


if __name__ == "__main__":
    main()
