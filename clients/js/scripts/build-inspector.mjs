// Builds the inspector (inspector/*.tsx on @flowstate/client) into the Python package's static
// folder, so `pip install flowstate` serves it without Node. `--outdir DIR` builds elsewhere
// (the freshness test compares such a build with the committed files).
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..");
const flag = process.argv.indexOf("--outdir");
const outdir = flag > 0 ? resolve(process.argv[flag + 1]) : resolve(root, "../../src/flowstate/static");
mkdirSync(outdir, { recursive: true });

await build({
  entryPoints: [join(root, "inspector/main.tsx")],
  outfile: join(outdir, "app.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022"],
  minify: true,
  legalComments: "none",
  jsx: "automatic",
  define: { "process.env.NODE_ENV": '"production"' },
  banner: { js: "// flowstate inspector: built from clients/js/inspector by `npm run build:inspector`. Do not edit." },
  logLevel: "warning",
});
for (const file of ["index.html", "style.css"]) {
  copyFileSync(join(root, "inspector", file), join(outdir, file));
}
console.log(`inspector built into ${outdir}`);
