/** Wire types of the flowstate HTTP API (docs/http.md) and the shapes generated types fill in. */

export type JsonValue =
  | null
  | boolean
  | number
  | string
  | JsonValue[]
  | { [key: string]: JsonValue };

/** The scopes a client can see (`org` is the server's alias of `project`). */
export type ClientScope = "session" | "user" | "project";
export const CLIENT_SCOPES: readonly ClientScope[] = ["session", "user", "project"];

/** One flow as `flowstate codegen ts` describes it: its actions and its client data. */
export interface FlowTypes {
  actions: Record<string, { input: unknown; output: unknown }>;
  clientData: { session?: object; user?: object; project?: object };
}

/** Every flow of a server, by kind. Generated code exports one as `Flows`. */
export type FlowMap = Record<string, FlowTypes>;

/** What an untyped client assumes: any kind, any action, any client data. */
export interface AnyFlow {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  actions: Record<string, { input: any; output: any }>;
  clientData: {
    session: Record<string, unknown>;
    user: Record<string, unknown>;
    project: Record<string, unknown>;
  };
}
export type AnyFlows = Record<string, AnyFlow>;

export type Kind<F extends FlowMap> = keyof F & string;
export type ActionName<F extends FlowMap, K extends Kind<F>> = keyof F[K]["actions"] & string;
export type ActionInput<F extends FlowMap, K extends Kind<F>, A extends ActionName<F, K>> =
  F[K]["actions"][A]["input"];
export type ActionOutput<F extends FlowMap, K extends Kind<F>, A extends ActionName<F, K>> =
  F[K]["actions"][A]["output"];

/** The client data of one flow, by scope (every scope optional: empty scopes are left out). */
export type ClientDataOf<F extends FlowMap, K extends Kind<F>> = {
  [S in ClientScope]?: S extends keyof F[K]["clientData"] ? F[K]["clientData"][S] : never;
};

/** `useClientData`'s selection: per scope, the client-data names to read. */
export type Selection<CD> = {
  [S in ClientScope]?: readonly (S extends keyof CD ? keyof NonNullable<CD[S]> & string : never)[];
};

/** The part of the client data a selection picks. */
export type Selected<CD, Sel> = {
  [S in keyof Sel & keyof CD]?: Sel[S] extends readonly (infer N)[]
    ? Pick<NonNullable<CD[S]>, N & keyof NonNullable<CD[S]>>
    : never;
};

export interface ActionResult<O = unknown> {
  requestId: string;
  sessionId: string;
  status: "completed";
  output: O;
}

export interface RunOptions {
  sessionId?: string;
  projectId?: string;
  signal?: AbortSignal;
}

export interface StreamOptions extends RunOptions {
  /** How many times a dropped stream is re-attached with Last-Event-ID (default 5). */
  maxRetries?: number;
}

interface EventBase {
  seq: number;
  requestId: string;
  /** Set on events of live streams (user and session streams). */
  sessionId?: string;
  flowKind?: string;
}
export interface RequestCreatedEvent extends EventBase {
  type: "request.created";
  sessionId: string;
  flowKind: string;
  action: string;
  /** The project the run's session is bound to, or null. */
  projectId?: string | null;
}
export interface StateChangeEvent extends EventBase {
  type: "state_change";
  scope: ClientScope;
  operation: string;
  fields: string[];
  version: number;
  /** The new values of the changed fields that the scope exposes (never other fields). */
  values?: Record<string, JsonValue>;
}
export interface ResourceChangeEvent extends EventBase {
  type: "resource_change";
  scope: ClientScope;
  key: string;
  changeType: "created" | "updated" | "deleted";
}
export interface RequestCompletedEvent<O = unknown> extends EventBase {
  type: "request.completed";
  output: O;
}
export interface RequestFailedEvent extends EventBase {
  type: "request.failed";
  error: { code: string; message: string };
}
export type FlowEvent<O = unknown> =
  | RequestCreatedEvent
  | StateChangeEvent
  | ResourceChangeEvent
  | RequestCompletedEvent<O>
  | RequestFailedEvent;

export interface CollectionData<D = JsonValue> {
  count: number;
  items: { key: string; clientData: D }[];
}
export type ResourceData = { clientData: JsonValue } | CollectionData;

export interface Snapshot<CD = Record<string, Record<string, unknown>>> {
  sessionId: string;
  flowKind: string;
  clientData: CD;
  resources?: { [S in ClientScope]?: Record<string, ResourceData> };
}

export interface SessionInfo {
  sessionId: string;
  userId: string;
  flowKind: string;
  projectId: string | null;
  createdAt: number;
  metadata?: Record<string, JsonValue>;
}

export interface SessionPage {
  sessions: SessionInfo[];
  next: string | null;
}

export interface ActionInfo {
  name: string;
  /** The input's JSON Schema (null: the action declares no input model). */
  input: Record<string, unknown> | null;
}
export interface FlowInfo {
  kind: string;
  actions: ActionInfo[];
  /** Per scope, which client-data names are exposed fields and which are derived. */
  clientData?: { [S in ClientScope]?: { expose: string[]; derived: string[] } };
}

export interface ResourcePage {
  name: string;
  scope: ClientScope;
  count?: number;
  items?: { key: string; clientData: JsonValue }[];
  next?: string | null;
  clientData?: JsonValue;
}

export interface ResourceContent {
  name: string;
  key?: string;
  content: string | null;
}
