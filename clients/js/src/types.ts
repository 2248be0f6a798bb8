/**
 * The shapes of the wire protocol the client exposes to apps (docs/protocol.md sections 2-3):
 * events, subscribe, hello and call results, progress, and the client's options and states.
 */

import type { TokenSource } from "./token.js";

/** An `event` notification: `id` on topics with history, `from` on events a client published. */
export interface SwitchboardEvent<T = unknown> {
  topic: string;
  data: T;
  id?: string;
  from?: string;
}

/** The reply to `subscribe`. `recovered: false`: events after `since` may be missing. */
export interface SubscribeResult {
  topic: string;
  position?: string;
  recovered?: boolean;
}

/** The MCP `CallToolResult` of a `tools/call`. */
export interface CallToolResult {
  content: unknown[];
  structuredContent?: unknown;
  isError?: boolean;
  _meta?: Record<string, unknown>;
  [key: string]: unknown;
}

/** `notifications/progress` of a call. */
export interface Progress {
  progressToken: string | number;
  progress: number;
  total?: number;
  message?: string;
}

/** The `hello` result. */
export interface HelloResult {
  session: string;
  resumed: boolean;
  node: string;
  heartbeatMs: number;
  limits?: Record<string, number>;
  subscriptions?: SubscribeResult[];
}

export type State = "idle" | "connecting" | "connected" | "resumed" | "disconnected" | "closed";

/** What comes with a `state` notice. */
export interface StateDetail {
  /** The close code (disconnected, closed), when there was one. */
  code?: number;
  reason?: string;
  /** The node (connected, resumed). */
  node?: string;
  /** The session id (connected, resumed). */
  session?: string;
  /** The topic (`recovered:false`, `revoked`). */
  topic?: string;
}

/** A WebSocket constructor: the global one by default (browsers, Node 22+). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocket;

export interface ClientOptions {
  /** Gateway URLs (`wss://host/ws`), tried in rotation. */
  urls: string | string[];
  /** A JWT, or a function returning (a promise of) one: asked before connecting and before
   * `exp` (then sent with `refresh`). Sent in `hello`, never in the URL. */
  token?: TokenSource;
  /** Sent as `hello {client}`; default `{name: "switchboard-js", version}`. */
  client?: unknown;
  /** Another WebSocket implementation (default: `globalThis.WebSocket`). */
  WebSocket?: WebSocketConstructor;
  /** Full-jitter backoff: first delay up to this (default 100 ms). */
  backoffMinMs?: number;
  /** Ceiling of the backoff (default 5000 ms). */
  backoffMaxMs?: number;
  /** How long a `hello` may take before the socket is given up (default 10 000 ms). */
  helloTimeoutMs?: number;
  /** subscribe / unsubscribe / publish / ping, waiting for a socket included (default 30 000 ms). */
  requestTimeoutMs?: number;
  /** Default timeout of `call` (default 300 000 ms; 0 or null: none). */
  callTimeoutMs?: number | null;
  /** A socket that receives nothing for this many heartbeats is dropped (default 3; 0: never). */
  staleHeartbeats?: number;
  /** Events buffered for a slow (async) handler before the client drops the socket and resumes
   * from the last event handed over (default 1024). */
  eventQueue?: number;
  /** Ceiling of the token refresh margin before `exp` (default 30 000 ms). */
  refreshMarginMs?: number;
  /** Delay before the one retry of a refused `refresh` (default 1000 ms). */
  refreshRetryMs?: number;
  /** How long `close()` waits for the gateway's close frame (default 2000 ms). */
  closeTimeoutMs?: number;
}

export interface SubscribeOptions {
  /** The id of the last event the app has: the events after it are replayed first. */
  since?: string;
  /** A subscription token (a JWT whose `topic` claim names this topic). */
  token?: string;
}

export interface CallOptions {
  signal?: AbortSignal;
  onProgress?: (progress: Progress) => void;
  /** ms; default `callTimeoutMs`; 0 or null: none. */
  timeout?: number | null;
  /** Extra `_meta` (e.g. `{"switchboard/cache": "bypass"}`). */
  meta?: Record<string, unknown>;
}

export interface PublishOptions {
  history?: boolean;
}
