#!/usr/bin/env python3
"""`make attack`: the cases of tests/attack/cases.py at full scale, through
the CLI (`segpipe ct`) and, for what a client can upload, through `segpipe
serve` (POST /v1/ct); then 5000 slow-header sockets from one address
against health checks from another. For each: the answer, the seconds,
and the peak resident memory of the whole process tree (segpipe and every
child, sampled every 5 ms from /proc), whether a process or a temp folder
outlived it, and whether the service then answers a normal CT. Goals
(issue 39): refused in < 5 s with < 1 GB peak; nothing left behind;
health 8/8. Prints a table; exits 1 when a goal is missed.

  tests/attack/run.py [--only NAME[,NAME]] [--scale full|small] [--keep DIR]
"""
import json, os, resource, shutil, signal, socket, subprocess, sys, tempfile, threading, time, urllib.request, urllib.error

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cases  # noqa: E402

ROOT = cases.ROOT
BUILD = os.path.join(ROOT, os.environ.get("BUILD", "build"))
SEGPIPE = os.path.join(BUILD, "segpipe")
DEMO = os.path.join(ROOT, "models", "demo-ct")
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree(pid):
    """pid and its descendants (from /proc/*/task/*/children)"""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{t}/children").read().split()]
        except OSError:
            pass
    return out


def rss(pids):
    total = 0
    for p in pids:
        try:
            total += int(open(f"/proc/{p}/statm").read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


class Peak(threading.Thread):
    """the peak of the tree's summed RSS above `base` while running"""
    def __init__(self, pid, base=0):
        super().__init__(daemon=True)
        self.pid, self.base, self.peak, self.stop = pid, base, 0, False

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, rss(tree(self.pid)) - self.base)
            time.sleep(0.005)


def ours(tmpdir):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"TMPDIR=" + tmpdir.encode() in open(f"/proc/{pid}/environ", "rb").read().split(b"\0"):
                found.append(int(pid))
        except OSError:
            pass
    return found


def cli_case(name, src, work):
    tdir = os.path.join(work, name + ".tmp")
    os.makedirs(tdir, exist_ok=True)
    out = os.path.join(work, name + ".out.nii.gz")
    env = dict(os.environ, TMPDIR=tdir)
    t0 = time.time()
    p = subprocess.Popen([SEGPIPE, "ct", src, "-o", out, "--no-passport", "-q"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pk = Peak(p.pid)
    pk.start()
    err = p.communicate()[1]
    secs = time.time() - t0
    pk.stop = True
    pk.join()
    left = ours(tdir) or os.listdir(tdir)
    return {"rc": p.returncode, "seconds": secs, "peak": pk.peak, "left": left, "msg": err.strip().splitlines()[-1:]}


def http(url, data=None, ctype=None, timeout=600):
    req = urllib.request.Request(url, data=data)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Service:
    def __init__(self, work):
        self.tdir = os.path.join(work, "serve.tmp")
        os.makedirs(self.tdir, exist_ok=True)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.p = subprocess.Popen([SEGPIPE, "serve", "--model", f"demo={DEMO}", "--port", str(self.port),
                                   "--timeout", "60"], env=dict(os.environ, TMPDIR=self.tdir),
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert "ready on" in self.p.stdout.readline()
        self.url = f"http://127.0.0.1:{self.port}"

    def case(self, name, src):
        body = open(src, "rb").read()
        base = rss(tree(self.p.pid))
        pk = Peak(self.p.pid, base)
        pk.start()
        t0 = time.time()
        code, ans = http(self.url + "/v1/ct?model=demo", body, "application/octet-stream")
        secs = time.time() - t0
        pk.stop = True
        pk.join()
        kids = [k for k in tree(self.p.pid) if k != self.p.pid]
        left = kids + [f for f in os.listdir(self.tdir) if f.startswith("segpipe-dicom-")]
        normal = http(self.url + "/v1/ct?model=demo", open(cases.CT_SM, "rb").read(), "application/octet-stream")[0]
        msg = ans.decode(errors="replace")[:160]
        return {"rc": code, "seconds": secs, "peak": pk.peak, "left": left, "normal_ct": normal, "msg": [msg]}

    def slow_headers(self, n=5000):
        """n sockets from 127.0.0.1 trickling headers; 8 health checks from 127.0.0.2"""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        socks, t0 = [], time.time()
        for _ in range(min(n, hard - 100)):
            try:
                c = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                c.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n")
                socks.append(c)
            except OSError:
                pass
        ok = 0
        for _ in range(8):
            try:
                c = socket.socket()
                c.settimeout(5)
                c.bind(("127.0.0.2", 0))
                c.connect(("127.0.0.1", self.port))
                c.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                ok += c.recv(64).startswith(b"HTTP/1.1 200")
                c.close()
            except OSError:
                pass
        for c in socks:
            c.close()
        return {"rc": f"health {ok}/8", "seconds": time.time() - t0, "peak": 0, "left": [], "ok": ok == 8,
                "msg": [f"{len(socks)} sockets opened"]}

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout=120)


def main():
    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
    scale = sys.argv[sys.argv.index("--scale") + 1] if "--scale" in sys.argv else "full"
    work = sys.argv[sys.argv.index("--keep") + 1] if "--keep" in sys.argv else tempfile.mkdtemp(prefix="attack-")
    os.makedirs(work, exist_ok=True)
    rows, bad = [], 0
    srv = Service(work)
    try:
        for name, (gen, code, phrase) in cases.CASES.items():
            if only and name not in only:
                continue
            d = os.path.join(work, name)
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            src = gen(d, scale)
            r = cli_case(name, src, work)
            miss = r["rc"] != code or r["left"] or (code and (r["seconds"] >= 5 or r["peak"] >= 1e9))
            rows.append(("cli", name, r, miss))
            if os.path.isfile(src):
                r = srv.case(name, src)
                miss = r["left"] or r["normal_ct"] != 200 or (code and (r["seconds"] >= 5 or r["peak"] >= 1e9))
                rows.append(("serve", name, r, miss))
        if not only or "slow_headers" in only:
            r = srv.slow_headers()
            rows.append(("serve", "slow_headers", r, not r["ok"]))
    finally:
        rc = srv.stop()
    print(f"{'via':6} {'case':22} {'answer':>12} {'seconds':>8} {'peak MB':>8}  left  message")
    for via, name, r, miss in rows:
        bad += bool(miss)
        print(f"{via:6} {name:22} {str(r['rc']):>12} {r['seconds']:8.2f} {r['peak'] / 1e6:8.0f}  "
              f"{'yes' if r['left'] else 'no ':4}  {(r['msg'] or [''])[0][:90]}{'   <-- MISSED' if miss else ''}")
    print(f"service exit on SIGTERM: {rc}")
    if "--keep" not in sys.argv:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad or rc else 0


if __name__ == "__main__":
    sys.exit(main())
