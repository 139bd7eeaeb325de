// segpipe's web page (docs/ui.md): upload a CT/MRI or photos to the service
// this page came from, follow the job, look at the labels over the scan
// (niivue), the passport, the masks. Plain browser JavaScript, no build step;
// every request carries the API key when the service asks for one.
'use strict';

const $ = (id) => document.getElementById(id);
const PHOTO_COLOURS = [[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [0, 128, 128], [170, 110, 40]];
const ERROR_HINTS = {
  400: 'the request was malformed',
  401: 'the service needs an API key',
  404: 'not found (the model or the result is gone)',
  413: 'the file is larger than the service accepts',
  415: 'this file type is not accepted by this model',
  422: 'the file could not be used',
  503: 'the service is busy',
  504: 'the job took longer than the service allows',
};

const state = {
  key: sessionStorage.getItem('segpipe-key') || '',
  models: [],
  retry: null,        // the last action, for the Retry button
  nv: null,           // the niivue viewer
  labels: null,       // NVImage of the labels
  names: {},          // label -> {name, rgb}
  structures: [],     // passport rows
  selected: 0,
  sort: { key: 'volume_ml', dir: -1 },
  urls: [],           // object URLs to revoke on the next run
  unit: 'HU',         // the passport's intensity unit: 'HU' (CT) or 'intensity' (MRI)
  bg: null,           // NVImage of the scan (NIfTI input, or the service's copy of a DICOM series)
  poll: null,         // timer following models that warm up
};

// CT windows (level/width as radiologists set them): [min, max] in HU
const WINDOWS = {
  soft: [-160, 240],    // soft tissue: W400 L40
  lung: [-1350, 150],   // lung: W1500 L-600
  bone: [-500, 1300],   // bone: W1800 L400
  brain: [0, 80],       // brain: W80 L40
};

class HttpError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

function setPhase(phase) { document.body.dataset.state = phase; }

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (state.key) headers.Authorization = 'Bearer ' + state.key;
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  if (!r.ok) {
    let msg = r.statusText;
    try {
      const j = await r.json();
      msg = (j.error && (j.error.message || j.error)) || msg;
    } catch (e) { /* not JSON */ }
    throw new HttpError(r.status, String(msg), r.headers.get('Retry-After'));
  }
  return r;
}

// ---------------------------------------------------------------- status

function showStatus(text, frac) {
  $('status-panel').hidden = false;
  $('status').textContent = text;
  const p = $('progress');
  if (frac === null) p.removeAttribute('value'); else p.value = frac;
}

function showError(err) {
  setPhase('error');
  const box = $('error');
  box.hidden = false;
  $('status-panel').hidden = false;
  $('progress').value = 0;
  $('status').textContent = 'stopped: see below';   // never a stale "queued" over an error
  const status = err instanceof HttpError ? err.status : 0;
  let text = status ? `${status}: ${err.message}` : String(err.message || err);
  // the service's own words already say what to do ("... choose a photo model")
  if (ERROR_HINTS[status] && !/choose a/.test(text)) text += ` (${ERROR_HINTS[status]})`;
  if (status === 503 && err.retryAfter) text += `; retry in ${err.retryAfter} s`;
  $('error-text').textContent = text;
  $('error').dataset.status = String(status);
  $('retry').hidden = !(state.retry && (status === 503 || status === 504 || status === 0));
  if (status === 401) askKey();
}

function clearError() { $('error').hidden = true; $('error-text').textContent = ''; }

function askKey() {
  $('key-panel').hidden = false;
  $('key-input').focus();
}

// ---------------------------------------------------------------- models

function isVolume(m) { return m.volume === true || m.task === 'ct' || m.task === 'mri'; }

function modelState(m) { return m.state || (m.ready ? 'ready' : 'warming up'); }

// The service's models, ready or not; followed every 2 s while one warms up
// (it becomes selectable when ready, or shows why it failed).
async function loadModels(fromPoll) {
  clearTimeout(state.poll);
  try {
    const j = await (await api('/v1/models')).json();
    state.models = j.models.filter((m) => !m.task || isVolume(m) || m.task === 'masks');
    const sel = $('model');
    const keep = sel.value;
    sel.textContent = '';
    for (const m of state.models) {
      const o = document.createElement('option');
      o.value = m.name;
      const st = modelState(m);
      const kind = !m.task ? '' : m.task === 'masks' ? 'photos' : m.task.toUpperCase();
      o.textContent = `${m.name} (${kind}${m.demo ? ', demo' : ''})${st === 'ready' ? '' : ` — ${st}`}`;
      o.disabled = st !== 'ready';
      o.dataset.state = st;
      if (m.error) o.title = m.error;
      sel.appendChild(o);
    }
    const ready = state.models.filter((m) => modelState(m) === 'ready');
    if (ready.some((m) => m.name === keep)) sel.value = keep;
    else if (ready.length) sel.value = ready[0].name;
    const warming = state.models.filter((m) => modelState(m) === 'warming up').length;
    $('service').textContent = (ready.length ? `${ready.length} model(s) ready` : 'no model ready') +
      (warming ? `, ${warming} warming up` : '');
    $('key-button').hidden = !state.key;
    modelInfo();
    if (fromPoll !== true) setPhase('idle');   // a refresh while warming leaves a run's phase alone
    if (warming) state.poll = setTimeout(() => loadModels(true), 2000);
  } catch (e) {
    $('service').textContent = 'not connected';
    showError(e);
  }
}

function currentModel() { return state.models.find((m) => m.name === $('model').value); }

function modelInfo() {
  const m = currentModel();
  const demo = $('demo-note');
  demo.hidden = !(m && m.demo);
  if (m && m.demo) demo.textContent = `demo model — not for real ${m.task === 'masks' ? 'photos' : 'scans'}`;
  if (!m || modelState(m) !== 'ready') { $('model-info').textContent = ''; return; }
  $('model-info').textContent = m.task === 'masks'
    ? `masks: ${m.masks.join(', ')}` : `${m.classes - 1} structures`;
  $('file').accept = m.task === 'masks' ? 'image/*,.heic,.heif' : '.nii,.gz,.zip';
}

// What a file is, from its first bytes: 'JPEG', 'PNG', 'WebP', 'HEIC' photos,
// 'volume' (NIfTI, gzip, zip), or '' (unknown: the service decides).
async function sniff(file) {
  const b = new Uint8Array(await file.slice(0, 352).arrayBuffer());
  const ascii = (i, n) => String.fromCharCode(...b.slice(i, i + n));
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'JPEG';
  if (b[0] === 0x89 && ascii(1, 3) === 'PNG') return 'PNG';
  if (ascii(0, 4) === 'RIFF' && ascii(8, 4) === 'WEBP') return 'WebP';
  if (ascii(4, 4) === 'ftyp') return 'HEIC';
  if ((b[0] === 0x1f && b[1] === 0x8b) || ascii(0, 4) === 'PK\x03\x04' || ascii(344, 3) === 'n+1' ||
      ascii(344, 3) === 'ni1' || ascii(4, 4) === 'n+2') return 'volume';
  return '';
}

// A file for the wrong kind of model, said in the user's words before any upload.
async function wrongKind(m, files) {
  for (const f of files) {
    const k = await sniff(f);
    if (isVolume(m) && k && k !== 'volume') {
      return `${f.name}: this is a ${k} photo: choose a photo model (${m.name} segments ` +
        `${m.task.toUpperCase()} volumes: .nii, .nii.gz or a DICOM series as .zip)`;
    }
    if (m.task === 'masks' && k === 'volume') {
      return `${f.name}: this is a volume (NIfTI or a DICOM zip): choose a CT or MRI model ` +
        `(${m.name} segments photos)`;
    }
  }
  return '';
}

// ---------------------------------------------------------------- input

function takeFiles(fileList) {
  const files = Array.from(fileList);   // the input's FileList empties when it is reset
  const m = currentModel();
  if (!m || !files.length) return;
  for (const u of state.urls) URL.revokeObjectURL(u);
  state.urls = [];
  clearError();
  const run = m.task === 'masks' ? () => runPhotos(m, files) : () => runVolume(m, files[0]);
  state.retry = run;
  setPhase('busy');   // at once: the file's kind is checked asynchronously
  wrongKind(m, files).then((msg) => {
    if (msg) {
      state.retry = null;
      $('ct-result').hidden = true;
      $('photo-result').hidden = true;
      showError(new Error(msg));
      return undefined;
    }
    return run();
  }).catch(showError);
}

// POST with upload progress (fetch has none): resolves to the JSON answer.
function upload(path, body, onProgress) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open('POST', path);
    x.setRequestHeader('Content-Type', 'application/octet-stream');
    if (state.key) x.setRequestHeader('Authorization', 'Bearer ' + state.key);
    x.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    x.onload = () => {
      let j = null;
      try { j = JSON.parse(x.responseText); } catch (e) { /* not JSON */ }
      if (x.status >= 200 && x.status < 300 && j) { resolve(j); return; }
      const msg = (j && j.error && (j.error.message || j.error)) || x.statusText;
      reject(new HttpError(x.status, String(msg), x.getResponseHeader('Retry-After')));
    };
    x.onerror = () => reject(new Error('the service could not be reached (network error)'));
    x.send(body);
  });
}

function objectUrl(blob) {
  const u = URL.createObjectURL(blob);
  state.urls.push(u);
  return u;
}

function download(parent, label, blob, name) {
  const a = document.createElement('a');
  a.href = objectUrl(blob);
  a.download = name;
  a.textContent = label;
  parent.appendChild(a);
}

function stem(name) { return name.replace(/\.(nii\.gz|nii|zip|jpe?g|png|webp|heic|heif)$/i, ''); }

// ---------------------------------------------------------------- CT / MRI

async function runVolume(model, file) {
  setPhase('busy');
  $('ct-result').hidden = true;
  $('photo-result').hidden = true;
  const t0 = performance.now();
  const mb = (file.size / 1e6).toFixed(1);
  showStatus(`uploading ${file.name} (${mb} MB): 0%`, 0);
  const buf = await file.arrayBuffer();
  const nifti = /\.nii(\.gz)?$/i.test(file.name);
  // a DICOM series: the service sends the scan back as NIfTI (scan=1) to be shown
  // under the labels, and the labels as a DICOM-SEG referencing the series
  const q = `model=${encodeURIComponent(model.name)}&labels=1${nifti ? '' : '&scan=1&output=dicom-seg'}`;
  const job = await upload(`/v1/jobs?${q}`, buf,
    (f) => showStatus(`uploading ${file.name} (${mb} MB): ${Math.round(100 * f)}%`, f));
  let st = job;
  while (st.state !== 'done' && st.state !== 'failed') {
    const frac = st.total ? st.done / st.total : null;
    const tiles = st.total ? `: tile ${st.done} of ${st.total}` : '';
    showStatus(`${st.state === 'queued' ? 'queued' : 'running'} — ${st.stage}${tiles}`, frac);
    st = await (await api(`/v1/jobs/${job.id}?wait=1`)).json();
  }
  const res = await (await api(`/v1/jobs/${job.id}/result`)).json();
  if (st.state === 'failed') throw new HttpError(st.http_status, res.error ? res.error.message || res.error : 'failed');
  showStatus('loading the labels…', 1);
  const labels = await (await api(`/v1/jobs/${job.id}/labels`)).arrayBuffer();
  const scan = st.scan_url ? await (await api(st.scan_url)).arrayBuffer() : null;
  const seg = st.dicom_seg_url ? await (await api(st.dicom_seg_url)).arrayBuffer() : null;
  const wall = (performance.now() - t0) / 1000;
  state.names = model.labels;
  await showVolume(model, file, nifti ? buf : scan, labels);
  showPassport(res, wall);
  const dl = $('ct-downloads');
  dl.textContent = '';
  download(dl, 'labels (.nii.gz)', new Blob([labels], { type: 'application/gzip' }), `${stem(file.name)}_labels.nii.gz`);
  if (seg) download(dl, 'DICOM-SEG (.dcm)', new Blob([seg], { type: 'application/dicom' }), `${stem(file.name)}_seg.dcm`);
  download(dl, 'passport.json', new Blob([JSON.stringify(res.passport, null, 1)], { type: 'application/json' }),
    `${stem(file.name)}.passport.json`);
  if (res.statistics) {
    download(dl, 'statistics.json', new Blob([JSON.stringify(res.statistics, null, 1)], { type: 'application/json' }),
      `${stem(file.name)}.statistics.json`);
  }
  showStatus(`done: ${res.passport.scan.structures_found} structures in ${res.processing_seconds.toFixed(2)} s ` +
    `of processing (${wall.toFixed(2)} s with upload and download)`, 1);
  api(`/v1/jobs/${job.id}`, { method: 'DELETE' }).catch(() => {});   // the service forgets it now
  setPhase('done');
}

function labelColormap() {
  const n = Math.max(1, ...Object.keys(state.names).map(Number)) + 1;
  // a transparent entry below 0: niivue (0.69) raises the lowest texel
  // coordinate to 2/256, which with over 64 labels reaches into label 1's
  // colour when 0 is the table's first entry
  const cm = { R: [0], G: [0], B: [0], A: [0], I: [-1], labels: [''] };
  for (let i = 0; i < n; i++) {
    const e = state.names[i];
    // niivue draws an overlay's voxels opaque or not at all: the structures
    // other than the selected one are dimmed towards grey instead
    const dim = state.selected && state.selected !== i;
    const rgb = (e ? e.rgb : [0, 0, 0]).map((c) => (dim ? Math.round(c * 0.2 + 50) : c));
    cm.R.push(rgb[0]); cm.G.push(rgb[1]); cm.B.push(rgb[2]); cm.I.push(i);
    cm.A.push(i === 0 ? 0 : 255);
    cm.labels.push(e ? e.name : (i ? `label_${i}` : ''));
  }
  return cm;
}

// The structure under the mouse (hover), from the labels' voxel there: the
// canvas position (device pixels, as niivue's screen tiles are) to the
// scene's fraction, then millimetres, then the labels' voxel - the path of
// niivue's own location read-out. (niivue 0.69's frac2vox needs a volume's
// `dims`, which only the background volume has: not usable for the labels.)
function labelAt(clientX, clientY) {
  const nv = state.nv;
  const r = nv.canvas.getBoundingClientRect();
  const dpr = nv.uiData.dpr || window.devicePixelRatio || 1;
  const frac = nv.canvasPos2frac([(clientX - r.left) * dpr, (clientY - r.top) * dpr]);
  if (!(frac[0] >= 0)) return 0;   // between the planes, or over the 3D view
  const lab = state.labels;
  const v = lab.mm2vox(nv.frac2mm(frac));
  const d = lab.dimsRAS;
  for (let i = 0; i < 3; i++) if (v[i] < 0 || v[i] >= d[i + 1]) return 0;
  return Math.round(lab.getValue(v[0], v[1], v[2]));
}

function hover(e) {
  if (!state.nv || !state.labels || !state.nv.volumes.includes(state.labels)) return;
  const l = labelAt(e.clientX, e.clientY);
  const name = l > 0 ? (state.names[l] ? state.names[l].name : `label ${l}`) : '';
  $('hover').textContent = name;
  document.body.dataset.hover = name;
}

// the window's range onto the scan (no redraw)
function setWindow() {
  const w = WINDOWS[$('window').value];
  if (w) { state.bg.cal_min = w[0]; state.bg.cal_max = w[1]; } else {   // auto: the scan's robust range
    state.bg.cal_min = state.bg.robust_min; state.bg.cal_max = state.bg.robust_max;
  }
}

function applyWindow() {
  if (!state.bg) return;
  setWindow();
  state.nv.updateGLVolume();
}

async function showVolume(model, file, scan, labels) {
  $('ct-result').hidden = false;
  if (!state.nv) {
    state.nv = new niivue.Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: true, dragAndDropEnabled: false,
      multiplanarLayout: 2,   // grid: the three planes never overlap
      isRadiologicalConvention: !$('neuro').checked,   // the patient's right on the screen's left
      isColorbar: false });
    await state.nv.attachToCanvas($('viewer'));
    state.nv.onLocationChange = (d) => {
      const v = d && d.values && d.values.length > 1 ? Math.round(d.values[d.values.length - 1].value) : 0;
      if (v > 0 && v !== state.selected) select(v, false);
    };
    $('viewer').addEventListener('mousemove', hover);
    $('viewer').addEventListener('mouseleave', () => { $('hover').textContent = ''; document.body.dataset.hover = ''; });
  }
  const nv = state.nv;
  // Each niivue call below rebuilds the textures of every volume it holds
  // (seconds for a 512x512 CT in a browser without a GPU): the old volumes go
  // background first (what remains is at most the small labels), the window
  // and the label colours are set before the volumes are added, and the two
  // additions are the only rebuilds.
  while (nv.volumes.length) nv.removeVolume(nv.volumes[0]);
  state.selected = 0;
  state.bg = null;
  state.labels = null;
  const [bg, lab] = await Promise.all([
    scan ? niivue.NVImage.loadFromUrl({ url: scan.slice(0), name: 'scan.nii.gz', colormap: 'gray' }) : null,
    niivue.NVImage.loadFromUrl({ url: labels.slice(0), name: 'labels.nii.gz', opacity: Number($('opacity').value) }),
  ]);
  nv.setSliceType(Number($('view').value));
  if (bg) {
    state.bg = bg;
    $('window').value = model.task === 'ct' ? 'soft' : 'auto';
    setWindow();
    nv.addVolume(bg);
  }
  state.labels = lab;
  lab.setColormapLabel(labelColormap());
  nv.addVolume(lab);
  $('picked').textContent = scan ? 'click a structure in the viewer or the table'
    : 'labels shown without the scan (the service did not send it)';
  $('viewer').dataset.ready = '1';
  legend();
}

function legend() {
  const box = $('legend');
  box.textContent = '';
  const present = new Set(state.structures.map((s) => s.label));
  for (const [k, e] of Object.entries(state.names)) {
    const l = Number(k);
    if (present.size && !present.has(l)) continue;
    const c = document.createElement('span');
    c.className = 'chip' + (l === state.selected ? ' sel' : '');
    c.dataset.label = k;
    const sw = document.createElement('i');
    sw.className = 'swatch';
    sw.style.background = `rgb(${e.rgb.join(',')})`;
    c.append(sw, document.createTextNode(e.name));
    c.addEventListener('click', () => select(l === state.selected ? 0 : l, true));
    box.appendChild(c);
  }
}

function select(label, moveCrosshair) {
  state.selected = label;
  if (state.labels) {
    state.labels.setColormapLabel(labelColormap());
    state.nv.updateGLVolume();
  }
  const s = state.structures.find((x) => x.label === label);
  if (moveCrosshair && s && s.centroid_mm && state.nv && state.nv.volumes.length) {
    state.nv.scene.crosshairPos = state.nv.mm2frac(s.centroid_mm);
    state.nv.drawScene();
  }
  $('picked').textContent = s ? `${s.name}: ${s.volume_ml.toFixed(1)} ml, ${state.unit} ${s.hu_mean.toFixed(0)} ± ` +
    `${s.hu_std.toFixed(0)}${s.touches_border ? ', touches the scan border' : ''}` : '';
  document.body.dataset.selected = s ? s.name : '';
  for (const tr of document.querySelectorAll('#passport tbody tr')) {
    tr.classList.toggle('sel', Number(tr.dataset.label) === label);
    if (Number(tr.dataset.label) === label) tr.scrollIntoView({ block: 'nearest' });
  }
  for (const c of document.querySelectorAll('#legend .chip')) c.classList.toggle('sel', Number(c.dataset.label) === label);
}

function showPassport(res, wall) {
  const p = res.passport;
  // a CT's passport has Hounsfield units ("hu"), an MRI's the scan's own intensity
  state.unit = p.structures.some((s) => s.intensity) ? 'intensity' : 'HU';
  state.structures = p.structures.map((s) => {
    const st = s.hu || s.intensity || { mean: NaN, std: NaN };
    return { label: s.label, name: s.name, volume_ml: s.volume_ml, hu_mean: st.mean, hu_std: st.std,
      components: s.components, touches_border: s.touches_border ? 1 : 0, centroid_mm: s.centroid_mm };
  });
  for (const k of ['mean', 'std']) $('passport').querySelector(`th[data-key="hu_${k}"]`).textContent = `${state.unit} ${k}`;
  const sc = p.scan;
  $('ct-summary').textContent = `${sc.shape.join(' × ')} voxels at ${sc.spacing_mm.map((x) => +x.toFixed(2)).join(' × ')} mm, ` +
    `${sc.structures_found} structures, ${sc.structures_touching_border.length} touching the border, ` +
    `model ${res.model}${res.demo_model ? ' — demo model, not for real scans: volumes are illustrative only' : ''}`;
  $('ct-summary').classList.toggle('demo', !!res.demo_model);
  renderTable();
  renderBars();
  const tb = $('ct-timings').querySelector('tbody');
  tb.textContent = '';
  const rows = Object.entries(res.seconds).map(([k, v]) => [k, v]);
  rows.push(['queue wait', res.queue_wait_seconds], ['processing (service)', res.processing_seconds],
    ['total in this browser', wall]);
  for (const [k, v] of rows) {
    const tr = tb.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = `${v.toFixed(3)} s`;
  }
  legend();
}

function renderTable() {
  const { key, dir } = state.sort;
  const rows = state.structures.slice().sort((a, b) => {
    const x = a[key], y = b[key];
    return (typeof x === 'string' ? x.localeCompare(y) : x - y) * dir;
  });
  const tb = $('passport').querySelector('tbody');
  tb.textContent = '';
  for (const s of rows) {
    const tr = tb.insertRow();
    tr.dataset.label = s.label;
    tr.classList.toggle('sel', s.label === state.selected);
    const cells = [s.name, s.volume_ml.toFixed(2), s.hu_mean.toFixed(1), s.hu_std.toFixed(1), s.components,
      s.touches_border ? 'yes' : ''];
    cells.forEach((v, i) => {
      const td = tr.insertCell();
      td.textContent = v;
      if (i > 0 && i < 5) td.className = 'num';
    });
    tr.addEventListener('click', () => select(s.label, true));
  }
  for (const th of $('passport').querySelectorAll('th')) {
    th.classList.toggle('asc', th.dataset.key === key && dir > 0);
    th.classList.toggle('desc', th.dataset.key === key && dir < 0);
  }
}

function renderBars() {
  const box = $('bars');
  box.textContent = '';
  const rows = state.structures.slice().sort((a, b) => b.volume_ml - a.volume_ml);
  const max = rows.length ? rows[0].volume_ml : 1;
  for (const s of rows) {
    const d = document.createElement('div');
    d.className = 'bar';
    const name = document.createElement('span');
    name.textContent = s.name;
    const track = document.createElement('span');
    const bar = document.createElement('i');
    const e = state.names[s.label];
    bar.style.width = `${(100 * s.volume_ml / max).toFixed(2)}%`;
    bar.style.background = e ? `rgb(${e.rgb.join(',')})` : '#888';
    track.appendChild(bar);
    const val = document.createElement('span');
    val.textContent = `${s.volume_ml.toFixed(1)} ml`;
    d.append(name, track, val);
    box.appendChild(d);
  }
}

// ---------------------------------------------------------------- photos

async function runPhotos(model, files) {
  setPhase('busy');
  $('ct-result').hidden = true;
  const out = $('photos');
  out.textContent = '';
  $('photo-result').hidden = false;
  let done = 0;
  const t0 = performance.now();
  showStatus(`segmenting ${files.length} photo(s)…`, 0);
  const queue = Array.from(files);
  let failure = null;
  const worker = async () => {
    while (queue.length && !failure) {
      const f = queue.shift();
      try {
        const r = await api(`/v1/segment-batch?model=${encodeURIComponent(model.name)}`, {
          method: 'POST', body: f, headers: { 'Content-Type': f.type || 'application/octet-stream' },
        });
        out.appendChild(photoCard(f, await r.json()));
      } catch (e) {
        failure = failure || e;
      }
      done++;
      showStatus(`segmented ${done} of ${files.length} photo(s)…`, done / files.length);
    }
  };
  await Promise.all([worker(), worker()]);   // two in flight: the service batches them
  if (failure) throw failure;
  showStatus(`done: ${files.length} photo(s) in ${((performance.now() - t0) / 1000).toFixed(2)} s`, 1);
  setPhase('done');
}

function photoCard(file, res) {
  const card = document.createElement('div');
  card.className = 'panel photo';
  card.dataset.name = file.name;
  const stage = document.createElement('div');
  stage.className = 'stage';
  const img = document.createElement('img');
  img.alt = file.name;
  img.src = objectUrl(file);
  img.addEventListener('error', () => { img.replaceWith(blank(res.width, res.height)); });
  stage.appendChild(img);
  const side = document.createElement('div');
  const h = document.createElement('h2');
  h.textContent = file.name;
  const info = document.createElement('p');
  info.className = 'muted';
  info.textContent = `${res.width} × ${res.height}, processing ${res.processing_seconds.toFixed(3)} s, ` +
    `queue ${res.queue_wait_seconds.toFixed(3)} s, batch of ${res.batch_size}` +
    (res.demo_model ? ' — demo model, not for real photos' : '');
  side.append(h, info);
  Object.entries(res.masks).forEach(([name, m], i) => {
    const colour = PHOTO_COLOURS[i % PHOTO_COLOURS.length];
    const cv = document.createElement('canvas');
    cv.className = 'overlay';
    cv.dataset.mask = name;
    cv.width = res.width;
    cv.height = res.height;
    stage.appendChild(cv);
    const png = `data:image/png;base64,${m.png_base64}`;
    paintMask(cv, png, colour);
    const row = document.createElement('label');
    row.className = 'mask-row';
    const cb = document.createElement('input');
    cb.type = 'checkbox';
    cb.checked = true;
    cb.addEventListener('change', () => { cv.hidden = !cb.checked; });
    const sw = document.createElement('i');
    sw.className = 'swatch';
    sw.style.background = `rgb(${colour.join(',')})`;
    const txt = document.createElement('span');
    txt.textContent = `${name}: ${(100 * m.area_fraction).toFixed(1)}% of the photo`;
    const a = document.createElement('a');
    a.href = png;
    a.download = `${stem(file.name)}_${name}.png`;
    a.textContent = 'PNG';
    row.append(cb, sw, txt, a);
    side.appendChild(row);
  });
  card.append(stage, side);
  return card;
}

function blank(w, h) {
  const c = document.createElement('canvas');
  c.width = w; c.height = h;
  c.getContext('2d').fillRect(0, 0, w, h);
  c.title = 'this browser cannot show the photo itself (e.g. HEIC): masks only';
  return c;
}

function paintMask(canvas, png, rgb) {
  const im = new Image();
  im.onload = () => {
    const ctx = canvas.getContext('2d');
    ctx.drawImage(im, 0, 0, canvas.width, canvas.height);
    const d = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const px = d.data;
    for (let i = 0; i < px.length; i += 4) {
      const a = px[i];   // grey mask: 255 = inside
      px[i] = rgb[0]; px[i + 1] = rgb[1]; px[i + 2] = rgb[2]; px[i + 3] = a * 0.55;
    }
    ctx.putImageData(d, 0, 0);
    canvas.dataset.painted = '1';
  };
  im.src = png;
}

// ---------------------------------------------------------------- wiring

function init() {
  const drop = $('drop');
  drop.addEventListener('click', () => $('file').click());
  drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') $('file').click(); });
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    takeFiles(e.dataTransfer.files);
  });
  $('file').addEventListener('change', (e) => { takeFiles(e.target.files); e.target.value = ''; });
  $('model').addEventListener('change', modelInfo);
  $('retry').addEventListener('click', () => { clearError(); if (state.retry) state.retry().catch(showError); });
  $('key-button').addEventListener('click', askKey);
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    state.key = $('key-input').value.trim();
    sessionStorage.setItem('segpipe-key', state.key);
    $('key-panel').hidden = true;
    clearError();
    loadModels();
  });
  $('opacity').addEventListener('input', () => {
    if (state.labels) state.nv.setOpacity(state.nv.volumes.indexOf(state.labels), Number($('opacity').value));
  });
  $('view').addEventListener('change', () => { if (state.nv) state.nv.setSliceType(Number($('view').value)); });
  $('window').addEventListener('change', applyWindow);
  $('neuro').addEventListener('change', () => { if (state.nv) state.nv.setRadiologicalConvention(!$('neuro').checked); });
  for (const th of $('passport').querySelectorAll('th')) {
    th.addEventListener('click', () => {
      const k = th.dataset.key;
      state.sort = { key: k, dir: state.sort.key === k ? -state.sort.dir : (th.dataset.type === 's' ? 1 : -1) };
      renderTable();
    });
  }
  loadModels();
}

document.addEventListener('DOMContentLoaded', init);
