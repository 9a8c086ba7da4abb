/** Errors of the flowstate client: one class, carrying the server's error code. */

export interface ErrorDetail {
  loc: (string | number)[];
  msg: string;
  type: string;
}

/**
 * A failed call. `code` is the server's error code (`validation_error`, `session_not_found`,
 * `auth_error`, …) or, for failures that never reached a server answer, `network_error` /
 * `invalid_response`. `status` is the HTTP status (0 without an answer).
 */
export class FlowstateError extends Error {
  readonly code: string;
  readonly status: number;
  readonly details?: ErrorDetail[] | unknown;
  readonly requestId?: string;
  readonly sessionId?: string;

  constructor(
    code: string,
    message: string,
    init: {
      status?: number;
      details?: unknown;
      requestId?: string;
      sessionId?: string;
      cause?: unknown;
    } = {},
  ) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "FlowstateError";
    this.code = code;
    this.status = init.status ?? 0;
    if (init.details !== undefined) this.details = init.details;
    if (init.requestId !== undefined) this.requestId = init.requestId;
    if (init.sessionId !== undefined) this.sessionId = init.sessionId;
  }
}

/** True for a {@link FlowstateError} (optionally of one code). */
export function isFlowstateError(value: unknown, code?: string): value is FlowstateError {
  return value instanceof FlowstateError && (code === undefined || value.code === code);
}

/** The error a non-2xx answer stands for (`{"error": {code, message, details?}}`). */
export async function errorFromResponse(response: Response): Promise<FlowstateError> {
  let body: unknown = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = (body as { error?: { code?: unknown; message?: unknown; details?: unknown } })
    ?.error;
  if (error && typeof error.code === "string") {
    const extra = body as { requestId?: string; sessionId?: string };
    return new FlowstateError(error.code, String(error.message ?? error.code), {
      status: response.status,
      details: error.details,
      ...(extra.requestId ? { requestId: extra.requestId } : {}),
      ...(extra.sessionId ? { sessionId: extra.sessionId } : {}),
    });
  }
  return new FlowstateError("invalid_response", `HTTP ${response.status} without an error body`, {
    status: response.status,
  });
}
