"""Shared pieces of the demo-model trainers (train_demo_rooms.py,
train_demo_matte.py): render a synthetic dataset on all cores, the training
loop (AdamW, poly learning rate, left-right flips, brightness/colour jitter),
the loss log and the ONNX export."""
import os, time
from multiprocessing import Pool
import torch


def render_dataset(sample, n_total):
    """sample(seed) -> (x, y); returns the list for seeds 0 .. n_total-1"""
    with Pool(min(16, os.cpu_count() or 1)) as p:
        return p.map(sample, range(n_total), chunksize=32)


def train(net, X, Y, iters, loss_fn, t0, batch=32, lr0=3e-3):
    """Returns the log [(iteration, loss, lr)]."""
    dev = X.device
    opt = torch.optim.AdamW(net.parameters(), lr=lr0, weight_decay=1e-4)
    log = []
    for it in range(iters):
        lr = lr0 * (1 - it / iters) ** 0.9
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(X), (batch,), device=dev)
        x, y = X[idx], Y[idx]
        if torch.rand(1).item() < 0.5:        # scenes are left-right symmetric
            x, y = x.flip(-1), y.flip(-1)
        x = x * (0.8 + 0.4 * torch.rand(batch, 1, 1, 1, device=dev)) + 0.2 * (torch.rand(batch, 3, 1, 1, device=dev) - 0.5)
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append((it, float(loss.detach()), lr))
        if it % 500 == 0 or it == iters - 1:
            print(f"it {it} loss {float(loss.detach()):.4f} {time.time() - t0:.0f}s", flush=True)
    return log


def write_log(out, log):
    with open(os.path.join(out, "train_log.csv"), "w") as f:
        f.write("iter,loss,lr\n")
        for r in log:
            f.write("%d,%.6f,%.6g\n" % r)


def save(out, net, size, out_name, dynamic_hw, iou, log, manifest):
    """OUT/iou.json, train_log.csv, model.onnx, segpipe.json"""
    import json
    os.makedirs(out, exist_ok=True)
    json.dump(iou, open(os.path.join(out, "iou.json"), "w"), indent=1)
    write_log(out, log)
    export_onnx(net, size, os.path.join(out, "model.onnx"), out_name, dynamic_hw)
    json.dump(manifest, open(os.path.join(out, "segpipe.json"), "w"), indent=1)
    print("wrote", out, os.path.getsize(os.path.join(out, "model.onnx")), "bytes")


def export_onnx(net, size, path, out_name, dynamic_hw):
    """[N, 3, size, size] input named "input"; dynamic batch (and H, W)"""
    net.cpu().eval()
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    kw = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
    torch.onnx.export(net, torch.zeros(1, 3, size, size), path, opset_version=17, input_names=["input"],
                      output_names=[out_name], dynamic_axes={"input": axes, out_name: axes}, **kw)


def setup(sample, n_val=300):
    """Command line (-o OUT, --iters, --n), seed, device, and the rendered
    dataset: returns (args, device, start time, data of n + n_val samples)."""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--n", type=int, default=6000)
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    return a, dev, t0, render_dataset(sample, a.n + n_val)
