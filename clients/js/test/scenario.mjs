/**
 * Scenarios of the JS client against real gateways, for tests/tests/client_js.rs (run with
 * Node 22: `node test/scenario.mjs MODE`, env `SB_URLS` = comma-separated gateway URLs,
 * `SB_SECRET` = the gateways' HS256 secret). Each mode reports JSON lines (`step`) and reads
 * the test's commands from stdin; the Rust test owns Redis, the gateways, the worker, the
 * backend publisher and the kill -9, and asserts on the reports.
 */

import {
  AbortError,
  ClosedError,
  SwitchboardClient,
} from "../dist/index.js";
import { command, mint, now, recordStates, report, until } from "./util.mjs";

const urls = (process.env.SB_URLS ?? "").split(",").filter(Boolean);
const secret = process.env.SB_SECRET ?? "";
const mode = process.argv[2];

/** Quick backoff so reconnects happen well within the tests' deadlines. */
const quick = { backoffMinMs: 50, backoffMaxMs: 300 };

/** A token function for `sub` whose tokens live `ttl` seconds; counts its calls. */
function tokens(sub, ttl = 3600) {
  const fn = async () => {
    fn.calls += 1;
    return mint(secret, { sub, exp: now() + ttl });
  };
  fn.calls = 0;
  return fn;
}

async function pubsub() {
  const alice = new SwitchboardClient({ urls: [urls[0]], token: tokens("alice"), ...quick });
  const bob = new SwitchboardClient({ urls: [urls[1]], token: tokens("bob"), ...quick });
  await alice.connect();
  await bob.connect();
  report({ step: "ready", alice: alice.node, bob: bob.node });

  // Published on one node, received on the other, with `from`.
  const got = [];
  const sub = bob.subscribe("chat:x", (e) => got.push(e));
  await sub.ready;
  for (let n = 0; n < 3; n++) await alice.publish("chat:x", { n });
  await until("3 chat events", () => got.length >= 3);
  report({ step: "pubsub", events: got });
  await sub.unsubscribe();

  // `since`: exactly the events after it, recovered.
  const ids = [];
  for (let n = 0; n < 5; n++) ids.push((await alice.publish("hist:r", { n })).id);
  const replayed = [];
  const hist = bob.subscribe("hist:r", (e) => replayed.push(e), { since: ids[1] });
  const reply = await hist.ready;
  const beforeReply = replayed.map((e) => e.id);
  // A live one after the replay: once, after the others.
  ids.push((await alice.publish("hist:r", { n: 5 })).id);
  await until("the live event", () => replayed.length >= 4);
  report({ step: "since", published: ids, got: replayed.map((e) => e.id), data: replayed.map((e) => e.data), beforeReply, reply });
  await alice.close();
  await bob.close();
  report({ step: "done", alice: alice.state, bob: bob.state });
}

async function kill() {
  const sb = new SwitchboardClient({ urls, token: tokens("alice"), ...quick });
  const states = recordStates(sb);
  await sb.connect();
  const got = [];
  const sub = sb.subscribe("hist:k", (e) => got.push(e));
  await sub.ready;
  report({ step: "ready", node: sb.node, session: sb.session });

  await command(); // {"cmd":"call"}
  let progressed = false;
  const call = sb
    .call("sleep", { ms: 1500 }, { onProgress: () => (progressed = true) })
    .then((r) => ({ ok: r }), (e) => ({ err: `${e.name}: ${e.message}` }));
  await until("the call's first progress", () => progressed);
  report({ step: "progress" });

  const { count } = await command(); // {"cmd":"collect","count":N}
  await until(`${count} events`, () => got.length >= count, 30_000);
  const outcome = await call;
  // Anything extra (a duplicate) would show within a little more.
  report({
    step: "result",
    ids: got.map((e) => e.id),
    data: got.map((e) => e.data),
    call: outcome,
    states,
    node: sb.node,
    session: sb.session,
  });
  await sb.close();
}

async function takeover() {
  const sb = new SwitchboardClient({ urls, token: tokens("alice"), ...quick });
  const states = recordStates(sb);
  await sb.connect();
  report({ step: "ready", node: sb.node, session: sb.session });
  await until("state closed", () => sb.state === "closed");
  const at = states.length;
  // Nothing may follow: a reconnect would show as `connecting` well within this window
  // (the backoff is at most 300 ms).
  await new Promise((r) => setTimeout(r, 1500));
  let publish;
  try {
    await sb.publish("hist:t", { after: true });
    publish = "sent";
  } catch (e) {
    publish = e instanceof ClosedError ? `ClosedError:${e.code}` : String(e);
  }
  report({ step: "closed", states, after: states.slice(at), publish, state: sb.state });
}

async function tokenExpiredFirst() {
  // The first token the function gives is expired: the gateway closes with 1008, the client
  // asks for a fresh one and goes on.
  let calls = 0;
  const fn = async () => {
    calls += 1;
    return mint(secret, { sub: "alice", exp: calls === 1 ? now() - 60 : now() + 3600 });
  };
  const sb = new SwitchboardClient({ urls, token: fn, ...quick });
  const states = recordStates(sb);
  await sb.connect();
  const works = (await sb.publish("hist:e", { ok: 1 })).id !== undefined;
  report({ step: "fresh", calls, states, state: sb.state, works });
  await sb.close();

  // A fixed expired token: final at the first 1008.
  const fixed = new SwitchboardClient({ urls, token: await mint(secret, { sub: "alice", exp: now() - 60 }), ...quick });
  const fixedStates = recordStates(fixed);
  const fixedErr = await fixed.connect().then(() => "connected", (e) => (e instanceof ClosedError ? `ClosedError:${e.code}` : String(e)));
  report({ step: "fixed", error: fixedErr, states: fixedStates });

  // A function that only ever gives expired tokens: one fresh try, then final.
  let badCalls = 0;
  const bad = new SwitchboardClient({
    urls,
    token: async () => {
      badCalls += 1;
      return mint(secret, { sub: "alice", exp: now() - 60 });
    },
    ...quick,
  });
  const badStates = recordStates(bad);
  const badErr = await bad.connect().then(() => "connected", (e) => (e instanceof ClosedError ? `ClosedError:${e.code}` : String(e)));
  report({ step: "always-bad", error: badErr, calls: badCalls, states: badStates });
}

async function tokenExpiryClose() {
  // Tokens for 4 s; the refreshes (and their retry) get a bad token, so the gateway closes with
  // 1008 at exp + 5 s; the client asks for a fresh token then and resumes its session.
  let calls = 0;
  const fn = async () => {
    calls += 1;
    if (calls === 2 || calls === 3) return "not.a.token";
    return mint(secret, { sub: "alice", exp: now() + 4 });
  };
  const sb = new SwitchboardClient({ urls, token: fn, refreshRetryMs: 300, ...quick });
  const states = recordStates(sb);
  await sb.connect();
  const session = sb.session;
  await until("a 1008 disconnect", () => states.some((s) => s === "disconnected:1008"), 20_000);
  await until("the resume", () => sb.state === "resumed", 10_000);
  report({ step: "result", states, calls, sameSession: sb.session === session });
  await sb.close();
}

async function tokenRefresh() {
  // 8-second tokens: refreshed before exp with `refresh`; the socket outlives exp + 5 s.
  const fn = tokens("alice", 8);
  const sb = new SwitchboardClient({ urls, token: fn, ...quick });
  const states = recordStates(sb);
  const t0 = Date.now();
  await sb.connect();
  const got = [];
  const sub = sb.subscribe("hist:f", (e) => got.push(e));
  await sub.ready;
  await until("exp + 6 s", () => Date.now() > t0 + 14_500, 20_000);
  await sb.publish("hist:f", { late: true });
  await until("the late event", () => got.length >= 1);
  report({ step: "result", states, calls: fn.calls, elapsedMs: Date.now() - t0, got: got.length });
  await sb.close();
}

async function abort() {
  const sb = new SwitchboardClient({ urls, token: tokens("alice"), ...quick });
  await sb.connect();
  const ac = new AbortController();
  let progressed = false;
  const first = sb.call("sleep", { ms: 4000 }, { signal: ac.signal, onProgress: () => (progressed = true) });
  const settled = first.then(
    () => "resolved",
    (e) => (e instanceof AbortError ? "AbortError" : `${e.name}: ${e.message}`),
  );
  await until("the first call's progress", () => progressed);
  const t0 = Date.now();
  ac.abort("test");
  const firstOutcome = await settled;
  const abortMs = Date.now() - t0;
  // The worker runs one call at a time: this one is not queued behind a 4 s sleep only if the
  // cancellation stopped it.
  const second = await sb.call("sleep", { ms: 20 });
  const secondMs = Date.now() - t0;
  // An already-aborted signal rejects at once, sending nothing.
  const pre = await sb.call("sleep", { ms: 1 }, { signal: AbortSignal.abort() }).then(() => "resolved", (e) => e.name);
  report({ step: "result", first: firstOutcome, abortMs, secondMs, second: second.structuredContent, pre });
  await sb.close();
}

const modes = { pubsub, kill, takeover, "token-expired-first": tokenExpiredFirst, "token-expiry-close": tokenExpiryClose, "token-refresh": tokenRefresh, abort };
if (!modes[mode]) throw new Error(`unknown mode ${mode}; one of ${Object.keys(modes).join(", ")}`);
await modes[mode]();
process.exit(0);
