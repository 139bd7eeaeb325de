#!/usr/bin/env python3
"""Write tools/import/totalseg_maps.json from TotalSegmentator's own source.

  tools/dev/totalseg_maps.py GIT_DIR [-o tools/import/totalseg_maps.json]

GIT_DIR is a clone (or bare mirror) of github.com/wasserth/TotalSegmentator.
Its two data modules, totalsegmentator/map_to_binary.py (class maps, the
part maps of `total`, total_v3, total_mr and headneck_muscles, task id -> part name) and map_tasks_config.py
(task configurations, weight folder names) import without TotalSegmentator's
dependencies; they are loaded from HEAD and their dictionaries written as
JSON (integer keys as strings), with the commit they came from.
tools/import/import_totalseg.py reads this file, so importing weights needs
neither TotalSegmentator nor its source.
"""
import argparse, importlib.util, json, os, subprocess, sys, tempfile

KEYS_BINARY = ["class_map", "class_map_5_parts", "map_taskid_to_partname_ct", "class_map_5_parts_total_v3",
               "map_taskid_to_partname_ct_v3", "class_map_parts_mr",
               "map_taskid_to_partname_mr", "class_map_parts_headneck_muscles",
               "map_taskid_to_partname_headneck_muscles"]
KEYS_CONFIG = ["DEFAULT_CONFIG", "TASK_CONFIGS", "TASK_ID_WEIGHTS_CONFIGS"]


def load_module(git_dir, commit, path, tmp):
    src = subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"], check=True,
                         capture_output=True, text=True).stdout
    f = os.path.join(tmp, os.path.basename(path))
    with open(f, "w") as fh:
        fh.write(src)
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], f)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("git_dir")
    ap.add_argument("-o", "--out", default=os.path.join(os.path.dirname(__file__), "..", "import",
                                                        "totalseg_maps.json"))
    a = ap.parse_args()
    commit = subprocess.run(["git", "--git-dir", a.git_dir, "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        b = load_module(a.git_dir, commit, "totalsegmentator/map_to_binary.py", tmp)
        c = load_module(a.git_dir, commit, "totalsegmentator/map_tasks_config.py", tmp)
    out = {"source": {"repository": "https://github.com/wasserth/TotalSegmentator", "commit": commit,
                      "files": ["totalsegmentator/map_to_binary.py", "totalsegmentator/map_tasks_config.py"]}}
    for k in KEYS_BINARY:
        out[k] = jsonable(getattr(b, k))
    for k in KEYS_CONFIG:
        out[k] = jsonable(getattr(c, k))
    with open(a.out, "w") as f:
        json.dump(out, f, indent=0, sort_keys=False)
        f.write("\n")
    print(f"wrote {a.out} from {commit[:12]}: {len(out['class_map'])} class maps", file=sys.stderr)


if __name__ == "__main__":
    main()
