// Read {name: Vega-Lite spec} as JSON on stdin; print {name: SVG} (or {name: {"error": message}}).
// Vega and Vega-Lite are the project's npm packages (node_modules, `npm ci`): what the plots page runs.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";

const require = createRequire(path.join(process.cwd(), "package.json"));
const vega = require("vega");
const vl = require("vega-lite");

const specs = JSON.parse(readFileSync(0, "utf8"));
const out = {};
for (const [name, spec] of Object.entries(specs)) {
  try {
    const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: "none" });
    out[name] = await view.toSVG();
  } catch (err) {
    out[name] = { error: String(err && err.message ? err.message : err) };
  }
}
process.stdout.write(JSON.stringify(out));
