import { createServer, connect, type Socket, type Server } from "node:net";
import { inject } from "vitest";

import { createClient, type AnyFlows, type ClientOptions } from "../src/index.js";

export const baseUrl = (): string => inject("baseUrl");
export const tokens = () => inject("tokens");

export function alice(options: ClientOptions = {}) {
  return createClient<AnyFlows>({ baseUrl: baseUrl(), token: tokens().alice, ...options });
}

export function bob(options: ClientOptions = {}) {
  return createClient<AnyFlows>({ baseUrl: baseUrl(), token: tokens().bob, ...options });
}

/** Wait until `check()` is truthy (polling), or fail with `what`. */
export async function until<T>(check: () => T, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A TCP proxy in front of the server whose open connections can be cut (a dropped network). */
export async function dropProxy(): Promise<{ url: string; cut: () => number; close: () => Promise<void> }> {
  const target = new URL(baseUrl());
  const sockets = new Set<Socket>();
  const server: Server = createServer((downstream) => {
    const upstream = connect(Number(target.port), target.hostname);
    for (const s of [downstream, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    downstream.pipe(upstream);
    upstream.pipe(downstream);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    cut: () => {
      const n = sockets.size;
      for (const s of sockets) s.destroy();
      return n;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
