// The flowstate inspector (the page at `/`), built on @flowstate/client and its React hooks.
import { StrictMode, useCallback, useEffect, useMemo, useRef, useState } from "react";
import { createRoot } from "react-dom/client";

import {
  createClient,
  FlowstateError,
  type AnyFlows,
  type FlowEvent,
  type FlowInfo,
  type FlowstateClient,
  type LiveSession,
  type ResourceData,
  type SessionInfo,
} from "../src/index.js";
import { useSession, useSessionState } from "../src/react.js";
import { exampleInput, InputForm } from "./form.js";
import { Tree } from "./tree.js";

type Client = FlowstateClient<AnyFlows>;
type Live = LiveSession<AnyFlows, string>;
const PAGE = 20;

// ------------------------------------------------------------------------------ theme

type Theme = "light" | "dark";

function initialTheme(): Theme {
  const saved = localStorage.getItem("flowstate-theme");
  if (saved === "light" || saved === "dark") return saved;
  return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function useTheme(): [Theme, () => void] {
  const [theme, setTheme] = useState<Theme>(initialTheme);
  useEffect(() => {
    document.documentElement.dataset.theme = theme;
  }, [theme]);
  const toggle = useCallback(() => {
    setTheme((t) => {
      const next = t === "dark" ? "light" : "dark";
      localStorage.setItem("flowstate-theme", next);
      return next;
    });
  }, []);
  return [theme, toggle];
}

// ------------------------------------------------------------------------------ helpers

function message(err: unknown): string {
  if (err instanceof FlowstateError) return `${err.code}: ${err.message}`;
  return String(err);
}

function when(seconds: number): string {
  const date = new Date(seconds * 1000);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

function takeToken(): string {
  // ?token=… fills the field once, then leaves the address bar (and history).
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  if (token !== null) {
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
    sessionStorage.setItem("flowstate-token", token);
    return token;
  }
  return sessionStorage.getItem("flowstate-token") ?? "";
}

// ------------------------------------------------------------------------------ sessions

function SessionsPanel({
  client,
  flows,
  kind,
  setKind,
  selected,
  onSelect,
  reloadKey,
}: {
  client: Client;
  flows: FlowInfo[];
  kind: string;
  setKind: (k: string) => void;
  selected: string | null;
  onSelect: (id: string | null) => void;
  reloadKey: number;
}) {
  const [sessions, setSessions] = useState<SessionInfo[]>([]);
  const [next, setNext] = useState<string | null>(null);
  const [shown, setShown] = useState(PAGE);
  const [search, setSearch] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);

  const load = useCallback(
    async (after: string | null) => {
      setBusy(true);
      try {
        const page = await client.listSessions({ kind: kind || undefined, limit: PAGE, after });
        setSessions((prev) => {
          const merged = after ? [...prev, ...page.sessions] : page.sessions;
          const seen = new Set<string>();
          return merged.filter((s) => !seen.has(s.sessionId) && (seen.add(s.sessionId), true));
        });
        setNext(page.next);
        setError("");
      } catch (err) {
        setError(message(err));
      } finally {
        setBusy(false);
      }
    },
    [client, kind],
  );

  useEffect(() => {
    setShown(PAGE);
    void load(null);
  }, [load, reloadKey]);

  const needle = search.trim().toLowerCase();
  const matching = useMemo(
    () =>
      [...sessions]
        .sort((a, b) => b.createdAt - a.createdAt)
        .filter(
          (s) =>
            !needle ||
            s.sessionId.toLowerCase().includes(needle) ||
            s.flowKind.toLowerCase().includes(needle) ||
            (s.projectId ?? "").toLowerCase().includes(needle) ||
            JSON.stringify(s.metadata ?? {}).toLowerCase().includes(needle),
        ),
    [sessions, needle],
  );
  const visible = matching.slice(0, shown);
  const more = matching.length > shown || next !== null;

  return (
    <nav className="panel sessions" aria-label="Sessions">
      <div className="panel-head">
        <h2>Sessions</h2>
        <button type="button" className="secondary" onClick={() => void load(null)} title="Reload the list">
          Reload
        </button>
      </div>
      <label className="field">
        <span className="field-name">Flow</span>
        <select id="kind" value={kind} onChange={(e) => setKind(e.target.value)}>
          <option value="">All flows</option>
          {flows.map((f) => (
            <option key={f.kind} value={f.kind}>
              {f.kind}
            </option>
          ))}
        </select>
      </label>
      <input
        id="session-search"
        type="search"
        placeholder="Search id, flow, project, metadata"
        aria-label="Search sessions"
        value={search}
        onChange={(e) => setSearch(e.target.value)}
      />
      <ul className="session-list" aria-busy={busy}>
        <li>
          <button type="button" className={selected === null ? "session-item active" : "session-item"} onClick={() => onSelect(null)}>
            <span className="sid">+ New session</span>
            <small className="muted">created by the next run</small>
          </button>
        </li>
        {visible.map((s) => (
          <li key={s.sessionId}>
            <button
              type="button"
              className={s.sessionId === selected ? "session-item active" : "session-item"}
              data-session={s.sessionId}
              aria-current={s.sessionId === selected ? "true" : undefined}
              onClick={() => onSelect(s.sessionId)}
            >
              <span className="sid" title={s.sessionId}>
                {typeof s.metadata?.title === "string" ? s.metadata.title : s.sessionId}
              </span>
              <small className="muted">
                {s.flowKind}
                {s.projectId ? ` · ${s.projectId}` : ""} · {when(s.createdAt)}
              </small>
            </button>
          </li>
        ))}
      </ul>
      {matching.length === 0 && !busy ? <p className="muted">{needle ? "No session matches." : "No sessions yet."}</p> : null}
      {more ? (
        <button
          type="button"
          id="more-sessions"
          className="secondary wide"
          disabled={busy}
          onClick={() => {
            if (matching.length > shown) setShown(shown + PAGE);
            else {
              setShown(shown + PAGE);
              void load(next);
            }
          }}
        >
          Show more
        </button>
      ) : null}
      <p className="muted count">
        {matching.length} of {sessions.length}
        {next ? "+" : ""} session{sessions.length === 1 ? "" : "s"}
      </p>
      {error ? <p className="error" role="alert">{error}</p> : null}
    </nav>
  );
}

// ------------------------------------------------------------------------------ client data

function ClientDataPanel({ session }: { session: Live | null }) {
  const state = useSessionState(session);
  const changed = useMemo(() => new Set(state.changed), [state.changed]);
  const data = (state.snapshot?.clientData ?? {}) as Record<string, Record<string, unknown>>;
  const scopes = (["session", "user", "project"] as const).filter((s) => data[s]);
  return (
    <section className="panel" aria-labelledby="cd-title">
      <div className="panel-head">
        <h2 id="cd-title">Client data</h2>
        <small className="muted" id="snapshot-meta" data-fetches={state.fetches} data-revision={state.revision}>
          {session ? (state.loading ? "loading…" : `${state.fetches} fetch${state.fetches === 1 ? "" : "es"}, live`) : ""}
        </small>
      </div>
      {!session ? <p className="muted">No session: run an action to create one.</p> : null}
      {state.error ? <p className="error" role="alert">{message(state.error)}</p> : null}
      {session && state.snapshot && scopes.length === 0 ? <p className="muted">This session has no client data.</p> : null}
      <ul className="tree root" id="client-data">
        {scopes.map((scope) => (
          <Tree key={scope} name={scope} value={data[scope]} path={scope} changed={changed} revision={state.revision} />
        ))}
      </ul>
    </section>
  );
}

// ------------------------------------------------------------------------------ resources

function ResourcesPanel({ client, session }: { client: Client; session: Live | null }) {
  const state = useSessionState(session);
  const [preview, setPreview] = useState<{ title: string; text: string; error?: boolean } | null>(null);
  const resources = state.snapshot?.resources ?? {};
  const rows: { scope: string; name: string; data: ResourceData }[] = [];
  for (const [scope, byName] of Object.entries(resources)) {
    for (const [name, data] of Object.entries(byName ?? {})) rows.push({ scope, name, data });
  }
  const show = async (scope: string, name: string, key?: string) => {
    if (!session) return;
    const title = key ?? name;
    try {
      const content = await client.resourceContent(session.id, name, {
        scope: scope as "session" | "user" | "project",
        ...(key ? { key } : {}),
      });
      setPreview({ title, text: content.content ?? "(no content yet)" });
    } catch (err) {
      setPreview({ title, text: err instanceof FlowstateError && err.status === 404 ? "This resource serves no content to clients." : message(err), error: true });
    }
  };
  if (!session || rows.length === 0) {
    return (
      <section className="panel" aria-labelledby="res-title">
        <h2 id="res-title">Resources</h2>
        <p className="muted">{session ? "No resource visible to clients." : "No session."}</p>
      </section>
    );
  }
  return (
    <section className="panel" aria-labelledby="res-title">
      <h2 id="res-title">Resources</h2>
      <ul className="resources">
        {rows.map(({ scope, name, data }) => (
          <li key={`${scope}/${name}`} className="resource" data-resource={name}>
            <div className="resource-head">
              <strong>{name}</strong> <span className="badge">{scope}</span>
              {"count" in data ? <span className="muted"> collection · {data.count} item{data.count === 1 ? "" : "s"}</span> : null}
              {"clientData" in data ? (
                <button type="button" className="link" onClick={() => void show(scope, name)}>
                  Preview content
                </button>
              ) : null}
            </div>
            {"clientData" in data ? (
              <pre className="json small">{JSON.stringify(data.clientData, null, 2)}</pre>
            ) : (
              <ul className="items">
                {data.items.map((item) => (
                  <li key={item.key}>
                    <button type="button" className="link" data-key={item.key} onClick={() => void show(scope, name, item.key)}>
                      {item.key}
                    </button>{" "}
                    <code className="muted">{JSON.stringify(item.clientData)}</code>
                  </li>
                ))}
              </ul>
            )}
          </li>
        ))}
      </ul>
      {preview ? (
        <div className="preview" id="content-preview">
          <div className="panel-head">
            <strong>{preview.title}</strong>
            <button type="button" className="link" onClick={() => setPreview(null)}>
              Close
            </button>
          </div>
          <pre className={preview.error ? "error" : ""}>{preview.text}</pre>
        </div>
      ) : null}
    </section>
  );
}

// ------------------------------------------------------------------------------ events

interface Logged {
  id: string;
  event: FlowEvent;
  origin: "run" | "live";
  at: number;
}

function eventSummary(e: FlowEvent): string {
  switch (e.type) {
    case "request.created":
      return `${e.flowKind}.${e.action}`;
    case "state_change":
      return `${e.scope} ${e.operation} ${e.fields.join(", ")} → v${e.version}${e.values ? ` ${JSON.stringify(e.values)}` : ""}`;
    case "resource_change":
      return `${e.scope} ${e.key} ${e.changeType}`;
    case "request.completed":
      return JSON.stringify(e.output) ?? "";
    case "request.failed":
      return `${e.error.code}: ${e.error.message}`;
  }
}

function EventsPanel({ events, onClear }: { events: Logged[]; onClear: () => void }) {
  const [open, setOpen] = useState<string | null>(null);
  return (
    <section className="panel" aria-labelledby="ev-title">
      <div className="panel-head">
        <h2 id="ev-title">Events</h2>
        <button type="button" className="link" onClick={onClear} disabled={!events.length}>
          Clear
        </button>
      </div>
      {events.length === 0 ? <p className="muted">Run an action, or change this session from elsewhere.</p> : null}
      <ol className="timeline" id="events">
        {events.map((item) => {
          const e = item.event;
          const failed = e.type === "request.failed";
          return (
            <li key={item.id} data-type={e.type} className={`${item.origin}${failed ? " failed" : ""}`}>
              <button type="button" className="event" aria-expanded={open === item.id} onClick={() => setOpen(open === item.id ? null : item.id)}>
                <time className="muted">{new Date(item.at).toLocaleTimeString()}</time>
                <span className={`badge ${e.type.replace(".", "-")}`}>{e.type}</span>
                {item.origin === "live" ? <span className="badge live">live</span> : null}
                <span className="summary">{eventSummary(e)}</span>
              </button>
              {open === item.id ? <pre className="json small detail">{JSON.stringify(e, null, 2)}</pre> : null}
            </li>
          );
        })}
      </ol>
    </section>
  );
}

// ------------------------------------------------------------------------------ actions

function ActionPanel({
  client,
  flow,
  sessionId,
  onEvent,
  onCreated,
}: {
  client: Client;
  flow: FlowInfo | undefined;
  sessionId: string | null;
  onEvent: (e: FlowEvent) => void;
  onCreated: (id: string) => void;
}) {
  const [action, setAction] = useState("");
  const [input, setInput] = useState<unknown>(null);
  const [running, setRunning] = useState(false);
  const [outcome, setOutcome] = useState<{ ok: boolean; text: string } | null>(null);
  const actions = flow?.actions ?? [];
  const current = actions.find((a) => a.name === action) ?? actions[0];

  useEffect(() => {
    setAction(current?.name ?? "");
    setInput(exampleInput(current?.input ?? null));
    setOutcome(null);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [flow?.kind, current?.name]);

  if (!flow) {
    return (
      <section className="panel" aria-labelledby="run-title">
        <h2 id="run-title">Run an action</h2>
        <p className="muted">Pick a flow to run its actions.</p>
      </section>
    );
  }
  const run = async (e: React.FormEvent) => {
    e.preventDefault();
    if (!current) return;
    setRunning(true);
    setOutcome(null);
    try {
      const options = sessionId ? { sessionId } : {};
      for await (const event of client.stream(flow.kind, current.name, input, options)) {
        onEvent(event);
        if (event.type === "request.created" && !sessionId) onCreated(event.sessionId);
        if (event.type === "request.completed") setOutcome({ ok: true, text: JSON.stringify(event.output, null, 2) ?? "null" });
        if (event.type === "request.failed") setOutcome({ ok: false, text: `${event.error.code}: ${event.error.message}` });
      }
    } catch (err) {
      setOutcome({ ok: false, text: message(err) });
    } finally {
      setRunning(false);
    }
  };
  return (
    <section className="panel" aria-labelledby="run-title">
      <h2 id="run-title">Run an action</h2>
      <form id="run-form" onSubmit={(e) => void run(e)}>
        <label className="field">
          <span className="field-name">Action of {flow.kind}</span>
          <select id="action" value={current?.name ?? ""} onChange={(e) => setAction(e.target.value)}>
            {actions.map((a) => (
              <option key={a.name} value={a.name}>
                {a.name}
              </option>
            ))}
          </select>
        </label>
        {current ? <InputForm key={`${flow.kind}.${current.name}`} schema={current.input} value={input} onChange={setInput} /> : null}
        <div className="row">
          <button id="run" type="submit" disabled={running || !current}>
            {running ? "Running…" : "Run"}
          </button>
          <button type="button" className="secondary" onClick={() => setInput(exampleInput(current?.input ?? null))}>
            Reset input
          </button>
          <small className="muted">{sessionId ? "in this session" : "in a new session"}</small>
        </div>
      </form>
      {outcome ? (
        <div id="run-outcome" className={outcome.ok ? "outcome ok" : "outcome error"} role={outcome.ok ? "status" : "alert"}>
          <strong>{outcome.ok ? "Completed" : "Failed"}</strong>
          <pre>{outcome.text}</pre>
        </div>
      ) : null}
    </section>
  );
}

// ------------------------------------------------------------------------------ delete

function DeleteButton({ client, session, onDeleted }: { client: Client; session: string; onDeleted: () => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [error, setError] = useState("");
  const confirm = async () => {
    try {
      await client.deleteSession(session);
      dialog.current?.close();
      onDeleted();
    } catch (err) {
      setError(message(err));
    }
  };
  return (
    <>
      <button type="button" id="delete-session" className="danger" onClick={() => dialog.current?.showModal()}>
        Delete…
      </button>
      <dialog ref={dialog} id="confirm-delete" aria-labelledby="confirm-title">
        <h3 id="confirm-title">Delete this session?</h3>
        <p>
          <code>{session}</code> and all of its state and resources are deleted. This cannot be undone.
        </p>
        {error ? <p className="error">{error}</p> : null}
        <div className="row end">
          <button type="button" className="secondary" onClick={() => dialog.current?.close()} autoFocus>
            Cancel
          </button>
          <button type="button" id="confirm-delete-button" className="danger" onClick={() => void confirm()}>
            Delete session
          </button>
        </div>
      </dialog>
    </>
  );
}

// ------------------------------------------------------------------------------ the page

function Workspace({ client, flows }: { client: Client; flows: FlowInfo[] }) {
  const [kind, setKind] = useState(flows.length === 1 ? flows[0].kind : "");
  const [selected, setSelected] = useState<string | null>(null);
  const [info, setInfo] = useState<SessionInfo | null>(null);
  const [events, setEvents] = useState<Logged[]>([]);
  const [reloadKey, setReloadKey] = useState(0);
  const keepEvents = useRef(false);
  const session = useSession(client, selected);

  const log = useCallback((event: FlowEvent, origin: "run" | "live") => {
    const id = `${event.requestId}:${event.seq}`;
    setEvents((prev) => {
      const i = prev.findIndex((p) => p.id === id);
      if (i < 0) return [{ id, event, origin, at: Date.now() }, ...prev].slice(0, 300);
      // The run's own stream may deliver after the live session saw the same event.
      if (origin === "run" && prev[i].origin === "live") {
        const copy = [...prev];
        copy[i] = { ...prev[i], origin };
        return copy;
      }
      return prev;
    });
  }, []);

  useEffect(() => {
    // A run that created this session keeps its events on the timeline.
    if (!keepEvents.current) setEvents([]);
    keepEvents.current = false;
    setInfo(null);
    if (!selected) return;
    let gone = false;
    client.getSession(selected).then(
      (i) => !gone && setInfo(i),
      () => {},
    );
    return () => {
      gone = true;
    };
  }, [client, selected]);

  useEffect(() => {
    if (!session) return;
    // Live changes made elsewhere (another tab, another session of this user).
    return session.onEvent((e) => log(e, "live"));
  }, [session, log]);

  const flowKind = info?.flowKind ?? (kind || flows[0]?.kind);
  const flow = flows.find((f) => f.kind === flowKind);

  return (
    <div className="workspace">
      <SessionsPanel
        client={client}
        flows={flows}
        kind={kind}
        setKind={setKind}
        selected={selected}
        onSelect={setSelected}
        reloadKey={reloadKey}
      />
      <div className="session-view">
        <div className="panel session-head">
          <div>
            <h2>{selected ? "Session" : "New session"}</h2>
            {selected ? (
              <p className="muted">
                <code id="session-id">{selected}</code>
                {info ? ` · ${info.flowKind}${info.projectId ? ` · project ${info.projectId}` : ""} · created ${when(info.createdAt)}` : ""}
              </p>
            ) : (
              <p className="muted">The next run creates a session of {flow?.kind ?? "the selected flow"}.</p>
            )}
          </div>
          {selected ? (
            <DeleteButton
              client={client}
              session={selected}
              onDeleted={() => {
                session?.close();
                setSelected(null);
                setReloadKey((k) => k + 1);
              }}
            />
          ) : null}
        </div>
        <div className="columns">
          <div className="column">
            <ClientDataPanel session={session} />
            <ResourcesPanel client={client} session={session} />
          </div>
          <div className="column">
            <ActionPanel
              client={client}
              flow={flow}
              sessionId={selected}
              onEvent={(e) => log(e, "run")}
              onCreated={(id) => {
                keepEvents.current = true;
                setSelected(id);
                setReloadKey((k) => k + 1);
              }}
            />
            <EventsPanel events={events} onClear={() => setEvents([])} />
          </div>
        </div>
      </div>
    </div>
  );
}

function App() {
  const [theme, toggleTheme] = useTheme();
  const [token, setToken] = useState(takeToken);
  const [draft, setDraft] = useState(token);
  const [flows, setFlows] = useState<FlowInfo[] | null>(null);
  const [status, setStatus] = useState("not connected");
  const client = useMemo(() => createClient({ token }), [token]);

  useEffect(() => {
    if (!token) {
      setStatus("enter a token");
      return;
    }
    let stale = false;
    setStatus("connecting…");
    client.flows().then(
      (f) => {
        if (stale) return;
        setFlows(f);
        setStatus("connected");
      },
      (err: unknown) => {
        if (stale) return;
        setFlows(null);
        setStatus(err instanceof FlowstateError && err.status === 401 ? "invalid token" : message(err));
      },
    );
    return () => {
      stale = true;
    };
  }, [client, token]);

  return (
    <>
      <header className="top">
        <h1>
          flowstate <span className="muted">inspector</span>
        </h1>
        <form
          id="auth-form"
          autoComplete="off"
          onSubmit={(e) => {
            e.preventDefault();
            sessionStorage.setItem("flowstate-token", draft.trim());
            setToken(draft.trim());
          }}
        >
          <input id="token" type="password" placeholder="bearer token" aria-label="Bearer token" value={draft} onChange={(e) => setDraft(e.target.value)} />
          <button type="submit">Connect</button>
          <span id="status" role="status" className={status === "connected" ? "ok" : "muted"}>
            {status}
          </span>
        </form>
        <button type="button" id="theme-toggle" className="secondary" onClick={toggleTheme} aria-label={`Switch to ${theme === "dark" ? "light" : "dark"} theme`}>
          {theme === "dark" ? "☀ Light" : "☾ Dark"}
        </button>
      </header>
      <main>
        {flows ? (
          <Workspace key={token} client={client} flows={flows} />
        ) : (
          <section className="panel intro">
            <h2>Connect</h2>
            <p>
              Enter the bearer token that <code>flowstate serve</code> printed (or open the printed <code>/?token=…</code> link).
              API docs: <a href="/docs">/docs</a>.
            </p>
          </section>
        )}
      </main>
    </>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
