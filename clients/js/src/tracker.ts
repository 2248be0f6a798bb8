/**
 * What the client knows about each topic the app wants (a port of client/src/tracker.rs): the
 * last event id delivered to the app (to drop duplicates), the newest position the gateway
 * vouched for (a subscribe reply's or a resume's `position`), and so where to resume from.
 *
 * Event ids are `<ms>-<seq>` and compare as the pair of integers (BigInt, so no precision is
 * lost), never as strings. A topic's known position is the later of the two. After a reconnect
 * it is what the client asks to continue from: `hello {positions}` on a resume, `subscribe
 * {since}` otherwise; a topic subscribed but with no known position resumes from `0-0`.
 */

/** An event id as one comparable number: ms * 2^64 + seq. `undefined` when not an id. */
export function parseId(id: unknown): bigint | undefined {
  if (typeof id !== "string") return undefined;
  const m = /^(\d{1,20})-(\d{1,20})$/.exec(id);
  if (!m) return undefined;
  const ms = BigInt(m[1]!);
  const seq = BigInt(m[2]!);
  if (ms >= 1n << 64n || seq >= 1n << 64n) return undefined;
  return (ms << 64n) | seq;
}

/** The `<ms>-<seq>` form of a parsed id. */
export function formatId(v: bigint): string {
  return `${v >> 64n}-${v & ((1n << 64n) - 1n)}`;
}

/** The id just before `v` (for `since`: everything after it). */
export function previousId(v: bigint): bigint {
  return v > 0n ? v - 1n : 0n;
}

export interface TopicState {
  /** The last event id handed to the app. */
  last?: bigint;
  /** The newest position a subscribe reply or a resume gave. */
  floor?: bigint;
  /** The last id accepted into the delivery queue (>= last). */
  seen?: bigint;
  /** A subscribe was answered at least once: the client owes the app every event since. */
  confirmed: boolean;
}

export class Tracker {
  readonly topics = new Map<string, TopicState>();

  /** The app wants `topic`; `since` is where the app says it is (its own last id). */
  want(topic: string, since?: string): TopicState {
    let t = this.topics.get(topic);
    if (!t) {
      t = { confirmed: false };
      const s = parseId(since);
      if (s !== undefined) {
        t.floor = s;
        t.seen = s;
      }
      this.topics.set(topic, t);
    }
    return t;
  }

  wants(topic: string): boolean {
    return this.topics.has(topic);
  }

  forget(topic: string): void {
    this.topics.delete(topic);
  }

  static known(t: TopicState): bigint | undefined {
    if (t.last === undefined) return t.floor;
    if (t.floor === undefined) return t.last;
    return t.last > t.floor ? t.last : t.floor;
  }

  /** The `since` to subscribe `topic` with (after a reconnect, or the app's own). */
  since(topic: string): string | undefined {
    const t = this.topics.get(topic);
    if (!t) return undefined;
    const k = Tracker.known(t);
    if (t.confirmed) return formatId(k ?? 0n);
    return k === undefined ? undefined : formatId(k);
  }

  /** A subscribe of `topic` was answered (or restored) with `position`. */
  confirm(topic: string, position?: string): void {
    const t = this.topics.get(topic);
    if (!t) return;
    t.confirmed = true;
    const p = parseId(position);
    if (p !== undefined && (t.floor === undefined || p > t.floor)) t.floor = p;
  }

  /** Whether an event enters the delivery queue: wanted, and newer than any seen (or no id). */
  admit(topic: string, id: unknown): boolean {
    const t = this.topics.get(topic);
    if (!t) return false;
    const v = parseId(id);
    if (v === undefined) return true;
    if (t.seen !== undefined && v <= t.seen) return false;
    if (t.last !== undefined && v <= t.last) return false;
    t.seen = v;
    return true;
  }

  /** The event with `id` was handed to the app. */
  delivered(topic: string, id: unknown): void {
    const t = this.topics.get(topic);
    const v = parseId(id);
    if (!t || v === undefined) return;
    if (t.last === undefined || v > t.last) t.last = v;
  }

  /** The known position of every confirmed topic that has one, for `hello {positions}`. */
  positions(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [topic, t] of this.topics) {
      const k = Tracker.known(t);
      if (t.confirmed && k !== undefined) out[topic] = formatId(k);
    }
    return out;
  }
}
