#!/usr/bin/env python3
"""segpipe's test runner: the C unit tests, then every test_* function of
tests/py/test_*.py (reference tests against numpy/scipy/nibabel and CLI
tests). Ends with the summary line "N passed, N failed".

  tests/run.py [-k SUBSTRING]      (BUILD=build-asan for the sanitizer build)
"""
import importlib.util, os, re, subprocess, sys, tempfile, time, traceback

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
build = os.environ.get("BUILD", "build")
sel = sys.argv[sys.argv.index("-k") + 1] if "-k" in sys.argv else None
passed = failed = skipped = 0
failures = []

# 1. C unit tests
t0 = time.time()
env = dict(os.environ)
if "asan" in build:
    env["ASAN_OPTIONS"] = "detect_leaks=1:halt_on_error=1"
    env["LSAN_OPTIONS"] = "suppressions=" + os.path.join(root, "tests", "lsan.supp")
    env.pop("LD_PRELOAD", None)
p = subprocess.run([os.path.join(root, build, "test_unit")] + ([sel] if sel else []),
                   cwd=root, capture_output=True, text=True, env=env)
sys.stdout.write(p.stdout)
sys.stderr.write(p.stderr)
m = re.search(r"unit: (\d+) passed, (\d+) failed", p.stdout)
if m:
    passed += int(m.group(1))
    failed += int(m.group(2))
    if p.returncode not in (0, 1) or (p.returncode == 1 and int(m.group(2)) == 0):
        failed += 1
        failures.append(f"test_unit exited {p.returncode}")
else:
    failed += 1
    failures.append(f"test_unit crashed (exit {p.returncode})")

# 2. Python reference and CLI tests
sys.path.insert(0, os.path.join(root, "tests", "py"))
os.chdir(root)
for fn in sorted(os.listdir(os.path.join(root, "tests", "py"))):
    if not (fn.startswith("test_") and fn.endswith(".py")):
        continue
    spec = importlib.util.spec_from_file_location(fn[:-3], os.path.join(root, "tests", "py", fn))
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception:
        failed += 1
        failures.append(f"{fn}: import failed\n{traceback.format_exc()}")
        print(f"FAIL {fn} (import)")
        continue
    for name in sorted(n for n in dir(mod) if n.startswith("test_")):
        full = f"{fn[:-3]}.{name}"
        if sel and sel not in full:
            continue
        t1 = time.time()
        with tempfile.TemporaryDirectory(prefix="segpipe-test-") as tmp:
            try:
                getattr(mod, name)(tmp)
                passed += 1
                print(f"ok   {full} ({time.time() - t1:.1f} s)", flush=True)
            except Exception as e:
                if type(e).__name__ == "Skip":   # sp.Skip: a prerequisite is absent, said why
                    skipped += 1
                    print(f"skip {full}: {e}", flush=True)
                    continue
                failed += 1
                failures.append(f"{full}\n{traceback.format_exc()}")
                print(f"FAIL {full}", flush=True)

for f in failures:
    print("\n--- " + f, file=sys.stderr)
if skipped:
    print(f"\n{skipped} skipped (see the skip lines above)")
print(f"\n{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
