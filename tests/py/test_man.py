"""Man pages (`make man`, tools/dev/help2man.py) against `--help`: one page
per command of `segpipe --help` plus segpipe(1), no stale page, and each
page's text, read back from the roff (escapes undone here, independently of
the generator) and as groff renders it, equal to what `--help` prints (with
the bundled models' folder given as an install's, so no build path is in a
page)."""
import os
import re
import shutil
import subprocess
import sp

_made = {}


def man_dir():
    """build/man, made once per module run (make man: cheap when up to date)"""
    if "dir" not in _made:
        args = ["make", "-s", "man", f"BUILD={os.path.basename(sp.BUILD)}"] + (["SANITIZE=1"] if "asan" in sp.BUILD else [])
        subprocess.run(args, cwd=sp.ROOT, check=True, capture_output=True, env=sp.run_env())
        _made["dir"] = os.path.join(sp.BUILD, "man")
    return _made["dir"]


MODELS = "<prefix>/share/segpipe/models"    # where the pages say the bundled models are


def helptext(*args):
    env = {k: v for k, v in sp.run_env().items() if not k.startswith("SEGPIPE_")}
    r = subprocess.run([sp.SEGPIPE, *args, "--help"], capture_output=True, text=True, check=True,
                       env=dict(env, SEGPIPE_MODEL_PATH=MODELS))
    return r.stdout


def commands():
    top = helptext()
    return top, re.findall(r"^  ([a-z][a-z-]*) +\S", top, re.M)


def unroff(page):
    """the no-fill block of a page, roff escapes undone"""
    block = page.split("\n.nf\n", 1)[1].split("\n.fi\n", 1)[0]
    return re.sub(r"\\(e|-|&)", lambda m: {"e": "\\", "-": "-", "&": ""}[m.group(1)], block) + "\n"


def test_man_pages_equal_help(tmp):
    d = man_dir()
    top, cmds = commands()
    table = top.split("\n\n")[2].splitlines()      # header, usage, then the command table
    assert len(cmds) == len(table) >= 10, top       # every command has a page, hyphenated ones too
    want = {"segpipe.1"} | {f"segpipe-{c}.1" for c in cmds}
    assert set(f for f in os.listdir(d) if f.endswith(".1")) == want
    for name in sorted(want):
        page = open(os.path.join(d, name)).read()
        cmd = name[:-2].split("-", 1)[1:]        # [] for segpipe.1
        help_text = helptext(*cmd)
        assert unroff(page) == help_text, name
        assert sp.ROOT not in page and "/share/segpipe/models" in open(os.path.join(d, "segpipe-ct.1")).read()
        assert page.startswith(f".TH {name[:-2].upper()} 1 "), name


def test_man_pages_render(tmp):
    """groff renders each page with every line of the help text in it"""
    if not shutil.which("groff"):
        raise sp.Skip("needs groff")
    d = man_dir()
    for c in ["ct", "serve", "version"]:
        r = subprocess.run(["groff", "-man", "-Tascii", "-P-cbou", os.path.join(d, f"segpipe-{c}.1")],
                           capture_output=True, text=True, check=True)
        assert "warning" not in r.stderr, r.stderr
        shown = {" ".join(l.split()) for l in r.stdout.splitlines()}
        for line in helptext(c).splitlines():
            if line.strip():
                assert " ".join(line.split()) in shown, (c, line)
        assert "NAME" in r.stdout and f"segpipe-{c} - " in " ".join(r.stdout.split())
