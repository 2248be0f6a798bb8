// The official MCP TypeScript SDK's Streamable HTTP client against two gateway nodes, every
// request to the next node in turn (no stickiness): initialize, list tools, call tools (one
// with progress, answered on the request's SSE stream), a call whose stream breaks mid-call
// (the SDK resumes it with GET + Last-Event-ID, on the other node), a call aborted (the SDK
// sends notifications/cancelled, to the other node), and a task (the SDK's task stream).
// Prints one JSON line of what it saw; tests/tests/mcp_http.rs checks it.
// Usage: node http_client.mjs URL_A URL_B [TOKEN]
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CallToolResultSchema } from "@modelcontextprotocol/sdk/types.js";

const [urlA, urlB, token] = process.argv.slice(2);
const nodes = [new URL(urlA), new URL(urlB)];
const hits = [0, 0];
let next = 0;
const methods = [];

// Each request goes to the next node: the session must hold on any of them.
const requests = [];
// The next response stream to break after its first progress event (a network failure).
let breakNext = null;
// The node whose stream broke.
let brokenOn = null;
async function roundRobin(input, init) {
  const url = new URL(typeof input === "string" || input instanceof URL ? input : input.url);
  const i = next++ % nodes.length;
  url.host = nodes[i].host;
  hits[i] += 1;
  const hdrs = new Headers(init?.headers);
  let body = null;
  if (init?.body) {
    try {
      body = JSON.parse(init.body);
      methods.push(body.method ?? "response");
    } catch {
      methods.push("?");
    }
  } else {
    methods.push(init?.method ?? "GET");
  }
  requests.push({ node: i, method: init?.method ?? "GET", rpc: body?.method, id: body?.id,
                  lastEventId: hdrs.get("last-event-id") });
  const response = await fetch(url, init);
  if (breakNext && body?.method === "tools/call" && body.params?.name === breakNext
      && response.body) {
    breakNext = null;
    brokenOn = i;
    return new Response(breaking(response.body), { status: response.status, headers: response.headers });
  }
  return response;
}

// Passes a stream through until it has carried a progress notification, then fails it.
function breaking(body) {
  const reader = body.getReader();
  let seen = "";
  return new ReadableStream({
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) return controller.close();
      controller.enqueue(value);
      seen += new TextDecoder().decode(value);
      if (seen.includes("notifications/progress")) {
        reader.cancel().catch(() => {});
        controller.error(new Error("network broke"));
      }
    },
  });
}

const headers = token ? { Authorization: `Bearer ${token}` } : {};
const transport = new StreamableHTTPClientTransport(nodes[0], {
  fetch: roundRobin,
  requestInit: { headers },
});
const client = new Client({ name: "switchboard-sdk-test", version: "1.0.0" });
await client.connect(transport);
const tools = await client.listTools();
const echo = await client.callTool({ name: "echo", arguments: { hello: "world" } });
const progress = [];
const sleep = await client.callTool({ name: "sleep", arguments: { ms: 300 } }, undefined, {
  onprogress: (p) => progress.push(p),
});
let refused = null;
try {
  await client.callTool({ name: "nope", arguments: {} });
} catch (e) {
  refused = { code: e.code, message: e.message };
}
// A stream broken mid-call: the SDK resumes it (GET + Last-Event-ID, the next node).
breakNext = "sleep";
const resumedProgress = [];
const resumed = await client.callTool({ name: "sleep", arguments: { ms: 1500 } }, undefined, {
  onprogress: (p) => resumedProgress.push(p.progress),
  resetTimeoutOnProgress: true,
});
const resumes = requests.filter((r) => r.lastEventId);

// An aborted call: the SDK tells the server with notifications/cancelled.
const abort = new AbortController();
const before = requests.length;
const aborted = client.callTool({ name: "sleep", arguments: { ms: 600000 } }, undefined, {
  signal: abort.signal,
});
await new Promise((r) => setTimeout(r, 500));
abort.abort("changed my mind");
let abortError = null;
try {
  await aborted;
} catch (e) {
  abortError = String(e?.message ?? e);
}
const abortedId = requests.slice(before).find((r) => r.rpc === "tools/call")?.id;
const cancels = requests.filter((r) => r.rpc === "notifications/cancelled");
await new Promise((r) => setTimeout(r, 300));

// A task: created, polled, its result fetched, each request on whichever node.
const taskMessages = [];
for await (const m of client.experimental.tasks.callToolStream(
  { name: "echo", arguments: { via: "task" } }, CallToolResultSchema, { task: { ttl: 60000 } })) {
  taskMessages.push(m.type === "result" ? { type: "result", result: m.result }
    : m.type === "error" ? { type: "error", error: String(m.error) }
    : { type: m.type, status: m.task?.status });
}

const out = {
  resumed,
  resumedProgress,
  resumes,
  brokenOn,
  abortError,
  abortedId,
  cancels,
  taskMessages,
  protocolVersion: transport.protocolVersion ?? null,
  sessionId: transport.sessionId ?? null,
  tools: tools.tools.map((t) => t.name).sort(),
  echo,
  sleep,
  progress,
  refused,
  hits,
  methods,
};
await client.close();
console.log(JSON.stringify(out));
