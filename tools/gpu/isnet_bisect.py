#!/usr/bin/env python3
"""On the GPU machine (tools/gpu/run.sh isnet): find the first ISNet node
whose execution crashes ONNX Runtime's CUDA provider plugin. Prefixes of the
graph (nodes[:k], outputs = node k-1's outputs) are run through segpipe's
own runtime (libsegpipe, --device cuda) in a child process each, and the
crash boundary is bisected; then that node alone, fed random inputs of the
shapes shape inference gives, is run again to get a minimal reproducer
(saved as OUT/isnet_min.onnx).

  python3 tools/gpu/isnet_bisect.py MODEL.onnx OUT_DIR
"""
import ctypes as C, json, os, subprocess, sys
import numpy as np
import onnx
from onnx import helper, shape_inference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))


def run_child(path, shapes):
    """Load and run path on CUDA in this process (called in a child)."""
    from segpipe import _lib
    L = _lib.load()

    class Tensor(C.Structure):
        _fields_ = [("dtype", C.c_int), ("rank", C.c_int), ("shape", C.c_int64 * 8), ("data", C.c_void_p)]

    L.sp_model_load.argtypes = [C.c_void_p, C.c_char_p, C.POINTER(C.c_void_p)]
    L.sp_model_run.argtypes = [C.c_void_p, C.POINTER(Tensor), C.c_int, C.POINTER(Tensor), C.c_int]
    rp = L.sp_runtime_default_params()
    rp.device = os.environ.get("ISNET_DEVICE", "cuda").encode()
    rt, m = C.c_void_p(), C.c_void_p()
    assert L.sp_runtime_create(C.byref(rp), C.byref(rt)) == 0, L.sp_last_error()
    assert L.sp_model_load(rt, path.encode(), C.byref(m)) == 0, L.sp_last_error()
    arrs = [np.random.default_rng(0).random(s).astype(np.float32) for s in shapes]
    ins = (Tensor * len(arrs))(*[Tensor(1, a.ndim, (C.c_int64 * 8)(*a.shape), a.ctypes.data) for a in arrs])
    outs = (Tensor * 1)()
    rc = L.sp_model_run(m, ins, len(arrs), outs, 1)
    print("run", rc, L.sp_last_error().decode())
    sys.exit(0 if rc == 0 else 1)


def status(path, shapes):
    p = subprocess.run([sys.executable, __file__, "--child", path, json.dumps(shapes)], capture_output=True, text=True,
                       timeout=300)
    return p.returncode, (p.stdout + p.stderr)[-400:]


def prefix(model, k, out):
    g = model.graph
    nodes = list(g.node)[:k]
    vi = {v.name: v for v in list(g.value_info) + list(g.output)}
    outs = [vi[o] if o in vi else helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None)
            for o in nodes[-1].output if o]
    used = {i for n in nodes for i in n.input}
    inits = [t for t in g.initializer if t.name in used]
    m = helper.make_model(helper.make_graph(nodes, "prefix", list(g.input), outs[:1], inits),
                          opset_imports=model.opset_import)
    m.ir_version = model.ir_version
    onnx.save(m, out)


def main():
    if sys.argv[1] == "--child":
        return run_child(sys.argv[2], json.loads(sys.argv[3]))
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    model = shape_inference.infer_shapes(onnx.load(src))
    shape = [1, 3, 1024, 1024]
    rc, log = status(src, [shape])
    print(f"whole ISNet on CUDA: exit {rc} {log.strip()[-200:]}")
    n = len(model.graph.node)
    lo, hi = 1, n   # invariant: prefix lo does not crash (it may fail cleanly), prefix hi crashes
    if rc >= 0:
        print("no crash: nothing to bisect")
        return
    tmp = os.path.join(out, "prefix.onnx")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        prefix(model, mid, tmp)
        rc, log = status(tmp, [shape])
        print(f"  nodes[:{mid}] ({model.graph.node[mid - 1].op_type}): exit {rc} {log.strip()[-120:]}", flush=True)
        if rc >= 0:   # a signal (negative) is the crash; an error answer is not
            lo = mid
        else:
            hi = mid
    node = model.graph.node[hi - 1]
    print(f"first crashing node: #{hi - 1} {node.op_type} {node.name}")
    print(helper.printable_node(node))
    # the node alone, inputs random with the inferred shapes, weights kept
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.input)}
    inits = {t.name: t for t in model.graph.initializer}
    ins = [i for i in node.input if i and i not in inits]
    g = helper.make_graph([node], "min", [helper.make_tensor_value_info(i, onnx.TensorProto.FLOAT, shapes.get(i))
                                          for i in ins],
                          [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)],
                          [inits[i] for i in node.input if i in inits])
    mm = helper.make_model(g, opset_imports=model.opset_import)
    mm.ir_version = model.ir_version
    onnx.save(mm, os.path.join(out, "isnet_min.onnx"))
    rc, log = status(os.path.join(out, "isnet_min.onnx"), [shapes.get(i) for i in ins])
    print(f"the node alone ({[shapes.get(i) for i in ins]}): exit {rc} {log.strip()[-300:]}")


if __name__ == "__main__":
    main()
