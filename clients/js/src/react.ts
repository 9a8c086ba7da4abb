/** @flowstate/client/react: hooks over a {@link FlowstateClient} (React ≥ 18). */

import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";

import type { FlowstateClient } from "./client.js";
import { FlowstateError } from "./errors.js";
import type { LiveSession, SessionState } from "./session.js";
import type {
  ActionInput,
  ActionName,
  ActionOutput,
  ActionResult,
  ClientDataOf,
  ClientScope,
  FlowMap,
  Kind,
  ResourceData,
  RunOptions,
  Selected,
  Selection,
} from "./types.js";

const EMPTY_STATE: SessionState<never> = {
  snapshot: null,
  error: null,
  loading: false,
  fetches: 0,
  revision: 0,
  changed: [],
};
const noop = () => () => {};

/**
 * The live session with id `id` (null while `id` is empty). The same object is returned for
 * one id; its live connection runs while a component uses it.
 */
export function useSession<F extends FlowMap, K extends Kind<F> = Kind<F>>(
  client: FlowstateClient<F>,
  id: string | null | undefined,
): LiveSession<F, K> | null {
  return useMemo(() => (id ? client.session<K>(id) : null), [client, id]);
}

/** The session's state (snapshot, error, loading), re-rendering on every change. */
export function useSessionState<F extends FlowMap, K extends Kind<F>>(
  session: LiveSession<F, K> | null,
): SessionState<ClientDataOf<F, K>> {
  const subscribe = useCallback(
    (onChange: () => void) => (session ? session.subscribeState(onChange) : noop()),
    [session],
  );
  return useSyncExternalStore(
    subscribe,
    () => (session ? session.state : (EMPTY_STATE as SessionState<ClientDataOf<F, K>>)),
    () => EMPTY_STATE as SessionState<ClientDataOf<F, K>>,
  );
}

/**
 * The selected client data, live: `useClientData(session, {session: ["count"], user:
 * ["theme"]})` → `{session?: {count}, user?: {theme}}` (undefined until the first snapshot).
 * Without a selection, all of it. A component re-renders only when a selected value changes.
 */
export function useClientData<
  F extends FlowMap,
  K extends Kind<F>,
  const S extends Selection<ClientDataOf<F, K>>,
>(
  session: LiveSession<F, K> | null,
  selection: S,
): Selected<ClientDataOf<F, K>, S> | undefined;
export function useClientData<F extends FlowMap, K extends Kind<F>>(
  session: LiveSession<F, K> | null,
): ClientDataOf<F, K> | undefined;
export function useClientData<F extends FlowMap, K extends Kind<F>>(
  session: LiveSession<F, K> | null,
  selection?: Selection<ClientDataOf<F, K>>,
): unknown {
  const key = selection ? JSON.stringify(selection) : "";
  const cache = useRef<{ data: unknown; json: string } | null>(null);
  const state = useSessionState(session);
  const data = state.snapshot?.clientData as Record<string, Record<string, unknown>> | undefined;
  return useMemo(() => {
    if (!data) return undefined;
    const picked = selection ? pick(data, selection as Record<string, readonly string[]>) : data;
    // Keep the previous object while the selected values are equal (stable for effects).
    const json = JSON.stringify(picked);
    if (cache.current && cache.current.json === json) return cache.current.data;
    cache.current = { data: picked, json };
    return picked;
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [data, key]);
}

function pick(
  data: Record<string, Record<string, unknown>>,
  selection: Record<string, readonly string[]>,
): Record<string, Record<string, unknown>> {
  const out: Record<string, Record<string, unknown>> = {};
  for (const [scope, names] of Object.entries(selection)) {
    const values = data[scope === "org" ? "project" : scope];
    if (!values || !names) continue;
    const chosen: Record<string, unknown> = {};
    for (const name of names) if (name in values) chosen[name] = values[name];
    out[scope] = chosen;
  }
  return out;
}

export interface ResourceState {
  /** `{clientData}` of a resource, `{count, items}` of a collection (undefined: none yet). */
  data: ResourceData | undefined;
  /** The text content, when asked for with `{content: true}`. */
  content: string | null | undefined;
  loading: boolean;
  error: FlowstateError | null;
  /** Refetch the content now. */
  reload: () => void;
}

/**
 * A resource of the session: its client data (live, from the snapshot) and, with
 * `{content: true}`, its text content, refetched whenever the resource changes.
 */
export function useResource<F extends FlowMap, K extends Kind<F>>(
  session: LiveSession<F, K> | null,
  name: string,
  options: { content?: boolean; key?: string; scope?: ClientScope } = {},
): ResourceState {
  const state = useSessionState(session);
  const data = session && state.snapshot ? session.resource(name, options.scope) : undefined;
  const [content, setContent] = useState<string | null | undefined>(undefined);
  const [error, setError] = useState<FlowstateError | null>(null);
  const [loading, setLoading] = useState(false);
  const [tick, setTick] = useState(0);
  const wantContent = options.content === true;
  const { key, scope } = options;

  useEffect(() => {
    if (!session || !wantContent) return;
    // Refetch the content on a change of this resource (or any instance of a collection).
    return session.onEvent((event) => {
      if (event.type === "resource_change" && (event.key === name || event.key === key)) {
        setTick((t) => t + 1);
      }
    });
  }, [session, wantContent, name, key]);

  useEffect(() => {
    if (!session || !wantContent) return;
    const controller = new AbortController();
    setLoading(true);
    session
      .content(name, { ...(key ? { key } : {}), ...(scope ? { scope } : {}) })
      .then((text) => {
        if (controller.signal.aborted) return;
        setContent(text);
        setError(null);
      })
      .catch((err: unknown) => {
        if (controller.signal.aborted) return;
        setError(err instanceof FlowstateError ? err : new FlowstateError("network_error", String(err)));
      })
      .finally(() => {
        if (!controller.signal.aborted) setLoading(false);
      });
    return () => controller.abort();
  }, [session, wantContent, name, key, scope, tick]);

  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { data, content, loading: loading || state.loading, error: error ?? state.error, reload };
}

export interface ActionState<I, O> {
  /** Run the action; resolves to its result, rejects with a {@link FlowstateError}. */
  run: (input: I, options?: RunOptions) => Promise<ActionResult<O>>;
  pending: boolean;
  /** The last successful result. */
  result: ActionResult<O> | null;
  /** The last failure (cleared by the next run). */
  error: FlowstateError | null;
  reset: () => void;
}

/** An action as a function plus its state: `const add = useAction(client, "counter", "add")`. */
export function useAction<F extends FlowMap, K extends Kind<F>, A extends ActionName<F, K>>(
  client: FlowstateClient<F>,
  kind: K,
  action: A,
): ActionState<ActionInput<F, K, A>, ActionOutput<F, K, A>> {
  type O = ActionOutput<F, K, A>;
  const [pending, setPending] = useState(0);
  const [result, setResult] = useState<ActionResult<O> | null>(null);
  const [error, setError] = useState<FlowstateError | null>(null);
  const mounted = useRef(true);
  useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
    };
  }, []);

  const run = useCallback(
    async (input: ActionInput<F, K, A>, options: RunOptions = {}) => {
      setPending((n) => n + 1);
      setError(null);
      try {
        const out = await client.runAction(kind, action, input, options);
        if (mounted.current) setResult(out);
        return out;
      } catch (err) {
        const failure =
          err instanceof FlowstateError ? err : new FlowstateError("network_error", String(err));
        if (mounted.current) setError(failure);
        throw failure;
      } finally {
        if (mounted.current) setPending((n) => n - 1);
      }
    },
    [client, kind, action],
  );
  const reset = useCallback(() => {
    setResult(null);
    setError(null);
  }, []);
  return { run, pending: pending > 0, result, error, reset };
}
