/**
 * Tokens: what the app gives (a string, or a function returning one or a promise of one), the
 * `exp` of a JWT (its payload decoded without verification: the gateway verifies), and when to
 * ask for a fresh one (`exp` minus min(30 s, a third of the lifetime left)).
 */

export type TokenSource = string | (() => string | Promise<string>);

/** The `exp` claim (seconds since the epoch) of a JWT, if it has one and decodes. */
export function jwtExp(token: string): number | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const bin = atob(padded);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    return typeof payload?.exp === "number" ? payload.exp : undefined;
  } catch {
    return undefined;
  }
}

/** Default ceiling of the refresh margin. */
export const REFRESH_MARGIN_MAX_MS = 30_000;

/**
 * When (ms since the epoch) a token obtained at `now` should be replaced: `exp` minus
 * min(`maxMarginMs`, a third of the time left). `undefined`: it does not expire.
 */
export function refreshAt(
  token: string,
  now: number,
  maxMarginMs = REFRESH_MARGIN_MAX_MS,
): number | undefined {
  const exp = jwtExp(token);
  if (exp === undefined) return undefined;
  const expMs = exp * 1000;
  const left = Math.max(0, expMs - now);
  return expMs - Math.min(maxMarginMs, left / 3);
}
