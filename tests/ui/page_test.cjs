// Drives segpipe's web page in headless Chromium (Debian's) with
// playwright-core (third_party/, from install-deps). Called by
// tests/py/test_ui.py, which starts the services and checks what this
// prints (one JSON object) against the CLI.
//   node tests/ui/page_test.cjs CONFIG.json
'use strict';
const path = require('path');
const fs = require('fs');
const root = path.resolve(__dirname, '..', '..');
const { chromium } = require(path.join(root, 'third_party', 'playwright-core'));

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const out = { console: [] };

async function waitState(page, want, timeout) {
  await page.waitForFunction((w) => w.includes(document.body.dataset.state), want, { timeout });
  return page.evaluate(() => document.body.dataset.state);
}

async function ctRun(page) {
  await page.selectOption('#model', 'ct');
  await page.setInputFiles('#file', cfg.ct);
  out.ct_state = await waitState(page, ['done', 'error'], 180000);
  out.ct_status = await page.textContent('#status');
  if (out.ct_state !== 'done') { out.ct_error = await page.textContent('#error-text'); return; }
  await page.waitForSelector('#viewer[data-ready="1"]');
  out.table = await page.$$eval('#passport tbody tr', (rows) => rows.map((r) => ({
    name: r.cells[0].textContent, volume_ml: Number(r.cells[1].textContent), border: r.cells[5].textContent })));
  out.legend = await page.$$eval('#legend .chip', (c) => c.length);
  out.bars = await page.$$eval('#bars .bar', (b) => b.length);
  out.downloads = await page.$$eval('#ct-downloads a', (a) => a.map((x) => x.download));
  out.timings = await page.$$eval('#ct-timings tr', (r) => r.map((x) => x.cells[0].textContent));
  // sort by name, then click the liver row: it is highlighted in table, legend and viewer
  await page.click('#passport th[data-key="name"]');
  out.sorted_names = await page.$$eval('#passport tbody tr', (rows) => rows.map((r) => r.cells[0].textContent));
  await page.click('#passport tbody tr:has-text("liver")');
  out.selected = await page.evaluate(() => document.body.dataset.selected);
  out.picked = await page.textContent('#picked');
  out.legend_selected = await page.textContent('#legend .chip.sel');
  // a click in the viewer picks the structure under the crosshair
  const box = await (await page.$('#viewer')).boundingBox();
  await page.mouse.click(box.x + box.width * 0.25, box.y + box.height * 0.25);
  await page.waitForTimeout(300);
  out.after_viewer_click = await page.evaluate(() => document.body.dataset.selected);
  await (await page.$('#viewer')).screenshot({ path: cfg.screenshot_viewer });   // checked for label colours
  await page.screenshot({ path: cfg.screenshot_ct, fullPage: true });
}

async function photoRun(page) {
  await page.selectOption('#model', 'rooms');
  await page.setInputFiles('#file', cfg.photos);
  out.photo_state = await waitState(page, ['done', 'error'], 120000);
  if (out.photo_state !== 'done') { out.photo_error = await page.textContent('#error-text'); return; }
  await page.waitForFunction(() => document.querySelectorAll('canvas.overlay').length &&
    [...document.querySelectorAll('canvas.overlay')].every((c) => c.dataset.painted === '1'));
  out.photos = await page.$$eval('#photos .photo', (cards) => cards.map((c) => ({
    name: c.dataset.name,
    masks: [...c.querySelectorAll('canvas.overlay')].map((x) => x.dataset.mask),
    rows: [...c.querySelectorAll('.mask-row span')].map((x) => x.textContent),
    pngs: [...c.querySelectorAll('.mask-row a')].map((x) => x.download),
  })));
  // toggling a mask hides its overlay
  await page.click('#photos .photo:first-child .mask-row input');
  out.ct_visible_with_photos = await page.isVisible('#ct-result');
  out.hidden_after_toggle = await page.$$eval('#photos .photo:first-child canvas.overlay', (c) => c.filter((x) => x.hidden).length);
  await page.screenshot({ path: cfg.screenshot_photo, fullPage: true });
}

async function errorRun(page) {
  await page.selectOption('#model', 'ct');
  await page.setInputFiles('#file', cfg.corrupt);
  out.corrupt_state = await waitState(page, ['error', 'done'], 60000);
  out.corrupt_error = await page.textContent('#error-text');
  out.corrupt_status = await page.getAttribute('#error', 'data-status');
}

// Realistic inputs (cfg.volumes): each uploaded with its model; what the
// viewer holds (niivue's volumes and dims), the table, the statuses shown on
// the way, hover names, window presets, the convention toggle.
async function volumeRun(page, v) {
  const r = { name: v.name };
  await page.evaluate(() => {
    window.__statuses = [];
    const el = document.getElementById('status');
    window.__obs && window.__obs.disconnect();
    window.__obs = new MutationObserver(() => window.__statuses.push(el.textContent));
    window.__obs.observe(el, { childList: true, characterData: true, subtree: true });
  });
  await page.waitForFunction((m) => { const o = document.querySelector(`#model option[value="${m}"]`); return o && !o.disabled; },
    v.model, { timeout: 300000 });
  await page.selectOption('#model', v.model);
  r.demo_note = await page.isVisible('#demo-note');
  await page.setInputFiles('#file', v.file);
  r.state = await waitState(page, ['done', 'error'], 400000);
  r.statuses = await page.evaluate(() => window.__statuses);
  if (r.state !== 'done') { r.error = await page.textContent('#error-text'); return r; }
  await page.waitForSelector('#viewer[data-ready="1"]');
  r.table = await page.$$eval('#passport tbody tr', (rows) => rows.map((x) => ({
    name: x.cells[0].textContent, volume_ml: Number(x.cells[1].textContent), mean: Number(x.cells[2].textContent) })));
  r.mean_header = await page.textContent('#passport th[data-key="hu_mean"]');
  r.downloads = await page.$$eval('#ct-downloads a', (a) => a.map((x) => x.download));
  r.summary = await page.textContent('#ct-summary');
  r.volumes = await page.evaluate(() => state.nv.volumes.map((x) => ({ name: x.name, dims: Array.from(x.hdr.dims).slice(1, 4),
    datatype: x.hdr.datatypeCode, max: x.global_max })));
  r.radiological = await page.evaluate(() => state.nv.opts.isRadiologicalConvention);
  r.window = await page.inputValue('#window');
  // hover: the names the page shows under a grid of points of the viewer
  // (read back by a listener after the page's own: one round trip a point)
  await page.evaluate(() => {
    window.__hover = {};
    if (window.__hoverRec) return;
    window.__hoverRec = true;
    document.addEventListener('mousemove', (e) => {
      const h = document.body.dataset.hover;
      if (h && !(h in window.__hover)) window.__hover[h] = [e.clientX, e.clientY];
    });
  });
  const box = await (await page.$('#viewer')).boundingBox();
  for (let i = 1; i < 12; i++) {
    for (let k = 1; k < 12; k++) await page.mouse.move(box.x + box.width * i / 12, box.y + box.height * k / 12);
  }
  const seen = await page.evaluate(() => window.__hover);
  r.hovered = Object.keys(seen);
  // a click where hover named a structure moves niivue's crosshair there:
  // niivue's own read-out of that voxel (onLocationChange, which selects the
  // structure) names the same
  const named = Object.entries(seen);
  if (named.length) {
    const [name, pt] = named[0];
    await page.mouse.click(pt[0], pt[1]);
    r.hover_click = [name, await page.evaluate(() => document.body.dataset.hover),
      await page.evaluate(() => document.body.dataset.selected)];
  }
  if (v.presets) {
    r.presets = {};
    for (const w of ['lung', 'bone', 'brain', 'soft']) {
      await page.selectOption('#window', w);
      r.presets[w] = await page.evaluate(() => [state.bg.cal_min, state.bg.cal_max]);
    }
    await page.check('#neuro');
    r.neurological = await page.evaluate(() => state.nv.opts.isRadiologicalConvention === false);
    await page.uncheck('#neuro');
  }
  await (await page.$('#viewer')).screenshot({ path: v.screenshot });
  return r;
}

async function realisticRun(page) {
  out.volumes = [];
  for (const v of cfg.volumes) out.volumes.push(await volumeRun(page, v));
  // a photo sent with a volume model: said in the user's words, no stale status
  await page.selectOption('#model', cfg.volumes[0].model);
  await page.setInputFiles('#file', cfg.png);
  out.png_state = await waitState(page, ['error', 'done'], 60000);
  out.png_error = await page.textContent('#error-text');
  out.png_status = await page.textContent('#status');
  out.model_states = await page.$$eval('#model option', (o) => o.map((x) => [x.value, x.dataset.state, x.disabled]));
}

async function keyRun(browser) {
  const page = await browser.newPage();
  await page.goto(cfg.keyed_url);
  await page.waitForSelector('#key-panel:not([hidden])', { timeout: 20000 });
  out.key_prompt = true;
  await page.fill('#key-input', cfg.key);
  await page.click('#key-form button');
  await waitState(page, ['idle'], 20000);
  out.key_models = await page.$$eval('#model option', (o) => o.map((x) => x.value));
  await page.close();
}

async function smallRuns(browser, page) {
  await ctRun(page);
  await photoRun(page);
  await errorRun(page);
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 } });
  await phone.goto(cfg.url);
  await waitState(phone, ['idle'], 20000);
  out.phone_overflow = await phone.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  await phone.close();
  await keyRun(browser);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: cfg.chromium, headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--enable-unsafe-swiftshader', '--use-angle=swiftshader',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-default-apps', '--no-first-run', '--metrics-recording-only'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('console', (m) => { if (m.type() === 'error') out.console.push(m.text()); });
    page.on('pageerror', (e) => out.console.push('pageerror: ' + e.message));
    await page.goto(cfg.url);
    await waitState(page, ['idle'], 20000);
    out.models = await page.$$eval('#model option', (o) => o.map((x) => x.value));
    if (cfg.volumes) await realisticRun(page);
    else await smallRuns(browser, page);
  } catch (e) {
    out.exception = String(e && e.stack || e);
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
})();
