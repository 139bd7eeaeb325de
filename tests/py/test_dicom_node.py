"""`segpipe dicom-node` against a real PACS (docs/dicom.md, "DICOM node"):
Debian's Orthanc on loopback (its own temporary configuration: HTTP and
DICOM ports, storage folder, no authentication, loopback only). The ../shared
example series, given the study/series/instance UIDs a scanner would write,
is pushed with DCMTK's storescu into Orthanc and into segpipe's node; the
node's DICOM-SEG must arrive in Orthanc in the SAME study (Orthanc's REST
API), referencing the CT's instances; a peer not in --allow is refused; the
status file counts it all; SIGTERM stops the node and removes its spool."""
import json, os, shutil, signal, subprocess, time, urllib.request
import pydicom
from pydicom.uid import generate_uid
import sp
from test_server import free_port

SERIES = os.path.join(sp.CTDIR, "example_ct_dicom")


def _pacs_copy(d):
    """the anonymised example with the UIDs a scanner writes (study, series, frame, instances)"""
    os.makedirs(d)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    uids = []
    for i, f in enumerate(sorted(os.listdir(SERIES))):
        ds = pydicom.dcmread(os.path.join(SERIES, f))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.PatientID, ds.PatientName = "SP-NODE-1", "Node^Test"
        ds.save_as(os.path.join(d, f"{i:03d}.dcm"), write_like_original=False)
        uids.append(ds.SOPInstanceUID)
    return study, uids


def _plain_env():
    """the environment for Orthanc and storescu: without the sanitizer runtime preloaded (BUILD=build-asan)"""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def _wait(cond, seconds, what):
    t = time.time()
    while time.time() - t < seconds:
        try:
            v = cond()
        except OSError:   # not listening yet
            v = None
        if v:
            return v
        time.sleep(1)
    raise AssertionError("timed out waiting for " + what)


def _orthanc(tmp):
    if not shutil.which("Orthanc") or not shutil.which("storescu"):
        raise sp.Skip("Orthanc (Debian orthanc) or storescu (dcmtk) not installed")
    http, dicom = free_port(), free_port()
    cfg = {"Name": "segpipe-test", "StorageDirectory": os.path.join(tmp, "orthanc-db"),
           "IndexDirectory": os.path.join(tmp, "orthanc-db"), "HttpPort": http, "DicomPort": dicom,
           "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
           "DicomCheckCalledAet": False, "Plugins": [], "StorageCompression": False}
    path = os.path.join(tmp, "orthanc.json")
    json.dump(cfg, open(path, "w"))
    p = subprocess.Popen(["Orthanc", path], stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "o.log"), "w"),
                         env=_plain_env())
    url = f"http://127.0.0.1:{http}"
    try:
        _wait(lambda: _get(url + "/system"), 30, "Orthanc to start")
    except Exception:
        p.kill()
        raise
    return p, url, dicom


def _storescu(calling, called, port, files):
    return subprocess.run(["storescu", "-xv", "-aet", calling, "-aec", called, "127.0.0.1", str(port), *files],
                          capture_output=True, text=True, timeout=120, env=_plain_env())


@sp.realistic("Orthanc as the PACS on both sides of the DICOM node (test_dicom_node_usage: its refusals)")
def test_dicom_node_to_orthanc(tmp):
    orthanc, url, odicom = _orthanc(tmp)
    node = None
    try:
        study, uids = _pacs_copy(os.path.join(tmp, "ct"))
        files = sorted(os.path.join(tmp, "ct", f) for f in os.listdir(os.path.join(tmp, "ct")))
        r = _storescu("SCANNER", "ORTHANC", odicom, files)
        assert r.returncode == 0, r.stderr
        port, spool, status = free_port(), os.path.join(tmp, "spool"), os.path.join(tmp, "status.json")
        node = subprocess.Popen([sp.SEGPIPE, "dicom-node", "--port", str(port), "--aet", "SEGPIPE", "--allow",
                                 "SCANNER@127.0.0.1,PACS", "--dest", f"ORTHANC@127.0.0.1:{odicom}", "--settle", "2",
                                 "--spool", spool, "--status", status, "-t", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=sp.run_env())
        _wait(lambda: os.path.exists(status), 60, "the node to listen")
        r = _storescu("SCANNER", "SEGPIPE", port, files)
        assert r.returncode == 0, r.stderr
        r = _storescu("INTRUDER", "SEGPIPE", port, files[:1])
        assert r.returncode != 0 and "Rejected" in r.stderr, r.stderr
        seg_series = _wait(lambda: [s for s in json.loads(_get(url + "/series"))
                                    if json.loads(_get(f"{url}/series/{s}"))["MainDicomTags"].get("Modality") == "SEG"],
                           400, "the SEG in Orthanc")
        assert len(json.loads(_get(url + "/studies"))) == 1          # the SEG joined the CT's study
        info = json.loads(_get(f"{url}/series/{seg_series[0]}"))
        parent = json.loads(_get(f"{url}/studies/{info['ParentStudy']}"))
        assert parent["MainDicomTags"]["StudyInstanceUID"] == study
        seg = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_get(f"{url}/instances/{info['Instances'][0]}/file")))
        refd = [i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
        assert sorted(refd) == sorted(uids)
        assert seg.PatientID == "SP-NODE-1" and seg.StudyInstanceUID == study
        st = _wait(lambda: json.load(open(status)) if json.load(open(status))["jobs_done"] else None, 30, "status")
        assert st["instances_received"] == 20 and st["associations_refused"] == 1 and st["objects_sent"] == 1, st
        node.send_signal(signal.SIGTERM)
        out, err = node.communicate(timeout=60)
        assert node.returncode == 0, err
        assert "series 1: SEG sent to ORTHANC" in err and not os.listdir(os.path.join(spool, "incoming")), err
        assert "Node^Test" not in err and study not in err                # no patient data in the log
        node = None
    finally:
        if node:
            node.kill()
            node.wait()
        orthanc.terminate()
        orthanc.wait(timeout=30)


def test_dicom_node_usage(tmp):
    """usage errors: no destination, no allowed peers, a malformed --dest, an unknown output type"""
    for args, text in (([], "--dest"), (["--dest", "PACS@h:104"], "--allow"),
                       (["--dest", "PACS", "--allow", "A"], "--dest"),
                       (["--dest", "PACS@h:104", "--allow-any", "--output-type", "nifti"], "--output-type"),
                       (["--dest", "PACS@h:104", "--allow", "A_TITLE_LONGER_THAN_16"], "--allow")):
        p = sp.run("dicom-node", *args)
        assert p.returncode == 2 and text in p.stderr, (args, p.returncode, p.stderr)
