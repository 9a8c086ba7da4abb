// @vitest-environment jsdom
// @flowstate/client/react with Testing Library against the real server (global-setup.ts).
import { act, cleanup, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";

import { createClient, type AnyFlows, type FlowstateClient } from "../src/index.js";
import { useAction, useClientData, useResource, useSession } from "../src/react.js";
import { baseUrl, tokens } from "./support.js";

afterEach(cleanup);

function client(): FlowstateClient<AnyFlows> {
  return createClient({ baseUrl: baseUrl(), token: tokens().alice });
}

function Counter({ api, id }: { api: FlowstateClient<AnyFlows>; id: string }) {
  const session = useSession(api, id);
  const data = useClientData(session, { session: ["count"], user: ["theme"] });
  const add = useAction(api, "counter", "add");
  return (
    <div>
      <output data-testid="count">{String(data?.session?.count ?? "…")}</output>
      <output data-testid="theme">{String(data?.user?.theme ?? "…")}</output>
      <output data-testid="keys">{data ? Object.keys(data.session ?? {}).join(",") : ""}</output>
      <button disabled={add.pending} onClick={() => add.run({ amount: 2 }, { sessionId: id }).catch(() => {})}>
        add
      </button>
      <button onClick={() => add.run({ amount: "x" }, { sessionId: id }).catch(() => {})}>bad</button>
      <output data-testid="error">{add.error?.code ?? ""}</output>
      <output data-testid="result">{add.result ? JSON.stringify(add.result.output) : ""}</output>
    </div>
  );
}

describe("hooks", () => {
  it("useClientData shows live client data; useAction runs and reports results and errors", async () => {
    const api = client();
    const { sessionId } = await api.runAction("counter", "add", { amount: 1 });
    render(<Counter api={api} id={sessionId} />);
    await waitFor(() => expect(screen.getByTestId("count").textContent).toBe("1"));
    expect(screen.getByTestId("keys").textContent).toBe("count"); // only the selection
    fireEvent.click(screen.getByText("add"));
    await waitFor(() => expect(screen.getByTestId("result").textContent).toBe('{"count":3}'));
    await waitFor(() => expect(screen.getByTestId("count").textContent).toBe("3"));

    // a change made by another client arrives live
    await client().runAction("counter", "add", { amount: 10 }, { sessionId });
    await waitFor(() => expect(screen.getByTestId("count").textContent).toBe("13"));

    fireEvent.click(screen.getByText("bad"));
    await waitFor(() => expect(screen.getByTestId("error").textContent).toBe("validation_error"));
    expect(screen.getByTestId("count").textContent).toBe("13");
  });

  it("keeps the selected object identical while only unselected values change", async () => {
    const api = client();
    const { sessionId } = await api.runAction("counter", "add", { amount: 1 });
    const objects: unknown[] = [];
    function Label() {
      const data = useClientData(useSession(api, sessionId), { session: ["label"] });
      if (data && objects.at(-1) !== data) objects.push(data);
      return <span data-testid="label">{String(data?.session?.label ?? "…")}</span>;
    }
    render(<Label />);
    await waitFor(() => expect(screen.getByTestId("label").textContent).toBe(""));
    const live = api.session(sessionId);
    const revision = live.state.revision;
    await api.runAction("counter", "add", { amount: 1 }, { sessionId }); // count only
    await waitFor(() => expect(live.clientData.session?.count).toBe(2));
    expect(live.state.revision).toBeGreaterThan(revision);
    expect(objects).toHaveLength(1); // same selection object: effects keyed on it do not re-run
    await api.runAction("counter", "label", { label: "Grüße 👋" }, { sessionId });
    await waitFor(() => expect(screen.getByTestId("label").textContent).toBe("Grüße 👋"));
    expect(objects).toHaveLength(2);
  });

  it("useResource gives a resource's data and content, refetched when it changes", async () => {
    const api = client();
    const { sessionId } = await api.runAction("counter", "doc", { title: "v1", text: "first" });
    function Doc() {
      const doc = useResource(useSession(api, sessionId), "doc", { content: true });
      const data = doc.data && "clientData" in doc.data ? (doc.data.clientData as { title: string }) : null;
      return (
        <p data-testid="doc">
          {data?.title ?? "…"}:{doc.content ?? "…"}
        </p>
      );
    }
    render(<Doc />);
    await waitFor(() => expect(screen.getByTestId("doc").textContent).toBe("v1:first"));
    await act(() => client().runAction("counter", "doc", { title: "v2", text: "second" }, { sessionId }));
    await waitFor(() => expect(screen.getByTestId("doc").textContent).toBe("v2:second"));
  });

  it("useSession returns the same live session per id and null without one", async () => {
    const api = client();
    const seen: unknown[] = [];
    function Probe({ id }: { id: string | null }) {
      seen.push(useSession(api, id));
      return null;
    }
    const { rerender } = render(<Probe id={null} />);
    rerender(<Probe id="abc" />);
    rerender(<Probe id="abc" />);
    expect(seen[0]).toBeNull();
    expect(seen[1]).toBe(seen[2]);
    expect(seen[1]).toBe(api.session("abc"));
  });

  it("shows the server's error for a session the user cannot see", async () => {
    const { sessionId } = await createClient({ baseUrl: baseUrl(), token: tokens().bob }).runAction(
      "counter",
      "add",
      { amount: 1 },
    );
    const api = client();
    function View() {
      const session = useSession(api, sessionId);
      const data = useClientData(session);
      const doc = useResource(session, "doc");
      return <p data-testid="v">{data ? "data!" : (doc.error?.code ?? "loading")}</p>;
    }
    render(<View />);
    await waitFor(() => expect(screen.getByTestId("v").textContent).toBe("session_not_found"));
  });
});
