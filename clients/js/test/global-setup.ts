// Starts one real `flowstate serve` (from the Python venv on PATH) on a free port with SQLite
// in a temp dir, for every test file; stops it after the run.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { TestProject } from "vitest/node";

export const TOKENS = { alice: "tok-alice", bob: "tok-bob" };

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      const port = typeof address === "object" && address ? address.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

async function waitUp(url: string, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`flowstate serve exited:\n${log()}`);
    try {
      const response = await fetch(`${url}/api/flows`, {
        headers: { Authorization: `Bearer ${TOKENS.alice}` },
      });
      if (response.ok) return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`flowstate serve did not start:\n${log()}`);
}

const children: ChildProcess[] = [];
let dir = "";

async function serve(target: string, db: string, cwd: string): Promise<string> {
  const port = await freePort();
  let output = "";
  const child = spawn(
    "flowstate",
    ["serve", target, "--port", String(port), "--store", `sqlite:///${join(dir, db)}`],
    {
      cwd,
      env: {
        ...process.env,
        PYTHONPATH: [cwd, process.env.PYTHONPATH].filter(Boolean).join(":"),
        FLOWSTATE_TOKENS: `${TOKENS.alice}:alice,${TOKENS.bob}:bob`,
      },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  children.push(child);
  child.on("error", (err) => {
    output += `\n${String(err)} (is the venv's flowstate on PATH?)`;
  });
  child.stdout?.on("data", (d) => (output += d));
  child.stderr?.on("data", (d) => (output += d));
  const url = `http://127.0.0.1:${port}`;
  await waitUp(url, child, () => output);
  return url;
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  dir = mkdtempSync(join(tmpdir(), "flowstate-js-"));
  const here = dirname(fileURLToPath(import.meta.url));
  const [url, demoUrl] = await Promise.all([
    serve("jsapp:server", "js.db", here),
    serve("flowstate.cli.demo:create_server", "demo.db", dir),
  ]);
  project.provide("baseUrl", url);
  project.provide("demoUrl", demoUrl);
  project.provide("tokens", TOKENS);
  return async () => {
    await Promise.all(
      children.map(async (child) => {
        if (child.exitCode !== null) return;
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
        if (child.exitCode === null) child.kill("SIGKILL");
      }),
    );
    rmSync(dir, { recursive: true, force: true });
  };
}

declare module "vitest" {
  export interface ProvidedContext {
    baseUrl: string;
    demoUrl: string;
    tokens: { alice: string; bob: string };
  }
}
