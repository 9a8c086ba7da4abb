// client.session(id).subscribe: the live client data, merged from events, against a real server.
import { describe, expect, it } from "vitest";

import type { FlowEvent } from "../src/index.js";
import { alice, bob, until } from "./support.js";

describe("session(id).subscribe", () => {
  it("merges exposed values from events without refetching, live across clients", async () => {
    const tabA = alice();
    const tabB = alice();
    const { sessionId } = await tabA.runAction("counter", "add", { amount: 1 });
    const live = tabB.session(sessionId);
    const seen: unknown[] = [];
    const stop = live.subscribe((data) => seen.push(data));
    await until(() => live.state.fetches === 1 && seen.length > 0, "the first snapshot");
    expect(live.clientData).toEqual({ session: { count: 1, label: "" }, user: { theme: "light" } });

    // Another client writes: the change arrives on B's session stream, values included.
    await tabA.runAction("counter", "add", { amount: 4, draft: "SECRET" }, { sessionId });
    await until(() => live.clientData.session?.count === 5, "count 5 on the other client");
    await tabA.runAction("counter", "label", { label: "ünï ✓" }, { sessionId });
    await until(() => live.clientData.session?.label === "ünï ✓", "the new label");
    expect(live.state.fetches).toBe(1); // merged from the events' values: no refetch
    expect(live.state.changed).toEqual(["session.label"]);
    expect(JSON.stringify(seen)).not.toContain("SECRET");

    // The user scope is shared by the user's sessions: a change from a new session arrives too.
    await tabA.runAction("counter", "theme", { theme: "dark" });
    await until(() => live.clientData.user?.theme === "dark", "the user's theme");
    expect(live.state.fetches).toBe(1);
    const calls = seen.length;
    stop();
    await tabA.runAction("counter", "add", { amount: 1 }, { sessionId });
    await new Promise((r) => setTimeout(r, 300));
    expect(seen.length).toBe(calls); // unsubscribed: no more calls
    await tabA.runAction("counter", "theme", { theme: "light" });
  });

  it("a snapshot read before a live change does not undo it when it arrives after", async () => {
    const writer = alice();
    const client = alice();
    const { sessionId } = await writer.runAction("counter", "add", { amount: 1 });
    const live = client.session(sessionId);
    const stop = live.subscribe(() => {});
    await until(() => live.state.fetches === 1, "the first snapshot");
    // The next snapshot is read now (theme "light") but delivered only after a live change
    // to "dark" has been merged: what a slow refetch racing an event looks like.
    const original = client.snapshot.bind(client);
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let delayed = 0;
    (client as { snapshot: typeof client.snapshot }).snapshot = (async (...args: Parameters<typeof original>) => {
      const stale = await original(...args);
      if (delayed++ === 0) await held;
      return stale;
    }) as typeof client.snapshot;
    const refetch = live.refresh();
    await new Promise((r) => setTimeout(r, 100)); // the stale snapshot has been read
    await writer.runAction("counter", "theme", { theme: "dark" });
    await until(() => live.clientData.user?.theme === "dark", "the live change");
    release();
    await refetch;
    expect(live.clientData.user?.theme).toBe("dark"); // not undone by the stale snapshot
    expect(delayed).toBe(2); // it was fetched again instead
    stop();
    await writer.runAction("counter", "theme", { theme: "light" });
  });

  it("refetches when events carry no values (derived client data)", async () => {
    const client = alice();
    const { sessionId } = await client.runAction("stats", "add", { amount: 2 });
    const live = client.session(sessionId);
    const stop = live.subscribe(() => {});
    await until(() => live.clientData.session?.doubled === 4, "the derived value");
    const before = live.state.fetches;
    await alice().runAction("stats", "add", { amount: 3 }, { sessionId });
    await until(() => live.clientData.session?.doubled === 10, "the refetched derived value");
    expect(live.state.fetches).toBeGreaterThan(before);
    stop();
  });

  it("runs through the session: events update it at once, in order, without duplicates", async () => {
    const client = alice();
    const { sessionId } = await client.runAction("counter", "add", { amount: 0 });
    const live = client.session(sessionId);
    const events: FlowEvent[] = [];
    live.onEvent((e) => events.push(e));
    const counts: number[] = [];
    const stop = live.subscribe((data) => counts.push(data.session?.count as number));
    await until(() => live.state.fetches >= 1, "the first snapshot");
    const result = await live.run("slow", { steps: 4, ms: 30 });
    expect(result.output).toEqual({ count: 4 });
    expect(live.clientData.session?.count).toBe(4);
    expect(counts.filter((c, i) => c !== counts[i - 1])).toEqual([0, 1, 2, 3, 4]);
    const ids = events.map((e) => `${e.requestId}:${e.seq}`);
    expect(new Set(ids).size).toBe(ids.length); // the run's stream and the session stream dedupe
    stop();
  });

  it("reports a session it cannot see as an error with the server's code", async () => {
    const { sessionId } = await alice().runAction("counter", "add", { amount: 1 });
    const stranger = bob().session(sessionId);
    const stop = stranger.subscribe(() => {
      throw new Error("a stranger must not get data");
    });
    await until(() => stranger.state.error, "the error");
    expect(stranger.state.error?.code).toBe("session_not_found");
    expect(stranger.snapshot).toBeNull();
    stop();
  });

  it("a deleted session's view reports session_not_found on its next refresh", async () => {
    const client = alice();
    const { sessionId } = await client.runAction("counter", "add", { amount: 1 });
    const live = client.session(sessionId);
    const stop = live.subscribe(() => {});
    await until(() => live.state.fetches === 1, "the first snapshot");
    await alice().deleteSession(sessionId);
    await live.refresh();
    expect(live.state.error?.code).toBe("session_not_found");
    stop();
  });
});
