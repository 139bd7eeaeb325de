"""Release hygiene (issue 38): `segpipe version` names the git commit it was
built from (no path), and `segpipe serve` warns on stderr when it listens
beyond loopback without an API key or without TLS, and not on loopback."""
import os
import re
import subprocess
import sp
from test_server import free_port


def test_version_names_commit(tmp):
    out = sp.run("version", check=True).stdout
    m = re.search(r"^commit: (\S+)$", out, re.M)
    assert m, out
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=sp.ROOT, capture_output=True, text=True)
    if head.returncode == 0:   # the build may lag one commit behind in a working tree being edited
        assert re.fullmatch(r"[0-9a-f]{12}(-dirty)?", m.group(1)), m.group(1)
    assert "ONNX Runtime " in out and re.search(r"^providers: .*CPUExecutionProvider", out, re.M), out
    for line in out.splitlines():      # no build path compiled in (gpu: and default model: are found at run time)
        if line.startswith(("segpipe ", "commit:", "build:")):
            assert sp.ROOT not in line, line


def serve_stderr(tmp, *args):
    """stderr of `segpipe serve ARGS` up to its ready line, then stopped"""
    err = os.path.join(tmp, "err.txt")
    with open(err, "w") as ef:
        p = subprocess.Popen([sp.SEGPIPE, "serve", "--port", str(free_port()), "--model", "t=" + sp.TINYSEG, *args],
                             stdout=subprocess.PIPE, stderr=ef, text=True, env=sp.run_env())
        try:
            assert "ready on" in p.stdout.readline()
        finally:
            p.terminate()
            assert p.wait(timeout=60) == 0
    return open(err).read()


def test_serve_warns_beyond_loopback(tmp):
    keys = os.path.join(tmp, "keys")
    open(keys, "w").write("k" * 32 + "\n")
    e = serve_stderr(tmp, "--host", "0.0.0.0")
    assert "warning: listening on 0.0.0.0, beyond loopback, without an API key" in e, e
    assert "without TLS" in e, e
    e = serve_stderr(tmp, "--host", "0.0.0.0", "--api-key-file", keys)
    assert "without an API key" not in e and "without TLS" in e and "API keys cross" in e, e
    for host in ("127.0.0.1", "127.0.0.2"):
        e = serve_stderr(tmp, "--host", host)
        assert "warning" not in e, e
