/**
 * `SwitchboardClient`: a connection to a Switchboard cluster that survives its sockets (a port
 * of client/src/session.rs to the browser's and Node 22's WebSocket).
 *
 * One loop owns the socket: it connects to the URLs in rotation, says `hello` (with
 * `{session, positions}` once it has a session, so the gateway resumes it and replays what the
 * app missed), and when the socket ends it follows the close-code policy (backoff.ts): reconnect
 * after a full-jitter delay, or stop for good (4009, 1008 twice, the app's `close()`).
 *
 * - Events are deduplicated per topic by id (tracker.ts) and handed to the subscriptions'
 *   handlers in order through a bounded queue: an async handler is awaited before the next
 *   event; when more than `eventQueue` events wait, the socket is dropped and the session
 *   resumed from the last event handed over.
 * - Request ids come from one counter for the client's life; calls live in a table that
 *   survives sockets, so a reply that arrives on the resumed socket reaches its caller. If the
 *   session is not resumed, they fail with `SessionLostError`; other requests in flight on a
 *   dropped socket fail with `DisconnectedError`; requests made while reconnecting wait for the
 *   next ready socket, within their timeout.
 * - Heartbeat: JS cannot see WebSocket pings, so after one heartbeat of silence the client sends
 *   a JSON-RPC `ping`, and drops the socket after `staleHeartbeats` heartbeats with nothing
 *   received, or when the ping is not answered within a heartbeat.
 * - A token function is asked before each connect (its token cached until the refresh margin
 *   before `exp`) and before `exp` on a live socket, whose new token goes out with `refresh`.
 */

import { backoffDelay, closeAction } from "./backoff.js";
import {
  AbortError,
  ClosedError,
  DisconnectedError,
  ErrorCodes,
  RpcError,
  SessionLostError,
  SwitchboardError,
  TimeoutError,
} from "./errors.js";
import { REFRESH_MARGIN_MAX_MS, refreshAt, type TokenSource } from "./token.js";
import { Tracker, parseId, previousId } from "./tracker.js";
import type {
  CallOptions,
  CallToolResult,
  ClientOptions,
  HelloResult,
  Progress,
  PublishOptions,
  State,
  StateDetail,
  SubscribeOptions,
  SubscribeResult,
  SwitchboardEvent,
  WebSocketConstructor,
} from "./types.js";

export const VERSION = "0.1.0";
export const SUBPROTOCOL = "switchboard.v1";

type Handler = (event: SwitchboardEvent) => unknown;
type Listener = (...args: any[]) => void;
type Id = number;

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** A request waiting for its reply on one socket. */
interface Pending {
  resolve: (result: any) => void;
  reject: (e: unknown) => void;
}

/** A `tools/call` in flight: lives across sockets. */
interface Call {
  id: Id;
  progressToken?: string;
  onProgress?: (p: Progress) => void;
  resolve: (r: CallToolResult) => void;
  reject: (e: unknown) => void;
  /** Sent on some socket (so its reply may come on a resumed one). */
  sent: boolean;
}

/** One socket's life. */
interface Socket {
  ws: WebSocket;
  url: string;
  pending: Map<Id, Pending>;
  ready: boolean;
  ended: boolean;
  /** -32001 to a fresh `hello` (a bad token): counted as a 1008. */
  authFailed: boolean;
  lastReceived: number;
  pingSentAt?: number;
  timer?: ReturnType<typeof setInterval>;
  end: Deferred<{ code?: number; reason: string }>;
}

/** A queued delivery: an event for the handlers, or a subscribe reply's position. */
type Item =
  | { kind: "event"; event: SwitchboardEvent }
  | { kind: "confirm"; topic: string; reply: SubscribeResult };

interface TopicEntry {
  subs: Set<Subscription>;
  ready: Deferred<SubscribeResult>;
  settled: boolean;
  token?: string;
  /** The socket its last subscribe went out on. */
  sentOn?: Socket;
}

/** A subscription the app holds; `unsubscribe()` ends it. */
export class Subscription {
  /** Resolves with the subscribe reply once the gateway has the topic (after the replayed
   * events were handed to the handler). */
  readonly ready: Promise<SubscribeResult>;
  private active = true;
  constructor(
    readonly topic: string,
    readonly handler: Handler,
    ready: Promise<SubscribeResult>,
    private readonly client: SwitchboardClient,
  ) {
    this.ready = ready;
  }
  /** Whether this subscription still receives events. */
  get isActive(): boolean {
    return this.active;
  }
  /** Stops the handler; the topic is unsubscribed when no subscription of it is left. */
  unsubscribe(): Promise<void> {
    if (!this.active) return Promise.resolve();
    this.active = false;
    return this.client._drop(this);
  }
}

export class SwitchboardClient {
  private readonly urls: string[];
  private readonly token: TokenSource | undefined;
  private readonly WS: WebSocketConstructor;
  private readonly o: Required<Omit<ClientOptions, "urls" | "token" | "client" | "WebSocket" | "callTimeoutMs">> & {
    callTimeoutMs: number;
  };
  private readonly clientInfo: unknown;

  private _state: State = "idle";
  private _session: string | undefined;
  private _node: string | undefined;
  private _heartbeatMs = 0;
  private _limits: Record<string, number> | undefined;
  private nextId = 1;
  private urlIndex = 0;
  private attempt = 0;
  private authFailures = 0;
  private finalClose: { code?: number; reason: string } | undefined;
  private socket: Socket | undefined;
  private running = false;
  private connectWaiter: Deferred<void> | undefined;
  private readonly readyWaiters = new Set<Deferred<Socket>>();
  private readonly calls = new Map<Id, Call>();
  private readonly cancelAfterResume = new Map<Id, string>();
  private readonly tracker = new Tracker();
  private readonly topics = new Map<string, TopicEntry>();
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly queue: Item[] = [];
  private draining = false;
  private cachedToken: { token: string; refreshAt?: number } | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private wakeDelay: (() => void) | undefined;

  constructor(options: ClientOptions) {
    this.urls = typeof options.urls === "string" ? [options.urls] : [...options.urls];
    if (this.urls.length === 0) throw new TypeError("urls: at least one URL");
    for (const u of this.urls) {
      let protocol: string;
      try {
        protocol = new URL(u).protocol;
      } catch {
        throw new TypeError(`urls: not a URL: ${u}`);
      }
      if (!["ws:", "wss:", "http:", "https:"].includes(protocol)) {
        throw new TypeError(`urls: ${u}: ws:// or wss:// expected`);
      }
    }
    this.token = options.token;
    const WS = options.WebSocket ?? (globalThis as any).WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError("no WebSocket: use Node 22+ or a browser, or pass options.WebSocket");
    }
    this.WS = WS;
    this.clientInfo = options.client ?? { name: "switchboard-js", version: VERSION };
    this.o = {
      backoffMinMs: options.backoffMinMs ?? 100,
      backoffMaxMs: options.backoffMaxMs ?? 5000,
      helloTimeoutMs: options.helloTimeoutMs ?? 10_000,
      requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
      callTimeoutMs: options.callTimeoutMs ?? (options.callTimeoutMs === null ? 0 : 300_000),
      staleHeartbeats: options.staleHeartbeats ?? 3,
      eventQueue: options.eventQueue ?? 1024,
      refreshMarginMs: options.refreshMarginMs ?? REFRESH_MARGIN_MAX_MS,
      refreshRetryMs: options.refreshRetryMs ?? 1000,
      closeTimeoutMs: options.closeTimeoutMs ?? 2000,
    };
    if (!(this.o.backoffMinMs > 0) || this.o.backoffMaxMs < this.o.backoffMinMs) {
      throw new TypeError("backoff: backoffMinMs above zero and backoffMaxMs at least backoffMinMs");
    }
    if (!(this.o.eventQueue >= 1)) throw new TypeError("eventQueue: at least 1");
  }

  // -------------------------------------------------------------------------------------------
  // Public surface

  get state(): State {
    return this._state;
  }
  /** The session id (after the first `hello`). */
  get session(): string | undefined {
    return this._session;
  }
  /** The node the current (or last) socket is on. */
  get node(): string | undefined {
    return this._node;
  }
  get heartbeatMs(): number {
    return this._heartbeatMs;
  }
  /** `hello`'s `limits`. */
  get limits(): Record<string, number> | undefined {
    return this._limits;
  }

  /**
   * `state` `(state, detail)`: connecting, connected, resumed, disconnected, closed, and the
   * notices `recovered:false` and `revoked` (`detail.topic`; `state` does not change).
   * `notification` `(method, params)`: other notifications (tools/list_changed...).
   * `error` `(error)`: an exception thrown by a handler (it does not stop delivery).
   */
  on(event: "state", listener: (state: State | "recovered:false" | "revoked", detail: StateDetail) => void): this;
  on(event: "notification", listener: (method: string, params: any) => void): this;
  on(event: "error", listener: (error: unknown) => void): this;
  on(event: string, listener: Listener): this {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
    return this;
  }

  off(event: string, listener: Listener): this {
    this.listeners.get(event)?.delete(listener);
    return this;
  }

  /**
   * Opens the first socket; resolves once a `hello` is answered. Failed attempts are retried
   * with backoff; rejects with `ClosedError` when the client stops for good first (a bad
   * token, `close()`).
   */
  connect(): Promise<void> {
    if (this.finalClose) {
      return Promise.reject(new ClosedError(this.finalClose.code, this.finalClose.reason));
    }
    if (this._session && this.socket?.ready) return Promise.resolve();
    if (!this.connectWaiter) this.connectWaiter = deferred();
    const waiter = this.connectWaiter;
    if (!this.running) {
      this.running = true;
      void this.run();
    }
    return waiter.promise;
  }

  /** Subscribes `topic`; `handler` gets its events, in order, each once. */
  subscribe(topic: string, handler: Handler, options: SubscribeOptions = {}): Subscription {
    if (this.finalClose) {
      const sub = new Subscription(
        topic,
        handler,
        Promise.reject(new ClosedError(this.finalClose.code, this.finalClose.reason)),
        this,
      );
      sub.ready.catch(() => {});
      return sub;
    }
    let entry = this.topics.get(topic);
    const fresh = !entry;
    if (!entry) {
      entry = { subs: new Set(), ready: deferred(), settled: false, token: options.token };
      entry.ready.promise.catch(() => {});
      this.topics.set(topic, entry);
      this.tracker.want(topic, options.since);
    }
    const sub = new Subscription(topic, handler, entry.ready.promise, this);
    entry.subs.add(sub);
    if (fresh) {
      // On a ready socket now; otherwise the next socket's restore subscribes it.
      if (this.socket?.ready) void this.subscribeOn(this.socket, topic, entry, this.tracker.since(topic));
      const e = entry;
      const t = setTimeout(() => {
        if (!e.settled) {
          e.settled = true;
          e.ready.reject(new TimeoutError(`subscribe ${topic}: no reply within ${this.o.requestTimeoutMs} ms`));
        }
      }, this.o.requestTimeoutMs);
      e.ready.promise.then(
        () => clearTimeout(t),
        () => clearTimeout(t),
      );
    }
    return sub;
  }

  /** Publishes `data` to `topic`: `{}` or `{id}` on a topic with history. */
  async publish(topic: string, data: unknown, options: PublishOptions = {}): Promise<{ id?: string }> {
    const params: Record<string, unknown> = { topic, data };
    if (options.history !== undefined) params["history"] = options.history;
    return this.request("publish", params);
  }

  /** Calls tool `name`: its `CallToolResult`; an RPC error rejects with `RpcError`. */
  call(name: string, args: Record<string, unknown> = {}, options: CallOptions = {}): Promise<CallToolResult> {
    if (this.finalClose) {
      return Promise.reject(new ClosedError(this.finalClose.code, this.finalClose.reason));
    }
    const { signal, onProgress } = options;
    if (signal?.aborted) return Promise.reject(new AbortError(signal.reason));
    const id = this.nextId++;
    const d = deferred<CallToolResult>();
    const call: Call = { id, resolve: d.resolve, reject: d.reject, onProgress, sent: false };
    if (onProgress) call.progressToken = `p${id}`;
    const timeoutMs = options.timeout === undefined ? this.o.callTimeoutMs : (options.timeout ?? 0);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const done = () => {
      if (timer !== undefined) clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      this.calls.delete(id);
    };
    const abandon = (err: unknown, reason: string) => {
      const wasSent = call.sent;
      done();
      if (wasSent) this.cancel(id, reason);
      d.reject(err);
    };
    const onAbort = () => abandon(new AbortError(signal?.reason), "aborted by the client");
    signal?.addEventListener("abort", onAbort, { once: true });
    if (timeoutMs > 0) {
      timer = setTimeout(() => abandon(new TimeoutError(`call ${name}: no reply within ${timeoutMs} ms`), "timed out"), timeoutMs);
    }
    call.resolve = (r) => {
      done();
      d.resolve(r);
    };
    call.reject = (e) => {
      done();
      d.reject(e);
    };
    this.calls.set(id, call);
    const meta: Record<string, unknown> = { ...(options.meta ?? {}) };
    if (call.progressToken) meta["progressToken"] = call.progressToken;
    const params: Record<string, unknown> = { name, arguments: args };
    if (Object.keys(meta).length > 0) params["_meta"] = meta;
    const send = (s: Socket) => {
      if (!this.calls.has(id)) return;
      call.sent = true;
      this.send(s, { jsonrpc: "2.0", id, method: "tools/call", params });
    };
    if (this.socket?.ready) {
      send(this.socket);
    } else {
      this.waitReady(0).then(send, (e) => {
        if (this.calls.has(id)) call.reject(e);
      });
    }
    return d.promise;
  }

  /** Sends `ping` (the gateway answers `{}`). */
  async ping(): Promise<void> {
    await this.request("ping", {});
  }

  /**
   * Closes the client for good (1000): pending requests and calls fail with `ClosedError`.
   * Resolves once the socket is closed (or after `closeTimeoutMs`).
   */
  async close(code = 1000, reason = "closed by the client"): Promise<void> {
    if (this.finalClose) return;
    const s = this.socket;
    this.finish(code, reason);
    if (s && !s.ended && s.ws.readyState !== 3) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, this.o.closeTimeoutMs);
        s.ws.addEventListener("close", () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  // -------------------------------------------------------------------------------------------
  // Internals used by Subscription

  /** @internal */
  async _drop(sub: Subscription): Promise<void> {
    const entry = this.topics.get(sub.topic);
    if (!entry || !entry.subs.delete(sub) || entry.subs.size > 0) return;
    this.topics.delete(sub.topic);
    this.tracker.forget(sub.topic);
    if (!entry.settled) {
      entry.settled = true;
      entry.ready.reject(new SwitchboardError("unsubscribed before the subscribe was answered"));
    }
    const s = this.socket;
    if (s?.ready && !this.finalClose) {
      try {
        await this.requestOn(s, "unsubscribe", { topic: sub.topic }, this.o.requestTimeoutMs);
      } catch {
        // A dropped socket: the resume unsubscribes what the app no longer wants.
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // The connection loop

  private async run(): Promise<void> {
    let delay = 0;
    while (!this.finalClose) {
      if (delay > 0) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, delay);
          this.wakeDelay = () => {
            clearTimeout(t);
            resolve();
          };
        });
        this.wakeDelay = undefined;
        if (this.finalClose) return;
      }
      this.setState("connecting", {});
      const url = this.urls[this.urlIndex]!;
      let end: { code?: number; reason: string };
      let wasReady = false;
      let token: string | undefined;
      try {
        token = await this.tokenForConnect();
      } catch (e) {
        token = undefined;
        end = { reason: `the token function failed: ${String(e)}` };
        this.emit("error", e);
      }
      if (this.finalClose) return;
      let s: Socket | undefined;
      if (token !== undefined || this.token === undefined) {
        s = this.open(url, token);
        end = await s.end.promise;
        wasReady = s.ready;
        if (this.finalClose) return this.teardown(s, end);
        if (s.authFailed && end.code !== 1008) end = { code: 1008, reason: end.reason };
      }
      end = end!;
      // Decide what the close code means.
      const action = closeAction(end.code);
      if (action.kind === "final") return this.finish(end.code, end.reason);
      if (action.kind === "auth") {
        this.authFailures += 1;
        if (typeof this.token !== "function" || this.authFailures >= 2) {
          return this.finish(end.code, end.reason);
        }
        this.cachedToken = undefined;
      }
      if (s) this.teardown(s, end);
      if (wasReady) this.setState("disconnected", { code: end.code, reason: end.reason });
      this.urlIndex = (this.urlIndex + 1) % this.urls.length;
      const floor = action.kind === "reconnect" ? action.floorMs : 0;
      const attempt = action.kind === "reconnect" && action.reset ? 0 : this.attempt;
      delay = backoffDelay(attempt, this.o.backoffMinMs, this.o.backoffMaxMs, floor);
      this.attempt += 1;
    }
  }

  private async tokenForConnect(): Promise<string | undefined> {
    const t = this.token;
    if (t === undefined) return undefined;
    if (typeof t === "string") return t;
    const c = this.cachedToken;
    if (c && (c.refreshAt === undefined || Date.now() < c.refreshAt)) return c.token;
    return this.freshToken();
  }

  private async freshToken(): Promise<string> {
    const fn = this.token as () => string | Promise<string>;
    const token = await fn();
    if (typeof token !== "string" || token === "") {
      throw new TypeError("the token function must return a non-empty string");
    }
    this.cachedToken = { token, refreshAt: refreshAt(token, Date.now(), this.o.refreshMarginMs) };
    return token;
  }

  /** Opens a socket and runs its handshake; `end` resolves when it is over. */
  private open(url: string, token: string | undefined): Socket {
    const end = deferred<{ code?: number; reason: string }>();
    let ws: WebSocket;
    try {
      ws = new this.WS(url, SUBPROTOCOL);
    } catch (e) {
      // A malformed URL, say: a failed attempt like any other.
      end.resolve({ reason: `cannot open ${url}: ${String(e)}` });
      return {
        ws: { readyState: 3, close() {}, send() {}, addEventListener() {} } as unknown as WebSocket,
        url,
        pending: new Map(),
        ready: false,
        ended: true,
        authFailed: false,
        lastReceived: Date.now(),
        end,
      };
    }
    const s: Socket = {
      ws,
      url,
      pending: new Map(),
      ready: false,
      ended: false,
      authFailed: false,
      lastReceived: Date.now(),
      end,
    };
    this.socket = s;
    const helloTimer = setTimeout(() => this.drop(s, undefined, "hello timed out"), this.o.helloTimeoutMs);
    ws.addEventListener("open", () => {
      s.lastReceived = Date.now();
      void this.handshake(s, token).finally(() => clearTimeout(helloTimer));
    });
    ws.addEventListener("message", (ev: MessageEvent) => {
      if (s.ended) return;
      s.lastReceived = Date.now();
      if (typeof ev.data !== "string") return;
      let msg: any;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.onMessage(s, msg);
    });
    ws.addEventListener("close", (ev: CloseEvent) => {
      clearTimeout(helloTimer);
      this.drop(s, ev.code, ev.reason || "connection closed");
    });
    ws.addEventListener("error", () => {
      // A close event follows.
    });
    return s;
  }

  /** Ends socket `s` (at most once): the loop goes on from its `end`. */
  private drop(s: Socket, code: number | undefined, reason: string): void {
    if (s.ended) return;
    s.ended = true;
    if (s.timer !== undefined) clearInterval(s.timer);
    if (s.ws.readyState === 0 || s.ws.readyState === 1) {
      try {
        s.ws.close(4000, reason.slice(0, 100));
      } catch {
        // already closing
      }
    }
    s.end.resolve({ code, reason });
  }

  /** What a socket leaves behind: its non-call requests fail, the link is not ready. */
  private teardown(s: Socket, end: { code?: number; reason: string }): void {
    s.ready = false;
    if (this.refreshTimer !== undefined) {
      clearTimeout(this.refreshTimer);
      this.refreshTimer = undefined;
    }
    const err = this.finalClose
      ? new ClosedError(this.finalClose.code, this.finalClose.reason)
      : new DisconnectedError(`the connection dropped (${end.code ?? "no close code"}: ${end.reason})`);
    for (const p of s.pending.values()) p.reject(err);
    s.pending.clear();
  }

  private async handshake(s: Socket, token: string | undefined): Promise<void> {
    const base: Record<string, unknown> = { client: this.clientInfo };
    if (token !== undefined) base["token"] = token;
    let result: HelloResult;
    const hadSession = this._session !== undefined;
    try {
      if (hadSession) {
        try {
          result = await this.requestOn(s, "hello", { ...base, session: this._session, positions: this.tracker.positions() }, 0);
        } catch (e) {
          if (!(e instanceof RpcError && e.code === ErrorCodes.Unauthorized)) throw e;
          // The session belongs to another identity (or the token was refused): afresh.
          result = await this.requestOn(s, "hello", base, 0);
        }
      } else {
        result = await this.requestOn(s, "hello", base, 0);
      }
    } catch (e) {
      if (s.ended) return;
      if (e instanceof RpcError) {
        if (e.code === ErrorCodes.Unauthorized) {
          s.authFailed = true;
          return this.drop(s, 1008, e.message);
        }
        if (e.code === ErrorCodes.Internal || e.code === ErrorCodes.Overloaded) {
          return this.drop(s, 1013, e.message);
        }
      }
      return this.drop(s, undefined, `hello failed: ${String((e as Error)?.message ?? e)}`);
    }
    if (s.ended || this.finalClose) return;
    this.onHello(s, result);
  }

  private onHello(s: Socket, r: HelloResult): void {
    this.attempt = 0;
    this.authFailures = 0;
    this._session = r.session;
    this._node = r.node;
    this._heartbeatMs = r.heartbeatMs;
    this._limits = r.limits;
    if (!r.resumed) {
      // Calls sent on earlier sockets lost their replies with the session.
      for (const c of [...this.calls.values()]) {
        if (c.sent) c.reject(new SessionLostError());
      }
      this.cancelAfterResume.clear();
    }
    // The restore plan: what the gateway restored, what to subscribe, what to drop.
    const restored = new Set<string>();
    const unsubscribe: string[] = [];
    const notRecovered: string[] = [];
    if (r.resumed) {
      for (const sub of r.subscriptions ?? []) {
        if (!this.tracker.wants(sub.topic)) {
          unsubscribe.push(sub.topic);
          continue;
        }
        this.tracker.confirm(sub.topic, undefined);
        this.enqueue({ kind: "confirm", topic: sub.topic, reply: sub });
        if (sub.recovered === false) notRecovered.push(sub.topic);
        else restored.add(sub.topic);
      }
    }
    s.ready = true;
    this.startHeartbeat(s);
    this.setState(r.resumed ? "resumed" : "connected", { node: r.node, session: r.session });
    this.connectWaiter?.resolve();
    this.connectWaiter = undefined;
    for (const topic of notRecovered) this.notice("recovered:false", topic);
    for (const [id, reason] of this.cancelAfterResume) {
      this.send(s, { jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: id, reason } });
    }
    this.cancelAfterResume.clear();
    for (const [topic, entry] of this.topics) {
      if (restored.has(topic)) entry.sentOn = s;
      else void this.subscribeOn(s, topic, entry, this.tracker.since(topic), notRecovered.includes(topic));
    }
    for (const w of [...this.readyWaiters]) w.resolve(s);
    this.readyWaiters.clear();
    for (const topic of unsubscribe) {
      this.requestOn(s, "unsubscribe", { topic }, this.o.requestTimeoutMs).catch(() => {});
    }
    this.scheduleRefresh(s);
  }

  // -------------------------------------------------------------------------------------------
  // Messages

  private onMessage(s: Socket, msg: any): void {
    if (msg === null || typeof msg !== "object") return;
    if ("id" in msg && !("method" in msg)) {
      const id = msg.id as Id;
      const call = this.calls.get(id);
      if (call) {
        if (msg.error) call.reject(rpcError(msg.error));
        else call.resolve(msg.result);
        return;
      }
      const p = s.pending.get(id);
      if (p) {
        s.pending.delete(id);
        if (msg.error) p.reject(rpcError(msg.error));
        else p.resolve(msg.result);
      }
      return;
    }
    const params = msg.params ?? {};
    switch (msg.method) {
      case "event": {
        const topic = params.topic;
        if (typeof topic !== "string" || !this.tracker.admit(topic, params.id)) return;
        const event: SwitchboardEvent = { topic, data: params.data };
        if (params.id !== undefined) event.id = params.id;
        if (params.from !== undefined) event.from = params.from;
        this.enqueue({ kind: "event", event });
        return;
      }
      case "notifications/progress": {
        for (const c of this.calls.values()) {
          if (c.progressToken !== undefined && c.progressToken === params.progressToken) {
            try {
              c.onProgress?.(params as Progress);
            } catch (e) {
              this.emit("error", e);
            }
            return;
          }
        }
        return;
      }
      default:
        if (typeof msg.method === "string" && !("id" in msg)) this.emit("notification", msg.method, params);
        else if (typeof msg.method === "string") {
          // A request from the gateway (tools offered by clients): not supported here.
          this.send(s, { jsonrpc: "2.0", id: msg.id, error: { code: -32601, message: "method not found" } });
        }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Delivery

  private enqueue(item: Item): void {
    this.queue.push(item);
    if (this.queue.length > this.o.eventQueue) return this.overflow();
    if (!this.draining) void this.drain();
  }

  private async drain(): Promise<void> {
    this.draining = true;
    try {
      while (this.queue.length > 0) {
        const item = this.queue.shift()!;
        if (item.kind === "confirm") {
          this.confirmed(item.topic, item.reply);
          continue;
        }
        const { event } = item;
        const entry = this.topics.get(event.topic);
        if (!entry) continue;
        this.tracker.delivered(event.topic, event.id);
        for (const sub of [...entry.subs]) {
          try {
            const r = sub.handler(event) as any;
            if (r && typeof r.then === "function") await r;
          } catch (e) {
            this.emit("error", e);
          }
        }
      }
    } finally {
      this.draining = false;
    }
  }

  /** More events wait than `eventQueue`: drop them and the socket, resume from what the app
   * has (the replay brings them again). */
  private overflow(): void {
    const firstDropped = new Map<string, bigint>();
    for (const item of this.queue) {
      if (item.kind === "confirm") {
        this.confirmed(item.topic, item.reply, false);
        continue;
      }
      const v = parseId(item.event.id);
      if (v !== undefined && !firstDropped.has(item.event.topic)) firstDropped.set(item.event.topic, v);
    }
    // The item being handled stays with the handler; the rest go.
    this.queue.length = 0;
    for (const [topic, t] of this.tracker.topics) {
      const first = firstDropped.get(topic);
      // Every dropped event is newer than what the topic knows; a topic that knows nothing
      // yet resumes from just before its first dropped event.
      if (first !== undefined && Tracker.known(t) === undefined) {
        t.floor = previousId(first);
        t.confirmed = true;
      }
      t.seen = Tracker.known(t);
    }
    const s = this.socket;
    if (s && !s.ended) this.drop(s, undefined, "event queue full: resuming from the last event handed over");
  }

  /** A subscribe reply (or a resume's entry) reached its turn in the queue. */
  private confirmed(topic: string, reply: SubscribeResult, applyPosition = true): void {
    const entry = this.topics.get(topic);
    if (!entry) return;
    this.tracker.confirm(topic, applyPosition ? reply.position : undefined);
    if (!entry.settled) {
      entry.settled = true;
      entry.ready.resolve(reply);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Subscriptions

  private async subscribeOn(
    s: Socket,
    topic: string,
    entry: TopicEntry,
    since: string | undefined,
    noticed = false,
  ): Promise<void> {
    if (entry.sentOn === s) return;
    entry.sentOn = s;
    const params: Record<string, unknown> = { topic };
    if (since !== undefined) params["since"] = since;
    if (entry.token !== undefined) params["token"] = entry.token;
    let reply: SubscribeResult;
    try {
      reply = await this.requestOn(s, "subscribe", params, this.o.requestTimeoutMs);
    } catch (e) {
      if (e instanceof RpcError) {
        if (e.code === ErrorCodes.Internal) {
          // The backend is away: reconnect, and restore then.
          this.drop(s, undefined, "backend unavailable during a subscribe");
          return;
        }
        // Refused (forbidden, bad since, too many...): not wanted any more.
        if (this.topics.get(topic) === entry) {
          this.topics.delete(topic);
          this.tracker.forget(topic);
        }
        if (!entry.settled) {
          entry.settled = true;
          entry.ready.reject(e);
        } else {
          this.emit("error", e);
        }
      }
      // Disconnected: still wanted; the next socket restores it.
      return;
    }
    if (this.topics.get(topic) !== entry) {
      // Dropped by the app while the subscribe was on its way.
      if (s.ready) this.requestOn(s, "unsubscribe", { topic }, this.o.requestTimeoutMs).catch(() => {});
      return;
    }
    this.tracker.topics.get(topic)!.confirmed = true;
    this.enqueue({ kind: "confirm", topic, reply });
    if (reply.recovered === false && !noticed) this.notice("recovered:false", topic);
  }

  // -------------------------------------------------------------------------------------------
  // Requests

  private request<T = any>(method: string, params: unknown): Promise<T> {
    if (this.finalClose) return Promise.reject(new ClosedError(this.finalClose.code, this.finalClose.reason));
    const started = Date.now();
    const limit = this.o.requestTimeoutMs;
    if (this.socket?.ready) return this.requestOn(this.socket, method, params, limit);
    return this.waitReady(limit).then((s) => this.requestOn(s, method, params, Math.max(1, limit - (Date.now() - started))));
  }

  private requestOn<T = any>(s: Socket, method: string, params: unknown, timeoutMs: number): Promise<T> {
    if (s.ended) return Promise.reject(new DisconnectedError());
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      if (timeoutMs > 0) {
        timer = setTimeout(() => {
          s.pending.delete(id);
          reject(new TimeoutError(`${method}: no reply within ${timeoutMs} ms`));
        }, timeoutMs);
      }
      s.pending.set(id, {
        resolve: (v) => {
          if (timer !== undefined) clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          if (timer !== undefined) clearTimeout(timer);
          reject(e);
        },
      });
      this.send(s, { jsonrpc: "2.0", id, method, params });
    });
  }

  /** The next ready socket, within `timeoutMs` (0: no limit). */
  private waitReady(timeoutMs: number): Promise<Socket> {
    if (this.finalClose) return Promise.reject(new ClosedError(this.finalClose.code, this.finalClose.reason));
    if (this.socket?.ready) return Promise.resolve(this.socket);
    const d = deferred<Socket>();
    this.readyWaiters.add(d);
    if (timeoutMs > 0) {
      const t = setTimeout(() => {
        this.readyWaiters.delete(d);
        d.reject(new TimeoutError(`no connection within ${timeoutMs} ms`));
      }, timeoutMs);
      d.promise.then(
        () => clearTimeout(t),
        () => clearTimeout(t),
      );
    }
    return d.promise;
  }

  private send(s: Socket, msg: unknown): void {
    if (s.ended || s.ws.readyState !== 1) return;
    try {
      s.ws.send(JSON.stringify(msg));
    } catch (e) {
      this.drop(s, undefined, `send failed: ${String(e)}`);
    }
  }

  private cancel(id: Id, reason: string): void {
    const s = this.socket;
    const msg = { jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: id, reason } };
    if (s?.ready) this.send(s, msg);
    else if (!this.finalClose) this.cancelAfterResume.set(id, reason);
  }

  // -------------------------------------------------------------------------------------------
  // Heartbeat and token refresh

  private startHeartbeat(s: Socket): void {
    const hb = this._heartbeatMs;
    const n = this.o.staleHeartbeats;
    if (!(hb > 0) || !(n > 0)) return;
    const every = Math.min(1000, Math.max(10, Math.floor(hb / 4)));
    s.timer = setInterval(() => {
      if (s.ended) return;
      const now = Date.now();
      const idle = now - s.lastReceived;
      if (idle > hb * n) return this.drop(s, undefined, "the connection went silent");
      if (s.pingSentAt !== undefined) {
        if (s.lastReceived > s.pingSentAt) s.pingSentAt = undefined;
        else if (now - s.pingSentAt > hb) return this.drop(s, undefined, "ping not answered");
      }
      if (s.pingSentAt === undefined && idle > hb) {
        s.pingSentAt = now;
        this.requestOn(s, "ping", {}, 0).catch(() => {});
      }
    }, every);
  }

  private scheduleRefresh(s: Socket): void {
    if (typeof this.token !== "function") return;
    if (this.refreshTimer !== undefined) clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    const at = this.cachedToken?.refreshAt;
    if (at === undefined) return;
    const wait = Math.max(0, at - Date.now());
    this.refreshTimer = setTimeout(() => void this.refresh(s, false), wait);
  }

  private async refresh(s: Socket, retry: boolean): Promise<void> {
    this.refreshTimer = undefined;
    if (s.ended || !s.ready || this.finalClose) return;
    let token: string;
    try {
      token = await this.freshToken();
    } catch (e) {
      this.emit("error", e);
      if (!retry && !s.ended) this.refreshTimer = setTimeout(() => void this.refresh(s, true), this.o.refreshRetryMs);
      return;
    }
    try {
      const r = await this.requestOn<{ expiresAt?: number; revoked?: string[] }>(s, "refresh", { token }, this.o.requestTimeoutMs);
      for (const topic of r?.revoked ?? []) {
        const entry = this.topics.get(topic);
        this.topics.delete(topic);
        this.tracker.forget(topic);
        if (entry && !entry.settled) {
          entry.settled = true;
          entry.ready.reject(new RpcError(ErrorCodes.Forbidden, `forbidden: sub ${topic}`));
        }
        this.notice("revoked", topic);
      }
      if (s === this.socket && s.ready) this.scheduleRefresh(s);
    } catch (e) {
      if (e instanceof RpcError && !retry && !s.ended) {
        // Refused: once more, shortly; then the gateway closes with 1008 at expiry.
        this.refreshTimer = setTimeout(() => void this.refresh(s, true), this.o.refreshRetryMs);
      } else if (e instanceof RpcError) {
        this.emit("error", e);
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // States

  private setState(state: State, detail: StateDetail): void {
    if (state === this._state && state === "connecting") return;
    this._state = state;
    this.emit("state", state, detail);
  }

  private notice(kind: "recovered:false" | "revoked", topic: string): void {
    this.emit("state", kind, { topic });
  }

  private emit(event: string, ...args: unknown[]): void {
    const set = this.listeners.get(event);
    if (!set || set.size === 0) return;
    for (const l of [...set]) {
      try {
        l(...args);
      } catch (e) {
        if (event !== "error") this.emit("error", e);
      }
    }
  }

  /** Final: fail everything pending, close the socket, state `closed`. */
  private finish(code: number | undefined, reason: string): void {
    if (this.finalClose) return;
    this.finalClose = { code, reason };
    const err = new ClosedError(code, reason);
    if (this.refreshTimer !== undefined) clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    this.wakeDelay?.();
    const s = this.socket;
    if (s && !s.ended) {
      s.ended = true;
      if (s.timer !== undefined) clearInterval(s.timer);
      try {
        if (s.ws.readyState === 0 || s.ws.readyState === 1) s.ws.close(1000, reason.slice(0, 100));
      } catch {
        // closing already
      }
      s.end.resolve({ code, reason });
    }
    if (s) {
      s.ready = false;
      for (const p of s.pending.values()) p.reject(err);
      s.pending.clear();
    }
    for (const c of [...this.calls.values()]) c.reject(err);
    for (const w of this.readyWaiters) w.reject(err);
    this.readyWaiters.clear();
    for (const entry of this.topics.values()) {
      if (!entry.settled) {
        entry.settled = true;
        entry.ready.reject(err);
      }
    }
    this.connectWaiter?.reject(err);
    this.connectWaiter = undefined;
    this._state = "closed";
    this.emit("state", "closed", { code, reason });
  }
}

function rpcError(e: any): RpcError {
  return new RpcError(
    typeof e?.code === "number" ? e.code : -32603,
    typeof e?.message === "string" ? e.message : "error",
    e?.data,
  );
}
