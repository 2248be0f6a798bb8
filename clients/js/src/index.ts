/**
 * `@switchboard-rt/client`: the public surface of the Switchboard JavaScript client (browser
 * and Node 22+, no dependencies). Everything an app imports comes from here; the browser
 * bundle (dist/switchboard.min.js) is this module, minified.
 */

export { SwitchboardClient, Subscription, VERSION, SUBPROTOCOL } from "./client.js";
export {
  SwitchboardError,
  RpcError,
  DisconnectedError,
  SessionLostError,
  ClosedError,
  TimeoutError,
  AbortError,
  ErrorCodes,
} from "./errors.js";
export { backoffDelay, closeAction, type CloseAction } from "./backoff.js";
export { jwtExp, refreshAt, type TokenSource } from "./token.js";
export { parseId, formatId } from "./tracker.js";
export type {
  SwitchboardEvent,
  SubscribeResult,
  CallToolResult,
  Progress,
  HelloResult,
  State,
  StateDetail,
  ClientOptions,
  SubscribeOptions,
  CallOptions,
  PublishOptions,
  WebSocketConstructor,
} from "./types.js";
