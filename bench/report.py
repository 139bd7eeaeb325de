#!/usr/bin/env python3
"""Summarise a `make bench` run: peer vs segpipe per stage (with the output
comparison), the goals of the CT and passport issues with measured values,
thread scaling, and the plots (matplotlib from Debian).

  bench/report.py bench/out
"""
import glob, json, os, platform, sys
import numpy as np

out = sys.argv[1]
B = json.load(open(os.path.join(out, "bench.json")))


def mean_stage(case, stage):
    v = [r["seconds"].get(stage, 0.0) for r in case.get("runs", [])]
    return float(np.mean(v)) if v else float("nan")


def mean_total(case):
    v = [r["total"] for r in case.get("runs", [])]
    return float(np.mean(v)) if v else float("nan")


cases = {os.path.basename(c["case"]): c for c in B["cases"] if c.get("ok")}
lines = [f"# segpipe bench summary\n", f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
         f"segpipe {B['segpipe_version']}, ONNX Runtime {B['onnxruntime_version']}\n"]
lines.append("\n## segpipe, demo model (mean of timed runs, seconds)\n")
stages = []
for c in cases.values():
    for r in c["runs"]:
        for s in r["seconds"]:
            if s not in stages:
                stages.append(s)
lines.append("| case | " + " | ".join(stages) + " | total | peak RSS MB |")
lines.append("|---|" + "---|" * (len(stages) + 2))
for n, c in cases.items():
    lines.append(f"| {n} | " + " | ".join(f"{mean_stage(c, s):.3f}" for s in stages) +
                 f" | {mean_total(c):.3f} | {c['peak_rss_bytes'] / 1e6:.0f} |")

peer = json.load(open(os.path.join(out, "peer.json"))) if os.path.exists(os.path.join(out, "peer.json")) else []
if peer:
    lines.append("\n## Peer (Python, TotalSegmentator's way) vs segpipe, same inputs, same run\n")
    lines.append("| case | stage | peer s | segpipe s | peer / segpipe |")
    lines.append("|---|---|---|---|---|")
    for p in peer:
        c = cases.get(os.path.basename(p["case"]))
        if not c:
            continue
        pairs = [("read", p["seconds"]["read"], mean_stage(c, "read")),
                 ("reorient + resample", p["seconds"]["reorient+resample"],
                  mean_stage(c, "reorient") + mean_stage(c, "resample")),
                 ("labels back", p["seconds"]["labels_back"], mean_stage(c, "labels_back")),
                 ("statistics, native (segpipe: full passport)", p["seconds"]["statistics_native"], mean_stage(c, "passport")),
                 ("statistics, 3 mm (peer only)", p["seconds"]["statistics_3mm"], float("nan")),
                 ("write", p["seconds"]["write"], mean_stage(c, "write"))]
        for name, a, b in pairs:
            ratio = f"{a / b:.1f}x" if b == b and b > 0 else ""
            lines.append(f"| {os.path.basename(p['case'])} | {name} | {a:.3f} | {'' if b != b else f'{b:.3f}'} | {ratio} |")
        lines.append(f"| {os.path.basename(p['case'])} | outputs | labels identical: **{p['labels_identical']}** | "
                     f"statistics.json equal: **{p['statistics_equal']}** | |")

goals = []
c458 = cases.get("ct_458x379x224.nii.gz")
if c458:
    goals += [("read .nii.gz, 458x379x224", 0.15, mean_stage(c458, "read")),
              ("reorient + resample to 3 mm", 0.10, mean_stage(c458, "reorient") + mean_stage(c458, "resample")),
              ("labels back to native", 0.10, mean_stage(c458, "labels_back")),
              ("write labels", 0.20, mean_stage(c458, "write")),
              ("passport, all structures, native (with components)", 0.10, mean_stage(c458, "passport"))]
ts = os.path.join(out, "tsfast", "bench.json")
if os.path.exists(ts):
    T = json.load(open(ts))
    for c in T["cases"]:
        if c.get("ok"):
            goals.append(("peak RSS 512x512x280, 118-class TotalSegmentator-fast net (GB)", 1.5, c["peak_rss_bytes"] / 1e9))
            lines.append(f"\n## TotalSegmentator --fast architecture (random weights), {os.path.basename(c['case'])}\n")
            lines.append("| stage | seconds |\n|---|---|")
            for s in c["runs"][0]["seconds"]:
                lines.append(f"| {s} | {mean_stage(c, s):.3f} |")
            lines.append(f"| **total** | {mean_total(c):.3f} |\n\npeak RSS {c['peak_rss_bytes'] / 1e9:.2f} GB "
                         "(TotalSegmentator: 7.4 GB)")
if goals:
    lines.append("\n## Goals of the CT and passport issues (this machine)\n")
    lines.append("| goal | target | measured | met |\n|---|---|---|---|")
    for name, target, got in goals:
        lines.append(f"| {name} | <= {target} | {got:.3f} | {'yes' if got <= target else '**no**'} |")

th = sorted(glob.glob(os.path.join(out, "threads", "*", "bench.json")))
if th:
    lines.append("\n## Inference seconds by threads x tile batch (demo model, example_ct 122x101x112)\n")
    grid = {}
    for f in th:
        J = json.load(open(f))
        c = J["cases"][0]
        if c.get("ok"):
            grid[(int(J["threads"]), int(J["tile_batch"]))] = mean_stage(c, "inference") + mean_stage(c, "window")
    tl = sorted({k[0] for k in grid})
    bl = sorted({k[1] for k in grid})
    lines.append("| threads \\ tile batch | " + " | ".join(map(str, bl)) + " |")
    lines.append("|---|" + "---|" * len(bl))
    for t in tl:
        lines.append(f"| {t} | " + " | ".join(f"{grid.get((t, b), float('nan')):.2f}" for b in bl) + " |")
    best = min(grid, key=grid.get)
    lines.append(f"\nfastest: {best[0]} threads, tile batch {best[1]} (inference + window seconds)")

ps = os.path.join(out, "passport_scaling.json")
if os.path.exists(ps):
    P = json.load(open(ps))
    lines.append("\n## Passport seconds vs number of labels (458x379x224, best of 3)\n")
    lines.append("| labels | with components | without components |\n|---|---|---|")
    for k, v in P.items():
        lines.append(f"| {v['labels_present']} | {v['with_components']:.3f} | {v['without_components']:.3f} |")
    if len(cases) > 1:
        lines.append("\nPassport seconds vs voxels (demo model labels): " + ", ".join(
            f"{cases[n]['voxels'] / 1e6:.0f} M: {mean_stage(cases[n], 'passport'):.3f} s" for n in cases))

sm = os.path.join(out, "serve_masks_load.json")
if os.path.exists(sm):
    lines.append("\n## Dynamic batching of /v1/segment-batch (8 clients)\n")
    lines.append(json.load(open(sm))["table"])

sl = os.path.join(out, "serve_load.json")
if os.path.exists(sl):
    lines.append("\n## Service load (KServe infer, tiny model, loopback, keep-alive clients)\n")
    lines.append(json.load(open(sl))["table"])

open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")

# plots
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit(0)
names = list(cases)
if names:
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = np.zeros(len(names))
    for s in stages:
        v = np.array([mean_stage(cases[n], s) for n in names])
        ax.bar(range(len(names)), v, bottom=bottom, label=s)
        bottom += v
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace(".nii.gz", "") for n in names], rotation=15, fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title("segpipe ct per stage (demo model)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "stages.png"), dpi=100)
    fig, ax = plt.subplots(figsize=(7, 4))
    vox = np.array([cases[n]["voxels"] for n in names]) / 1e6
    for s in stages:
        v = np.array([mean_stage(cases[n], s) for n in names])
        if v.max() < 1e-3:
            continue
        line = ax.plot(vox, v, "o", label=s)[0]
        if len(vox) > 1:
            k = np.polyfit(vox, v, 1)
            xs = np.linspace(0, vox.max() * 1.05, 20)
            ax.plot(xs, np.polyval(k, xs), "-", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("input voxels (millions)")
    ax.set_ylabel("seconds")
    ax.set_yscale("log")
    ax.set_title("seconds vs input size, fitted line per stage")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scaling.png"), dpi=100)
