"""Start `segpipe serve` on a free loopback port for the load benchmarks,
and run client threads against it."""
import os, socket, subprocess, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_server(*args):
    """-> (process, port); returns once the service says it is ready"""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    seg = os.environ.get("SEGPIPE", os.path.join(ROOT, "build", "segpipe"))
    dev = os.environ.get("SEGPIPE_BENCH_DEVICE")      # e.g. cuda, on the GPU machine
    p = subprocess.Popen([seg, "serve", "--port", str(port), *args, *(["--device", dev] if dev else [])],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if "ready" not in line:
        p.kill()
        raise RuntimeError("segpipe serve did not start: " + line)
    return p, port


def run_clients(target, args_list):
    """one thread per args tuple, all started together; -> wall seconds"""
    th = [threading.Thread(target=target, args=a) for a in args_list]
    t0 = time.perf_counter()
    for t in th:
        t.start()
    for t in th:
        t.join()
    return time.perf_counter() - t0
