#!/usr/bin/env python3
"""segpipe's test runner: the C unit tests and every test_* function of
tests/py/test_*.py (reference tests against numpy/scipy/nibabel/nnU-Net's
code, CLI, service and browser tests), several at a time. Ends with the
summary line "N passed, N failed".

  tests/run.py [-k SUBSTRING[,SUBSTRING...]] [-j JOBS] [--tier everyday|realistic|all]
               (BUILD=build-asan for the sanitizer build)

How it runs: each test module is one job (tests in a module share what the
module caches: a started service, in-process state); modules known to be
long are split into shards of their functions. Jobs run in JOBS child
processes (default: 2 per core, at most 8; SP_TEST_JOBS overrides), the
longest first, using the durations of the previous run in
$BUILD/test-times.json. What several tests or modules make the same way
(an input made from the shared data, a model package, the CLI run their
results are compared with) is made once per run, by whichever job needs it
first, in the run cache: a folder this runner makes and exports as
SP_TEST_RUN_CACHE, filled under a file lock (tests/py/sp.py: once,
run_once, ct_run) and removed at the end. The tests in SOLO (a service's
deadlines, queue, memory or ordering watched under a given load) run last,
one module's at a time, with nothing beside them; the other tests of their
modules are ordinary jobs. The sanitizer run leaves out the modules in
ASAN_SKIP, with the reason. The tests marked @sp.realistic run only in the
realistic tier (--tier realistic, `make realistic`), the others only in the
everyday tier (the default without -k). A module's output is printed whole when it ends, so lines of different
modules never interleave; each test's line gives its wall and CPU seconds
(its own and its children's; a cached result is paid by the test that made
it), the summary the run's CPU seconds.

  tests/run.py --job MODULE[:I/N or :solo] [-k SUBSTRING]   (internal: one job)
"""
import importlib.util, json, os, re, resource, subprocess, sys, tempfile, time, traceback
from concurrent.futures import ThreadPoolExecutor, as_completed

# Debian's python3 has the test dependencies (numpy, scipy, nibabel, torch):
# a `python3` earlier on the PATH (pyenv, a venv) hands over to it.
if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3") and \
        not os.environ.get("SP_TEST_ANY_PYTHON"):
    os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)

# The CLI keeps ONNX Runtime's optimised graphs in a per-user cache by
# default (docs/performance.md): the tests' go to a folder of this run, not
# the user's ~/.cache (tests of the cache itself set their own).
if not os.environ.get("SEGPIPE_CACHE_DIR"):
    import atexit, shutil
    os.environ["SEGPIPE_CACHE_DIR"] = tempfile.mkdtemp(prefix="segpipe-test-graphs.")
    atexit.register(shutil.rmtree, os.environ["SEGPIPE_CACHE_DIR"], True)

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
build = os.environ.get("BUILD", "build")
py_dir = os.path.join(root, "tests", "py")


def arg(flag, default=None):
    return sys.argv[sys.argv.index(flag) + 1] if flag in sys.argv else default


sel = arg("-k")


def selected(name):
    """-k A,B: the tests whose module.function name holds A or B"""
    return not sel or any(k in name for k in sel.split(","))

# The tiers (docs/testing.md): a test marked @sp.realistic(why) - a journey at
# a realistic size, an upstream pipeline as the reference, a third-party
# consumer - runs in `make realistic` (--tier realistic); every other test
# in `make test` and `make asan` (--tier everyday, the default). With -k the
# default is both: a test asked for by name runs whatever its tier.
tier = arg("--tier", os.environ.get("SP_TEST_TIER") or ("all" if sel else "everyday"))
if tier not in ("everyday", "realistic", "all"):
    sys.exit(f"tests/run.py: --tier is everyday, realistic or all, not '{tier}'")


def realistic_names(src):
    """The test functions of a module's source marked @sp.realistic(...)."""
    return set(re.findall(r"^@sp\.realistic\((?:.|\n)*?\)\n(?:@.*\n)*def (test_\w+)\(", src, re.M))


def in_tier(name, marked):
    return tier == "all" or (name in marked) == (tier == "realistic")


# modules whose tests are many or long: run as this many shards of functions
# (test_deb is never sharded: its tests build the packages in the tree's build/deb)
SHARDS = {"test_server_hardening": 2, "test_server": 2, "test_cli": 3, "test_ui": 3, "test_masks": 2,
          "test_video": 2, "test_dicom": 2, "test_memory": 2, "test_python": 3, "test_importer": 3, "test_totalseg": 2, "test_totalseg_tasks": 2,
          "test_dicom_out": 3, "test_journey": 2, "test_attack": 2, "test_queue": 2,
          "test_brainchop": 2, "test_service_inputs": 2, "test_stages": 2, "test_image": 2, "test_passport": 2}


# Left out of the sanitizer run (BUILD=build-asan): the browser, packaging
# and man-page checks and the real-model references, whose C paths (reading,
# the window, the service) the other modules run under ASan/UBSan too;
# `make test` runs them all.
ASAN_SKIP = {"test_ui", "test_deb", "test_man", "test_isnet", "test_brainchop", "test_release"}

# tests that watch a service's deadlines, queue, memory or ordering under a
# given load, or sleep for what they wait on: run at the end, alone (one job
# per module, one after the other), so the other jobs' load is not theirs.
# The other tests of their modules wait on events and run as ordinary jobs.
SOLO = {"test_server_hardening": {"test_server_slow_clients_do_not_lock_it_out",
                                  "test_server_result_ids_are_random_owned_and_expire",
                                  "test_server_refuses_before_reading", "test_server_fair_across_models",
                                  "test_server_memory_admission", "test_server_unread_answers_are_bounded"},
        "test_attack": {"test_attack_http_limits"}}


def run_job(spec):
    """Child mode: run the test functions of one module (or one shard of it);
    prints ok/skip/FAIL lines and a JSON trailer with the counts."""
    mod_name, _, shard = spec.partition(":")
    fn = mod_name + ".py"
    # the sanitizer run preloads ASan's runtime so this process can load the
    # instrumented library; what it starts (PyTorch references, importers,
    # browsers) does not need it: SP_ASAN_PRELOAD keeps it for a test that
    # starts a Python loading the library itself
    if os.environ.get("LD_PRELOAD") and "asan" in build:
        os.environ["SP_ASAN_PRELOAD"] = os.environ.pop("LD_PRELOAD")
    sys.path.insert(0, py_dir)
    os.chdir(root)
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    spec_ = importlib.util.spec_from_file_location(mod_name, os.path.join(py_dir, fn))
    mod = importlib.util.module_from_spec(spec_)
    try:
        spec_.loader.exec_module(mod)
    except Exception:
        counts["failed"] += 1
        counts["failures"].append(f"{fn}: import failed\n{traceback.format_exc()}")
        print(f"FAIL {fn} (import)", flush=True)
        print("@@RESULT " + json.dumps(counts), flush=True)
        return
    names = sorted(n for n in dir(mod) if n.startswith("test_") and callable(getattr(mod, n)))
    marked = {n for n in names if getattr(getattr(mod, n), "realistic", None)}
    if marked != realistic_names(open(os.path.join(py_dir, fn), encoding="utf-8").read()):
        counts["failed"] += 1   # jobs_list reads the marks from the source: they must agree
        counts["failures"].append(f"{fn}: @sp.realistic marks the runner cannot read: {sorted(marked)}")
    names = [n for n in names if in_tier(n, marked)]
    names = [n for n in names if (n in SOLO.get(mod_name, ())) == (shard == "solo")]
    if shard and shard != "solo":
        i, n = (int(x) for x in shard.split("/"))
        names = names[i::n]
    for name in names:
        full = f"{mod_name}.{name}"
        if not selected(full):
            continue
        t1, c1 = time.time(), cpu_seconds()
        with tempfile.TemporaryDirectory(prefix="segpipe-test-") as tmp:
            try:
                getattr(mod, name)(tmp)
                counts["passed"] += 1
                print(f"ok   {full} ({time.time() - t1:.1f} s, {cpu_seconds() - c1:.1f} CPU s)", flush=True)
            except Exception as e:
                if type(e).__name__ == "Skip":   # sp.Skip: a prerequisite is absent, said why
                    counts["skipped"] += 1
                    print(f"skip {full}: {e}", flush=True)
                    continue
                counts["failed"] += 1
                counts["failures"].append(f"{full}\n{traceback.format_exc()}")
                print(f"FAIL {full}", flush=True)
    if "sp" in sys.modules:
        sys.modules["sp"].close()   # the tool server's CPU time becomes this job's children's
    counts["cpu"] = cpu_seconds()
    print("@@RESULT " + json.dumps(counts), flush=True)


def cpu_seconds():
    """CPU time (user + system) of this job and of the processes it waited for
    (the CLI runs, services, browsers): the cost that sets the suite's wall
    time on a small CI machine, whatever else ran beside it."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    tools = sys.modules["sp"].pending_cpu() if "sp" in sys.modules else 0.0   # sp.tool's runs
    return round(a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime + tools, 1)


def unit_job():
    """The C unit tests (one binary); -> (output, counts)."""
    env = dict(os.environ)
    if "asan" in build:
        env["ASAN_OPTIONS"] = "detect_leaks=1:halt_on_error=1"
        env["LSAN_OPTIONS"] = "suppressions=" + os.path.join(root, "tests", "lsan.supp")
        env.pop("LD_PRELOAD", None)
    p = subprocess.run([os.path.join(root, build, "test_unit")] + ([sel] if sel else []),
                       cwd=root, capture_output=True, text=True, env=env)
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    m = re.search(r"unit: (\d+) passed, (\d+) failed", p.stdout)
    if m:
        counts["passed"], counts["failed"] = int(m.group(1)), int(m.group(2))
        if p.returncode not in (0, 1) or (p.returncode == 1 and int(m.group(2)) == 0):
            counts["failed"] += 1
            counts["failures"].append(f"test_unit exited {p.returncode}")
    else:
        counts["failed"] += 1
        counts["failures"].append(f"test_unit crashed (exit {p.returncode})")
    return p.stdout + p.stderr, counts


def py_job(spec):
    """One module or shard in a child process; -> (output, counts)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--job", spec] + (["-k", sel] if sel else [])
    p = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    out, counts = [], None
    for line in p.stdout.splitlines():
        if line.startswith("@@RESULT "):
            counts = json.loads(line[9:])
        else:
            out.append(line)
    text = "\n".join(out) + ("\n" if out else "") + p.stderr
    if counts is None:
        counts = {"passed": 0, "failed": 1, "skipped": 0,
                  "failures": [f"{spec}: the job died (exit {p.returncode})\n{p.stderr[-4000:]}"]}
    return text, counts


def jobs_list():
    """Every module (or shard) holding a test that -k selects."""
    mods = sorted(f[:-3] for f in os.listdir(py_dir) if f.startswith("test_") and f.endswith(".py"))
    specs = []
    if "asan" in build:
        mods = [m for m in mods if m not in ASAN_SKIP]
    for m in mods:
        src = open(os.path.join(py_dir, m + ".py"), encoding="utf-8").read()
        marked = realistic_names(src)
        names = [x for x in sorted(re.findall(r"^def (test_\w+)\(", src, re.M)) if in_tier(x, marked)]
        solo = [x for x in names if x in SOLO.get(m, ())]
        if solo and any(selected(f"{m}.{x}") for x in solo):
            specs.append(f"{m}:solo")
        names = [x for x in names if x not in solo]
        n = SHARDS.get(m, 1)
        for i in range(n):
            part = names[i::n]
            if part and any(selected(f"{m}.{x}") for x in part):
                specs.append(m if n == 1 else f"{m}:{i}/{n}")
    return specs


def main():
    # several jobs share each core: ONNX Runtime's threads sleep between
    # operators instead of spinning (the same results, ~20% less CPU measured
    # with four CT runs on two cores; docs/performance.md)
    os.environ.setdefault("SEGPIPE_ORT_SPIN", "0")
    # the run cache (tests/py/sp.py's once/run_once): what several tests
    # make the same way, made once per run by the first job that needs it
    if not os.environ.get("SP_TEST_RUN_CACHE"):
        import atexit, shutil
        os.environ["SP_TEST_RUN_CACHE"] = tempfile.mkdtemp(prefix="segpipe-test-run.")
        atexit.register(shutil.rmtree, os.environ["SP_TEST_RUN_CACHE"], True)
    os.environ["SP_TEST_TIER"] = tier   # the jobs filter by the same tier
    times_path = os.path.join(root, build, "test-times.json" if tier == "everyday" else f"test-times-{tier}.json")
    try:
        last = json.load(open(times_path))
    except (OSError, ValueError):
        last = {}
    jobs = int(arg("-j", os.environ.get("SP_TEST_JOBS", min(8, 2 * (os.cpu_count() or 1)))))
    specs = sorted(jobs_list(), key=lambda s: -last.get(s, 60.0))
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    failures, times, cpu = [], dict(last), {}
    t0 = time.time()

    spans = {}   # spec -> [start, end] in seconds from the run's start: where the cores idled

    def one(spec):
        t = time.time()
        text, counts = unit_job() if spec == "unit" else py_job(spec)
        spans[spec] = [round(t - t0, 1), round(time.time() - t0, 1)]
        return spec, text, counts, time.time() - t

    def report(result):
        nonlocal failures
        spec, text, counts, dt = result
        sys.stdout.write(text)
        sys.stdout.flush()
        for k in totals:
            totals[k] += counts[k]
        failures += counts["failures"]
        cpu[spec] = counts.get("cpu", 0.0)
        if not sel:
            times[spec] = round(dt, 1)

    solo = [s for s in specs if s.endswith(":solo")]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        futures = [ex.submit(one, s) for s in (["unit"] if tier != "realistic" else []) + [s for s in specs if s not in solo]]
        for fut in as_completed(futures):
            report(fut.result())
    for s in solo:   # alone, after the others
        report(one(s))
    if not sel:
        os.makedirs(os.path.dirname(times_path), exist_ok=True)
        json.dump(times, open(times_path, "w"), indent=1, sort_keys=True)
        json.dump(cpu, open(times_path.replace("times", "cpu"), "w"), indent=1, sort_keys=True)
        json.dump(spans, open(times_path.replace("times", "spans"), "w"), indent=1, sort_keys=True)
    if "asan" in build:
        print("\nnot in the sanitizer run (make test runs them): " + ", ".join(sorted(ASAN_SKIP)))
    if totals["skipped"]:
        print(f"\n{totals['skipped']} skipped (see the skip lines above)")
    # the failures last, on stdout, each cut to its end: a CI log shown by
    # its tail keeps them next to the summary
    for f in failures:
        name, _, rest = f.partition("\n")
        print(f"\n--- {name}\n" + (rest if len(rest) <= 4000 else "[...]\n" + rest[-4000:]))
    print(f"\n{totals['passed']} passed, {totals['failed']} failed ({time.time() - t0:.0f} s, {jobs} jobs, tier {tier}"
          + (f", {sum(cpu.values()):.0f} CPU s)" if cpu else ")"))
    sys.exit(1 if totals["failed"] else 0)


if __name__ == "__main__":
    if "--job" in sys.argv:
        run_job(arg("--job"))
    else:
        main()
