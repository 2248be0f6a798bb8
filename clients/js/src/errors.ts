/**
 * The errors the client rejects with. Every one is a `SwitchboardError`, so an app can tell
 * them from its own; `instanceof` (or `name`) says which:
 *
 * - `RpcError`: the gateway answered a JSON-RPC error (`code`, `message`, `data`).
 * - `DisconnectedError`: the socket carrying a non-call request dropped before its reply (the
 *   client reconnects; a subscribe stays wanted and is restored).
 * - `SessionLostError`: a call was in flight when the session could not be resumed.
 * - `ClosedError`: the client is closed for good (`code`, `reason`: the app's `close()`, 4009,
 *   1008).
 * - `TimeoutError`: no reply (or no ready socket) within the request or call timeout.
 * - `AbortError`: the call's `AbortSignal` fired (`cause`: the signal's reason).
 */

export class SwitchboardError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A JSON-RPC error from the gateway (docs/protocol.md section 4 lists the codes). */
export class RpcError extends SwitchboardError {
  readonly code: number;
  readonly data: unknown;
  constructor(code: number, message: string, data?: unknown) {
    super(message);
    this.code = code;
    this.data = data;
  }
}

export class DisconnectedError extends SwitchboardError {
  constructor(message = "the connection dropped before the reply") {
    super(message);
  }
}

export class SessionLostError extends SwitchboardError {
  constructor(message = "the session could not be resumed; the call's reply is lost") {
    super(message);
  }
}

export class ClosedError extends SwitchboardError {
  readonly code: number | undefined;
  readonly reason: string;
  constructor(code: number | undefined, reason: string) {
    super(`closed${code !== undefined ? ` (${code})` : ""}: ${reason}`);
    this.code = code;
    this.reason = reason;
  }
}

export class TimeoutError extends SwitchboardError {
  constructor(message = "timed out") {
    super(message);
  }
}

export class AbortError extends SwitchboardError {
  constructor(reason?: unknown) {
    super("the call was aborted", { cause: reason });
  }
}

/** JSON-RPC error codes of the Switchboard protocol. */
export const ErrorCodes = {
  ParseError: -32700,
  InvalidRequest: -32600,
  MethodNotFound: -32601,
  InvalidParams: -32602,
  Internal: -32603,
  Unauthorized: -32001,
  Forbidden: -32002,
  RateLimited: -32003,
  NotFound: -32004,
  Timeout: -32005,
  Overloaded: -32006,
  TooLarge: -32007,
} as const;
