/**
 * A live view of one session: its client-data snapshot kept current from the session's event
 * stream. Exposed values that `state_change` events carry are merged in place; the snapshot
 * is refetched only when an event cannot be applied from its values (derived client data,
 * resources, another flow's change, or a reconnect that may have missed events).
 */

import type { FlowstateClient } from "./client.js";
import { FlowstateError } from "./errors.js";
import type {
  ActionInput,
  ActionName,
  ActionOutput,
  ActionResult,
  ClientDataOf,
  ClientScope,
  FlowEvent,
  FlowInfo,
  FlowMap,
  Kind,
  ResourceData,
  Snapshot,
  StateChangeEvent,
} from "./types.js";

/** What a live session holds; replaced (never mutated) on every change. */
export interface SessionState<CD> {
  snapshot: Snapshot<CD> | null;
  error: FlowstateError | null;
  loading: boolean;
  /** How many times the snapshot was fetched from the server. */
  fetches: number;
  /** Counts every change, merged or fetched. */
  revision: number;
  /** The client-data names that the latest change touched, as `scope.name`. */
  changed: string[];
}

export interface SubscribeOptions {
  /** Live updates (default true); false: only the initial snapshot and explicit refreshes. */
  live?: boolean;
}

const SEEN_LIMIT = 2000;

export class LiveSession<F extends FlowMap, K extends Kind<F>> {
  readonly id: string;
  private current: SessionState<ClientDataOf<F, K>> = {
    snapshot: null,
    error: null,
    loading: false,
    fetches: 0,
    revision: 0,
    changed: [],
  };
  private readonly dataListeners = new Set<(data: ClientDataOf<F, K>) => void>();
  private readonly stateListeners = new Set<(state: SessionState<ClientDataOf<F, K>>) => void>();
  private readonly eventListeners = new Set<(event: FlowEvent) => void>();
  private readonly seen = new Set<string>();
  private readonly versions: Partial<Record<ClientScope, number>> = {};
  private flowInfo: FlowInfo | null = null;
  private controller: AbortController | null = null;
  private fetching: Promise<void> | null = null;
  private refetchAgain = false;
  /** Live values merged so far: a snapshot fetched across a merge may predate it. */
  private merges = 0;
  private refetchTimer: ReturnType<typeof setTimeout> | null = null;
  private started = false;

  constructor(
    private readonly client: FlowstateClient<F>,
    sessionId: string,
  ) {
    this.id = sessionId;
  }

  /** The latest state (snapshot, error, loading …). */
  get state(): SessionState<ClientDataOf<F, K>> {
    return this.current;
  }

  get snapshot(): Snapshot<ClientDataOf<F, K>> | null {
    return this.current.snapshot;
  }

  /** The live client data, by scope (`{}` until the first snapshot arrives). */
  get clientData(): ClientDataOf<F, K> {
    return (this.current.snapshot?.clientData ?? {}) as ClientDataOf<F, K>;
  }

  /**
   * Call `cb(clientData)` now (once loaded) and after every change; returns the unsubscribe
   * function. The first subscriber starts the live connection, the last one stops it.
   */
  subscribe(cb: (clientData: ClientDataOf<F, K>) => void): () => void {
    this.dataListeners.add(cb);
    if (this.current.snapshot) cb(this.clientData);
    this.retain();
    return () => {
      if (this.dataListeners.delete(cb)) this.release();
    };
  }

  /** Like `subscribe`, for the whole state (snapshot, errors, loading); used by the hooks. */
  subscribeState(cb: (state: SessionState<ClientDataOf<F, K>>) => void): () => void {
    this.stateListeners.add(cb);
    this.retain();
    return () => {
      if (this.stateListeners.delete(cb)) this.release();
    };
  }

  /** Every event this session sees (its runs, live changes); returns the unsubscribe. */
  onEvent(cb: (event: FlowEvent) => void): () => void {
    this.eventListeners.add(cb);
    return () => {
      this.eventListeners.delete(cb);
    };
  }

  /** The resource's client data (`{clientData}` or a collection's `{count, items}`). */
  resource(name: string, scope?: ClientScope): ResourceData | undefined {
    const resources = this.current.snapshot?.resources;
    if (!resources) return undefined;
    for (const s of scope ? [scope] : (["session", "user", "project"] as const)) {
      const found = resources[s]?.[name];
      if (found) return found;
    }
    return undefined;
  }

  /** A resource's text content (with `key` for a collection instance). */
  async content(name: string, options: { key?: string; scope?: ClientScope } = {}) {
    return (await this.client.resourceContent(this.id, name, options)).content;
  }

  /** Run an action in this session; its events update this view as they arrive. */
  async run<A extends ActionName<F, K>>(
    action: A,
    input: ActionInput<F, K, A>,
    options: { signal?: AbortSignal } = {},
  ): Promise<ActionResult<ActionOutput<F, K, A>>> {
    const kind = (this.current.snapshot?.flowKind ??
      (await this.client.getSession(this.id)).flowKind) as K;
    let created: { requestId: string; sessionId: string } | null = null;
    for await (const event of this.client.stream(kind, action, input, {
      ...options,
      sessionId: this.id,
    })) {
      if (event.type === "request.created") created = event;
      if (event.type === "request.failed") {
        throw new FlowstateError(event.error.code, event.error.message, {
          requestId: event.requestId,
          sessionId: this.id,
        });
      }
      if (event.type === "request.completed") {
        return {
          requestId: event.requestId,
          sessionId: created?.sessionId ?? this.id,
          status: "completed",
          output: event.output as ActionOutput<F, K, A>,
        };
      }
    }
    throw new FlowstateError("stream_dropped", "the run's stream ended without a result");
  }

  /** Fetch the snapshot now (concurrent calls share one request). */
  refresh(): Promise<void> {
    if (this.fetching) {
      this.refetchAgain = true;
      return this.fetching;
    }
    this.fetching = this.fetchLoop().finally(() => {
      this.fetching = null;
    });
    return this.fetching;
  }

  /** Stop the live connection and drop every listener. */
  close(): void {
    this.dataListeners.clear();
    this.stateListeners.clear();
    this.eventListeners.clear();
    this.stop();
    this.client.forgetSession(this.id, this as unknown as LiveSession<F, Kind<F>>);
  }

  // ------------------------------------------------------------------ events

  /** @internal Apply one event (from the session stream or a run of this client). */
  ingest(event: FlowEvent): void {
    const id = `${event.requestId}:${event.seq}`;
    if (this.seen.has(id)) return; // the run's stream and the session stream both carry it
    this.seen.add(id);
    if (this.seen.size > SEEN_LIMIT) this.seen.delete(this.seen.values().next().value!);
    for (const cb of [...this.eventListeners]) cb(event);
    if (event.type === "state_change") this.applyStateChange(event);
    else if (event.type === "resource_change") this.scheduleRefetch();
  }

  private applyStateChange(event: StateChangeEvent): void {
    const snapshot = this.current.snapshot;
    if (!snapshot || (event.flowKind && event.flowKind !== snapshot.flowKind)) {
      // Another flow's change to a shared scope: its exposure rules are not ours.
      this.scheduleRefetch();
      return;
    }
    const version = this.versions[event.scope] ?? 0;
    if (event.version <= version) return; // older than what we have
    this.versions[event.scope] = event.version;
    const config = this.flowInfo?.clientData?.[event.scope];
    const values = event.values ?? {};
    let exposed: string[];
    let needsFetch: boolean;
    if (config) {
      exposed = event.fields.filter((f) => config.expose.includes(f));
      // Derived data may depend on any field; an exposed field without its value is unknown.
      needsFetch = config.derived.length > 0 || exposed.some((f) => !(f in values));
    } else {
      exposed = Object.keys(values);
      needsFetch = event.values === undefined;
    }
    const merged = exposed.filter((f) => f in values);
    if (merged.length) {
      this.merges += 1;
      const clientData = { ...(snapshot.clientData as Record<string, Record<string, unknown>>) };
      clientData[event.scope] = {
        ...(clientData[event.scope] ?? {}),
        ...Object.fromEntries(merged.map((f) => [f, values[f]])),
      };
      this.update({
        snapshot: { ...snapshot, clientData: clientData as ClientDataOf<F, K> },
        changed: merged.map((f) => `${event.scope}.${f}`),
      });
    }
    if (needsFetch) this.scheduleRefetch();
  }

  private scheduleRefetch(): void {
    if (this.refetchTimer !== null) return;
    // Coalesce a burst of events (one run writes many) into one fetch.
    this.refetchTimer = setTimeout(() => {
      this.refetchTimer = null;
      this.refresh().catch(() => {});
    }, 30);
  }

  // ------------------------------------------------------------------ fetching

  private async fetchLoop(): Promise<void> {
    do {
      this.refetchAgain = false;
      if (!this.current.snapshot) this.update({ loading: true });
      const merges = this.merges;
      try {
        const [snapshot] = await Promise.all([this.client.snapshot<K>(this.id), this.loadFlow()]);
        if (this.merges !== merges) {
          // A live change was merged while this snapshot was on its way; it may have been
          // read before that change and would undo it: fetch again instead.
          this.refetchAgain = true;
          continue;
        }
        const changed = diffNames(
          this.current.snapshot?.clientData as Record<string, Record<string, unknown>> | undefined,
          snapshot.clientData as Record<string, Record<string, unknown>>,
        );
        this.update({
          snapshot,
          error: null,
          loading: false,
          fetches: this.current.fetches + 1,
          changed,
        });
      } catch (err) {
        this.update({ error: toError(err), loading: false });
        return;
      }
    } while (this.refetchAgain);
  }

  private async loadFlow(): Promise<void> {
    if (this.flowInfo) return;
    try {
      const info = await this.client.getSession(this.id);
      const flows = await this.client.flows();
      this.flowInfo = flows.find((f) => f.kind === info.flowKind) ?? null;
    } catch {
      this.flowInfo = null; // without it, merging falls back to "values present → merge"
    }
  }

  private update(patch: Partial<SessionState<ClientDataOf<F, K>>>): void {
    this.current = { ...this.current, ...patch, revision: this.current.revision + 1 };
    const state = this.current;
    for (const cb of [...this.stateListeners]) cb(state);
    if (state.snapshot && ("snapshot" in patch)) {
      const data = this.clientData;
      for (const cb of [...this.dataListeners]) cb(data);
    }
  }

  // ------------------------------------------------------------------ the live connection

  private retain(): void {
    if (this.started) return;
    this.started = true;
    const controller = new AbortController();
    this.controller = controller;
    void this.follow(controller.signal);
  }

  private release(): void {
    if (this.dataListeners.size === 0 && this.stateListeners.size === 0) this.stop();
  }

  private stop(): void {
    this.started = false;
    this.controller?.abort();
    this.controller = null;
    if (this.refetchTimer !== null) clearTimeout(this.refetchTimer);
    this.refetchTimer = null;
  }

  private async follow(signal: AbortSignal): Promise<void> {
    let delay = 250;
    let opened = false;
    while (!signal.aborted) {
      try {
        const events = this.client.sessionEvents(this.id, {
          signal,
          onOpen: () => {
            // Anything may have changed while we were not listening: refetch once subscribed.
            opened = true;
            delay = 250;
            void this.refresh();
          },
        });
        for await (const event of events) this.ingest(event);
      } catch (err) {
        if (signal.aborted) return;
        const error = toError(err);
        if (error.status === 404 || (error.status === 401 && !opened)) {
          // The session does not exist (any more), or the token is wrong: say so and stop.
          this.update({ error, loading: false });
          return;
        }
      }
      if (signal.aborted) return;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
}

function toError(err: unknown): FlowstateError {
  if (err instanceof FlowstateError) return err;
  return new FlowstateError("network_error", String(err), { cause: err });
}

/** `scope.name` of every client-data value that differs between two snapshots. */
export function diffNames(
  before: Record<string, Record<string, unknown>> | undefined,
  after: Record<string, Record<string, unknown>>,
): string[] {
  if (!before) return [];
  const out: string[] = [];
  for (const scope of new Set([...Object.keys(before), ...Object.keys(after)])) {
    const a = before[scope] ?? {};
    const b = after[scope] ?? {};
    for (const name of new Set([...Object.keys(a), ...Object.keys(b)])) {
      if (JSON.stringify(a[name]) !== JSON.stringify(b[name])) out.push(`${scope}.${name}`);
    }
  }
  return out;
}
