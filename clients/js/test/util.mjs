/**
 * Helpers for the scenario programs that tests/tests/client_js.rs and client_browser.rs drive
 * (through switchboard_harness::script::Script): one JSON report per stdout line, commands read
 * as JSON lines from stdin, bounded waits for a condition, and HS256 JWTs minted with WebCrypto
 * from the secret the test gives.
 */

import { createInterface } from "node:readline";

/** Prints one report line. */
export function report(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

/** Any failure ends the program with an `error` report (the test fails at once). */
export function fail(e) {
  report({ step: "error", message: String(e?.stack ?? e) });
  process.exit(1);
}
process.on("unhandledRejection", fail);
process.on("uncaughtException", fail);

const lines = createInterface({ input: process.stdin });
const queued = [];
const waiting = [];
lines.on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  const w = waiting.shift();
  if (w) w(cmd);
  else queued.push(cmd);
});

/** The next command from the test (a JSON object). */
export function command() {
  const c = queued.shift();
  if (c) return Promise.resolve(c);
  return new Promise((resolve) => waiting.push(resolve));
}

/** Waits until `cond()` is truthy (checked every 10 ms), or throws naming `what` after `ms`. */
export async function until(what, cond, ms = 15_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function b64url(bytes) {
  return Buffer.from(bytes).toString("base64url");
}

/** An HS256 JWT of `claims`, signed with `secret`. */
export async function mint(secret, claims) {
  const enc = new TextEncoder();
  const head = b64url(enc.encode(JSON.stringify({ alg: "HS256", typ: "JWT" })));
  const body = b64url(enc.encode(JSON.stringify(claims)));
  const key = await crypto.subtle.importKey("raw", enc.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const sig = await crypto.subtle.sign("HMAC", key, enc.encode(`${head}.${body}`));
  return `${head}.${body}.${b64url(new Uint8Array(sig))}`;
}

export const now = () => Math.floor(Date.now() / 1000);

/** Records a client's state notices as `state` or `state:code` strings. */
export function recordStates(client, into = []) {
  client.on("state", (state, detail) => {
    into.push(detail?.code !== undefined ? `${state}:${detail.code}` : detail?.topic ? `${state}:${detail.topic}` : state);
  });
  return into;
}
