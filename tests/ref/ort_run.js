#!/usr/bin/env node
// Independent reference run for the tests: load an ONNX model with
// onnxruntime-node (tools/fetch/fetch_ort_node.sh), feed it a float32 tensor read
// from a raw file, write the first output as raw float32.
//   node tests/ref/ort_run.js MODEL INPUT.f32 N,C,H,W OUTPUT.f32
const path = require("path");
const fs = require("fs");
const ort = require(path.join(__dirname, "..", "..", "third_party", "ort-node", "node_modules", "onnxruntime-node"));

async function main() {
  const [model, input, shape, output] = process.argv.slice(2);
  const dims = shape.split(",").map(Number);
  const buf = fs.readFileSync(input);
  const data = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 2 });
  const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", data, dims) };
  const out = await session.run(feeds);
  const t = out[session.outputNames[0]];
  fs.writeFileSync(output, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  console.log(JSON.stringify({ output: session.outputNames[0], dims: t.dims }));
}
main().catch((e) => { console.error(e.message || e); process.exit(1); });
