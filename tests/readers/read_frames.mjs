// Reads frames of an NWB file with h5wasm (HDF5 compiled to WebAssembly, the library of the web
// NWB viewers) and prints them as JSON: {shape, dtype, filters, frames: [[...], ...]}.
// Usage: node read_frames.mjs FILE DATASET FIRST COUNT
import h5wasm from "h5wasm/node";

await h5wasm.ready;
const [path, name, first, count] = process.argv.slice(2);
const f = new h5wasm.File(path, "r");
const ds = f.get(name);
const a = Number(first);
const b = Math.min(ds.shape[0], a + Number(count));
const frames = [];
for (let i = a; i < b; i++) {
  frames.push(Array.from(ds.slice([[i, i + 1]])));
}
process.stdout.write(JSON.stringify({shape: ds.shape, dtype: ds.dtype, filters: ds.filters, frames}));
f.close();
