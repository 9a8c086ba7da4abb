/** @flowstate/client: a typed client for flowstate servers (see docs/client-js.md). */

export { createClient, FlowstateClient } from "./client.js";
export type { ClientOptions } from "./client.js";
export { FlowstateError, isFlowstateError } from "./errors.js";
export type { ErrorDetail } from "./errors.js";
export { LiveSession, diffNames } from "./session.js";
export type { SessionState, SubscribeOptions } from "./session.js";
export { readSse } from "./sse.js";
export type { SseFrame } from "./sse.js";
export * from "./types.js";
