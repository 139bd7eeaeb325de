"""Start `segpipe serve` on a free loopback port for the load benchmarks,
and run client threads against it."""
import io, os, socket, subprocess, sys, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    """a free loopback port"""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(*args):
    """-> (process, port); returns once the service says it is ready"""
    port = free_port()
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


def room_jpegs(n, seed0, size=(480, 640)):
    """n rendered rooms (tools/train/render_rooms.py) as JPEG bytes"""
    from PIL import Image
    sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
    from render_rooms import render
    out = []
    for k in range(n):
        img, _ = render(size, seed=seed0 + k)
        b = io.BytesIO()
        Image.fromarray(img).save(b, "JPEG", quality=90)
        out.append(b.getvalue())
    return out
