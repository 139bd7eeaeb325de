"""`segpipe video` against a numpy reference of the same definitions: the ROI
cropped and resized bilinearly (half-pixel centres) to the model input,
normalised, the network (tinymatte: Sigmoid(Conv 3x3 stride 2)), alpha
bilinear back to the ROI, rounded to 8 bits, and
out = (a * frame + (255 - a) * background + 127) // 255 inside the ROI, the
frame untouched outside. Backgrounds: colour, image, box blur (integer
reference). Same bytes whatever the batch, the workers and the cache size;
order and count kept for folders and video files (lossless FFV1); the demo
model finds the figure; bad inputs fail cleanly and leave no output."""
import glob, json, os, re, signal, subprocess, time
import numpy as np
from PIL import Image
import sp
from test_masks import conv2d, bilinear_coords, photo, resize

DATA = os.path.join(sp.ROOT, "tests", "data")
TINY = os.path.join(DATA, "tinymatte")
MAN = json.load(open(os.path.join(TINY, "segpipe.json")))
WT = np.load(os.path.join(TINY, "weights.npz"))


def alpha8(frame, roi):
    """the tinymatte alpha over the ROI, 8-bit (int)"""
    x, y, w, h = roi
    Hc, Wc = MAN["input"]["size"]
    pre = MAN["preprocess"]
    res = resize(frame[y:y + h, x:x + w].astype(np.float64), Wc, Hc)
    norm = (res * pre["scale"] - np.array(pre["mean"])) / np.array(pre["std"])
    z = conv2d(norm.transpose(2, 0, 1), WT["w"].astype(np.float64), WT["b"], stride=2, pad=1)[0]
    a = 1 / (1 + np.exp(-z))                      # [12, 20]
    gh, gw = a.shape
    gy0, gy1, gfy = bilinear_coords(h, gh / h, gh)
    gx0, gx1, gfx = bilinear_coords(w, gw / w, gw)
    top = a[gy0][:, gx0] + gfx * (a[gy0][:, gx1] - a[gy0][:, gx0])
    bot = a[gy1][:, gx0] + gfx * (a[gy1][:, gx1] - a[gy1][:, gx0])
    up = np.clip(top + gfy[:, None] * (bot - top), 0, 1)
    return np.floor(up * 255 + 0.5).astype(np.int64)


def box_blur(frame, r):
    """integer box blur with edges clamped, rounded once"""
    p = np.pad(frame.astype(np.int64), [(r, r), (r, r), (0, 0)], mode="edge")
    c = np.cumsum(np.cumsum(np.pad(p, [(1, 0), (1, 0), (0, 0)]), 0), 1)
    k = 2 * r + 1
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    n = k * k
    return (s + n // 2) // n


def composite(frame, roi, bg):
    """bg: [H, W, 3] int (full frame size)"""
    x, y, w, h = roi
    out = frame.astype(np.int64).copy()
    a = alpha8(frame, roi)[..., None]
    f = out[y:y + h, x:x + w]
    b = bg[y:y + h, x:x + w]
    out[y:y + h, x:x + w] = (a * f + (255 - a) * b + 127) // 255
    return out


def make_frames(tmp, n=7, w=50, h=34, name="frames"):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    frames = []
    for i in range(n):
        f = photo(h, w, 100 + i)
        f[0, 0] = (i * 30) % 256, 0, 0          # frame number, for order checks
        Image.fromarray(f).save(os.path.join(d, "f%d.png" % (i + 1)))   # f10 after f9
        frames.append(f)
    return d, frames


def rois_for(n, w, h):
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        rw, rh = int(rng.integers(5, w)), int(rng.integers(5, h))
        out.append((int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1)), rw, rh))
    out[0] = (0, 0, w, h)
    return out


def write_rois(tmp, rois):
    p = os.path.join(tmp, "roi.txt")
    with open(p, "w") as f:
        f.write("# x y w h\n")
        for r in rois:
            f.write("%d %d %d %d\n" % r)
    return p


def read_out(d):
    files = sorted(glob.glob(os.path.join(d, "*.png")))
    return files, [np.asarray(Image.open(f).convert("RGB")).astype(np.int64) for f in files]


def video(*args):
    return sp.run("video", *args)


def check_against(frames, rois, bgs, outs):
    assert len(outs) == len(frames)
    for i, (f, o) in enumerate(zip(frames, outs)):
        ref = composite(f, rois[i], bgs[i] if isinstance(bgs, list) else bgs)
        d = np.abs(ref - o)
        assert d.max() <= 1, (i, d.max())
        assert (d > 0).mean() < 0.01, (i, (d > 0).mean())


def test_video_composite_colour_roi_reference(tmp):
    src, frames = make_frames(tmp, n=11)
    rois = rois_for(11, 50, 34)
    out = os.path.join(tmp, "out")
    p = video(src, "-o", out, "--model", TINY, "--roi", write_rois(tmp, rois), "--bg", "color:#10ff80",
              "--batch", "3", "--workers", "2")
    assert p.returncode == 0, p.stderr
    assert re.search(r"video: 11 frames 50x34", p.stdout), p.stdout
    files, outs = read_out(out)
    assert [os.path.basename(f) for f in files] == ["%06d.png" % (i + 1) for i in range(11)]
    bg = np.broadcast_to(np.array([0x10, 0xff, 0x80]), (34, 50, 3))
    check_against(frames, rois, bg, outs)


def test_video_blur_and_image_backgrounds(tmp):
    src, frames = make_frames(tmp, n=4)
    rois = rois_for(4, 50, 34)
    roi = write_rois(tmp, rois)
    out = os.path.join(tmp, "blur")
    assert video(src, "-o", out, "--model", TINY, "--roi", roi, "--bg", "blur:3").returncode == 0
    check_against(frames, rois, [box_blur(f, 3) for f in frames], read_out(out)[1])
    bgimg = photo(34, 50, 999)
    Image.fromarray(bgimg).save(os.path.join(tmp, "bg.png"))
    out = os.path.join(tmp, "img")
    p = video(src, "-o", out, "--model", TINY, "--roi", roi, "--bg", "image:" + os.path.join(tmp, "bg.png"))
    assert p.returncode == 0, p.stderr
    check_against(frames, rois, bgimg.astype(np.int64), read_out(out)[1])


def test_video_same_bytes_any_batch_workers_cache(tmp):
    src, frames = make_frames(tmp, n=13)
    roi = write_rois(tmp, rois_for(13, 50, 34))
    outs = []
    # the last run's budget holds fewer frames than the video: the ring buffer path
    for i, extra in enumerate((["--batch", "1", "--workers", "1"], ["--batch", "4", "--workers", "4"],
                               ["--batch", "3", "--workers", "2", "--max-ram", "0.2"])):
        o = os.path.join(tmp, "o%d" % i)
        p = video(src, "-o", o, "--model", TINY, "--roi", roi, "--bg", "blur:2", *extra)
        assert p.returncode == 0, p.stderr
        outs.append([open(f, "rb").read() for f in sorted(glob.glob(o + "/*.png"))])
        if i == 2:
            m = re.search(r"frame cache: (\d+) frames", p.stdout)
            assert m and int(m.group(1)) < 13, p.stdout
    assert len(outs[0]) == 13
    assert outs[0] == outs[1] == outs[2]


def test_video_file_in_and_out_lossless(tmp):
    """video file in (FFV1, lossless RGB) -> FFV1 out == the frame-folder run"""
    src, frames = make_frames(tmp, n=9, w=48, h=32)
    enc = os.path.join(tmp, "in.nut")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-framerate", "10", "-i", os.path.join(src, "f%d.png"),
                    "-c:v", "ffv1", "-pix_fmt", "bgr0", enc], check=True)
    out = os.path.join(tmp, "out.nut")
    p = video(enc, "-o", out, "--model", TINY, "--bg", "color:#000000", "--batch", "2")
    assert p.returncode == 0, p.stderr
    assert "ffv1" in p.stdout and "9 frames" in p.stdout, p.stdout
    dec = os.path.join(tmp, "dec")
    os.makedirs(dec)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", out, os.path.join(dec, "%06d.png")], check=True)
    got = read_out(dec)[1]
    r = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "stream=r_frame_rate",
                        "-of", "csv=p=0", out], capture_output=True, text=True)
    assert r.stdout.strip() == "10/1", r.stdout
    check_against(frames, [(0, 0, 48, 32)] * 9, np.zeros((32, 48, 3), np.int64), got)


def test_video_h264_output_plays(tmp):
    src, frames = make_frames(tmp, n=6, w=50, h=34)   # odd-sized for 4:2:0? 50x34 is even; also test odd
    for w, h in ((50, 34), (51, 33)):
        s2 = os.path.join(tmp, "s%d" % w)
        os.makedirs(s2)
        for i in range(5):
            Image.fromarray(photo(h, w, i)).save(os.path.join(s2, "%02d.jpg" % i))
        out = os.path.join(tmp, "o%d.mp4" % w)
        p = video(s2, "-o", out, "--model", TINY)
        assert p.returncode == 0, p.stderr
        r = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v", "-show_entries",
                            "stream=codec_name,nb_read_frames,width,height", "-of", "csv=p=0", out],
                           capture_output=True, text=True)
        assert r.stdout.strip() == "h264,%d,%d,5" % (w, h), r.stdout


def test_video_demo_model_finds_the_figure(tmp):
    """the bundled demo-matte on a rendered clip: alpha from two backgrounds
    (white and black: out_w - out_b = (255 - a)), IoU with the truth"""
    clip = os.path.join(tmp, "clip")
    subprocess.run(["/usr/bin/python3", os.path.join(sp.ROOT, "tools", "train", "make_demo_video.py"), clip, "--frames", "6",
                    "--size", "160x120"], check=True)
    outs = {}
    for col in ("ffffff", "000000"):
        o = os.path.join(tmp, col)
        p = video(os.path.join(clip, "frames"), "-o", o, "--bg", "color:#" + col)
        assert p.returncode == 0 and "is a demo model" in p.stderr, p.stderr
        outs[col] = read_out(o)[1]
    for i, truth in enumerate(sorted(glob.glob(os.path.join(clip, "truth", "*.png")))):
        a = 255 - (outs["ffffff"][i] - outs["000000"][i]).max(2)
        t = np.asarray(Image.open(truth)) > 127
        fg = a > 127
        iou = (fg & t).sum() / (fg | t).sum()
        assert iou > 0.85, (i, iou)


def no_output(tmp, out):
    left = [f for f in os.listdir(tmp) if f.startswith(os.path.basename(out))]
    assert not left, left


def test_video_bad_inputs_fail_cleanly(tmp):
    src, frames = make_frames(tmp, n=5)
    out = os.path.join(tmp, "result.mp4")
    cases = []
    cases.append((["/nonexistent/clip.mp4"], 6, "No such file"))   # cannot open: I/O, as in every command
    junk = os.path.join(tmp, "junk.mp4")
    open(junk, "wb").write(os.urandom(5000))
    cases.append(([junk], 3, "not a readable video"))
    # a stream whose codec this FFmpeg cannot decode (Matroska, codec id renamed)
    mk = os.path.join(tmp, "mj.mkv")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=32x32:rate=5", "-t", "1",
                    "-c:v", "mjpeg", mk], check=True)
    odd = os.path.join(tmp, "odd.mkv")
    raw = open(mk, "rb").read()
    assert raw.count(b"V_MJPEG") == 1
    open(odd, "wb").write(raw.replace(b"V_MJPEG", b"V_ZZZZZ"))
    cases.append(([odd], 3, "unsupported video codec"))
    # corrupt stream: an H.264 clip with its middle overwritten
    good = os.path.join(tmp, "good.mp4")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=10", "-t", "3",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", good], check=True)
    data = bytearray(open(good, "rb").read())
    bad = os.path.join(tmp, "corrupt.mp4")
    rng = np.random.default_rng(1)
    lo, hi = len(data) // 4, len(data) * 3 // 4
    data[lo:hi] = rng.integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    open(bad, "wb").write(data)
    cases.append(([bad], 3, "corrupt|cannot read|invalid"))
    trunc = os.path.join(tmp, "trunc.mp4")
    open(trunc, "wb").write(bytes(open(good, "rb").read()[:len(data) // 3]))
    cases.append(([trunc], 3, "corrupt|cannot read|not a readable|invalid|no frames"))
    # ROI outside the frame, too few ROIs, malformed ROI
    roi = os.path.join(tmp, "roi_bad.txt")
    open(roi, "w").write("0 0 10 10\n45 30 10 10\n0 0 5 5\n0 0 5 5\n0 0 5 5\n")
    cases.append(([src, "--roi", roi], 3, "outside the 50x34 frame"))
    roi2 = os.path.join(tmp, "roi_few.txt")
    open(roi2, "w").write("0 0 10 10\n")
    cases.append(([src, "--roi", roi2], 3, "1 rectangles for 5 frames"))
    roi3 = os.path.join(tmp, "roi_text.txt")
    open(roi3, "w").write("0 0 ten 10\n")
    cases.append(([src, "--roi", roi3], 3, "expected 'x y width height'"))
    # frames of different sizes in a folder (fails mid-run: output must vanish)
    mixed = os.path.join(tmp, "mixed")
    os.makedirs(mixed)
    for i in range(6):
        Image.fromarray(photo(34 if i < 4 else 30, 50, i)).save(os.path.join(mixed, "%d.png" % i))
    cases.append(([mixed], 3, "all frames must have one size"))
    empty = os.path.join(tmp, "empty")
    os.makedirs(empty)
    cases.append(([empty], 3, "no PNG or JPEG frames"))
    cases.append(([src, "--bg", "plaid"], 2, "--bg takes"))
    cases.append(([src, "--max-ram", "0.001"], 2, "too small"))
    cases.append(([src, "--model", os.path.join(DATA, "tinym2f")], 4, "Mask2Former"))
    cases.append(([src, "--codec", "nosuchcodec"], 2, "no encoder named"))
    for args, code, msg in cases:
        p = video(*args[:1], "-o", out, "--model", TINY, *args[1:])
        assert p.returncode == code, (args, p.returncode, p.stderr)
        assert re.search(msg, p.stderr), (args, p.stderr)
        no_output(tmp, out)
    # an existing non-empty output folder is not overwritten
    full = os.path.join(tmp, "full")
    os.makedirs(full)
    open(os.path.join(full, "keep.png"), "w").write("x")
    p = video(src, "-o", full, "--model", TINY)
    assert p.returncode == 6 and "not an empty folder" in p.stderr, p.stderr
    assert os.listdir(full) == ["keep.png"]


def test_video_ctrl_c_stops_cleanly(tmp):
    clip = os.path.join(tmp, "long.mp4")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t",
                    "120", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", clip], check=True)
    out = os.path.join(tmp, "out.mp4")
    proc = subprocess.Popen([sp.SEGPIPE, "video", clip, "-o", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=sp.run_env())
    for _ in range(1200):   # an event, not a wall time: the output has begun
        if os.path.exists(out + ".part") or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "finished before the signal: make the clip longer"
    assert os.path.exists(out + ".part")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)
    assert "cancelled" in err, err
    no_output(tmp, out)


def test_bench_video_sweep(tmp):
    src, frames = make_frames(tmp, n=8)
    out = os.path.join(tmp, "bench")
    p = sp.run("bench", "video", src, "--model", TINY, "--batch", "1,4", "--workers", "1,2", "--out", out,
               "--save", "png")
    assert p.returncode == 0, p.stderr
    assert "Best: batch" in p.stdout, p.stdout
    js = json.load(open(os.path.join(out, "bench-video.json")))
    assert len(js["runs"]) == 4 and js["frames"] == 8
    for r in js["runs"]:
        assert r["frames"] == 8 and r["cached"] == 1 and r["fps"] > 0 and r["inference_alone_fps"] > 0
    assert {(r["batch"], r["workers"]) for r in js["runs"]} == {(1, 1), (1, 2), (4, 1), (4, 2)}
    assert len(glob.glob(os.path.join(out, "sweep-frames", "*.png"))) == 8


def test_video_fewer_frames_than_batch(tmp):
    """1-3 frames with --batch 4 or 8 (it used to wait forever for a full
    batch): every frame composited and written, exit 0."""
    for n in (1, 2, 3):
        src, frames = make_frames(tmp, n=n, name=f"f{n}")
        for b in (4, 8):
            out = os.path.join(tmp, f"out{n}_{b}")
            p = subprocess.run([sp.SEGPIPE, "video", src, "-o", out, "--model", TINY, "--bg", "color:#000000",
                                "--batch", str(b)], capture_output=True, text=True, timeout=60, env=sp.run_env())
            assert p.returncode == 0, (n, b, p.stderr)
            files, outs = read_out(out)
            assert len(files) == n
            check_against(frames, [(0, 0, 50, 34)] * n, np.zeros((34, 50, 3)), outs)


def test_video_truncated_matroska_refused(tmp):
    """An MKV (H.264) or WebM (VP9) cut at 40% still opens and FFmpeg reads
    it to an early end with only a log line: segpipe compares the last frame
    with the duration the file declares, exits 3 naming the cut, quotes
    FFmpeg's reason, prints none of FFmpeg's own lines, and leaves nothing."""
    for ext, codec in (("mkv", ["-c:v", "libx264", "-pix_fmt", "yuv420p"]), ("webm", ["-c:v", "libvpx-vp9", "-b:v", "200k"])):
        full = os.path.join(tmp, "full." + ext)
        subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-t", "8",
                        *codec, full], check=True)
        raw = open(full, "rb").read()
        cut = os.path.join(tmp, "cut." + ext)
        open(cut, "wb").write(raw[: len(raw) * 4 // 10])
        out = os.path.join(tmp, "o_" + ext + ".mp4")
        p = video(cut, "-o", out, "--model", TINY)
        assert p.returncode == 3 and "truncated or damaged" in p.stderr and "File ended prematurely" in p.stderr, p.stderr
        assert "[matroska" not in p.stderr, p.stderr
        assert not os.path.exists(out) and not any(f.startswith("o_" + ext) for f in os.listdir(tmp))
        p = video(full, "-o", out, "--model", TINY)
        assert p.returncode == 0 and os.path.exists(out), p.stderr


def test_ffmpeg_opened_on_first_use(tmp):
    """FFmpeg (about 130 libraries with its dependencies) is opened with
    dlopen when a video file is first read or written (src/io/av_load.h):
    neither the CLI nor the library names it as a needed library, so a
    `segpipe ct` never loads it; the video tests of this module prove the
    loaded table works."""
    for f in ("segpipe", "libsegpipe.so"):
        d = subprocess.run(["readelf", "-d", os.path.join(sp.BUILD, f)], capture_output=True, text=True, check=True)
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", d.stdout)
        assert needed and not [n for n in needed if re.match(r"lib(av|sw)", n)], (f, needed)
    clip = os.path.join(tmp, "c.mkv")
    frames = os.path.join(tmp, "f")
    os.makedirs(frames)
    for i in range(3):
        Image.fromarray(photo(32, 48, seed=i)).save(os.path.join(frames, f"{i:03d}.png"))
    p = sp.run("video", frames, "-o", clip, "--model", TINY, "--bg", "color:#00ff00")
    assert p.returncode == 0, p.stderr
    q = sp.run("video", clip, "-o", os.path.join(tmp, "back"), "--model", TINY, "--bg", "color:#00ff00")
    assert q.returncode == 0 and len(os.listdir(os.path.join(tmp, "back"))) == 3, q.stderr
