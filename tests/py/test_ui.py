"""The web page of `segpipe serve` in a real browser: Debian's headless
Chromium driven by playwright-core (tests/ui/page_test.cjs). Upload the
example CT: the viewer shows the labels over the scan, the passport table
lists the structures with the volumes `segpipe ct` reports, a click on a
row highlights it; upload a photo: four mask overlays with toggles; a
corrupt file: the service's 422 shown as such; behind an API key the page
asks for it. Also the page's HTTP side: content types, ETag/304, CSP,
served without a key, --no-ui. Screenshots are kept in build/test-artifacts/."""
import json, os, shutil, subprocess
import numpy as np
from PIL import Image
import sp
from test_server import Server, http

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PLAYWRIGHT = os.path.join(sp.ROOT, "third_party", "playwright-core", "package.json")
PHOTO = "/usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg"
CT_SM = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
ART = os.path.join(sp.ROOT, "build", "test-artifacts")


def test_page_http(tmp):
    """GET / and /ui/*: types, caching (ETag, 304), CSP; no key needed for
    the page while /v1/models needs it; --no-ui turns the page off."""
    keyfile = os.path.join(tmp, "keys")
    open(keyfile, "w").write("k" * 24 + "\n")
    s = Server("--model", f"ct={sp.DEMO}", "--api-key-file", keyfile)
    try:
        code, body, h = http(s.url + "/")
        assert code == 200 and h["Content-Type"].startswith("text/html") and b"/ui/app.js" in body
        assert "default-src 'self'" in h["Content-Security-Policy"] and h["X-Frame-Options"] == "DENY"
        assert h["Cache-Control"] == "no-cache" and h["ETag"].startswith('"')
        code, body, h2 = http(s.url + "/ui/niivue.umd.js")
        assert code == 200 and h2["Content-Type"].startswith("text/javascript") and len(body) > 1_000_000
        assert "max-age" in h2["Cache-Control"]
        assert http(s.url + "/ui/app.css")[2]["Content-Type"].startswith("text/css")
        import urllib.request
        req = urllib.request.Request(s.url + "/", headers={"If-None-Match": h["ETag"]})
        try:
            urllib.request.urlopen(req)
            raise AssertionError("expected 304")
        except urllib.error.HTTPError as e:
            assert e.code == 304
        assert http(s.url + "/ui/nothing.js")[0] == 404
        assert http(s.url + "/", data=b"x", ctype="text/plain")[0] == 405
        code, body, _ = http(s.url + "/v1/models")
        assert code == 401
        req = urllib.request.Request(s.url + "/v1/models", headers={"Authorization": "Bearer " + "k" * 24})
        m = json.load(urllib.request.urlopen(req))["models"][0]
        assert m["name"] == "ct" and m["task"] == "ct" and m["labels"]["5"]["name"] == "liver"
        assert len(m["labels"]["5"]["rgb"]) == 3
    finally:
        s.stop()
    s = Server("--model", f"ct={sp.DEMO}", "--no-ui")
    try:
        assert http(s.url + "/")[0] == 404 and http(s.url + "/v2/health/live")[0] == 200
    finally:
        s.stop()


def test_page_in_chromium(tmp):
    if not os.path.exists(CHROMIUM) or not os.path.exists(PLAYWRIGHT) or not shutil.which("node"):
        raise sp.Skip("needs Debian's chromium, node and third_party/playwright-core (scripts/install-deps.sh)")
    os.makedirs(ART, exist_ok=True)
    # the CLI's passport: what the page must show
    out = sp.ct_run(CT_SM)   # `segpipe ct`, once per test run
    cli = {s["name"]: s["volume_ml"] for s in json.load(open(out.replace(".nii.gz", ".passport.json")))["structures"]}
    corrupt = os.path.join(tmp, "corrupt.nii.gz")
    open(corrupt, "wb").write(np.random.default_rng(3).bytes(4000))
    keyfile = os.path.join(tmp, "keys")
    key = "page-test-key-0123456789"
    open(keyfile, "w").write(key + "\n")
    s = Server("--model", f"ct={sp.DEMO}", "--model", f"rooms={os.path.join(sp.ROOT, 'models', 'demo-rooms')}")
    k = Server("--model", f"ct={sp.DEMO}", "--api-key-file", keyfile)
    try:
        cfg = {"chromium": CHROMIUM, "url": s.url + "/", "keyed_url": k.url + "/", "key": key, "ct": CT_SM,
               "photos": [PHOTO], "corrupt": corrupt,
               "screenshot_ct": os.path.join(ART, "ui-ct.png"), "screenshot_photo": os.path.join(ART, "ui-photo.png"),
               "screenshot_viewer": os.path.join(ART, "ui-viewer.png")}
        cf = os.path.join(tmp, "cfg.json")
        json.dump(cfg, open(cf, "w"))
        # node and the browser are not under test: not under the ASan preload of `make asan`
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
        p = subprocess.run(["node", os.path.join(sp.ROOT, "tests", "ui", "page_test.cjs"), cf],
                           capture_output=True, text=True, timeout=400, env=env)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
    finally:
        s.stop()
        k.stop()
    assert "exception" not in r, r.get("exception")
    assert [c for c in r["console"] if "422" not in c] == [], r["console"]   # the corrupt upload's 422 only
    assert r["models"] == ["ct", "rooms"]
    # CT: every structure of the CLI's passport, same volumes (2 decimals)
    assert r["ct_state"] == "done", r.get("ct_error")
    shown = {row["name"]: row["volume_ml"] for row in r["table"]}
    assert set(shown) == set(cli)
    for organ in ("liver", "spleen", "kidney_right", "kidney_left"):
        assert abs(shown[organ] - round(cli[organ], 2)) < 0.006, (organ, shown[organ], cli[organ])
    assert r["table"][0]["name"] == max(cli, key=cli.get)               # sorted by volume first
    assert r["sorted_names"] == sorted(cli)                              # then by name
    assert r["legend"] == len(cli) and r["bars"] == len(cli)
    assert r["downloads"] == ["example_ct_sm_labels.nii.gz", "example_ct_sm.passport.json",
                              "example_ct_sm.statistics.json"]
    assert {"inference", "window", "processing (service)"} <= set(r["timings"])
    assert r["selected"] == "liver" and r["legend_selected"] == "liver" and r["picked"].startswith("liver:")
    # the viewer drew the scan (grey) and labels (the label colours) on its canvas
    px = np.asarray(Image.open(cfg["screenshot_viewer"]).convert("RGB")).reshape(-1, 3).astype(int)
    grey = (np.abs(px[:, 0] - px[:, 1]) < 8) & (np.abs(px[:, 1] - px[:, 2]) < 8) & (px.sum(1) > 60)
    colour = px.max(1) - px.min(1) > 60
    assert grey.mean() > 0.05 and colour.mean() > 0.01, (grey.mean(), colour.mean())
    # photo: the four masks of demo-rooms as overlays, toggles work
    assert r["photo_state"] == "done", r.get("photo_error")
    (card,) = r["photos"]
    assert card["masks"] == ["wall", "floor", "ceiling", "window"]
    assert card["pngs"] == [f"grace_hopper_{m}.png" for m in card["masks"]]
    assert r["hidden_after_toggle"] == 1
    assert r["ct_visible_with_photos"] is False        # one result at a time
    # corrupt upload: the service's 422 and its message
    assert r["corrupt_state"] == "error" and r["corrupt_status"] == "422" and "NIfTI" in r["corrupt_error"]
    assert r["phone_overflow"] is False
    # behind an API key: the page asks, then works
    assert r["key_prompt"] and r["key_models"] == ["ct"]


# ---------------------------------------------------------------- realistic inputs (issue #36)

_BIG = {}


def big_inputs():
    """made once per module: a 512x512x120 CT (the full example resampled),
    the shared DICOM series zipped, brainchop's package, a PNG photo"""
    if not _BIG:
        import tempfile, zipfile
        from test_mri import shared_package
        d = tempfile.mkdtemp(prefix="segpipe-ui-")
        ct = os.path.join(d, "ct_512x512x120.nii.gz")
        sp.run("resample", os.path.join(sp.CTDIR, "example_ct.nii.gz"), "-o", ct, "--shape", "512,512,120",
               check=True)
        dz = os.path.join(d, "series.zip")
        src = os.path.join(sp.CTDIR, "example_ct_dicom")
        with zipfile.ZipFile(dz, "w") as z:
            for f in sorted(os.listdir(src)):
                z.write(os.path.join(src, f), f)
        png = os.path.join(d, "hopper.png")
        Image.open(PHOTO).save(png)
        _BIG.update(dir=d, ct=ct, dicom=src, zip=dz, mri=os.path.join(sp.SHARED, "data", "mri", "tinyT1.nii.gz"),
                    mri_model=shared_package(), png=png)
    return _BIG


def _cli_passport(out):
    """the labels OUT of a CLI run (made once per test run: sp.ct_run,
    test_mri.mri_run) and its passport"""
    stem = out[:-len(".nii.gz")]
    st = json.load(open(stem + ".passport.json"))["structures"]
    import nibabel as nib
    # name -> (volume ml, mean HU or, for an MRI, mean intensity)
    return ({s["name"]: (s["volume_ml"], (s.get("hu") or s["intensity"])["mean"]) for s in st},
            nib.load(out).shape, max(s["label"] for s in st))


@sp.realistic("the page in Chromium on a 512x512x120 CT, the DICOM series zipped and a 1 mm MRI: niivue reads what "
              "the service writes at those sizes (test_page_in_chromium: the page on the small CT)")
def test_page_realistic_inputs(tmp):
    """the page on a 512x512x120 CT, the DICOM series as a zip and an MRI with
    brainchop's model: each ends in the viewer (niivue holds the scan and the
    labels, with their dims; the labels over 4 MiB of .nii.gz) and the table
    with the CLI's volumes; progress with upload %, stage and tiles;
    radiological by default (neurological toggle), window presets, names on
    hover; a PNG with the CT model: said in the user's words"""
    if not os.path.exists(CHROMIUM) or not os.path.exists(PLAYWRIGHT) or not shutil.which("node"):
        raise sp.Skip("needs Debian's chromium, node and third_party/playwright-core (scripts/install-deps.sh)")
    b = big_inputs()
    os.makedirs(ART, exist_ok=True)
    from test_mri import mri_run
    cli_ct, shape_ct, top_ct = _cli_passport(sp.ct_run(b["ct"]))
    cli_dcm, shape_dcm, top_dcm = _cli_passport(sp.ct_run(b["dicom"]))
    cli_mri, shape_mri, top_mri = _cli_passport(os.path.join(mri_run(os.path.basename(b["mri"])), "lab.nii.gz"))
    s = Server("--model", f"ct={sp.DEMO}", "--model", f"mri={b['mri_model']}")
    try:
        # the presets and the convention toggle on the DICOM CT: each redraw
        # rebuilds the scan's textures, 6x the work on the 512x512x120 one
        vols = [{"name": "big", "model": "ct", "file": b["ct"]},
                {"name": "dicom", "model": "ct", "file": b["zip"], "presets": True},
                {"name": "mri", "model": "mri", "file": b["mri"]}]
        for v in vols:
            v["screenshot"] = os.path.join(ART, f"ui-{v['name']}.png")
        cfg = {"chromium": CHROMIUM, "url": s.url + "/", "volumes": vols, "png": b["png"]}
        cf = os.path.join(tmp, "cfg.json")
        json.dump(cfg, open(cf, "w"))
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
        p = subprocess.run(["node", os.path.join(sp.ROOT, "tests", "ui", "page_test.cjs"), cf],
                           capture_output=True, text=True, timeout=1500, env=env)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
    finally:
        s.stop()
    assert "exception" not in r, r.get("exception")
    assert r["console"] == [], r["console"]
    big, dcm, mri = r["volumes"]
    for got, cli, shape, top, unit in ((big, cli_ct, shape_ct, top_ct, "HU"), (dcm, cli_dcm, shape_dcm, top_dcm, "HU"),
                                       (mri, cli_mri, shape_mri, top_mri, "intensity")):
        assert got["state"] == "done", (got["name"], got.get("error"))
        shown = {row["name"]: (row["volume_ml"], row["mean"]) for row in got["table"]}
        assert set(shown) == set(cli), got["name"]
        for k, (ml, mean) in cli.items():
            assert abs(shown[k][0] - round(ml, 2)) < 0.006, (got["name"], k, shown[k], ml)
            assert abs(shown[k][1] - round(mean, 1)) < 0.06, (got["name"], k, shown[k], mean)
        assert got["mean_header"] == f"{unit} mean", got["mean_header"]
        # the viewer holds the scan and the labels, both on the input's grid
        assert len(got["volumes"]) == 2 and [v["dims"] for v in got["volumes"]] == [list(shape)] * 2, got["volumes"]
        assert got["volumes"][1]["max"] == top   # the labels parsed whole (the last label is there)
        assert got["radiological"] is True
        assert got["hovered"] and set(got["hovered"]) <= set(cli), got["hovered"]
        # a click where hover named a structure: niivue's own read-out of that voxel (the selection) agrees
        name, hover_then, selected = got["hover_click"]
        assert name == hover_then == selected, got["hover_click"]
        assert any("uploading" in x and "%" in x for x in got["statuses"]), got["statuses"][:5]
        assert any("running" in x for x in got["statuses"]), got["statuses"]
    assert shape_ct == (512, 512, 120) and shape_dcm == (512, 512, 20)
    assert any("tile" in x and " of " in x for x in big["statuses"]), big["statuses"]
    assert big["window"] == "soft" and mri["window"] == "auto"
    assert dcm["presets"] == {"lung": [-1350, 150], "bone": [-500, 1300], "brain": [0, 80], "soft": [-160, 240]}
    assert dcm["neurological"] is True
    assert big["demo_note"] is True and "demo model" in big["summary"]
    assert mri["demo_note"] is False and "demo model" not in mri["summary"]
    assert any(d.endswith("_seg.dcm") for d in dcm["downloads"]) and not any(d.endswith(".dcm") for d in big["downloads"])
    # a PNG with the CT model: the user's words, and no stale "queued" status
    assert r["png_state"] == "error" and "this is a PNG photo: choose a photo model" in r["png_error"], r["png_error"]
    assert "queued" not in r["png_status"] and "uploading" not in r["png_status"]
    assert ["mri", "ready", False] in r["model_states"]
