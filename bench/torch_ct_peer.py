#!/usr/bin/env python3
"""demo-ct's network in PyTorch (Debian's python3-torch, /usr/bin/python3)
against `segpipe ct` on the same scan, same threads, runs alternated
(docs/performance.md, "CPU: segpipe vs PyTorch"). The PyTorch side runs the
ONNX graph's own weights through torch.nn.functional (Conv, ConvTranspose,
InstanceNormalization, LeakyRelu, Concat: the five ops of the demo network),
on every sliding-window tile nnU-Net's step rule gives for the scan (step
0.5), batch 1, under torch.inference_mode(); the scan must already be at the
model's spacing and RAS (example_ct_sm is: 3 mm, RAS). Prints JSON: PyTorch
seconds (wall, CPU) for the tiles, segpipe's inference and whole-process
seconds, per round, with the load average.
   /usr/bin/python3 bench/torch_ct_peer.py CT.nii.gz [--threads 2] [--rounds 2]"""
import argparse, json, math, os, subprocess, tempfile, time
import numpy as np
import nibabel as nib
import onnx
from onnx import numpy_helper
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "demo-ct")


def load_graph(path):
    m = onnx.load(path)
    w = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in m.graph.initializer}
    nodes = []
    for n in m.graph.node:
        at = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        nodes.append((n.op_type, list(n.input), list(n.output), at))
    return m.graph.input[0].name, m.graph.output[0].name, w, nodes


def pads3(at):
    p = at.get("pads", [0] * 6)
    assert p[:3] == p[3:], "asymmetric pads"
    return tuple(p[:3])


def run_graph(g, x):
    iname, oname, w, nodes = g
    env = dict(w)
    env[iname] = x
    for op, ins, outs, at in nodes:
        a = [env[i] if i else None for i in ins]
        if op == "Conv":
            y = F.conv3d(a[0], a[1], a[2] if len(a) > 2 else None, tuple(at.get("strides", [1] * 3)), pads3(at),
                         tuple(at.get("dilations", [1] * 3)), at.get("group", 1))
        elif op == "ConvTranspose":
            y = F.conv_transpose3d(a[0], a[1], a[2] if len(a) > 2 else None, tuple(at.get("strides", [1] * 3)),
                                   pads3(at), tuple(at.get("output_padding", [0] * 3)), at.get("group", 1))
        elif op == "InstanceNormalization":
            y = F.instance_norm(a[0], weight=a[1], bias=a[2], eps=at.get("epsilon", 1e-5))
        elif op == "LeakyRelu":
            y = F.leaky_relu(a[0], at.get("alpha", 0.01))
        elif op == "Concat":
            y = torch.cat(a, dim=at["axis"])
        else:
            raise SystemExit(f"op {op} not supported by this peer")
        env[outs[0]] = y
    return env[oname]


def tiles(shape, patch, step=0.5):
    """nnU-Net's compute_steps_for_sliding_window, the scan padded to the patch"""
    out = []
    for s, p in zip(shape, patch):
        s = max(s, p)
        n = int(math.ceil((s - p) / (p * step))) + 1
        actual = (s - p) / (n - 1) if n > 1 else 99999999999
        out.append([int(round(actual * i)) for i in range(n)])
    return out, [max(s, p) for s, p in zip(shape, patch)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    man = json.load(open(os.path.join(MODEL, "segpipe.json")))
    patch, norm = man["patch_size"], man["normalization"]
    g = load_graph(os.path.join(MODEL, man["onnx"]))
    img = nib.as_closest_canonical(nib.load(a.ct))
    v = np.asarray(img.dataobj, np.float32)
    v = (np.clip(v, norm["lo"], norm["hi"]) - norm["mean"]) / max(norm["std"], 1e-8)
    steps, padded = tiles(v.shape, patch)
    vp = np.zeros(padded, np.float32)
    vp[tuple(slice(0, s) for s in v.shape)] = v
    xs = [torch.from_numpy(np.ascontiguousarray(vp[i:i + patch[0], j:j + patch[1], k:k + patch[2]]))[None, None]
          for i in steps[0] for j in steps[1] for k in steps[2]]
    res = {"ct": a.ct, "threads": a.threads, "tiles": len(xs), "torch": torch.__version__, "rounds": []}
    tmp = tempfile.mkdtemp(prefix="torch_peer.")
    for _ in range(a.rounds):
        load = os.getloadavg()[0]
        t0, c0 = time.time(), time.process_time()
        with torch.inference_mode():
            for x in xs:
                run_graph(g, x)
        tw, tc = time.time() - t0, time.process_time() - c0
        rep = os.path.join(tmp, "r.json")
        s0, o0 = time.time(), os.times()
        r = subprocess.run([os.path.join(ROOT, "build", "segpipe"), "ct", a.ct, "-o", os.path.join(tmp, "l.nii"),
                            "--model", MODEL, "-t", str(a.threads), "--report", rep, "-q", "--no-passport"],
                           capture_output=True, text=True)
        sw, o1 = time.time() - s0, os.times()
        assert r.returncode == 0, r.stderr
        sec = json.load(open(rep))["seconds"]
        res["rounds"].append({"load": round(load, 1), "torch_wall": round(tw, 2), "torch_cpu": round(tc, 2),
                              "segpipe_inference": round(sec["inference"], 2), "segpipe_wall": round(sw, 2),
                              "segpipe_cpu": round(o1.children_user - o0.children_user + o1.children_system -
                                                   o0.children_system, 2)})
        print(json.dumps(res["rounds"][-1]), flush=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
