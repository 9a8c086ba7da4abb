// `flowstate codegen ts` output type-checks a small app with tsc, and field typos fail it.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
let dir = "";

const APP = `
import { createClient, FlowstateError } from "@flowstate/client";
import { useAction, useClientData, useResource, useSession } from "@flowstate/client/react";
import type { Flows } from "./flows.js";

const client = createClient<Flows>({ baseUrl: "http://127.0.0.1:8000", token: "t" });

export async function main(): Promise<number> {
  const result = await client.runAction("counter", "add", { amount: 2 });
  const count: number = result.output.count;
  await client.runAction("counter", "theme", { theme: "dark" }, { sessionId: result.sessionId });
  const live = client.session<"counter">(result.sessionId);
  const stop = live.subscribe((data) => {
    const n: number | undefined = data.session?.count;
    const theme: "light" | "dark" | undefined = data.user?.theme;
    void n, theme;
  });
  stop();
  for await (const event of client.stream("stats", "add", { amount: 1 })) {
    if (event.type === "request.completed") return event.output.count;
  }
  try {
    await client.snapshot(result.sessionId, { clientData: ["session.count"] });
  } catch (err) {
    if (err instanceof FlowstateError) return err.code.length;
  }
  return count;
}

export function Counter({ id }: { id: string }): null {
  const session = useSession<Flows, "counter">(client, id);
  const data = useClientData(session, { session: ["count"], user: ["theme"] });
  const count: number | undefined = data?.session?.count;
  const theme: "light" | "dark" | undefined = data?.user?.theme;
  const doc = useResource(session, "doc", { content: true });
  const add = useAction(client, "counter", "add");
  void add.run({ amount: count ?? 1 }).then((r) => r.output.count.toFixed());
  const stats = useSession<Flows, "stats">(client, id);
  const doubled: number | undefined = useClientData(stats, { session: ["doubled"] })?.session?.doubled;
  void theme, doc, doubled;
  return null;
}

// Each typo below must be a type error (tsc fails on an unused @ts-expect-error).
export async function typos(session: ReturnType<typeof useSession<Flows, "counter">>) {
  // @ts-expect-error: "amuont" is not a field of AddInput
  await client.runAction("counter", "add", { amuont: 2 });
  // @ts-expect-error: the amount is a number
  await client.runAction("counter", "add", { amount: "2" });
  // @ts-expect-error: no action "ad"
  await client.runAction("counter", "ad", {});
  // @ts-expect-error: no flow "countr"
  await client.runAction("countr", "add", {});
  const r = await client.runAction("counter", "add", {});
  // @ts-expect-error: the output has "count", not "cuont"
  void r.output.cuont;
  // @ts-expect-error: "cuont" is not client data of the session scope
  useClientData(session, { session: ["cuont"] });
  const data = useClientData(session, { session: ["count"] });
  // @ts-expect-error: "label" was not selected
  void data?.session?.label;
  // @ts-expect-error: theme is "light" | "dark"
  await client.runAction("counter", "theme", { theme: "blue" });
}
`;

function typecheck(files: Record<string, string>): { status: number | null; output: string } {
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  const run = spawnSync(process.execPath, [tsc, "--noEmit", "-p", join(dir, "tsconfig.json")], {
    encoding: "utf8",
  });
  return { status: run.status, output: `${run.stdout}${run.stderr}` };
}

beforeAll(() => {
  // Inside the package, so "@flowstate/client" resolves to this package's build (dist/).
  dir = mkdtempSync(join(root, ".typed-"));
  const generated = spawnSync("flowstate", ["codegen", "ts", "jsapp:server"], {
    cwd: join(root, "test"),
    encoding: "utf8",
    env: { ...process.env, PYTHONPATH: join(root, "test") },
  });
  expect(generated.status, generated.stderr).toBe(0);
  writeFileSync(join(dir, "flows.ts"), generated.stdout);
  writeFileSync(
    join(dir, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        target: "ES2022",
        module: "NodeNext",
        moduleResolution: "NodeNext",
        lib: ["ES2022", "DOM"],
        strict: true,
        noEmit: true,
        skipLibCheck: true,
        types: [],
      },
      include: ["*.ts"],
    }),
  );
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("codegen ts", () => {
  it("types a small app: it type-checks, and every typo is an error", () => {
    const { status, output } = typecheck({ "app.ts": APP });
    expect(output).toBe("");
    expect(status).toBe(0);
  });

  it("a field typo fails tsc, naming the field", () => {
    const typo = APP.replace("{ amount: 2 });\n  const count", "{ amuont: 2 });\n  const count");
    expect(typo).not.toBe(APP);
    const { status, output } = typecheck({ "app.ts": typo });
    expect(status).not.toBe(0);
    expect(output).toContain("amuont");
  });

  it("a client-data typo fails tsc", () => {
    const typo = APP.replace("data?.session?.count;", "data?.session?.cuont;");
    const { status, output } = typecheck({ "app.ts": typo });
    expect(status).not.toBe(0);
    expect(output).toContain("cuont");
  });
});
