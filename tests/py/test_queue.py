"""The queue an operator can trust (docs/scale-out.md, issue 40), against a
real redis-server on a free loopback port: hostile stream entries are all
dead-lettered with a reason and nothing outside the worker's roots is read
or written (canaries outside the roots: a CT that would give labels, and a
FIFO that would hang a reader); signed entries (--key-file); submit
resolves and checks inputs and carries ct options that the worker applies;
error classes (input errors dead at once, transient ones retried with
backoff up to --max-attempts, the time limit), one attempt counter in the
job and its dead letter, --retry-dead and --purge, the SIGTERM hand-back
and the Prometheus textfile."""
import glob, json, os, shutil, signal, stat, subprocess, time
import numpy as np
import nibabel as nib
import sp
from test_scale_out import Redis, small_cts

MARK = "CANARY-7f3a"   # bytes of the canary files: must never reach Redis or a log


def cts(d, n):
    os.makedirs(d, exist_ok=True)
    return small_cts(d, n)


def need_redis():
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        raise sp.Skip("needs Debian's redis-server (scripts/install-deps.sh)")


def worker(url, tmp, name, *extra, inroot=None, outroot=None):
    for d in ("in", "out"):
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
    return subprocess.Popen([sp.SEGPIPE, "worker", "--redis", url, "--consumer", name, "--threads", "1",
                             "--input-root", inroot or os.path.join(tmp, "in"),
                             "--output-root", outroot or os.path.join(tmp, "out"), *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=sp.run_env())


def stop(w):
    if w.poll() is None:
        w.send_signal(signal.SIGTERM)
    try:
        return w.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        w.kill()
        raise


def dead_letters(r):
    """the dead-letter stream as a list of dicts (redis-cli --json: Redis 7)"""
    raw = subprocess.run(["redis-cli", "-p", str(r.port), "--json", "XRANGE", "segpipe:dead", "-", "+"],
                         capture_output=True, text=True).stdout
    return [dict(zip(f[::2], f[1::2])) for _eid, f in json.loads(raw or "[]")]


def wait_for(pred, limit=120):
    t0 = time.time()
    while time.time() - t0 < limit:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def redis_dump(r):
    """every key and value of the database as text"""
    text = []
    for k in r.cli("KEYS", "*").splitlines():
        t = r.cli("TYPE", k)
        cmd = {"hash": ["HGETALL"], "stream": ["XRANGE", "-", "+"], "zset": ["ZRANGE", "0", "-1"],
               "string": ["GET"]}.get(t, ["TYPE"])
        text.append(k + " " + r.cli(cmd[0], k, *cmd[1:]))
    return "\n".join(text)


def test_queue_hostile_entries(tmp):
    """Entries naming files outside --input-root (directly, through a link,
    through a link inside a folder), outputs outside --output-root (directly,
    with '..', through a link), model paths and unknown models, malformed
    fields, options a job may not carry, a FIFO and a text file inside the
    roots: every one dead-lettered with a reason that quotes no file, the
    canaries untouched, nothing written outside the roots, the worker still
    serving a good job afterwards."""
    need_redis()
    r = Redis(tmp)
    url = f"redis://127.0.0.1:{r.port}"
    ind, outd, away = (os.path.join(tmp, d) for d in ("in", "out", "away"))
    for d in (ind, outd, away):
        os.makedirs(d)
    good = small_cts(ind, 1)[0]
    canary = os.path.join(away, "secret.nii.gz")
    shutil.copy(good, canary)                              # a CT a worker could segment: labels would show it
    open(os.path.join(away, "notes.txt"), "w").write(MARK + "\n")
    fifo = os.path.join(away, "pipe.nii")
    os.mkfifo(fifo)                                        # opening it for reading would hang a worker
    os.symlink(canary, os.path.join(ind, "link.nii.gz"))
    os.symlink(fifo, os.path.join(ind, "pipe-link.nii"))
    os.makedirs(os.path.join(ind, "series"))
    shutil.copy(good, os.path.join(ind, "series", "a.nii.gz"))
    os.symlink(canary, os.path.join(ind, "series", "b.nii.gz"))
    os.symlink(away, os.path.join(outd, "escape"))
    os.mkfifo(os.path.join(ind, "fifo.nii"))
    text = os.path.join(ind, "text.nii")
    open(text, "w").write("root:x:0:0:" + MARK + ":/root:/bin/bash\n" * 20)
    before = {p: os.stat(p).st_mtime for p in glob.glob(os.path.join(away, "**"), recursive=True)}
    hexid = iter(f"{i:032x}" for i in range(1, 1000))
    cases = [   # (fields, reason substring)
        (["input", "/etc/passwd", "output", outd], "outside the worker's --input-root"),
        (["input", canary, "output", outd], "outside the worker's --input-root"),
        (["input", os.path.join(ind, "link.nii.gz"), "output", outd], "outside the worker's --input-root"),
        (["input", os.path.join(ind, "pipe-link.nii"), "output", outd], "outside the worker's --input-root"),
        (["input", os.path.join(ind, "series"), "output", outd], "link leading outside"),
        (["input", good, "output", away], "outside the worker's --output-root"),
        (["input", good, "output", os.path.join(away, "new", "deeper")], "outside the worker's --output-root"),
        (["input", good, "output", outd + "/../away"], "'..'"),
        (["input", good, "output", os.path.join(outd, "escape", "x")], "outside the worker's --output-root"),
        (["input", good, "output", outd, "model", sp.DEMO], "not a model name"),
        (["input", good, "output", outd, "model", "nope"], "unknown model"),
        (["input", good, "output", outd, "opts", "--report\x1f" + os.path.join(away, "r.json")], "may carry"),
        (["input", good, "output", outd, "opts", "--preview=" + os.path.join(away, "p.png")], "may carry"),
        (["input", good, "output", outd, "opts", "--step\x1f7"], "parser"),
        (["input", good, "output", outd, "opts", "--device\x1fcuda"], "wants device cuda"),
        (["input", good, "output", outd, "opts", "--device\x1fcuda:1"], "--device is cpu, cuda or tensorrt"),
        (["input", good, "output", outd, "opts", "--step\x1f--report=" + os.path.join(away, "r.json")], "parser"),
        (["input", "in/" + os.path.basename(good), "output", outd], "not an absolute path"),
        (["input", good + "\x01", "output", outd], "control characters"),
        (["input", "/" + "a" * 100000, "output", outd], "too long"),
        (["input", good, "output", outd, "sig", "xyz"], "'sig'"),
        (["input", good, "output", outd, "evil", "1"], "unknown field"),
        (["input", good], "missing"),
        (["input", os.path.join(ind, "fifo.nii"), "output", outd], "not a regular file"),
        (["input", text, "output", outd], "not a NIfTI"),
    ]
    w = None
    try:
        ids = []
        for fields, _ in cases:
            ids.append(next(hexid))
            r.cli("XADD", "segpipe:jobs", "*", "id", ids[-1], *fields)
        r.cli("XADD", "segpipe:jobs", "*", "id", "not-hex", "input", good, "output", outd)
        r.cli("XADD", "segpipe:jobs", "*", "input", good, "output", outd)        # no id
        n_bad = len(cases) + 2
        w = worker(url, tmp, "w0", "--max-attempts", "2", "--backoff", "0.1")
        dl = wait_for(lambda: (lambda d: d if len(d) >= n_bad else None)(dead_letters(r)), 120)
        # a good job afterwards still runs
        p = sp.run("submit", "--redis", url, good, "-o", outd, check=True)
        gid = p.stdout.split()[0]
        wait_for(lambda: r.cli("HGET", f"segpipe:job:{gid}", "state") == "done", 120)
        _out, err = stop(w)
        assert w.returncode == 0, err
        dump = redis_dump(r)
    finally:
        if w and w.poll() is None:
            w.kill()
        r.stop()
    by_id = {d["id"]: d for d in dl}
    for i, (fields, reason) in zip(ids, cases):
        d = by_id.get(i) or next(d for d in dl if d["id"] == "-" and reason in d["error"])
        assert reason in d["error"], (fields[:4], d)
        assert d["class"] in ("rejected", "input"), d
    assert sum(d["id"] == "-" for d in dl) >= 2 and len(dl) == n_bad
    # no reason quotes a file, the log neither; Redis holds no canary byte
    for d in dl:
        assert MARK not in d["error"] and "root:x" not in d["error"] and "1953460082" not in d["error"], d
    assert MARK not in err and "root:x" not in err and MARK not in dump and "root:x" not in dump
    # nothing written outside the roots, the canaries untouched; the only outputs are the good job's
    after = {p: os.stat(p).st_mtime for p in glob.glob(os.path.join(away, "**"), recursive=True)}
    assert after == before
    outs = sorted(os.path.relpath(os.path.join(d, f), outd) for d, _, fs in os.walk(outd) for f in fs)
    name = os.path.basename(good)[:-7]
    assert outs == [f"{name}.{gid}.nii.gz", f"{name}.{gid}.passport.json"], outs
    assert not os.path.exists(os.path.join(tmp, "away", "new"))
    # counted: rejected entries (no job record) apart from failed jobs
    assert f"job {ids[0]} dead (rejected" in err


def test_queue_signed_entries(tmp):
    """With --key-file on both sides: signed jobs run; unsigned entries,
    entries with a wrong signature and a signed entry whose output was
    changed afterwards are dead-lettered; a key file readable by others is
    refused."""
    need_redis()
    r = Redis(tmp)
    url = f"redis://127.0.0.1:{r.port}"
    ind, outd = os.path.join(tmp, "in"), os.path.join(tmp, "out")
    os.makedirs(outd)
    good = cts(ind, 1)[0]
    key = os.path.join(tmp, "queue.key")
    open(key, "w").write(os.urandom(32).hex() + "\n")
    os.chmod(key, 0o644)
    p = sp.run("submit", "--redis", url, good, "-o", outd, "--key-file", key)
    assert p.returncode == 2 and "chmod 600" in p.stderr
    os.chmod(key, 0o600)
    other = os.path.join(tmp, "other.key")
    open(other, "w").write(os.urandom(32).hex())
    os.chmod(other, 0o600)
    w = None
    try:
        gid = sp.run("submit", "--redis", url, good, "-o", outd, "--key-file", key, check=True).stdout.split()[0]
        fid = sp.run("submit", "--redis", url, good, "-o", outd, "--key-file", other, check=True).stdout.split()[0]
        r.cli("XADD", "segpipe:jobs", "*", "id", "ab" * 16, "input", good, "output", outd)
        # a signed entry replayed with another output folder
        ent = json.loads(subprocess.run(["redis-cli", "-p", str(r.port), "--json", "XRANGE", "segpipe:jobs", "-",
                                         "+", "COUNT", "1"], capture_output=True, text=True).stdout)[0][1]
        f = dict(zip(ent[::2], ent[1::2]))
        f["output"], f["id"] = os.path.join(outd, "elsewhere"), "cd" * 16
        r.cli("XADD", "segpipe:jobs", "*", *[x for kv in f.items() for x in kv])
        w = worker(url, tmp, "w0", "--key-file", key)
        wait_for(lambda: r.cli("HGET", f"segpipe:job:{gid}", "state") == "done" and len(dead_letters(r)) >= 3)
        stop(w)
        dl = {d["id"]: d["error"] for d in dead_letters(r)}
    finally:
        if w and w.poll() is None:
            w.kill()
        r.stop()
    assert "bad signature" in dl[fid] and "unsigned" in dl["ab" * 16] and "bad signature" in dl["cd" * 16], dl
    assert not os.path.exists(os.path.join(outd, "elsewhere"))


def test_queue_submit_checks_and_options(tmp):
    """submit: relative inputs become absolute, missing ones stop it with
    exit 3 before anything is queued, --no-check wants absolute paths,
    ct options are checked by segpipe ct's parser (and only those a job may
    carry), --model is a name; the worker applies the carried options
    (--roi-subset: only those structures labelled)."""
    need_redis()
    r = Redis(tmp)
    url = f"redis://127.0.0.1:{r.port}"
    ind, outd = os.path.join(tmp, "in"), os.path.join(tmp, "out")
    good = cts(ind, 2)
    run = lambda *a, **k: subprocess.run([sp.SEGPIPE, *a], capture_output=True, text=True, env=sp.run_env(),
                                         cwd=ind, **k)
    w = None
    try:
        p = run("submit", "--redis", url, "ct00.nii.gz", "missing.nii.gz", "-o", "../out")
        assert p.returncode == 3 and "missing.nii.gz: not found" in p.stderr
        assert r.cli("XLEN", "segpipe:jobs") == "0"                       # nothing queued
        p = run("submit", "--redis", url, "ct00.nii.gz", "-o", "../out", "--no-check")
        assert p.returncode == 2 and "absolute" in p.stderr
        for bad, msg in ((["--report", "/tmp/r.json"], "may carry"), (["--step", "5"], "parser"),
                         (["--output-type", "svg"], "parser"), (["--precision", "fp8"], "precision"),
                         (["-o", "x"], "may carry")):
            p = run("submit", "--redis", url, "ct00.nii.gz", "-o", "../out", "--", *bad)
            assert p.returncode == 2 and msg in p.stderr, (bad, p.stderr)
        p = run("submit", "--redis", url, "ct00.nii.gz", "-o", "../out", "--model", sp.DEMO)
        assert p.returncode == 2 and "not a path" in p.stderr
        assert r.cli("XLEN", "segpipe:jobs") == "0"
        p = run("submit", "--redis", url, "ct00.nii.gz", "-o", "../out/sub", "--", "--roi-subset", "liver,spleen")
        assert p.returncode == 0, p.stderr
        jid, path = p.stdout.split()
        assert path == os.path.realpath(good[0])
        assert r.cli("HGET", f"segpipe:job:{jid}", "output") == os.path.join(os.path.realpath(tmp), "out", "sub")
        p = run("submit", "--redis", url, "/nowhere/x.nii.gz", "-o", "../out", "--no-check")
        nid = p.stdout.split()[0]
        assert p.returncode == 0 and r.cli("HGET", f"segpipe:job:{nid}", "input") == "/nowhere/x.nii.gz"
        pid = run("submit", "--redis", url, "ct01.nii.gz", "-o", "../out", check=True).stdout.split()[0]
        w = worker(url, tmp, "w0")
        wait_for(lambda: r.cli("HGET", f"segpipe:job:{jid}", "state") == "done" and
                 r.cli("HGET", f"segpipe:job:{pid}", "state") == "done" and
                 r.cli("HGET", f"segpipe:job:{nid}", "state") == "failed")
        stop(w)
    finally:
        if w and w.poll() is None:
            w.kill()
        r.stop()
    labels = json.load(open(os.path.join(sp.DEMO, "segpipe.json")))["labels"]
    keep = {int(k) for k, n in labels.items() if n in ("liver", "spleen")}
    sub = np.asanyarray(nib.load(os.path.join(outd, "sub", f"ct00.{jid}.nii.gz")).dataobj)
    full = np.asanyarray(nib.load(os.path.join(outd, f"ct01.{pid}.nii.gz")).dataobj)
    assert set(np.unique(sub).tolist()) <= keep | {0}                   # only the subset labelled
    assert set(np.unique(full).tolist()) - keep - {0}                     # without it, other structures too
    ps = json.load(open(os.path.join(outd, "sub", f"ct00.{jid}.passport.json")))
    assert sorted(s["name"] for s in ps["structures"]) == ["liver", "spleen"]


def prom(path):
    """a Prometheus textfile as {(name, frozenset(labels)): value}"""
    out = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        name_lab, val = line.rsplit(" ", 1)
        name, _, lab = name_lab.partition("{")
        labs = frozenset(tuple(kv.split("=", 1)) for kv in lab.rstrip("}").replace('"', "").split(",") if kv)
        out[(name, labs)] = float(val)
    return out


def test_queue_error_classes(tmp):
    """An input error (a text file named .nii) is dead at once after one
    attempt; a transient one (a model package that cannot load) is retried
    with backoff until --max-attempts, the job's attempts and its dead
    letter's agreeing; --retry-dead puts both back (attempts reset), --purge
    removes finished records; the worker's textfile counts them and the
    queue."""
    need_redis()
    r = Redis(tmp)
    url = f"redis://127.0.0.1:{r.port}"
    ind, outd = os.path.join(tmp, "in"), os.path.join(tmp, "out")
    good = cts(ind, 1)[0]
    bad = os.path.join(ind, "bad.nii")
    open(bad, "wb").write(b"root:x:0:0:root:/root:/bin/bash\n" * 20)
    broken = os.path.join(tmp, "broken-model")
    os.makedirs(broken)
    metrics = os.path.join(tmp, "w0.prom")
    w = None
    try:
        sub = lambda *a: sp.run("submit", "--redis", url, *a, "-o", outd, check=True).stdout.split()[0]
        bid, tid, gid = sub(bad), sub(good, "--model", "broken"), sub(good)
        w = worker(url, tmp, "w0", "--max-attempts", "3", "--backoff", "0.2", "--model", f"demo={sp.DEMO}",
                   "--model", f"broken={broken}", "--metrics-file", metrics)
        wait_for(lambda: r.cli("HGET", f"segpipe:job:{tid}", "state") == "failed" and
                 r.cli("HGET", f"segpipe:job:{gid}", "state") == "done")
        c = json.loads(sp.run("jobs", "--redis", url, "--recent", "5", check=True).stdout)
        dl = {d["id"]: d for d in dead_letters(r)}
        stop(w)
        m = prom(metrics)
        # after the first run: retry both dead jobs (the transient one fails again, the input one too)
        rd = json.loads(sp.run("jobs", "--redis", url, "--retry-dead", check=True).stdout)
        after = {i: (r.cli("HGET", f"segpipe:job:{i}", "state"), r.cli("HGET", f"segpipe:job:{i}", "attempts"))
                 for i in (bid, tid)}
        xlen = int(r.cli("XLEN", "segpipe:jobs"))
        pg = json.loads(sp.run("jobs", "--redis", url, "--purge", check=True).stdout)
        left = r.cli("EXISTS", f"segpipe:job:{gid}"), r.cli("EXISTS", f"segpipe:job:{bid}")
    finally:
        if w and w.poll() is None:
            w.kill()
        r.stop()
    # input error: dead at once, one attempt, its class; no header bytes in the reason
    assert dl[bid]["class"] == "input" and dl[bid]["attempts"] == "1", dl[bid]
    assert "not a NIfTI" in dl[bid]["error"] and "root" not in dl[bid]["error"].replace(ind, ""), dl[bid]
    # transient: retried up to --max-attempts, the same count in the record and the dead letter
    assert dl[tid]["class"] == "transient" and dl[tid]["attempts"] == "3", dl[tid]
    jobs = c["jobs"]
    assert jobs[tid]["attempts"] == "3" and jobs[tid]["state"] == "failed" and jobs[tid]["class"] == "transient"
    assert jobs[bid]["attempts"] == "1" and jobs[gid]["state"] == "done" and jobs[gid]["worker"] == "w0"
    assert float(jobs[gid]["finished"]) >= float(jobs[gid]["started"]) >= float(jobs[gid]["submitted"])
    stages = json.loads(jobs[gid]["timings"])                              # seconds per stage of the job
    assert {"read", "inference", "write"} <= set(stages) and sum(stages.values()) <= float(jobs[gid]["seconds"]) + 0.01
    assert c["submitted"] == 3 and c["done"] == 1 and c["failed"] == 2 and c["dead_letter"] == 2, c
    # the textfile
    key = lambda res: ("segpipe_worker_jobs_total", frozenset({("consumer", "w0"), ("result", res)}))
    assert m[key("done")] == 1 and m[key("failed")] == 2 and m[key("retried")] == 2, m
    assert m[("segpipe_queue_dead", frozenset({("queue", "segpipe")}))] == 2
    assert m[("segpipe_queue_depth", frozenset({("queue", "segpipe")}))] == 0
    assert any(k[0] == "segpipe_worker_stage_seconds_total" and ("stage", "inference") in k[1] for k in m)
    # --retry-dead: both back on the stream with attempts reset; --purge: finished records gone
    assert rd == {"requeued": 2, "left": 0} and after == {bid: ("queued", "0"), tid: ("queued", "0")}
    assert xlen >= 5
    assert pg["records_removed"] == 1 and pg["dead_letters_removed"] == 0 and left == ("0", "1")


def test_queue_sigterm_hand_back_and_time_limit(tmp):
    """SIGTERM with --stop-timeout 0 in the middle of a job: the worker
    exits 0, the job is handed back (queued, the attempt not counted) and
    the next worker takes it; --job-timeout cancels a job that runs longer
    (dead letter, class timeout)."""
    need_redis()
    r = Redis(tmp)
    url = f"redis://127.0.0.1:{r.port}"
    ind, outd = os.path.join(tmp, "in"), os.path.join(tmp, "out")
    os.makedirs(ind)
    ct = os.path.join(ind, "big.nii.gz")
    shutil.copy(os.path.join(sp.CTDIR, "example_ct_sm.nii.gz"), ct)   # many tiles: several seconds of network
    a = b = None
    try:
        jid = sp.run("submit", "--redis", url, ct, "-o", outd, check=True).stdout.split()[0]
        a = worker(url, tmp, "a", "--stop-timeout", "0")
        wait_for(lambda: r.cli("HGET", f"segpipe:job:{jid}", "stage") == "inference")
        _o, err = stop(a)
        assert a.returncode == 0, err
        handed = [r.cli("HGET", f"segpipe:job:{jid}", k) for k in ("state", "attempts", "class")]
        b = worker(url, tmp, "b", "--job-timeout", "1", "--max-attempts", "1")
        wait_for(lambda: r.cli("HGET", f"segpipe:job:{jid}", "state") == "failed")
        stop(b)
        dl = dead_letters(r)
    finally:
        for w in (a, b):
            if w and w.poll() is None:
                w.kill()
        r.stop()
    assert handed == ["queued", "0", "stopped"], handed
    assert "handed back" in err
    assert len(dl) == 1 and dl[0]["class"] == "timeout" and dl[0]["attempts"] == "1", dl
    assert "--job-timeout" in dl[0]["error"] and dl[0]["worker"] == "b"
    assert not glob.glob(os.path.join(outd, "*.nii.gz"))   # no partial output
