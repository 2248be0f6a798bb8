/**
 * Unit tests of the JS client's pure parts and of its close-code policy, with a fake
 * WebSocket injected through `options.WebSocket` (no gateway): `node --test test/` after
 * `npm run build`. The behaviour against real gateways is tests/tests/client_js.rs.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  SwitchboardClient,
  ClosedError,
  DisconnectedError,
  SessionLostError,
  backoffDelay,
  closeAction,
  jwtExp,
  refreshAt,
  parseId,
  formatId,
} from "../dist/index.js";

test("event ids compare as (ms, seq) integers, not strings", () => {
  assert.ok(parseId("10-0") > parseId("9-99"));
  assert.ok(parseId("1700000000000-10") > parseId("1700000000000-9"));
  assert.ok(parseId("9007199254740993-0") > parseId("9007199254740992-0"), "beyond 2^53");
  assert.equal(parseId("x-1"), undefined);
  assert.equal(parseId("1-"), undefined);
  assert.equal(formatId(parseId("18446744073709551615-18446744073709551615")), "18446744073709551615-18446744073709551615");
});

test("backoff: full jitter within [floor, floor + min(max, min*2^n)]", () => {
  assert.equal(backoffDelay(0, 100, 5000, 0, () => 0.999999), 100);
  assert.equal(backoffDelay(3, 100, 5000, 0, () => 0.999999), 800);
  assert.equal(backoffDelay(20, 100, 5000, 0, () => 0.999999), 5000);
  assert.equal(backoffDelay(5, 100, 5000, 0, () => 0), 0);
  assert.equal(backoffDelay(0, 100, 5000, 1000, () => 0), 1000);
});

test("close-code policy", () => {
  assert.deepEqual(closeAction(4009), { kind: "final" });
  assert.deepEqual(closeAction(1008), { kind: "auth" });
  assert.deepEqual(closeAction(1012), { kind: "reconnect", floorMs: 0, reset: true });
  assert.equal(closeAction(1013).floorMs, 1000);
  assert.equal(closeAction(4029).floorMs, 5000);
  for (const c of [1000, 1001, 1005, 1006, 1011, 4001, 4002, 4008, 1002, 1003, 1007, 1009, undefined]) {
    assert.deepEqual(closeAction(c), { kind: "reconnect", floorMs: 0, reset: false }, String(c));
  }
});

function jwt(payload) {
  const b = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b({ alg: "HS256" })}.${b(payload)}.sig`;
}

test("token exp and the refresh margin", () => {
  assert.equal(jwtExp(jwt({ sub: "a", exp: 123 })), 123);
  assert.equal(jwtExp(jwt({ sub: "a" })), undefined);
  assert.equal(jwtExp("garbage"), undefined);
  const now = 1_000_000_000_000;
  const exp = now / 1000 + 9;
  assert.equal(refreshAt(jwt({ exp }), now), now + 6000, "a 9 s token refreshes 3 s before exp");
  assert.equal(refreshAt(jwt({ exp: now / 1000 + 3600 }), now), now + 3600_000 - 30_000);
});

/** A scripted fake of the WebSocket API: every instance is recorded; the test drives it. */
function fakeWebSocket() {
  const sockets = [];
  class Fake extends EventTarget {
    constructor(url, protocol) {
      super();
      this.url = url;
      this.protocol = protocol;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
      queueMicrotask(() => {
        this.readyState = 1;
        this.dispatchEvent(new Event("open"));
      });
    }
    send(text) {
      const msg = JSON.parse(text);
      this.sent.push(msg);
      this.onSend?.(msg);
    }
    reply(id, result) {
      this.message({ jsonrpc: "2.0", id, result });
    }
    message(obj) {
      const ev = new Event("message");
      ev.data = JSON.stringify(obj);
      this.dispatchEvent(ev);
    }
    close(code = 1000, reason = "") {
      this.serverClose(code, reason);
    }
    serverClose(code, reason = "") {
      if (this.readyState === 3) return;
      this.readyState = 3;
      const ev = new Event("close");
      ev.code = code;
      ev.reason = reason;
      queueMicrotask(() => this.dispatchEvent(ev));
    }
  }
  return { Fake, sockets };
}

/** Answers every hello (resumed once a session exists) and every other request with `{}`. */
function autoGateway(ws, { session = "s1", node = "n" } = {}) {
  ws.onSend = (m) => {
    if (m.method === "hello") ws.reply(m.id, { session, resumed: m.params.session === session, node, heartbeatMs: 25000, subscriptions: [] });
    else if (m.method === "subscribe") ws.reply(m.id, { topic: m.params.topic });
    else if (m.id !== undefined && m.method !== "tools/call") ws.reply(m.id, {});
  };
}

const until = async (cond, ms = 3000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 5));
  }
};

test("hello: subprotocol, token in hello (not the URL), client info; 4009 is final", async () => {
  const { Fake, sockets } = fakeWebSocket();
  const sb = new SwitchboardClient({ urls: ["ws://a/ws", "ws://b/ws"], token: "tok", WebSocket: Fake });
  const states = [];
  sb.on("state", (s, d) => states.push(d.code ? `${s}:${d.code}` : s));
  const p = sb.connect();
  await until(() => sockets.length === 1 && sockets[0].onSend === undefined && sockets[0].readyState === 1);
  autoGateway(sockets[0]);
  await until(() => sockets[0].sent.length === 1);
  const hello = sockets[0].sent[0];
  sockets[0].onSend(hello);
  await p;
  assert.equal(sockets[0].protocol, "switchboard.v1");
  assert.equal(sockets[0].url, "ws://a/ws");
  assert.equal(hello.params.token, "tok");
  assert.equal(hello.params.client.name, "switchboard-js");
  assert.equal(sb.session, "s1");
  sockets[0].serverClose(4009, "taken over");
  await until(() => sb.state === "closed");
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(sockets.length, 1, "no reconnect after 4009");
  assert.deepEqual(states, ["connecting", "connected", "closed:4009"]);
  await assert.rejects(sb.publish("t", 1), ClosedError);
});

test("a drop reconnects to the next URL and resumes with positions; calls survive, requests fail", async () => {
  const { Fake, sockets } = fakeWebSocket();
  const sb = new SwitchboardClient({ urls: ["ws://a/ws", "ws://b/ws"], WebSocket: Fake, backoffMinMs: 10, backoffMaxMs: 20 });
  const origPush = sockets.push.bind(sockets);
  sockets.push = (ws) => {
    autoGateway(ws);
    return origPush(ws);
  };
  await sb.connect();
  const got = [];
  const sub = sb.subscribe("h", (e) => got.push(e.id));
  await sub.ready;
  sockets[0].message({ jsonrpc: "2.0", method: "event", params: { topic: "h", data: 1, id: "5-0" } });
  sockets[0].message({ jsonrpc: "2.0", method: "event", params: { topic: "h", data: 1, id: "5-0" } });
  const call = sb.call("sleep", { ms: 1 });
  await until(() => sockets[0].sent.some((m) => m.method === "tools/call"));
  const callId = sockets[0].sent.find((m) => m.method === "tools/call").id;
  sockets[0].onSend = () => {};
  const pending = sb.publish("h", 2);
  sockets[0].serverClose(1006);
  await assert.rejects(pending, DisconnectedError);
  await until(() => sb.state === "resumed");
  const ws1 = sockets[1];
  assert.equal(ws1.url, "ws://b/ws");
  const hello = ws1.sent.find((m) => m.method === "hello");
  assert.deepEqual(hello.params.positions, { h: "5-0" });
  assert.equal(hello.params.session, "s1");
  assert.ok(hello.id > callId, "request ids are unique for the session");
  // The call's reply arrives on the new socket, with its original id.
  ws1.reply(callId, { content: [], structuredContent: { ok: true } });
  assert.deepEqual((await call).structuredContent, { ok: true });
  // A replayed duplicate is dropped; a new one passes.
  ws1.message({ jsonrpc: "2.0", method: "event", params: { topic: "h", data: 1, id: "5-0" } });
  ws1.message({ jsonrpc: "2.0", method: "event", params: { topic: "h", data: 1, id: "6-0" } });
  assert.deepEqual(got, ["5-0", "6-0"]);
  await sb.close();
});

test("not resumed: calls in flight fail with SessionLost, topics resubscribe with since", async () => {
  const { Fake, sockets } = fakeWebSocket();
  let n = 0;
  const sb = new SwitchboardClient({ urls: ["ws://a/ws"], WebSocket: Fake, backoffMinMs: 10, backoffMaxMs: 20 });
  const origPush = sockets.push.bind(sockets);
  sockets.push = (ws) => {
    autoGateway(ws, { session: `s${++n}` });
    return origPush(ws);
  };
  await sb.connect();
  const sub = sb.subscribe("h", () => {});
  await sub.ready;
  sockets[0].message({ jsonrpc: "2.0", method: "event", params: { topic: "h", data: 1, id: "7-3" } });
  const call = sb.call("sleep", {});
  await until(() => sockets[0].sent.some((m) => m.method === "tools/call"));
  sockets[0].serverClose(1001);
  await assert.rejects(call, SessionLostError);
  await until(() => sockets[1]?.sent.some((m) => m.method === "subscribe"));
  assert.deepEqual(sockets[1].sent.find((m) => m.method === "subscribe").params, { topic: "h", since: "7-3" });
  assert.equal(sb.session, "s2");
  await sb.close();
});

test("1013 and 4029 wait at least their floors; 1008 with a fixed token is final", async () => {
  for (const [code, floor] of [[1013, 1000], [4029, 5000]]) {
    const { Fake, sockets } = fakeWebSocket();
    const sb = new SwitchboardClient({ urls: ["ws://a/ws"], WebSocket: Fake, backoffMinMs: 10, backoffMaxMs: 20 });
    const origPush = sockets.push.bind(sockets);
    sockets.push = (ws) => {
      autoGateway(ws);
      return origPush(ws);
    };
    await sb.connect();
    const t0 = Date.now();
    sockets[0].serverClose(code);
    await until(() => sockets.length === 2, floor + 2000);
    assert.ok(Date.now() - t0 >= floor - 5, `${code}: waited ${Date.now() - t0} ms`);
    await sb.close();
  }
  const { Fake, sockets } = fakeWebSocket();
  const sb = new SwitchboardClient({ urls: ["ws://a/ws"], token: "fixed", WebSocket: Fake, backoffMinMs: 10, backoffMaxMs: 20 });
  const origPush = sockets.push.bind(sockets);
  sockets.push = (ws) => {
    autoGateway(ws);
    return origPush(ws);
  };
  await sb.connect();
  sockets[0].serverClose(1008, "token expired");
  await until(() => sb.state === "closed");
  assert.equal(sockets.length, 1);
});

/** A client on fake sockets that answer like a gateway (see autoGateway). */
function withGateway(opts = {}, gw = {}) {
  const { Fake, sockets } = fakeWebSocket();
  const origPush = sockets.push.bind(sockets);
  sockets.push = (ws) => {
    autoGateway(ws, gw);
    return origPush(ws);
  };
  const sb = new SwitchboardClient({ urls: ["ws://a/ws", "ws://b/ws"], WebSocket: Fake, backoffMinMs: 10, backoffMaxMs: 20, ...opts });
  return { sb, sockets };
}

test("1012: the next URL, at once", async () => {
  const { sb, sockets } = withGateway({ backoffMinMs: 50, backoffMaxMs: 5000 });
  await sb.connect();
  // Several failed attempts would grow the backoff; 1012 uses attempt 0 regardless.
  const t0 = Date.now();
  sockets[0].serverClose(1012, "restarting");
  await until(() => sb.state === "resumed");
  assert.equal(sockets[1].url, "ws://b/ws");
  assert.ok(Date.now() - t0 < 500, `${Date.now() - t0} ms`);
  await sb.close();
});

test("heartbeat: a JSON-RPC ping after one quiet heartbeat; a socket that stays silent is dropped", async () => {
  const { Fake, sockets } = fakeWebSocket();
  const sb = new SwitchboardClient({ urls: ["ws://a/ws"], WebSocket: Fake, backoffMinMs: 10, backoffMaxMs: 20 });
  const origPush = sockets.push.bind(sockets);
  sockets.push = (ws) => {
    ws.onSend = (m) => {
      if (m.method === "hello") ws.reply(m.id, { session: "s", resumed: m.params.session === "s", node: "n", heartbeatMs: 100 });
      // Pings go unanswered: the socket is silent.
    };
    return origPush(ws);
  };
  const states = [];
  sb.on("state", (s) => states.push(s));
  await sb.connect();
  await until(() => sockets[0].sent.some((m) => m.method === "ping"), 1000);
  await until(() => sockets.length === 2, 1500);
  assert.ok(states.includes("disconnected"), String(states));
  await sb.close();
});

test("a slow async handler: past eventQueue the socket is dropped and the session resumes from what it handed over", async () => {
  const { sb, sockets } = withGateway({ eventQueue: 3 });
  await sb.connect();
  let release;
  const gate = new Promise((r) => (release = r));
  const got = [];
  const sub = sb.subscribe("h", async (e) => {
    got.push(e.id);
    if (e.id === "1-0") await gate;
  });
  await sub.ready;
  for (let i = 1; i <= 6; i++) sockets[0].message({ jsonrpc: "2.0", method: "event", params: { topic: "h", data: i, id: `${i}-0` } });
  await until(() => sockets.length === 2 && sb.state === "resumed");
  const hello = sockets[1].sent.find((m) => m.method === "hello");
  assert.deepEqual(hello.params.positions, { h: "1-0" }, "resumes after the last event handed over");
  release();
  await new Promise((r) => setTimeout(r, 0));
  // The replay brings the dropped ones again, once each.
  for (let i = 2; i <= 5; i++) sockets[1].message({ jsonrpc: "2.0", method: "event", params: { topic: "h", data: i, id: `${i}-0` } });
  await until(() => got.length === 5).catch((e) => {
    throw new Error(`got ${JSON.stringify(got)}: ${e.message}`);
  });
  assert.deepEqual(got, ["1-0", "2-0", "3-0", "4-0", "5-0"]);
  await sb.close();
});

test("options are checked", () => {
  const { Fake } = fakeWebSocket();
  assert.throws(() => new SwitchboardClient({ urls: [], WebSocket: Fake }), TypeError);
  assert.throws(() => new SwitchboardClient({ urls: ["not a url"], WebSocket: Fake }), TypeError);
  assert.throws(() => new SwitchboardClient({ urls: ["ftp://x/ws"], WebSocket: Fake }), TypeError);
  assert.throws(() => new SwitchboardClient({ urls: ["ws://x/ws"], WebSocket: Fake, backoffMinMs: 0 }), TypeError);
  assert.throws(() => new SwitchboardClient({ urls: ["ws://x/ws"], WebSocket: Fake, eventQueue: 0 }), TypeError);
  assert.equal(new SwitchboardClient({ urls: "wss://x/ws", WebSocket: Fake }).state, "idle");
});
