#!/usr/bin/env python3
"""ONNX Runtime thread and kernel settings per model family, measured
(docs/performance.md, "Thread and kernel settings"): one command run under
each setting, alternated round by round (the machine is shared), wall and
CPU seconds (user + system) and the load average per run; outputs compared
byte for byte across settings. Settings come from environment knobs of an
experiment build (SP_EXP_NOSPIN: intra-op threads sleep instead of spinning;
SP_EXP_EXTENDED: graph level "extended", i.e. without the NCHWc layout
transform; patch src/runtime/ort.c's make_options to read them and build with
BUILD=build-exp) and from --threads.
   /usr/bin/python3 bench/ort_settings.py SEGPIPE_BINARY ROUNDS THREADS -- ARGS... (-o is added)"""
import hashlib, json, os, subprocess, sys, tempfile, time

CONFIGS = {"default": {}, "nospin": {"SP_EXP_NOSPIN": "1"}, "no-nchwc": {"SP_EXP_EXTENDED": "1"}}


def main():
    seg, rounds, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
    args = sys.argv[sys.argv.index("--") + 1:]
    tmp = tempfile.mkdtemp(prefix="ort_settings.")
    res = {}
    for _ in range(rounds):
        for name, env in CONFIGS.items():
            for t in threads:
                out = os.path.join(tmp, f"{name}_{t}")
                load = os.getloadavg()[0]
                t0, c0 = time.time(), os.times()
                r = subprocess.run([seg, *args, "-o", out + (".nii" if args[0] == "ct" else ""), "-t", t],
                                   env=dict(os.environ, **env), capture_output=True, text=True)
                wall, c1 = time.time() - t0, os.times()
                assert r.returncode == 0, r.stderr
                f = out + ".nii" if args[0] == "ct" else \
                    os.path.join(out, sorted(x for x in os.listdir(out) if x.endswith(".png"))[0])
                res.setdefault(f"{name} t={t}", []).append(
                    {"wall": round(wall, 2), "cpu": round(c1.children_user - c0.children_user + c1.children_system -
                                                          c0.children_system, 2), "load": round(load, 1),
                     "out": hashlib.sha256(open(f, "rb").read()).hexdigest()[:12]})
    for k, v in res.items():
        print(json.dumps({"config": k, "wall": round(sum(r["wall"] for r in v) / len(v), 2),
                          "cpu": round(sum(r["cpu"] for r in v) / len(v), 2),
                          "load": [r["load"] for r in v], "out": sorted({r["out"] for r in v})}))


if __name__ == "__main__":
    main()
