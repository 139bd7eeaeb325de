#!/usr/bin/env python3
"""Add a statically quantised INT8 model to a segpipe model package
(docs/performance.md, "INT8").

  tools/import/onnx_int8.py PACKAGE --calib IN [IN ...] [--segpipe PATH]
                            [--out model.int8.onnx] [--calib-memory MB] [--ranges minmax|average]

Writes PACKAGE/model.int8.onnx and sets "onnx_int8" in segpipe.json;
`segpipe ct|mri ... --precision int8` then runs it on the CPU (never by
default). The model is the fp32 one with its convolutions in ONNX's QDQ
form, which ONNX Runtime's CPU provider fuses into QLinearConv (uint8
activations, int8 weights: the VNNI kernels where the CPU has them):

- weights: int8, symmetric, one scale per output channel (axis 0);
- bias: int32 at scale (input scale x weight scale), zero point 0;
- activations: uint8, one scale and zero point per tensor, from the
  minimum and maximum the tensor takes on the calibration inputs (0 always
  inside the range); --ranges average takes the mean of each run's (tile's,
  volume's, photo's) minimum and maximum instead, as onnxruntime's MinMax
  calibrator does with moving_average. Each quantised tensor gets one QuantizeLinear /
  DequantizeLinear pair read by all its consumers: every Conv input, and
  every Conv output (after its Relu when a lone Relu follows, which ONNX
  Runtime then folds into the quantisation).
- a Conv whose output is a graph output (the logits head) and every other
  operator (ConvTranspose, normalisation, activations) stay float32.

Calibration runs segpipe itself, so the ranges come from exactly the
tensors the model sees in use (segpipe's reading, resampling, conforming,
normalisation, tiles): the tensors to quantise become extra graph outputs
of a temporary copy of the package, `segpipe <task> IN --model COPY` runs on
every --calib input with SEGPIPE_CALIBRATE set, and the runtime records each
extra output's range (src/runtime/calib.c). Passes hold at most
--calib-memory MB of recorded tensors at once (sizes from ONNX shape
inference at the manifest's patch or input size).

Exit codes: 0 done, 2 usage, 4 a package or model that cannot be
quantised (no convolutions with constant weights, opset below 13, no
manifest), 5 a calibration run that failed (segpipe's message shown).
"""
import argparse, json, os, shutil, subprocess, sys, tempfile
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx_util import consumers, load_package, producers, prune, save_variant, set_initializers, set_nodes

HERE = os.path.dirname(os.path.abspath(__file__))


class QuantError(Exception):
    pass


def undo_dynamic(model):
    """A dynamically quantised model (onnxruntime's quantize_dynamic:
    DynamicQuantizeLinear -> ConvInteger -> Cast -> Mul(scales) -> Add(bias),
    as ISNet ships) back to float32 Convs whose weights are the dequantised
    uint8 ones, so static quantisation can start from it. Returns the count."""
    g = model.graph
    init = {t.name: t for t in g.initializer}
    prod = producers(g)
    use = consumers(g)
    done, dead, new_init = 0, set(), []
    for ci in [n for n in g.node if n.op_type == "ConvInteger"]:
        dql = prod.get(ci.input[0])
        cast = use.get(ci.output[0], [None])[0]
        mul = use.get(cast.output[0], [None])[0] if cast is not None else None
        if dql is None or dql.op_type != "DynamicQuantizeLinear" or mul is None or mul.op_type != "Mul":
            raise QuantError(f"ConvInteger {ci.name!r} is not in onnxruntime's dynamic-quantisation pattern")
        smul = prod.get(mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0])
        wscale = [x for x in smul.input if x in init] if smul is not None else []
        if ci.input[1] not in init or len(wscale) != 1:
            raise QuantError(f"ConvInteger {ci.name!r}: weights or their scale are not constants")
        wq = numpy_helper.to_array(init[ci.input[1]]).astype(np.int32)
        wz = numpy_helper.to_array(init[ci.input[3]]).astype(np.int32) if len(ci.input) > 3 and ci.input[3] else 0
        ws = numpy_helper.to_array(init[wscale[0]]).astype(np.float32)
        if np.ndim(ws) == 1:
            ws = ws.reshape((-1,) + (1,) * (wq.ndim - 1))
        last, ins = mul, [dql.input[0], ci.output[0] + "_w"]
        new_init.append(numpy_helper.from_array(((wq - wz) * ws).astype(np.float32), ci.output[0] + "_w"))
        add = use.get(mul.output[0], [None])
        if len(add) == 1 and add[0].op_type == "Add":
            b = [x for x in add[0].input if x != mul.output[0]][0]
            bsrc = prod.get(b)
            bname = bsrc.input[0] if bsrc is not None and bsrc.op_type == "Reshape" and bsrc.input[0] in init else None
            if bname is not None and len(init[bname].dims) == 1:
                last, ins = add[0], ins + [bname]
        conv = helper.make_node("Conv", ins, [last.output[0]], name=(ci.name or ci.output[0]) + "_fp32")
        conv.attribute.extend(ci.attribute)
        ci.CopyFrom(conv)
        dead.update(id(x) for x in (cast, mul) + ((last,) if last is not mul else ()))
        done += 1
    set_nodes(g, [n for n in g.node if id(n) not in dead])
    g.initializer.extend(new_init)
    prune(g)
    return done


def plan(model):
    """(indices of the Convs to quantise, tensors to quantise): a Conv qualifies with
    constant weights (and bias) and an output that is not a graph output.
    Each Conv's output tensor is its lone Relu's output where it has one."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    outs = {o.name for o in g.output}
    use = consumers(g)
    convs, tensors = [], []
    for k, n in enumerate(g.node):
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        if len(n.input) > 2 and n.input[2] and n.input[2] not in inits:
            continue
        if n.output[0] in outs:
            continue
        y = n.output[0]
        after = use.get(y, [])
        if len(after) == 1 and after[0].op_type == "Relu" and after[0].output[0] not in outs:
            y = after[0].output[0]
        convs.append(k)
        for t in (n.input[0], y):
            if t not in tensors and t not in inits:
                tensors.append(t)
    if not convs:
        raise QuantError("the model has no Conv with constant weights outside its output layer: nothing to quantise")
    return convs, tensors


def tensor_sizes(model, man, tensors):
    """bytes of each tensor at the manifest's patch (volume models) or input
    size (photo models), batch 1; unknown sizes count as 1 GB."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inp = m.graph.input[0].type.tensor_type.shape.dim
    if man.get("task", "ct") in ("ct", "mri"):
        fix = [1, man.get("input", {}).get("channels", 1)] + list(man["patch_size"])
    else:
        h, w = man.get("input", {}).get("size", [1024, 1024])
        fix = [1, 3, h, w]
    for d, v in zip(inp, fix):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    try:
        inf = onnx.shape_inference.infer_shapes(m)
    except Exception:
        return {t: 1 << 30 for t in tensors}
    shapes = {vi.name: vi for vi in list(inf.graph.value_info) + list(inf.graph.input)}
    size = {}
    for t in tensors:
        vi = shapes.get(t)
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim] if vi else []
        size[t] = 4 * int(np.prod(dims)) if dims and all(d > 0 for d in dims) else 1 << 30
    return size


def passes(tensors, size, budget):
    out, cur, used = [], [], 0
    for t in tensors:
        if cur and used + size[t] > budget:
            out.append(cur)
            cur, used = [], 0
        cur.append(t)
        used += size[t]
    return out + [cur] if cur else out


def calib_package(pkg, man, model, names, tmp):
    """a copy of the package whose model also outputs `names`"""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for t in names:
        if t not in have:
            m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    os.makedirs(tmp)
    for f in os.listdir(pkg):
        if f not in ("segpipe.json", man.get("onnx", "model.onnx")) and os.path.isfile(os.path.join(pkg, f)):
            os.symlink(os.path.abspath(os.path.join(pkg, f)), os.path.join(tmp, f))
    onnx.save(m, os.path.join(tmp, "calib.onnx"))
    mc = dict(man, onnx="calib.onnx")
    mc.pop("onnx_fp16", None)
    mc.pop("onnx_int8", None)
    json.dump(mc, open(os.path.join(tmp, "segpipe.json"), "w"))
    return tmp


def run_segpipe(segpipe, task, pkg, inp, work, ranges):
    env = dict(os.environ, SEGPIPE_CALIBRATE=ranges)
    env.pop("SEGPIPE_MODEL", None)
    if task in ("ct", "mri"):
        cmd = [segpipe, task, inp, "-o", os.path.join(work, "calib.nii.gz"), "--model", pkg, "--precision", "fp32",
               "--tile-batch", "1", "--no-passport", "-q"]
    else:
        cmd = [segpipe, "masks", inp, "-o", os.path.join(work, "calib-out"), "--model", pkg, "--quiet"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"segpipe {task} {os.path.basename(inp)} failed (exit {p.returncode}): "
                           f"{p.stderr.strip()[-500:]}")


def read_ranges(path, method):
    """per tensor (lo, hi): "minmax", the extremes over every run; "average",
    the mean of each run's (each tile's, photo's or volume's) minimum and
    maximum, onnxruntime's MinMax calibrator with moving_average"""
    acc = {}
    for line in open(path):
        name, lo, hi, _, slo, shi, runs = line.rstrip("\n").split("\t")
        a = acc.setdefault(name, [np.inf, -np.inf, 0.0, 0.0, 0])
        a[0], a[1] = min(a[0], float(lo)), max(a[1], float(hi))
        a[2], a[3], a[4] = a[2] + float(slo), a[3] + float(shi), a[4] + int(runs)
    if method == "average":
        return {k: (a[2] / a[4], a[3] / a[4]) for k, a in acc.items() if a[4]}
    return {k: (a[0], a[1]) for k, a in acc.items()}


def calibrate(pkg, man, model, tensors, inputs, segpipe, budget, method):
    size = tensor_sizes(model, man, tensors)
    task = man.get("task", "ct")
    ranges = {}
    with tempfile.TemporaryDirectory(prefix="segpipe-int8-") as work:
        for k, group in enumerate(passes(tensors, size, budget)):
            cp = calib_package(pkg, man, model, group, os.path.join(work, f"pkg{k}"))
            rf = os.path.join(work, f"ranges{k}.tsv")
            for inp in inputs:
                run_segpipe(segpipe, task, cp, inp, work, rf)
            got = read_ranges(rf, method) if os.path.exists(rf) else {}
            missing = [t for t in group if t not in got]
            if missing:
                raise RuntimeError(f"the calibration runs recorded no range for {missing[0]!r}")
            ranges.update(got)
    return ranges


def act_qparams(lo, hi):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return np.float32(scale), np.uint8(zp)


def conv_weights(n, xs, init, new_init):
    """n's weight (int8, a scale per output channel) and bias (int32 at
    input scale xs x weight scale) as initializers behind DequantizeLinear
    nodes, which it returns; n reads them."""
    w = numpy_helper.to_array(init[n.input[1]]).astype(np.float32)
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    ws = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    wq = np.clip(np.round(w / ws.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
    base = n.output[0]
    new_init += [numpy_helper.from_array(wq, base + "_wq"), numpy_helper.from_array(ws, base + "_ws"),
                 numpy_helper.from_array(np.zeros(len(ws), np.int8), base + "_wzp")]
    extra = [helper.make_node("DequantizeLinear", [base + "_wq", base + "_ws", base + "_wzp"], [base + "_wdq"], axis=0)]
    n.input[1] = base + "_wdq"
    if len(n.input) > 2 and n.input[2]:
        b = numpy_helper.to_array(init[n.input[2]]).astype(np.float64)
        bs = np.float64(xs) * ws.astype(np.float64)
        bq = np.clip(np.round(b / bs), -2**31, 2**31 - 1).astype(np.int32)
        new_init += [numpy_helper.from_array(bq, base + "_bq"),
                     numpy_helper.from_array(bs.astype(np.float32), base + "_bs"),
                     numpy_helper.from_array(np.zeros(len(bs), np.int32), base + "_bzp")]
        extra.append(helper.make_node("DequantizeLinear", [base + "_bq", base + "_bs", base + "_bzp"],
                                      [base + "_bdq"], axis=0))
        n.input[2] = base + "_bdq"
    return extra


def quantize(model, convs, tensors, ranges):
    """the QDQ model (a new ModelProto)"""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    init = {t.name: t for t in g.initializer}
    qp = {t: act_qparams(*ranges[t]) for t in tensors}
    new_init, dq = [], {}
    for t in tensors:   # one Q/DQ pair per tensor, read by every consumer
        s, z = qp[t]
        new_init += [numpy_helper.from_array(np.array(s, np.float32), t + "_scale"),
                     numpy_helper.from_array(np.array(z, np.uint8), t + "_zp")]
        dq[t] = t + "_dq"
    drop, pre = set(), {}
    for k in convs:
        n = g.node[k]
        drop.update(n.input[1:])
        pre[k] = conv_weights(n, qp[n.input[0]][0], init, new_init)
    for n in g.node:
        for i, x in enumerate(n.input):
            if x in dq:
                n.input[i] = dq[x]
    # a graph output that is also quantised stays the float32 tensor: only its readers move to the DQ
    graph_in = {i.name for i in g.input}
    qnodes = {t: [helper.make_node("QuantizeLinear", [t, t + "_scale", t + "_zp"], [t + "_q"]),
                  helper.make_node("DequantizeLinear", [t + "_q", t + "_scale", t + "_zp"], [t + "_dq"])]
              for t in tensors}
    nodes = [q for t in tensors if t in graph_in for q in qnodes[t]]
    for k, n in enumerate(g.node):
        nodes += pre.get(k, []) + [n]
        for y in n.output:
            if y in qnodes and y not in graph_in:
                nodes += qnodes[y]
    set_nodes(g, nodes)
    still = consumers(g)
    set_initializers(g, [t for t in g.initializer if t.name not in drop or t.name in still] + new_init)
    onnx.checker.check_model(m)
    return m


def default_segpipe():
    built = os.path.join(HERE, "..", "..", "build", "segpipe")
    return built if os.access(built, os.X_OK) else shutil.which("segpipe") or "segpipe"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package")
    ap.add_argument("--calib", nargs="+", required=True, metavar="IN",
                    help="calibration inputs: CT/MRI volumes or photos, as `segpipe <task>` reads them")
    ap.add_argument("--segpipe", default=default_segpipe(), help="the segpipe binary (default: build/segpipe, else PATH)")
    ap.add_argument("--out", default="model.int8.onnx", help="file name inside the package")
    ap.add_argument("--calib-memory", type=int, default=2048, metavar="MB",
                    help="recorded tensors held at once per calibration pass (default 2048)")
    ap.add_argument("--ranges", choices=("minmax", "average"), default="minmax",
                    help="activation ranges: extremes over all runs (default) or the mean of each run's")
    a = ap.parse_args()
    if "/" in a.out or a.calib_memory < 64:
        ap.error("--out is a file name inside the package; --calib-memory is at least 64 MB")
    for f in a.calib:
        if not os.path.isfile(f):
            ap.error(f"calibration input {f!r} not found")
    try:
        man, model = load_package(a.package)
        if man.get("task", "ct") not in ("ct", "mri", "masks"):
            raise QuantError(f"task {man.get('task')!r}: calibration runs ct, mri or masks packages")
        if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < 13:
            raise QuantError("the model's opset is below 13 (per-channel DequantizeLinear needs 13)")
        if undo_dynamic(model):   # from here on the model is float32; the package keeps its own file
            onnx.checker.check_model(model)
        convs, tensors = plan(model)
    except (OSError, ValueError, KeyError, QuantError, onnx.checker.ValidationError) as e:
        print(f"onnx_int8: {e}", file=sys.stderr)
        sys.exit(4)
    try:
        ranges = calibrate(a.package, man, model, tensors, a.calib, a.segpipe, a.calib_memory << 20, a.ranges)
    except (OSError, RuntimeError) as e:
        print(f"onnx_int8: calibration: {e}", file=sys.stderr)
        sys.exit(5)
    try:
        q = quantize(model, convs, tensors, ranges)
    except (QuantError, onnx.checker.ValidationError) as e:
        print(f"onnx_int8: {e}", file=sys.stderr)
        sys.exit(4)
    save_variant(a.package, man, q, a.out, "onnx_int8")
    print(f"wrote {a.package}/{a.out} ({len(convs)} Conv in int8, {len(tensors)} activations calibrated on "
          f"{len(a.calib)} input(s)) and \"onnx_int8\" in segpipe.json")


if __name__ == "__main__":
    main()
