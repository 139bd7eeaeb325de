#!/usr/bin/env python3
"""Train segpipe's demo CT model (a small nnU-Net-style 3D U-Net, 3 mm).

A demonstration model trained on three public example cases (see
tools/train/prep_demo_data.py); not a clinical tool. Run on the GPU machine:

  python3 tools/train/prep_demo_data.py -o .train/cases.npz      # here (nibabel)
  python3 tools/train/train_demo_ct.py .train/cases.npz --labels LABELS.json -o OUT

Writes OUT/model.onnx, OUT/segpipe.json, OUT/train_log.csv, OUT/loss.png,
OUT/dice_train.json. The network predicts all 118 TotalSegmentator `total`
indices (0 = background) so its label map is TotalSegmentator's; classes
absent from the training cases are simply never predicted.
"""
import argparse, json, math, os, sys, time
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "import"))
from segpipe_nets import UNet

PATCH = (64, 64, 32)
ARCH = dict(arch="PlainConvUNet", input_channels=1, features_per_stage=[16, 32, 64, 128],
            kernel_sizes=[[3, 3, 3]] * 4, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            n_conv_per_stage=[2, 2, 2, 2], n_conv_per_stage_decoder=[2, 2, 2])


def normalise(x, n):
    return (np.clip(x, n["lo"], n["hi"]) - n["mean"]) / n["std"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--labels", required=True)
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    z = np.load(a.data)
    norm = json.loads(str(z["norm"]))
    labels = {int(k): v for k, v in json.load(open(a.labels)).items()}
    ncls = max(labels) + 1
    cases = []
    for i in range(int(z["n"])):
        x = normalise(z[f"x{i}"], norm).astype(np.float32)
        y = z[f"y{i}"].astype(np.int64)
        # pad to at least the patch (value 0 in normalised space, as nnU-Net)
        pad = [(max(0, (p - s + 1) // 2 + 8), max(0, (p - s + 1) // 2 + 8)) for s, p in zip(x.shape, PATCH)]
        x = np.pad(x, pad)
        y = np.pad(y, pad)
        fg = np.argwhere(y > 0)
        cases.append((torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev), fg))
    present = sorted(set(np.concatenate([np.unique(c[1].cpu().numpy()) for c in cases]).tolist()))
    print("classes present:", len(present) - 1)

    net = UNet(num_classes=ncls, **ARCH).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    log = []
    t0 = time.time()
    for it in range(a.iters):
        lr = 3e-3 * (1 - it / a.iters) ** 0.9
        for g in opt.param_groups:
            g["lr"] = lr
        xb, yb = [], []
        for _ in range(a.batch):
            x, y, fg = cases[np.random.randint(len(cases))]
            if np.random.rand() < 0.67:
                c = fg[np.random.randint(len(fg))]
                st = [int(np.clip(c[d] - PATCH[d] // 2 + np.random.randint(-8, 9), 0, x.shape[d] - PATCH[d])) for d in range(3)]
            else:
                st = [np.random.randint(0, x.shape[d] - PATCH[d] + 1) for d in range(3)]
            sl = tuple(slice(s, s + p) for s, p in zip(st, PATCH))
            xb.append(x[sl])
            yb.append(y[sl])
        xb = torch.stack(xb)[:, None]
        yb = torch.stack(yb)[:, None].float()
        # spatial augmentation: rotation about the k (axial) axis, scale
        B = xb.shape[0]
        ang = (torch.rand(B, device=dev) - 0.5) * 2 * math.radians(15)
        sc = 0.85 + 0.3 * torch.rand(B, device=dev)
        th = torch.zeros(B, 3, 4, device=dev)
        # grid coords are (W, H, D) = (k, j, i); rotate in the (i, j) plane
        th[:, 0, 0] = 1 / sc
        th[:, 1, 1] = torch.cos(ang) / sc
        th[:, 1, 2] = -torch.sin(ang) / sc
        th[:, 2, 1] = torch.sin(ang) / sc
        th[:, 2, 2] = torch.cos(ang) / sc
        grid = F.affine_grid(th, xb.shape, align_corners=False)
        xb = F.grid_sample(xb, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        yb = F.grid_sample(yb, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        # intensity augmentation
        xb = xb * (0.9 + 0.2 * torch.rand(B, 1, 1, 1, 1, device=dev)) + 0.1 * (torch.rand(B, 1, 1, 1, 1, device=dev) - 0.5)
        xb = xb + 0.05 * torch.randn_like(xb) * (torch.rand(B, 1, 1, 1, 1, device=dev) < 0.3)
        yb = yb[:, 0].long()
        out = net(xb)
        ce = F.cross_entropy(out, yb)
        p = out.softmax(1)
        oh = F.one_hot(yb, ncls).permute(0, 4, 1, 2, 3).float()
        inter = (p * oh).sum((0, 2, 3, 4))
        den = p.sum((0, 2, 3, 4)) + oh.sum((0, 2, 3, 4))
        m = oh.sum((0, 2, 3, 4)) > 0
        dice = ((2 * inter + 1e-5) / (den + 1e-5))[m][1:].mean() if m[1:].any() else torch.tensor(1.0, device=dev)
        loss = ce + (1 - dice)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        log.append((it, float(loss), float(ce), float(dice), lr))
        if it % 250 == 0 or it == a.iters - 1:
            print(f"it {it} loss {float(loss):.4f} ce {float(ce):.4f} dice {float(dice):.4f} lr {lr:.5f} {time.time()-t0:.0f}s", flush=True)

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "train_log.csv"), "w") as f:
        f.write("iter,loss,ce,soft_dice,lr\n")
        for r in log:
            f.write("%d,%.6f,%.6f,%.6f,%.6g\n" % r)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        L = np.array([r[1] for r in log])
        k = 50
        plt.figure(figsize=(6, 3.5))
        plt.plot(L, alpha=0.3, label="loss")
        plt.plot(np.arange(k - 1, len(L)), np.convolve(L, np.ones(k) / k, "valid"), label=f"mean of {k}")
        plt.xlabel("iteration"); plt.ylabel("CE + (1 - soft Dice)"); plt.yscale("log"); plt.legend()
        plt.title("segpipe demo CT model"); plt.tight_layout()
        plt.savefig(os.path.join(a.out, "loss.png"), dpi=100)
    except Exception as e:  # plot is a nicety
        print("no plot:", e)

    net.eval()
    # Dice on the training cases, full volume in one forward (fully convolutional)
    dice_tab = {}
    with torch.no_grad():
        for ci in range(int(z["n"])):
            x = torch.from_numpy(normalise(z[f"x{ci}"], norm).astype(np.float32)).to(dev)
            y = z[f"y{ci}"]
            sh = x.shape
            tgt = [max(p, int(math.ceil(s / 8) * 8)) for s, p in zip(sh, PATCH)]
            xp = F.pad(x, [0, tgt[2] - sh[2], 0, tgt[1] - sh[1], 0, tgt[0] - sh[0]])
            pr = net(xp[None, None]).argmax(1)[0, :sh[0], :sh[1], :sh[2]].cpu().numpy()
            for l in np.unique(y):
                if l == 0:
                    continue
                d = 2 * ((pr == l) & (y == l)).sum() / ((pr == l).sum() + (y == l).sum())
                dice_tab.setdefault(labels[int(l)], {})[f"case{ci}"] = round(float(d), 4)
    json.dump(dice_tab, open(os.path.join(a.out, "dice_train_torch.json"), "w"), indent=1)

    net.cpu()
    dummy = torch.zeros(1, 1, *PATCH)
    torch.onnx.export(net, dummy, os.path.join(a.out, "model.onnx"), opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False)
    man = {
        "format": "segpipe-model", "version": 1, "name": "demo-ct", "task": "ct",
        "description": "Demonstration 3D U-Net (3 mm) trained by tools/train/train_demo_ct.py on three public "
                       "TotalSegmentator example cases. Not a clinical tool.",
        "onnx": "model.onnx",
        "input": {"name": "input", "channels": 1},
        "output": {"name": "logits", "kind": "logits"},
        "axes": [0, 1, 2],
        "spacing": [3.0, 3.0, 3.0],
        "patch_size": list(PATCH),
        "normalization": {"scheme": "ct", **norm},
        "sliding_window": {"step": 0.5, "sigma_scale": 0.125},
        "labels": {str(k): ("background" if k == 0 else labels.get(k, f"label_{k}")) for k in range(ncls)},
    }
    json.dump(man, open(os.path.join(a.out, "segpipe.json"), "w"), indent=1)
    print("wrote", a.out, "size", os.path.getsize(os.path.join(a.out, "model.onnx")))


if __name__ == "__main__":
    main()
