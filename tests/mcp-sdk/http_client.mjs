// The official MCP TypeScript SDK's Streamable HTTP client against two gateway nodes, every
// request to the next node in turn (no stickiness): initialize, list tools, call tools (one
// with progress, answered on the request's SSE stream). Prints one JSON line of what it saw; tests/tests/mcp_http.rs
// checks it. Usage: node http_client.mjs URL_A URL_B [TOKEN]
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [urlA, urlB, token] = process.argv.slice(2);
const nodes = [new URL(urlA), new URL(urlB)];
const hits = [0, 0];
let next = 0;
const methods = [];

// Each request goes to the next node: the session must hold on any of them.
async function roundRobin(input, init) {
  const url = new URL(typeof input === "string" || input instanceof URL ? input : input.url);
  const i = next++ % nodes.length;
  url.host = nodes[i].host;
  hits[i] += 1;
  if (init?.body) {
    try {
      methods.push(JSON.parse(init.body).method ?? "response");
    } catch {
      methods.push("?");
    }
  } else {
    methods.push(init?.method ?? "GET");
  }
  return fetch(url, init);
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
const out = {
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
