"""A fork server for the project's Python tools in the tests (sp.tool).

The importers and exporters under tools/ import PyTorch, which costs about
1.2 CPU s a process on the CI machine: ~90 tool runs a test run spent
~110 CPU s importing it. This process imports PyTorch, onnx and numpy once
and forks a child per request that runs the tool as `python3 SCRIPT ARGS`
would (runpy as __main__, its exit status, its stdout and stderr to the
files named), the way Android's zygote or Python's multiprocessing
"forkserver" start their workers.

It never runs a PyTorch operator itself, so no OpenMP or intra-op thread
exists when it forks: the child starts as a fresh interpreter would, with
the modules already imported.

Protocol (one request at a time, lines of JSON on stdin/stdout):
  -> {"argv": [SCRIPT, ARGS...], "cwd": DIR, "env": {..}, "out": FILE, "err": FILE}
  <- {"pid": PID}                       as soon as the child runs
  <- {"rc": STATUS, "cpu": SECONDS}     when it ended (rusage of the child)
"""
import atexit, ctypes, json, os, runpy, signal, sys, traceback

for _name in ("numpy", "torch", "onnx"):
    try:
        __import__(_name)
    except ImportError:
        pass


def die_with_parent():
    """SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG): the server with
    its test job, a tool with the server"""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def child(req):
    """in the forked child: run the tool; never returns"""
    die_with_parent()
    fd_in = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd_in, 0)
    for fd, path in ((1, req["out"]), (2, req["err"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(f, fd)
        os.close(f)
    sys.stdin, sys.stdout, sys.stderr = (open(0, closefd=False), open(1, "w", closefd=False),
                                         open(2, "w", closefd=False))
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    sys.argv = list(req["argv"])
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
    code = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:   # as the interpreter maps sys.exit's argument
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)


def main():
    die_with_parent()
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(req)
        print(json.dumps({"pid": pid}), flush=True)
        _, status, ru = os.wait4(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        print(json.dumps({"rc": rc, "cpu": ru.ru_utime + ru.ru_stime}), flush=True)


if __name__ == "__main__":
    main()
