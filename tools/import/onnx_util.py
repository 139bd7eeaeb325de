"""What the ONNX rewriting tools share (onnx_fp16.py, onnx_int8.py): the
graph walks (who reads and who makes each tensor, dead code removed, node
and initializer lists replaced in place) and a package's model variant
read and written (model.fp16.onnx / model.int8.onnx beside segpipe.json,
each file replaced atomically)."""
import json, os
import onnx


def consumers(g):
    """tensor name -> the nodes that read it"""
    use = {}
    for n in g.node:
        for x in n.input:
            use.setdefault(x, []).append(n)
    return use


def producers(g):
    """tensor name -> the node that makes it"""
    return {o: n for n in g.node for o in n.output}


def set_nodes(g, nodes):
    """g's nodes replaced by `nodes` (a protobuf repeated field is rebuilt, not assigned)"""
    nodes = list(nodes)
    del g.node[:]
    g.node.extend(nodes)


def set_initializers(g, inits):
    inits = list(inits)
    del g.initializer[:]
    g.initializer.extend(inits)


def prune(g):
    """drop nodes and initializers nothing reads"""
    outs = {o.name for o in g.output}
    while True:
        use = consumers(g)
        keep = [n for n in g.node if any(y in outs or y in use for y in n.output)]
        if len(keep) == len(g.node):
            break
        set_nodes(g, keep)
    use = consumers(g)
    set_initializers(g, [t for t in g.initializer if t.name in use])


def load_package(pkg):
    """(manifest, its fp32 model) of a package folder; OSError/ValueError when unreadable"""
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    return man, onnx.load(os.path.join(pkg, man.get("onnx", "model.onnx")))


def save_variant(pkg, man, model, out, key):
    """model written as pkg/out and named by man[key] in segpipe.json, each under a
    temporary name renamed into place"""
    tmp = os.path.join(pkg, out + ".tmp")
    onnx.save(model, tmp)
    os.replace(tmp, os.path.join(pkg, out))
    man[key] = out
    mpath = os.path.join(pkg, "segpipe.json")
    with open(mpath + ".tmp", "w") as f:
        json.dump(man, f, indent=1)
    os.replace(mpath + ".tmp", mpath)
