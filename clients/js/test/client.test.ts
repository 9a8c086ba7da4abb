// @flowstate/client against a real `flowstate serve` (see global-setup.ts).
import { describe, expect, it } from "vitest";

import {
  FlowstateError,
  createClient,
  isFlowstateError,
  type FlowEvent,
} from "../src/index.js";
import { alice, baseUrl, bob, dropProxy, until } from "./support.js";

async function rejection(promise: Promise<unknown>): Promise<FlowstateError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(FlowstateError);
    expect(err).toBeInstanceOf(Error);
    return err as FlowstateError;
  }
  throw new Error("expected the call to fail");
}

describe("runAction", () => {
  it("answers {requestId, sessionId, status, output} and keeps the session", async () => {
    const client = alice();
    const first = await client.runAction("counter", "add", { amount: 2 });
    expect(Object.keys(first).sort()).toEqual(["output", "requestId", "sessionId", "status"]);
    expect(first.status).toBe("completed");
    expect(first.output).toEqual({ count: 2 });
    const second = await client.runAction("counter", "add", { amount: 5 }, { sessionId: first.sessionId });
    expect(second.sessionId).toBe(first.sessionId);
    expect(second.requestId).not.toBe(first.requestId);
    expect(second.output).toEqual({ count: 7 });
  });

  it("rejects bad input with the server's code, status and details", async () => {
    const err = await rejection(alice().runAction("counter", "add", { amount: "lots" }));
    expect(err.code).toBe("validation_error");
    expect(err.status).toBe(422);
    expect((err.details as { loc: unknown[] }[])[0].loc).toEqual(["input", "amount"]);
    expect(isFlowstateError(err, "validation_error")).toBe(true);
  });

  it("never opens another user's session: 404 like an unknown id", async () => {
    const mine = await alice().runAction("counter", "add", { amount: 1, draft: "private" });
    const err = await rejection(bob().runAction("counter", "add", { amount: 1 }, { sessionId: mine.sessionId }));
    expect(err.code).toBe("session_not_found");
    expect(err.status).toBe(404);
    const snap = await rejection(bob().snapshot(mine.sessionId));
    expect(snap.code).toBe("session_not_found");
  });

  it("rejects a wrong token with auth_error", async () => {
    const err = await rejection(createClient({ baseUrl: baseUrl(), token: "nope" }).flows());
    expect([err.code, err.status]).toEqual(["auth_error", 401]);
  });

  it("turns an unknown action, a failing block and an unreachable server into typed errors", async () => {
    const unknown = await rejection(alice().runAction("counter", "nope", null));
    expect([unknown.status, unknown.code]).toEqual([404, "action_not_found"]);
    const boom = await rejection(alice().runAction("counter", "boom", null));
    expect(boom.status).toBe(500);
    expect(boom.code).toBe("internal_error");
    expect(boom.requestId).toMatch(/.+/);
    const down = await rejection(createClient({ baseUrl: "http://127.0.0.1:9", token: "t" }).flows());
    expect([down.code, down.status]).toEqual(["network_error", 0]);
  });

  it("round-trips hostile Unicode", async () => {
    const text = "e\u0301 \u202e RTL 🧪 \u{10FFFF} <script>\"'";
    const run = await alice().runAction("counter", "label", { label: text });
    expect(run.output).toEqual({ label: text });
    const snap = await alice().snapshot(run.sessionId);
    expect(snap.clientData.session?.label).toBe(text);
  });
});

describe("stream", () => {
  it("yields the run's events in order and ends with the result", async () => {
    const events: FlowEvent[] = [];
    for await (const event of alice().stream("counter", "add", { amount: 3, draft: "SECRET-draft" })) {
      events.push(event);
    }
    expect(events.map((e) => e.type)).toEqual([
      "request.created",
      "state_change",
      "state_change",
      "request.completed",
    ]);
    expect(events.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
    const change = events[1];
    expect(change.type === "state_change" && change.values).toEqual({ count: 3 });
    // the draft field changed, but it is not exposed: its event names it without its value
    const draft = events[2];
    expect(draft.type === "state_change" && [draft.fields, draft.values]).toEqual([["draft"], undefined]);
    expect(JSON.stringify(events)).not.toContain("SECRET-draft");
  });

  it("resumes with Last-Event-ID after the connection drops mid-run: no event lost or repeated", async () => {
    const proxy = await dropProxy();
    try {
      const client = alice({ baseUrl: proxy.url, retryDelayMs: 50 });
      const seen: FlowEvent[] = [];
      let cuts = 0;
      for await (const event of client.stream("counter", "slow", { steps: 6, ms: 120 })) {
        seen.push(event);
        if (seen.length === 2 || seen.length === 5) cuts += proxy.cut() > 0 ? 1 : 0;
      }
      expect(cuts).toBe(2);
      expect(seen.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      expect(seen.at(-1)).toMatchObject({ type: "request.completed", output: { count: 6 } });
      expect(new Set(seen.map((e) => e.requestId)).size).toBe(1);
    } finally {
      await proxy.close();
    }
  });

  it("gives up with stream_dropped when the server stays unreachable", async () => {
    const proxy = await dropProxy();
    const client = alice({ baseUrl: proxy.url, retryDelayMs: 10 });
    const stream = client.stream("counter", "slow", { steps: 5, ms: 200 }, { maxRetries: 2 });
    const first = await stream.next();
    expect(first.value?.type).toBe("request.created");
    await proxy.close(); // cut and stop listening
    const err = await rejection(
      (async () => {
        for await (const _ of stream) {
          // drain
        }
      })(),
    );
    expect(err.code).toBe("stream_dropped");
  });

  it("follows a run by request id from a given event", async () => {
    const client = alice();
    const stream = client.stream("counter", "slow", { steps: 3, ms: 50 });
    const created = (await stream.next()).value as FlowEvent;
    const followed: number[] = [];
    for await (const event of client.follow("counter", created.requestId, { lastEventId: `${created.requestId}:2` })) {
      followed.push(event.seq);
    }
    expect(followed).toEqual([3, 4, 5]);
    await stream.return(undefined);
  });

  it("a run refused before it starts rejects instead of streaming", async () => {
    const err = await rejection(alice().stream("counter", "nope", null).next());
    expect([err.status, err.code]).toEqual([404, "action_not_found"]);
  });

  it("a run that fails ends its stream with request.failed", async () => {
    const types: string[] = [];
    let failure: unknown = null;
    for await (const event of alice().stream("counter", "add", { amount: [] })) {
      types.push(event.type);
      if (event.type === "request.failed") failure = event.error;
    }
    expect(types).toEqual(["request.created", "request.failed"]);
    expect(failure).toMatchObject({ code: "validation_error" });
  });
});

describe("snapshot", () => {
  it("returns client data only, filtered by clientData", async () => {
    const client = alice();
    const run = await client.runAction("counter", "add", { amount: 4, draft: "SECRET" });
    await client.runAction("counter", "label", { label: "hi" }, { sessionId: run.sessionId });
    const full = await client.snapshot(run.sessionId);
    expect(full.clientData.session).toEqual({ count: 4, label: "hi" });
    expect(JSON.stringify(full)).not.toContain("SECRET");
    const some = await client.snapshot(run.sessionId, { clientData: ["session.count", "user.theme"] });
    expect(some.clientData).toEqual({ session: { count: 4 }, user: { theme: "light" } });
    expect(some.resources).toBeUndefined();
    const bare = await client.snapshot(run.sessionId, { clientData: ["label"] });
    expect(bare.clientData).toEqual({ session: { label: "hi" } });
    const typo = await rejection(client.snapshot(run.sessionId, { clientData: ["session.cuont"] }));
    expect(typo.code).toBe("validation_error");
    expect(typo.message).toContain('"cuont"');
  });

  it("lists, creates and deletes sessions", async () => {
    const client = alice();
    const info = await client.createSession("counter");
    expect(info.flowKind).toBe("counter");
    const page = await client.listSessions({ kind: "counter" });
    expect(page.sessions.map((s) => s.sessionId)).toContain(info.sessionId);
    expect((await bob().listSessions()).sessions.map((s) => s.sessionId)).not.toContain(info.sessionId);
    expect(await client.deleteSession(info.sessionId)).toEqual({ sessionId: info.sessionId, deleted: true });
    const gone = await rejection(client.getSession(info.sessionId));
    expect(gone.code).toBe("session_not_found");
  });
});

describe("resources", () => {
  it("reads a resource's content and a collection's instances", async () => {
    const client = alice();
    const run = await client.runAction("counter", "doc", { title: "Plan", text: "# Plan\n- ✓ ship" });
    expect((await client.resourceContent(run.sessionId, "doc")).content).toBe("# Plan\n- ✓ ship");
    await client.runAction("counter", "file", { path: "a/b.md", text: "hello" }, { sessionId: run.sessionId });
    const page = await client.resource(run.sessionId, "files");
    expect(page.items).toEqual([{ key: "files/a/b.md", clientData: { size: 5 } }]);
    const file = await client.resourceContent(run.sessionId, "files", { key: "a/b.md" });
    expect(file).toEqual({ name: "files", key: "files/a/b.md", content: "hello" });
    const escape = await rejection(client.resourceContent(run.sessionId, "files", { key: "../../etc" }));
    expect(escape.code).toBe("invalid_key");
    const hidden = await rejection(bob().resourceContent(run.sessionId, "doc"));
    expect(hidden.code).toBe("session_not_found");
  });
});
