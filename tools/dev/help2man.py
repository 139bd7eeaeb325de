#!/usr/bin/env python3
"""Man pages from what `segpipe --help` and `segpipe COMMAND --help` print.

segpipe(1) and one segpipe-COMMAND(1) per command, made at build time
(`make man`) from the binary's own help texts, so the man pages cannot drift
from `--help` (run with SEGPIPE_MODEL_PATH set to MODELS below, so that
no build path ends up in a page). The help text goes into the page verbatim (a no-fill block,
every character escaped reversibly); tests/py/test_man.py reads the pages
back and compares them with `--help`.

usage: help2man.py SEGPIPE OUTDIR VERSION
"""
import os
import re
import subprocess
import sys

MONTHS = "January February March April May June July August September October November December".split()


# The help texts name the default models' folder, found beside the binary at
# run time; the pages say where an install puts it instead of this build's path.
MODELS = "<prefix>/share/segpipe/models"


def help_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGPIPE_")}
    return dict(env, SEGPIPE_NO_REEXEC="1", SEGPIPE_MODEL_PATH=MODELS)


def helptext(seg, *args):
    r = subprocess.run([seg, *args, "--help"], capture_output=True, text=True, timeout=60, env=help_env())
    if r.returncode != 0:
        sys.exit(f"help2man: `segpipe {' '.join(args)} --help` exited {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def commands(top):
    """(name, one-line summary) of each command in the top-level help"""
    return re.findall(r"^  ([a-z][a-z-]*) +(\S.*)$", top, re.M)


def esc(line):
    """one help line as roff text, reversibly: backslashes and minus signs
    escaped, a leading control character defused"""
    s = line.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + s if s.startswith((".", "'")) else s


def page(name, summary, text, version, date, see):
    out = [f'.TH {name.upper()} 1 "{date}" "segpipe {version}" "segpipe manual"',
           ".SH NAME", f"{esc(name)} \\- {esc(summary)}",
           ".SH DESCRIPTION",
           "The text below is what",
           f".B {esc(name.replace('segpipe-', 'segpipe '))} \\-\\-help",
           "prints.",
           ".PP", ".nf"]
    out += [esc(l) for l in text.rstrip("\n").split("\n")]
    out += [".fi", ".SH EXIT STATUS",
            "0 success, 2 usage error, 3 input error, 4 model error, 5 runtime error (ONNX Runtime),",
            "6 I/O error, 7 out of memory, 130 stopped by a signal.",
            ".SH SEE ALSO", ",\n".join(f".BR {s} (1)" for s in see),
            ".PP", "The documentation in /usr/share/doc/segpipe/ (README.md; docs/README.md is the index).", ""]
    return "\n".join(out)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().split("\n")[-1])
    seg, outdir, version = sys.argv[1:]
    # SOURCE_DATE_EPOCH (reproducible builds) else the version alone dates the page
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    date = ""
    if epoch:
        import time
        t = time.gmtime(int(epoch))
        date = f"{MONTHS[t.tm_mon - 1]} {t.tm_year}"
    os.makedirs(outdir, exist_ok=True)
    top = helptext(seg)
    cmds = commands(top)
    if not cmds:
        sys.exit("help2man: no commands found in `segpipe --help`")
    names = ["segpipe-" + c for c, _ in cmds]
    pages = {"segpipe": page("segpipe", "segmentation pipelines on ONNX Runtime (CT, MRI, photos, video, service)",
                             top, version, date, names)}
    for c, summary in cmds:
        pages["segpipe-" + c] = page("segpipe-" + c, summary, helptext(seg, c), version, date, ["segpipe"])
    for n, text in pages.items():
        tmp = os.path.join(outdir, n + ".1.part")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(outdir, n + ".1"))


if __name__ == "__main__":
    main()
