"""The service on the inputs people send (issue #36): an MRI model served on
/v1/jobs and /v1/ct with the CLI's labels; a DICOM series as a zip with its
DICOM-SEG (read by pydicom) and its scan back as NIfTI; strict query
parameters (400 naming the parameter); per-request CT options against the
CLI's; a photo sent to a volume model and a volume sent to a photo model
answered in the user's words; demo models flagged; models serving while
others warm up, and SIGTERM during a warm-up."""
import io, json, os, signal, subprocess, time, urllib.parse, zipfile
import numpy as np
import nibabel as nib
import pydicom
import sp
from test_server import Server, http, jget, free_port
from test_nifti_gzip import members

CT_SM = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
DICOM = os.path.join(sp.CTDIR, "example_ct_dicom")
MRI = os.path.join(sp.SHARED, "data", "mri", "tinyT1.nii.gz")
PHOTO = "/usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg"
_CACHE = {}


def brainchop():
    """brainchop's MeshNet as a segpipe package, made once per test run"""
    from test_mri import shared_package
    return shared_package()


def dicom_zip():
    if "zip" not in _CACHE:
        b = io.BytesIO()
        with zipfile.ZipFile(b, "w") as z:
            for f in sorted(os.listdir(DICOM)):
                z.write(os.path.join(DICOM, f), "series/" + f)
        _CACHE["zip"] = b.getvalue()
    return _CACHE["zip"]


def job(s, model, body, query=""):
    """POST /v1/jobs, wait, -> (status json, result json)"""
    code, st = jget(f"{s.url}/v1/jobs?model={model}{query}", data=body, ctype="application/octet-stream")
    assert code == 202, st
    while st["state"] not in ("done", "failed"):
        st = jget(f"{s.url}/v1/jobs/{st['id']}?wait=5")[1]
    return st, jget(s.url + st["result_url"])[1]


def nifti_of(data, tmp, name):
    p = os.path.join(tmp, name)
    open(p, "wb").write(data)
    assert len(members(p)) == 1
    return nib.load(p)


@sp.realistic("a 1 mm MRI through /v1/jobs and /v1/ct against the CLI (the service's model runs: test_server, "
              "test_service_inputs' CT tests)")
def test_mri_model_served(tmp):
    """--model mri=<brainchop package>: /v1/jobs and /v1/ct take the MRI, the
    labels equal `segpipe mri`'s voxel for voxel"""
    from test_mri import mri_run, ORT_UNDER_ASAN
    pkg = brainchop()
    cli = os.path.join(mri_run(os.path.basename(MRI), ORT_UNDER_ASAN), "lab.nii.gz")   # once per test run
    ref = np.asanyarray(nib.load(cli).dataobj)
    s = Server("--model", f"mri={pkg}", "--model", f"rooms={os.path.join(sp.ROOT, 'models', 'demo-rooms')}",
               env=ORT_UNDER_ASAN)
    try:
        models = {m["name"]: m for m in jget(s.url + "/v1/models")[1]["models"]}
        assert models["mri"]["volume"] is True and models["mri"]["demo"] is False
        assert models["rooms"]["volume"] is False and models["rooms"]["demo"] is True
        assert models["mri"]["state"] == "ready"
        body = open(MRI, "rb").read()
        st, res = job(s, "mri", body, "&labels=1")
        assert st["state"] == "done", res
        got = nifti_of(http(s.url + st["labels_url"])[1], tmp, "job.nii.gz")
        assert np.array_equal(np.asanyarray(got.dataobj), ref)
        assert "demo_model" not in res and res["passport"]["scan"]["structures_found"] == 2
        code, r = jget(s.url + "/v1/ct?model=mri&labels=1", data=body, ctype="application/octet-stream")
        assert code == 200, r
        got = nifti_of(http(s.url + r["labels_url"])[1], tmp, "sync.nii.gz")
        assert np.array_equal(np.asanyarray(got.dataobj), ref)
        # a volume sent to the photo model, in the user's words
        code, e = jget(s.url + "/v1/segment-batch?model=rooms", data=body, ctype="application/octet-stream")
        assert code == 415 and "choose a CT or MRI model" in e["error"]["message"], e
        code, e = jget(s.url + "/v1/jobs?model=rooms", data=open(PHOTO, "rb").read(), ctype="image/jpeg")
        assert code == 202 and job(s, "rooms", open(PHOTO, "rb").read())[1]["demo_model"] is True
    finally:
        s.stop()


def test_ct_parameters_strict_and_per_request(tmp):
    """unknown or malformed query parameters: 400 naming them; roi_subset,
    keep_border, largest_component as the CLI's --roi-subset, --keep-border,
    --largest-component; a photo to the CT model: 415 in the user's words"""
    body = open(CT_SM, "rb").read()
    cli = os.path.join(tmp, "cli.nii.gz")
    sp.run("ct", CT_SM, "-o", cli, "-q", "--roi-subset", "liver,spleen", "--largest-component", "--keep-border",
           check=True)
    ref_lab = np.asanyarray(nib.load(cli).dataobj)
    ref_stat = json.load(open(os.path.join(tmp, "cli.statistics.json")))
    s = Server("--model", f"ct={sp.DEMO}")
    try:
        for q, name in (("roi_subet=liver", "roi_subet"), ("labels=2", "labels"), ("output=png", "output"),
                        ("keep_border=yes", "keep_border"), ("roi_subset=livr", "roi_subset"), ("x=1", "'x'")):
            code, e = jget(f"{s.url}/v1/ct?model=ct&{q}", data=body, ctype="application/octet-stream")
            assert code == 400 and name in e["error"]["message"], (q, code, e)
        code, e = jget(f"{s.url}/v1/jobs/0123?wiat=1")
        assert code == 400 and "wiat" in e["error"]["message"]
        q = "roi_subset=liver,spleen&largest_component=1&keep_border=true&labels=1"
        code, r = jget(f"{s.url}/v1/ct?model=ct&{q}", data=body, ctype="application/octet-stream")
        assert code == 200, r
        assert [x["name"] for x in r["passport"]["structures"]] == ["spleen", "liver"]
        assert r["demo_model"] is True and r["passport"]["demo_model"] is True
        assert r["statistics"] == ref_stat
        got = nifti_of(http(s.url + r["labels_url"])[1], tmp, "labels.nii.gz")
        assert np.array_equal(np.asanyarray(got.dataobj), ref_lab)
        code, e = jget(s.url + "/v1/ct?model=ct", data=open(PHOTO, "rb").read(), ctype="application/octet-stream")
        assert code == 415 and e["error"]["message"].startswith("this is a JPEG photo: choose a photo model"), e
        code, e = jget(s.url + "/v1/ct?model=ct&output=dicom-seg", data=body, ctype="application/octet-stream")
        assert code == 422 and "DICOM series" in e["error"]["message"]
    finally:
        s.stop()


@sp.realistic("the 512x512 DICOM series zipped through the service, its DICOM-SEG read by pydicom (test_dicom_out: "
              "the writers; test_dicom: zips)")
def test_dicom_zip_seg_and_scan(tmp):
    """the shared series as a zip: labels as the CLI's on the folder, a
    DICOM-SEG equal to `segpipe ct --output-type dicom`'s (pydicom: segments
    and frames; one segment per structure found) and the scan back as a
    one-member .nii.gz with the series' voxels"""
    cli = sp.ct_run(DICOM)   # the folder's labels: once per test run
    cli_seg = os.path.join(tmp, "cli.dcm")
    sp.run("ct", DICOM, "-o", cli_seg, "-q", "--output-type", "dicom", "--no-passport", check=True)
    ref = np.asanyarray(nib.load(cli).dataobj)
    series, _ = sp.read_volume(DICOM)
    s = Server("--model", f"ct={sp.DEMO}")
    try:
        st, res = job(s, "ct", dicom_zip(), "&labels=1&scan=1&output=dicom-seg")
        assert st["state"] == "done", res
        lab = nifti_of(http(s.url + st["labels_url"])[1], tmp, "labels.nii.gz")
        assert np.array_equal(np.asanyarray(lab.dataobj), ref)
        scan = nifti_of(http(s.url + st["scan_url"])[1], tmp, "scan.nii.gz")
        assert scan.shape == series.shape == ref.shape and np.allclose(scan.affine, lab.affine, atol=1e-4)
        assert np.array_equal(np.asanyarray(scan.dataobj).astype(np.float32), series)
        code, seg, h = http(s.url + st["dicom_seg_url"])
        assert code == 200 and h["Content-Type"] == "application/dicom"
        d, ref_seg = pydicom.dcmread(io.BytesIO(seg)), pydicom.dcmread(cli_seg)
        assert d.Modality == "SEG" and len(d.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 20
        assert [x.SegmentLabel for x in d.SegmentSequence] == [x.SegmentLabel for x in ref_seg.SegmentSequence]
        assert len(d.SegmentSequence) == res["passport"]["scan"]["structures_found"]
        assert np.array_equal(d.pixel_array, ref_seg.pixel_array) and d.pixel_array.any()
    finally:
        s.stop()


def _serve(*args):
    port = free_port()
    p = subprocess.Popen([sp.SEGPIPE, "serve", "--port", str(port), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=sp.run_env())
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if http(url + "/v2/health/live", timeout=2)[0] == 200:
                return p, url
        except OSError:
            pass
        time.sleep(0.05)
    p.kill()
    raise AssertionError("no live service")


def _states(url):
    return {m["name"]: m["state"] for m in jget(url + "/v1/models")[1]["models"]}


def test_models_come_and_go(tmp):
    """a ready model serves while another warms up (the budget counts what
    is loaded, not zero); a SIGTERM during warm-up stops the service
    cleanly, the model never ready"""
    pkg = brainchop()
    p, url = _serve("--model", f"ct={sp.DEMO}", "--model", f"mri={pkg}")
    try:
        while _states(url)["ct"] != "ready":
            time.sleep(0.05)
        before = _states(url)["mri"]
        code, r = jget(url + "/v1/ct?model=ct", data=open(CT_SM, "rb").read(), ctype="application/octet-stream")
        after = _states(url)["mri"]
        assert code == 200 and r["passport"]["scan"]["structures_found"] > 5, r
        if before == after == "warming up":   # the MRI model was refused meanwhile
            code, e = jget(url + "/v1/jobs?model=mri", data=open(MRI, "rb").read(), ctype="application/octet-stream")
            assert code == 503 and "warming up" in e["error"]["message"]
        assert jget(url + "/v2/health/ready")[0] in (200, 503)
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=120) == 0
    p, url = _serve("--model", f"mri={pkg}")
    assert _states(url)["mri"] == "warming up"
    p.send_signal(signal.SIGTERM)
    rc, err = p.wait(timeout=120), p.stderr.read()
    assert rc == 0 and "during warm-up" in err and "ready on" not in p.stdout.read(), err
