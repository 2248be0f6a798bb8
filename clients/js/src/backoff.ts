/**
 * Reconnect delays and the close-code policy (docs/clients.md): full-jitter exponential
 * backoff, and what each close code the gateway sends makes the client do.
 */

/** What to do after a socket closed with a code. */
export type CloseAction =
  /** Stop for good: state `closed`. */
  | { kind: "final" }
  /** Reconnect; `floorMs` is added to the jittered delay; `reset` uses attempt 0. */
  | { kind: "reconnect"; floorMs: number; reset: boolean }
  /** 1008: ask the token function for a fresh token, then reconnect (final without one). */
  | { kind: "auth" };

/** The policy for a close `code` the app did not ask for (`undefined`: no close frame). */
export function closeAction(code: number | undefined): CloseAction {
  switch (code) {
    case 4009:
      return { kind: "final" };
    case 1008:
      return { kind: "auth" };
    case 1012:
      return { kind: "reconnect", floorMs: 0, reset: true };
    case 1013:
      return { kind: "reconnect", floorMs: 1000, reset: false };
    case 4029:
      return { kind: "reconnect", floorMs: 5000, reset: false };
    default:
      return { kind: "reconnect", floorMs: 0, reset: false };
  }
}

/**
 * The delay before reconnect attempt `attempt` (0 for the first): uniform in
 * `[0, min(maxMs, minMs * 2^attempt)]`, plus `floorMs`.
 */
export function backoffDelay(
  attempt: number,
  minMs: number,
  maxMs: number,
  floorMs = 0,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return floorMs + Math.floor(random() * (ceiling + 1));
}
