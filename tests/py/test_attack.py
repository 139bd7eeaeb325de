"""The attack suite (tests/attack/cases.py) at small scale, and the faults
of issue 39 that need a process to watch: every hostile input gets its exit
code and its reason, nothing is left in $TMPDIR, no reader process outlives
its parent or its cancelled job, ONNX Runtime writes no telemetry files,
and the service's HTTP limits hold (header deadline, per-address limit,
chunked bodies over --max-body, control characters in paths). Behaviour is
asserted, never wall time: `make attack` (tests/attack/run.py) runs the
same cases at full scale and reports time and peak memory."""
import json, os, shutil, signal, socket, subprocess, sys, time
import sp
from test_server import Server, http, jget

sys.path.insert(0, os.path.join(sp.ROOT, "tests", "attack"))
import cases  # noqa: E402


def _env(tmpdir, home=None):
    env = dict(sp.run_env(), TMPDIR=tmpdir)
    if home:
        env["HOME"] = home
    return env


def _ours(tmpdir):
    """processes whose environment names this test's TMPDIR (a reader that survived)"""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"TMPDIR=" + tmpdir.encode() in env:
            found.append(int(pid))
    return found


def _gone(pid, polls=3000):
    """until pid no longer runs (gone or a zombie); the bound only guards a hang"""
    for _ in range(polls):
        try:
            if open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.01)
    return False


def test_attack_cases_small_scale(tmp):
    """each generator of tests/attack/cases.py through `segpipe ct`: the
    expected exit code and reason, no output on a refusal, an empty TMPDIR
    and no process left with it afterwards"""
    for name, (gen, code, phrase) in cases.CASES.items():
        d = os.path.join(tmp, name)
        tdir = os.path.join(tmp, name + ".tmp")
        os.makedirs(d)
        os.makedirs(tdir)
        src = gen(d, "small")
        out = os.path.join(tmp, name + ".nii.gz")
        # the CT command where its header check is the point; else the reader alone (resample: seconds, not a CT run)
        cmd = ["ct", src, "-o", out, "--no-passport"] if name.startswith("nifti") else \
              ["resample", src, "-o", out, "--spacing", "4,4,4"]
        r = subprocess.run([sp.SEGPIPE, *cmd], capture_output=True, text=True, env=_env(tdir), timeout=600)
        assert r.returncode == code, (name, r.returncode, r.stderr)
        if phrase:
            assert phrase in r.stderr, (name, r.stderr)
        if name == "dicom_many":
            assert "no DICOM image slices" in r.stderr, r.stderr
        assert os.path.exists(out) == (code == 0), name
        assert os.listdir(tdir) == [], (name, os.listdir(tdir))
        assert _ours(tdir) == [], name
        assert tdir not in r.stderr, (name, r.stderr)   # no private path in a message
    assert not os.path.exists(os.path.join(tmp, "..", "evil")) and not os.path.exists(os.path.join(tmp, "evil"))


def test_attack_nothing_left_in_tmpdir_or_home(tmp):
    """ONNX Runtime 1.29's telemetry is off: a CT run leaves no
    mat-debug-PID.log or .ses in $TMPDIR and no ~/.cache/Microsoft"""
    tdir, home = os.path.join(tmp, "t"), os.path.join(tmp, "home")
    os.makedirs(tdir)
    os.makedirs(home)
    out = os.path.join(tmp, "o.nii.gz")
    r = subprocess.run([sp.SEGPIPE, "ct", cases.CT_SM, "-o", out, "-q"], capture_output=True, text=True,
                       env=_env(tdir, home))
    assert r.returncode == 0 and os.path.exists(out), r.stderr
    assert os.listdir(tdir) == [], os.listdir(tdir)
    assert os.listdir(home) == [], os.listdir(home)


def _big_series_zip(tmp, n=120):
    """the example series stacked to n slices (JPEG 2000 pixel data kept),
    zipped once per test run (sp.once: both shards of the module use it)"""
    def make(d):
        import pydicom, zipfile
        from pydicom.uid import generate_uid
        z = os.path.join(d, "big.zip")
        files = sorted(os.listdir(cases.SERIES))
        slices = [pydicom.dcmread(os.path.join(cases.SERIES, f)) for f in files]
        slices.sort(key=lambda s: float(s.ImagePositionPatient[2]))
        z0, step = float(slices[0].ImagePositionPatient[2]), float(slices[1].ImagePositionPatient[2]) - float(slices[0].ImagePositionPatient[2])
        series = generate_uid()
        with zipfile.ZipFile(z, "w") as zf:
            for k in range(n):
                s = slices[k % len(slices)]
                s.ImagePositionPatient = [s.ImagePositionPatient[0], s.ImagePositionPatient[1], z0 + k * step]
                s.SOPInstanceUID = s.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                s.SeriesInstanceUID = series
                p = os.path.join(d, f"{k:04d}.dcm")
                s.save_as(p)
                zf.write(p, f"{k:04d}.dcm")
                os.remove(p)
    return os.path.join(sp.once(("attack big series zip", n), make), "big.zip")


def _children(pid):
    try:
        return [int(c) for t in os.listdir(f"/proc/{pid}/task")
                for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
    except OSError:
        return []


def test_attack_reader_dies_with_its_parent(tmp):
    """`segpipe ct big.zip` SIGKILLed while its DICOM reader runs (the reader
    stopped first, so it is surely alive then): the reader goes too
    (PR_SET_PDEATHSIG); its unpacked folder, left by the killed parent, is
    removed by the next segpipe that unpacks a zip (its PID is dead)"""
    z = _big_series_zip(tmp)
    tdir = os.path.join(tmp, "t")
    os.makedirs(tdir)
    p = subprocess.Popen([sp.SEGPIPE, "ct", z, "-o", os.path.join(tmp, "o.nii.gz"), "-q"], env=_env(tdir),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids = []
    for _ in range(60000):
        kids = _children(p.pid)
        if kids or p.poll() is not None:
            break
        time.sleep(0.001)
    assert kids, "no reader process seen"
    os.kill(kids[0], signal.SIGSTOP)
    p.kill()
    p.wait()
    try:   # stopped before its prctl, it must see its parent gone (getppid) once it runs on
        os.kill(kids[0], signal.SIGCONT)
    except ProcessLookupError:
        pass
    assert _gone(kids[0]), "the reader outlived its parent"
    left = [f for f in os.listdir(tdir) if f.startswith(f"segpipe-dicom-{p.pid}-")]
    assert left, os.listdir(tdir)   # the killed parent could not clean up
    r = subprocess.run([sp.SEGPIPE, "ct", cases.zip_slip(tmp, "small"), "-o", os.path.join(tmp, "b.nii.gz"), "-q",
                        "--no-passport"], capture_output=True, text=True, env=_env(tdir))
    assert r.returncode == 0, r.stderr
    assert os.listdir(tdir) == [], os.listdir(tdir)


def test_attack_service_cancel_reaches_the_reader(tmp):
    """a DICOM zip past --timeout: 504, the reader process is killed (not left
    decoding), the worker is free (the next CT is answered 200), the temp
    folder is gone; then SIGTERM stops the service (exit 0)"""
    z = open(_big_series_zip(tmp), "rb").read()
    tdir = os.path.join(tmp, "t")
    os.makedirs(tdir)
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = tdir
    try:
        s = Server("--model", f"demo={sp.DEMO}", "--timeout", "1", "--threads", "1")
    finally:
        os.environ.pop("TMPDIR") if old is None else os.environ.__setitem__("TMPDIR", old)
    try:
        code, body, _ = http(s.url + "/v1/ct?model=demo", z, "application/zip")
        assert code == 504, (code, body[:300])
        assert tdir.encode() not in body
        dicom = lambda: [f for f in os.listdir(tdir) if f.startswith("segpipe-dicom-")]
        for _ in range(3000):   # events: the reader gone, the folder removed
            if not _children(s.p.pid) and not dicom():
                break
            time.sleep(0.01)
        assert _children(s.p.pid) == [] and dicom() == [], (_children(s.p.pid), dicom())
        code, _ = jget(s.url + "/v2/health/ready")
        assert code == 200
    finally:
        rc, err = s.stop()
    assert rc == 0, err


def _trickle(port, host="127.0.0.1", src="127.0.0.1"):
    c = socket.socket()
    c.bind((src, 0))
    c.connect((host, port))
    c.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n")
    return c


def test_attack_http_limits(tmp):
    """the header deadline closes a connection that trickles its headers; the
    per-address limit (on by default) leaves other addresses served; a
    chunked body over --max-body gets 413 (not a dropped connection);
    control characters in a path get 400; no message names a server path"""
    s = Server("--model", f"demo={sp.DEMO}", "--header-timeout", "1", "--max-body", "1000000")
    socks = []
    try:
        # header deadline: a byte now and then keeps --read-timeout away, not the deadline
        c = _trickle(s.port)
        closed = False
        for _ in range(600):
            try:
                c.sendall(b"X-a: b\r\n")
            except OSError:
                closed = True
                break
            time.sleep(0.05)
        c.close()
        assert closed, "a trickling header was never cut"
        # per address: 80 slow sockets from 127.0.0.1; 127.0.0.2 is still served
        for _ in range(80):
            socks.append(_trickle(s.port))
        for _ in range(8):
            c = socket.socket()
            c.bind(("127.0.0.2", 0))
            c.connect(("127.0.0.1", s.port))
            c.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert c.recv(64).startswith(b"HTTP/1.1 200"), "health check refused"
            c.close()
        for c in socks:
            c.close()
        socks = []
        # chunked over --max-body: 413 once the body ends
        body = b"".join(b"%x\r\n%s\r\n" % (65536, bytes(65536)) for _ in range(32)) + b"0\r\n\r\n"
        c = socket.create_connection(("127.0.0.1", s.port), timeout=60)
        c.sendall(b"POST /v1/ct?model=demo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n" + body)
        answer = b""
        while not answer.endswith(b"}\n"):
            chunk = c.recv(4096)
            if not chunk:
                break
            answer += chunk
        c.close()
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        for path in ("/v2/models/demo%00x", "/v2/models/demo%0ax", "/v2/models/de%7fmo"):
            code, body, _ = http(s.url + path)
            assert code == 400 and b"control character" in body, (path, code, body)
        assert http(s.url + "/v2/models/demo")[0] == 200
    finally:
        for c in socks:
            c.close()
        rc, err = s.stop()
    assert rc == 0, err


def test_attack_kserve_shape_the_model_rejects(tmp):
    """a tensor that passes the declared shape (dynamic H and W) but that the
    model cannot take (its Add broadcasts against a fixed 32x32 constant):
    400 (the client's error, not 500), the model still serves good input"""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    pkg = os.path.join(tmp, "pkg")
    shutil.copytree(os.path.join(sp.ROOT, "tests", "data", "tinymask"), pkg)
    m = onnx.load(os.path.join(pkg, "model.onnx"))
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 4, 32, 32), np.float32), "fixed"))
    m.graph.node[0].output[0] = "conv"
    m.graph.node.append(helper.make_node("Add", ["conv", "fixed"], ["logits"]))
    onnx.save(m, os.path.join(pkg, "model.onnx"))
    s = Server("--model", f"m={pkg}")
    try:
        def infer(h, w):
            body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, h, w], "datatype": "FP32",
                                           "data": [0.0] * (3 * h * w)}]}).encode()
            return http(s.url + "/v2/models/m/infer", body, "application/json")
        code, body, _ = infer(6, 6)
        assert code == 400 and b"did not accept" in body, (code, body)
        code, body, _ = infer(64, 64)
        assert code == 200 and json.loads(body)["outputs"][0]["shape"] == [1, 4, 32, 32], (code, body[:200])
    finally:
        rc, err = s.stop()
    assert rc == 0, err
