// Reference outputs of a TF.js graph model from the real @tensorflow/tfjs (pure-JS "cpu" backend).
//
// usage: node tfjs_ref.cjs NODE_MODULES_DIR REQUEST.json
// REQUEST: {"model": "path/model.json", "input": "x.bin", "shape": [N, H, W, C],
//           "outputs": ["node/name", ...], "out_dir": "dir"}
// x.bin holds float32 little-endian NHWC values. For each output i the script writes out_dir/i.bin
// (float32) and out_dir/index.json ({"outputs": [{"name", "shape", "file"}], "backend", "version"}).
// The model is loaded from the same model.json + shards through tf.io.fromMemory (no fetch, no network).
'use strict';
const fs = require('fs');
const path = require('path');

async function main() {
  const [modulesDir, requestPath] = process.argv.slice(2);
  if (!modulesDir || !requestPath) throw new Error('usage: node tfjs_ref.cjs NODE_MODULES_DIR REQUEST.json');
  const tf = require(path.join(modulesDir, '@tensorflow', 'tfjs'));
  await tf.setBackend('cpu');
  await tf.ready();
  if (tf.getBackend() !== 'cpu') throw new Error(`backend is ${tf.getBackend()}, not cpu`);
  const req = JSON.parse(fs.readFileSync(requestPath, 'utf8'));
  const doc = JSON.parse(fs.readFileSync(req.model, 'utf8'));
  const dir = path.dirname(req.model);
  const specs = [];
  const buffers = [];
  for (const group of doc.weightsManifest) {
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
    specs.push(...group.weights);
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const artifacts = {
    modelTopology: doc.modelTopology, format: doc.format, generatedBy: doc.generatedBy,
    convertedBy: doc.convertedBy, signature: doc.signature, userDefinedMetadata: doc.userDefinedMetadata,
    weightSpecs: specs, weightData,
  };
  const model = await tf.loadGraphModel(tf.io.fromMemory(artifacts));
  const raw = fs.readFileSync(req.input);
  const values = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  const x = tf.tensor(values, req.shape, 'float32');
  let outs = model.execute(x, req.outputs);
  if (!Array.isArray(outs)) outs = [outs];
  fs.mkdirSync(req.out_dir, { recursive: true });
  const index = { outputs: [], backend: tf.getBackend(), version: tf.version.tfjs };
  for (let i = 0; i < outs.length; i++) {
    const data = await outs[i].data();
    const f32 = Float32Array.from(data);
    const file = path.join(req.out_dir, `${i}.bin`);
    fs.writeFileSync(file, Buffer.from(f32.buffer));
    index.outputs.push({ name: req.outputs[i], shape: outs[i].shape, file });
  }
  fs.writeFileSync(path.join(req.out_dir, 'index.json'), JSON.stringify(index));
}

main().catch((e) => { process.stderr.write(`tfjs_ref: ${e && e.stack ? e.stack : e}\n`); process.exit(1); });
