/** `createClient`: typed calls to a flowstate server over fetch, with resumable SSE streams. */

import { FlowstateError, errorFromResponse } from "./errors.js";
import { LiveSession } from "./session.js";
import { readSse } from "./sse.js";
import type {
  ActionInput,
  ActionName,
  ActionOutput,
  ActionResult,
  AnyFlows,
  ClientDataOf,
  ClientScope,
  FlowEvent,
  FlowInfo,
  FlowMap,
  Kind,
  ResourceContent,
  ResourcePage,
  RunOptions,
  SessionInfo,
  SessionPage,
  Snapshot,
  StreamOptions,
} from "./types.js";

export interface ClientOptions {
  /** The server's origin, e.g. `http://127.0.0.1:8000` (default: this page's origin). */
  baseUrl?: string;
  /** The bearer token, or a function returning it (read on every call). */
  token?: string | (() => string | null | undefined);
  /** Where the API is mounted (default `/api/flows`). */
  apiPrefix?: string;
  /** A `fetch` implementation (default: the global one). */
  fetch?: typeof fetch;
  /** Base delay between stream reconnection attempts, in ms (default 250; grows linearly). */
  retryDelayMs?: number;
}

const TERMINAL = new Set(["request.completed", "request.failed"]);

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal!));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function abortError(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("The operation was aborted.", "AbortError");
}

const seg = encodeURIComponent;

function query(params: Record<string, string | number | undefined | null>): string {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export class FlowstateClient<F extends FlowMap = AnyFlows> {
  readonly baseUrl: string;
  readonly apiPrefix: string;
  private readonly tokenSource: ClientOptions["token"];
  private readonly fetchImpl: typeof fetch;
  private readonly retryDelayMs: number;
  private flowsPromise: Promise<FlowInfo[]> | null = null;
  private readonly sessions = new Map<string, LiveSession<F, Kind<F>>>();

  constructor(options: ClientOptions = {}) {
    this.baseUrl = (options.baseUrl ?? "").replace(/\/+$/, "");
    this.apiPrefix = options.apiPrefix ?? "/api/flows";
    this.tokenSource = options.token;
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") {
      throw new TypeError("no fetch implementation: pass createClient({ fetch })");
    }
    this.fetchImpl = f.bind(globalThis);
    this.retryDelayMs = options.retryDelayMs ?? 250;
  }

  /** The bearer token in use (or undefined). */
  get token(): string | undefined {
    const t = typeof this.tokenSource === "function" ? this.tokenSource() : this.tokenSource;
    return t ?? undefined;
  }

  // ------------------------------------------------------------------ transport

  /** A raw API call: `path` is relative to the API prefix. Network failures become errors. */
  async fetch(path: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    const token = this.token;
    if (token) headers.set("Authorization", `Bearer ${token}`);
    try {
      return await this.fetchImpl(`${this.baseUrl}${this.apiPrefix}${path}`, { ...init, headers });
    } catch (err) {
      if (init.signal?.aborted) throw err;
      throw new FlowstateError("network_error", `could not reach the server: ${String(err)}`, {
        cause: err,
      });
    }
  }

  /** A JSON call; a non-2xx answer rejects with a {@link FlowstateError} of the server's code. */
  async request<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const init: RequestInit = { method, headers: { Accept: "application/json" } };
    if (signal) init.signal = signal;
    if (body !== undefined) {
      init.headers = { ...init.headers, "Content-Type": "application/json" };
      init.body = JSON.stringify(body);
    }
    const response = await this.fetch(path, init);
    if (!response.ok) throw await errorFromResponse(response);
    try {
      return (await response.json()) as T;
    } catch (err) {
      throw new FlowstateError("invalid_response", "the server's answer is not JSON", {
        status: response.status,
        cause: err,
      });
    }
  }

  // ------------------------------------------------------------------ flows and actions

  /** The flows, their actions (with input JSON Schemas) and client-data names (cached). */
  flows(): Promise<FlowInfo[]> {
    if (!this.flowsPromise) {
      this.flowsPromise = this.request<{ flows: FlowInfo[] }>("GET", "").then((r) => r.flows);
      this.flowsPromise.catch(() => {
        this.flowsPromise = null; // retry next time
      });
    }
    return this.flowsPromise;
  }

  /** Run an action and wait for its result (`{requestId, sessionId, status, output}`). */
  runAction<K extends Kind<F>, A extends ActionName<F, K>>(
    kind: K,
    action: A,
    input: ActionInput<F, K, A>,
    options: RunOptions = {},
  ): Promise<ActionResult<ActionOutput<F, K, A>>> {
    return this.request<ActionResult<ActionOutput<F, K, A>>>(
      "POST",
      `/${seg(kind)}/actions/${seg(action)}`,
      actionBody(input, options),
      options.signal,
    );
  }

  /**
   * Run an action and iterate its events as they happen. A dropped connection is re-attached
   * with `Last-Event-ID`, so no event is lost or repeated; the iteration ends after
   * `request.completed` or `request.failed`.
   */
  async *stream<K extends Kind<F>, A extends ActionName<F, K>>(
    kind: K,
    action: A,
    input: ActionInput<F, K, A>,
    options: StreamOptions = {},
  ): AsyncGenerator<FlowEvent<ActionOutput<F, K, A>>, void, undefined> {
    const init: RequestInit = {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(actionBody(input, options)),
    };
    if (options.signal) init.signal = options.signal;
    const response = await this.fetch(`/${seg(kind)}/actions/${seg(action)}`, init);
    if (!response.ok) throw await errorFromResponse(response);
    yield* this.events(kind, response, null, null, options) as AsyncGenerator<
      FlowEvent<ActionOutput<F, K, A>>
    >;
  }

  /** Follow a run by id (from the start, or after `lastEventId`), resuming like `stream`. */
  async *follow(
    kind: Kind<F>,
    requestId: string,
    options: { lastEventId?: string; signal?: AbortSignal; maxRetries?: number } = {},
  ): AsyncGenerator<FlowEvent, void, undefined> {
    yield* this.events(kind, null, requestId, options.lastEventId ?? null, options);
  }

  private async *events(
    kind: string,
    first: Response | null,
    requestId: string | null,
    lastEventId: string | null,
    options: { signal?: AbortSignal; maxRetries?: number; sessionId?: string },
  ): AsyncGenerator<FlowEvent, void, undefined> {
    const maxRetries = options.maxRetries ?? 5;
    const { signal } = options;
    let runSession: string | null = options.sessionId ?? null;
    let response = first;
    let failures = 0;
    let lastError: unknown = null;
    for (;;) {
      if (response === null) {
        if (requestId === null) throw new FlowstateError("stream_dropped", "no request id");
        const headers: Record<string, string> = { Accept: "text/event-stream" };
        if (lastEventId) headers["Last-Event-ID"] = lastEventId;
        const init: RequestInit = { headers };
        if (signal) init.signal = signal;
        try {
          response = await this.fetch(`/${seg(kind)}/requests/${seg(requestId)}/stream`, init);
        } catch (err) {
          if (signal?.aborted || !(err instanceof FlowstateError)) throw err;
          lastError = err; // the server is unreachable for now: retry below
        }
        if (response !== null && !response.ok) throw await errorFromResponse(response);
      }
      if (response !== null) {
        try {
          for await (const frame of readSse(response.body!, signal)) {
            const event = JSON.parse(frame.data) as FlowEvent;
            requestId = event.requestId;
            lastEventId = frame.id ?? `${event.requestId}:${event.seq}`;
            failures = 0;
            if (event.type === "request.created") runSession = event.sessionId;
            // A live view of the run's session sees its changes at once.
            this.sessions.get(event.sessionId ?? runSession ?? "")?.ingest(event);
            yield event;
            if (TERMINAL.has(event.type)) return;
          }
          lastError = new Error("the stream ended before the run did");
        } catch (err) {
          if (signal?.aborted) throw abortError(signal);
          lastError = err;
        }
      }
      // The connection dropped before the run ended: re-attach after the last event seen.
      response = null;
      failures += 1;
      if (requestId === null || failures > maxRetries) {
        throw new FlowstateError(
          "stream_dropped",
          `the event stream dropped and could not be resumed: ${String(lastError)}`,
          { cause: lastError },
        );
      }
      await sleep(this.retryDelayMs * failures, signal);
    }
  }

  // ------------------------------------------------------------------ sessions and snapshots

  /** The session's client snapshot; `clientData: ["session.count", "user.theme"]` filters it. */
  snapshot<K extends Kind<F> = Kind<F>>(
    sessionId: string,
    options: { clientData?: readonly string[]; signal?: AbortSignal } = {},
  ): Promise<Snapshot<ClientDataOf<F, K>>> {
    const q = options.clientData ? query({ clientData: options.clientData.join(",") }) : "";
    return this.request("GET", `/sessions/${seg(sessionId)}/state${q}`, undefined, options.signal);
  }

  /** A live view of one session (one per id and client): see {@link LiveSession}. */
  session<K extends Kind<F> = Kind<F>>(sessionId: string): LiveSession<F, K> {
    let live = this.sessions.get(sessionId);
    if (!live) {
      live = new LiveSession<F, Kind<F>>(this, sessionId);
      this.sessions.set(sessionId, live);
    }
    return live as unknown as LiveSession<F, K>;
  }

  /** @internal A live session that closed forgets itself. */
  forgetSession(sessionId: string, live: LiveSession<F, Kind<F>>): void {
    if (this.sessions.get(sessionId) === live) this.sessions.delete(sessionId);
  }

  listSessions(
    options: { kind?: string; limit?: number; after?: string | null } = {},
  ): Promise<SessionPage> {
    return this.request<SessionPage>(
      "GET",
      `/sessions${query({ kind: options.kind, limit: options.limit, after: options.after })}`,
    ).then((page) => ({ sessions: page.sessions, next: page.next ?? null }));
  }

  getSession(sessionId: string): Promise<SessionInfo> {
    return this.request("GET", `/sessions/${seg(sessionId)}`);
  }

  createSession(
    kind: Kind<F>,
    options: { sessionId?: string; projectId?: string } = {},
  ): Promise<SessionInfo> {
    return this.request("POST", `/${seg(kind)}/sessions`, options);
  }

  deleteSession(sessionId: string): Promise<{ sessionId: string; deleted: boolean }> {
    return this.request("DELETE", `/sessions/${seg(sessionId)}`);
  }

  // ------------------------------------------------------------------ resources

  /** A resource's client data, or one page of a collection's instances. */
  resource(
    sessionId: string,
    name: string,
    options: {
      scope?: ClientScope;
      prefix?: string;
      after?: string | null;
      limit?: number;
      signal?: AbortSignal;
    } = {},
  ): Promise<ResourcePage> {
    const q = query({
      scope: options.scope,
      prefix: options.prefix || undefined,
      after: options.after,
      limit: options.limit,
    });
    return this.request(
      "GET",
      `/sessions/${seg(sessionId)}/resources/${seg(name)}${q}`,
      undefined,
      options.signal,
    );
  }

  /** A resource's text content (a collection instance's with `key`). */
  resourceContent(
    sessionId: string,
    name: string,
    options: { key?: string; scope?: ClientScope; signal?: AbortSignal } = {},
  ): Promise<ResourceContent> {
    const q = query({ key: options.key, scope: options.scope });
    return this.request(
      "GET",
      `/sessions/${seg(sessionId)}/resources/${seg(name)}/content${q}`,
      undefined,
      options.signal,
    );
  }

  // ------------------------------------------------------------------ live streams

  /** Live changes of one session and its user/project scopes (endless; abort to stop). */
  sessionEvents(
    sessionId: string,
    options: { signal?: AbortSignal; onOpen?: () => void } = {},
  ): AsyncGenerator<FlowEvent> {
    return this.live(`/sessions/${seg(sessionId)}/stream`, options.signal, options.onOpen);
  }

  /** Live changes of your user scope (and of `projectIds`), from any session. */
  userEvents(
    options: { projectIds?: string[]; signal?: AbortSignal; onOpen?: () => void } = {},
  ): AsyncGenerator<FlowEvent> {
    const search = new URLSearchParams();
    for (const id of options.projectIds ?? []) search.append("projectId", id);
    const q = search.toString();
    return this.live(`/users/me/stream${q ? `?${q}` : ""}`, options.signal, options.onOpen);
  }

  /** An endless stream; `onOpen` runs once the server's subscriptions are live. */
  private async *live(
    path: string,
    signal?: AbortSignal,
    onOpen?: () => void,
  ): AsyncGenerator<FlowEvent> {
    const init: RequestInit = { headers: { Accept: "text/event-stream" } };
    if (signal) init.signal = signal;
    const response = await this.fetch(path, init);
    if (!response.ok) throw await errorFromResponse(response);
    const onComment = (text: string) => {
      if (text === "subscribed") onOpen?.();
    };
    for await (const frame of readSse(response.body!, signal, onComment)) {
      yield JSON.parse(frame.data) as FlowEvent;
    }
  }
}

function actionBody(input: unknown, options: RunOptions): Record<string, unknown> {
  const body: Record<string, unknown> = { input: input === undefined ? null : input };
  if (options.sessionId !== undefined) body.sessionId = options.sessionId;
  if (options.projectId !== undefined) body.projectId = options.projectId;
  return body;
}

/** A client for the server at `baseUrl` authenticating with `token`. */
export function createClient<F extends FlowMap = AnyFlows>(
  options: ClientOptions = {},
): FlowstateClient<F> {
  return new FlowstateClient<F>(options);
}
