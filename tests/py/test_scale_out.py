"""Past one machine (docs/scale-out.md): sharded batch runs (`segpipe ct
--inputs LIST --shard I/N`) and queue workers on Redis Streams (`segpipe
submit / worker / jobs`) against a real redis-server started on a free
loopback port: a worker killed with SIGKILL in the middle of a job, a
poison job, Redis restarted with AOF during the run; every job done exactly
once in the outputs. Also the deployment files parse."""
import glob, json, os, shutil, signal, subprocess, time
import numpy as np
import nibabel as nib
import yaml
import sp
from test_server import free_port


def small_cts(tmp, n, prefix="ct"):
    """n small CT-like volumes (3 mm, one network tile each), distinct names"""
    rng = np.random.default_rng(0)
    paths = []
    base = np.asanyarray(nib.load(os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")).dataobj)[30:90, 20:80, :]
    for i in range(n):
        p = os.path.join(tmp, f"{prefix}{i:02d}.nii.gz")
        vol = (base + rng.integers(-5, 5, base.shape)).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.diag([3.0, 3.0, 3.0, 1.0])), p)
        paths.append(p)
    return paths


def test_shards_cover_every_input_once(tmp):
    """10 inputs in 3 shards: the union of the shards' outputs is every input
    exactly once; a re-run of a shard skips what is done; a shard's report
    lists its inputs."""
    ins = small_cts(tmp, 10)
    lst = os.path.join(tmp, "list.txt")
    open(lst, "w").write("# inputs\n" + "\n".join(ins) + "\n\n")
    out = os.path.join(tmp, "out")
    seen = []
    for i in range(3):
        p = sp.run("ct", "--inputs", lst, "--shard", f"{i}/3", "-o", out, "-q", "--threads", "1")
        assert p.returncode == 0, p.stderr
        rep = json.load(open(os.path.join(out, f"shard-{i}-of-3.json")))
        assert rep["done"] == len(rep["inputs"]) and rep["failed"] == 0
        seen += [e["input"] for e in rep["inputs"]]
    assert sorted(seen) == sorted(ins)                                      # each input in one shard
    labels = sorted(os.path.basename(f) for f in glob.glob(os.path.join(out, "*.nii.gz")))
    assert labels == sorted(os.path.basename(f) for f in ins)
    p = sp.run("ct", "--inputs", lst, "--shard", "1/3", "-o", out, "-q")
    rep = json.load(open(os.path.join(out, "shard-1-of-3.json")))
    assert p.returncode == 0 and rep["skipped"] == len(rep["inputs"]) == 3 and rep["done"] == 0
    assert sp.run("ct", "--inputs", lst, "--shard", "3/3", "-o", out).returncode == 2


class Redis:
    def __init__(self, tmp):
        self.port, self.dir = free_port(), os.path.join(tmp, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.start()

    def start(self):
        self.p = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                                   "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if self.cli("PING") == "PONG":
                return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def restart(self, kill=False):
        if kill:
            self.p.kill()       # SIGKILL: appendfsync always, so every acknowledged write is in the AOF
        else:
            self.cli("SHUTDOWN")   # AOF on: everything written so far survives
        self.p.wait(timeout=20)
        self.start()

    def cli(self, *args):
        r = subprocess.run(["redis-cli", "-p", str(self.port), *map(str, args)], capture_output=True, text=True)
        return r.stdout.strip()

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            self.p.wait(timeout=20)


def test_redis_workers_exactly_once(tmp):
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        raise sp.Skip("needs Debian's redis-server (scripts/install-deps.sh)")
    r = Redis(tmp)
    url = f"redis://127.0.0.1:{r.port}"
    out = os.path.join(tmp, "out")
    workers = []
    try:
        ins = small_cts(tmp, 30)
        poison = os.path.join(tmp, "poison.nii.gz")
        open(poison, "wb").write(b"\x1f\x8b" + os.urandom(500))
        p = sp.run("submit", "--redis", url, *ins, poison, "-o", out, check=True)
        ids = dict(line.split(" ", 1)[::-1] for line in p.stdout.strip().splitlines())   # input -> id
        ids = {os.path.join(tmp, os.path.basename(k)): v for k, v in ids.items()}   # submit prints resolved paths
        assert len(ids) == 31 and all(len(i) == 32 for i in ids.values())

        def worker(name):
            return subprocess.Popen([sp.SEGPIPE, "worker", "--redis", url, "--consumer", name, "--threads", "1",
                                     "--visibility", "3", "--max-attempts", "2", "--input-root", tmp,
                                     "--output-root", tmp], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=sp.run_env())
        workers = [worker(f"w{k}") for k in range(3)]
        # kill w0 in the middle of a job (its hash says running, by w0)
        victim = None
        t0 = time.time()
        while victim is None and time.time() - t0 < 60:
            for inp, jid in ids.items():
                if r.cli("HGET", f"segpipe:job:{jid}", "worker") == "w0" and \
                        r.cli("HGET", f"segpipe:job:{jid}", "state") == "running":
                    victim = jid
                    break
            time.sleep(0.02)
        assert victim, "w0 never ran a job"
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        r.restart(kill=True)   # Redis killed (SIGKILL) and restarted with AOF while the others work
        t0 = time.time()
        while time.time() - t0 < 600:   # a stall limit, not a timing: a loaded machine is slow
            c = json.loads(sp.run("jobs", "--redis", url, check=True).stdout)
            if c["done"] + c["failed"] == 31:
                break
            time.sleep(0.5)
        assert c["done"] == 30 and c["failed"] == 1 and c["dead_letter"] == 1, c
        # every good job exactly once in the outputs, named by its id
        files = sorted(os.path.basename(f) for f in glob.glob(os.path.join(out, "*.nii.gz")))
        want = sorted(f"ct{i:02d}.{ids[p]}.nii.gz" for i, p in enumerate(ins))
        assert files == want, (len(files), len(want))
        for f in files:
            assert np.asanyarray(nib.load(os.path.join(out, f)).dataobj).max() > 0
        # the killed job was reclaimed by another worker and finished
        st = json.loads(sp.run("jobs", "--redis", url, victim, check=True).stdout)["jobs"][victim]
        assert st["state"] == "done" and st["worker"] != "w0" and int(st["attempts"]) >= 2, st
        # the poison job (an input error): dead letter at once, with its error and class, one attempt in the
        # hash and in the dead letter
        dead = r.cli("XRANGE", "segpipe:dead", "-", "+").splitlines()
        assert ids[poison] in dead and any("gzip" in d or "NIfTI" in d or "read" in d for d in dead), dead
        assert dead[dead.index("class") + 1] == "input" and dead[dead.index("attempts") + 1] == "1", dead
        assert r.cli("HGET", f"segpipe:job:{ids[poison]}", "attempts") == "1"
        # SIGTERM: a worker finishes and leaves with 0
        for w in workers[1:]:
            w.send_signal(signal.SIGTERM)
        for w in workers[1:]:
            assert w.wait(timeout=60) == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        r.stop()


def test_deploy_files(tmp):
    """deploy/: the Kubernetes manifests parse and hold Redis, the worker
    Deployment and an Indexed Job; the Dockerfile builds with the README's
    commands as a non-root user; the Slurm script is valid bash using
    --shard with the array index."""
    d = os.path.join(sp.ROOT, "deploy")
    docs = list(yaml.safe_load_all(open(os.path.join(d, "kubernetes.yaml"))))
    kinds = {(x["kind"], x["metadata"]["name"]) for x in docs if x}
    assert ("Deployment", "redis") in kinds and ("Service", "redis") in kinds
    assert ("Deployment", "segpipe-worker") in kinds and ("Job", "segpipe-shards") in kinds
    job = [x for x in docs if x and x["kind"] == "Job"][0]
    assert job["spec"]["completionMode"] == "Indexed"
    args = " ".join(job["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--shard" in args and "JOB_COMPLETION_INDEX" in args
    wk = [x for x in docs if x and x["metadata"]["name"] == "segpipe-worker"][0]
    c = wk["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:2] == ["segpipe", "worker"] and wk["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    df = open(os.path.join(d, "Dockerfile")).read()
    readme = open(os.path.join(sp.ROOT, "README.md")).read()
    assert "FROM debian:12" in df and "USER segpipe" in df
    assert "bash scripts/install-deps.sh" in df and "bash scripts/install-deps.sh" in readme
    assert "make install" in df
    assert subprocess.run(["bash", "-n", os.path.join(d, "slurm-array.sh")]).returncode == 0
    sl = open(os.path.join(d, "slurm-array.sh")).read()
    assert "#SBATCH --array" in sl and "--shard" in sl and "SLURM_ARRAY_TASK_ID" in sl
