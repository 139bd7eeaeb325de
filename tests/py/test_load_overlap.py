"""`segpipe ct` / `mri` make the model's ONNX Runtime sessions on a second
thread while the input is read (issue #42; sp_package_open, then
sp_package_prepare beside sp_volume_read). Against the old order
(SEGPIPE_SERIAL_LOAD=1: the model first, then the input): the same label
file byte for byte, and with a bad model, a bad input or both the same exit
code and message (the model's error wins: exit 4), nothing written."""
import gzip, json, os, shutil
import numpy as np
import sp
from test_cli import _nifti1

SRC = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")


def _both(tmp, model, src, name):
    """(returncode, stderr, stdout, written) for the overlapped and the serial order"""
    got = []
    for serial in ("0", "1"):
        out = os.path.join(tmp, f"{name}{serial}.nii.gz")
        rep = os.path.join(tmp, f"{name}{serial}.json")
        r = sp.run("ct", src, "-o", out, "--model", model, "--no-passport", "--report", rep,
                   env={"SEGPIPE_SERIAL_LOAD": serial}, timeout=300)
        got.append((r.returncode, r.stderr, r.stdout, out if os.path.exists(out) else None))
        assert os.path.exists(rep) == (r.returncode == 0), (r.returncode, r.stderr)   # nothing written on failure
    return got


def test_overlapped_load_same_labels(tmp):
    (rc0, err0, out0, f0), (rc1, err1, out1, f1) = _both(tmp, sp.DEMO, SRC, "ok")
    assert rc0 == rc1 == 0, (err0, err1)
    assert open(f0, "rb").read() == open(f1, "rb").read()
    for out in (out0, out1):   # both stages keep their rows, each with its own duration
        rows = {l.split("  ")[0].strip() for l in out.splitlines() if "%" in l}
        assert {"load model", "read", "inference"} <= rows, out
    assert "ran at the same time" not in out1, out1   # the serial order overlaps nothing
    reps = [json.load(open(os.path.join(tmp, f"ok{s}.json"))) for s in "01"]
    assert reps[1]["overlapped_seconds"] == 0 and all({"load_model", "read"} <= set(r["seconds"]) for r in reps)
    # the overlap is at most the shorter of the two stages
    sec = reps[0]["seconds"]
    assert 0 <= reps[0]["overlapped_seconds"] <= min(sec["load_model"], sec["read"]) + 1e-3, reps[0]


def test_overlapped_load_errors(tmp):
    bad = os.path.join(tmp, "badmodel")   # the ONNX output has 4 classes, the label map 3: found by the session's check
    shutil.copytree(sp.TINYSEG, bad)
    man = json.load(open(os.path.join(bad, "segpipe.json")))
    json.dump(dict(man, labels={"0": "background", "1": "a", "2": "b"}), open(os.path.join(bad, "segpipe.json"), "w"))
    broken = os.path.join(tmp, "broken")   # not an ONNX file at all
    shutil.copytree(sp.TINYSEG, broken)
    open(os.path.join(broken, "model.onnx"), "wb").write(b"not an onnx file" * 64)
    raw = gzip.decompress(open(SRC, "rb").read())
    trunc = os.path.join(tmp, "trunc.nii.gz")   # a good header (checked against the manifest), then the data end
    open(trunc, "wb").write(gzip.compress(raw[:20000]))
    huge = os.path.join(tmp, "huge.nii.gz")   # refused by the header check: too many tiles
    hdr = bytearray(raw[:352])
    hdr[42:48] = np.array([30000, 30000, 30000], "<i2").tobytes()
    open(huge, "wb").write(gzip.compress(bytes(hdr) + b"\0" * 1000))
    tiles = os.path.join(tmp, "tiles.nii")   # refused by sp_ct_header_check (the manifest's grid), beside prepare
    open(tiles, "wb").write(_nifti1((8, 8, 8), (150, 150, 150), np.zeros(512)))
    cases = [(sp.TINYSEG, tiles, 3, "check the spacing"), (bad, tiles, 4, "label map has 3"), (bad, SRC, 4, "label map has 3"), (broken, SRC, 4, "model.onnx"), (sp.TINYSEG, trunc, 3, "trunc.nii.gz"),
             (sp.TINYSEG, huge, 3, "over the limit"), (bad, trunc, 4, "label map has 3"),
             (broken, huge, 4, "model.onnx")]
    for i, (model, src, code, said) in enumerate(cases):
        (rc0, err0, out0, f0), (rc1, err1, out1, f1) = _both(tmp, model, src, f"c{i}_")
        assert rc0 == rc1 and err0 == err1, (i, rc0, rc1, err0, err1)
        assert rc0 == code, (i, rc0, err0)
        assert said in err0 and f0 is None and f1 is None, (i, err0)
        assert "inference" not in out0, (i, out0)
